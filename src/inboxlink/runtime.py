"""Wiring: one object holding what a process needs (settings, database, secrets, services).

The CLI builds one per command, `serve` one for its lifetime; the API receives it through a
dependency. Nothing else constructs these pieces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inboxlink.accounts import AccountService
from inboxlink.auth.secrets import RedactingFilter, SecretBox, load_secret_box
from inboxlink.config import Settings, get_settings
from inboxlink.crm import linking
from inboxlink.crm.records import RecordService
from inboxlink.outbound.outbox import OutboxService
from inboxlink.store.db import Database, open_database
from inboxlink.sync.engine import SyncEngine
from inboxlink.sync.gmail_push import GmailPushes

if TYPE_CHECKING:
    from inboxlink.tasks import TaskQueue


@dataclass
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox
    accounts: AccountService
    engine: SyncEngine
    records: RecordService
    outbox: OutboxService
    gmail_pushes: GmailPushes  # Pub/Sub pushes received: which Gmail accounts push keeps in sync
    _queue: TaskQueue | None = None

    @property
    def queue(self) -> TaskQueue:
        """The task queue, opened on first use (importing Huey costs ~0.3 s per command)."""
        if self._queue is None:
            from inboxlink.tasks import TaskQueue

            self._queue = TaskQueue(
                self.settings,
                lambda: self.outbox,
                upkeep=lambda: self.accounts.upkeep,
                index_search=self.index_search,
            )
        return self._queue

    def index_search(self, limit: int = 20_000) -> int:
        """Bring the SQLite full-text index up to date (in batches; PostgreSQL needs nothing)."""
        from inboxlink.crm.search import index_pending

        with self.db.engine.begin() as conn:
            return index_pending(conn, limit=limit)

    @classmethod
    def open(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        db = open_database(settings)
        box = load_secret_box(settings)
        accounts = AccountService(db, settings, box)
        engine = SyncEngine(
            db,
            accounts.open_provider,
            prepare_workers=settings.prepare_workers,
            after_sync=accounts.upkeep.after_sync,
        )
        linking.OPERATOR_HOME = settings.resolved_home
        rt = cls(
            settings=settings,
            db=db,
            box=box,
            accounts=accounts,
            engine=engine,
            records=RecordService(db),
            outbox=OutboxService(db, accounts.open_provider),
            gmail_pushes=GmailPushes(db),
        )
        rt.outbox.on_queued = lambda oid, when: rt.queue.enqueue_send(oid, when)
        return rt

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
    # Huey logs each run of the periodic tasks (four lines a minute, doing nothing) and Alembic a
    # dozen lines of plugin set-up at the first start, at INFO: shown only when debugging; their
    # warnings and errors still show.
    for chatty in ("huey", "alembic"):
        logging.getLogger(chatty).setLevel(
            logging.DEBUG if root.level <= logging.DEBUG else max(root.level, logging.WARNING)
        )
