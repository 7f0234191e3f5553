"""Wiring: one object holding what a process needs (settings, database, secrets, services).

The CLI builds one per command, `serve` one for its lifetime; the API receives it through a
dependency. Nothing else constructs these pieces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from inboxlink.accounts import AccountService
from inboxlink.auth.secrets import RedactingFilter, SecretBox, load_secret_box
from inboxlink.config import Settings, get_settings
from inboxlink.crm import linking
from inboxlink.crm.records import RecordService
from inboxlink.store.db import Database, open_database
from inboxlink.sync.engine import SyncEngine


@dataclass
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox
    accounts: AccountService
    engine: SyncEngine
    records: RecordService

    @classmethod
    def open(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        db = open_database(settings)
        box = load_secret_box(settings)
        accounts = AccountService(db, settings, box)
        engine = SyncEngine(db, accounts.open_provider, prepare_workers=settings.prepare_workers)
        linking.OPERATOR_HOME = settings.resolved_home
        return cls(
            settings=settings, db=db, box=box, accounts=accounts, engine=engine, records=RecordService(db)
        )

    def close(self) -> None:
        self.engine.close()
        self.db.close()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
