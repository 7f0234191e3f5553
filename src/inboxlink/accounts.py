"""Accounts: pair, re-pair, list, show, unpair. Used by the API and the CLI alike.

Pairing verifies the credentials against the server before anything is stored: a wrong password,
an unreachable host or a host the network guard refuses is an error and creates nothing. Re-pairing
is pairing bound to an existing account (same mailbox required, `wrong_account` otherwise): the new
credentials replace the old ones, the status goes back to pending, and the folder cursors are kept,
so the next sync resumes where the account stopped and downloads nothing again.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from inboxlink.auth.secrets import SecretBox, register_secret
from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.errors import NotFound, ValidationError, WrongAccount
from inboxlink.providers import registry
from inboxlink.providers.base import MailProvider
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.providers.imap.smtp import check_smtp
from inboxlink.store import mailstore
from inboxlink.store.db import Database
from inboxlink.store.schema import account_transitions, accounts, folders
from inboxlink.sync.state import now, transition


@dataclass
class AccountView:
    id: str
    provider: str
    email: str
    status: str
    status_reason: str | None
    status_at: datetime
    created_at: datetime
    last_sync_at: datetime | None
    last_error: str | None
    message_count: int
    sync_mode: str
    config: dict[str, Any]
    capabilities: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("status_at", "created_at", "last_sync_at"):
            v = d[k]
            d[k] = v.isoformat() if isinstance(v, datetime) else v
        return d


@dataclass
class Transition:
    from_status: str | None
    to_status: str
    reason: str
    at: datetime


def _email_ok(email: str) -> str:
    email = email.strip()
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise ValidationError(f"{email!r} is not an email address")
    return email


class AccountService:
    def __init__(self, db: Database, settings: Settings, box: SecretBox) -> None:
        self.db = db
        self.settings = settings
        self.box = box

    # -- providers for the engine ----------------------------------------------------------------
    def open_provider(self, account_id: str) -> MailProvider:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.provider, accounts.c.config, accounts.c.secret).where(
                    accounts.c.id == account_id
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"no account {account_id}")
        creds = self.box.decrypt_json(row.secret) if row.secret else {}
        for value in creds.values():
            if isinstance(value, str) and value:
                register_secret(value)
        return registry.build_provider(row.provider, row.config, creds, self.settings)

    # -- pairing -------------------------------------------------------------------------------
    def pair_imap(
        self, config: ImapConfig, password: str, *, account_id: str | None = None, headers_only: bool = False
    ) -> AccountView:
        _email_ok(config.email)
        if not password:
            raise ValidationError("a password is required")
        register_secret(password)
        existing = self._find(account_id, "imap", config.email)
        if existing is not None and existing.email.lower() != config.email.lower():
            raise WrongAccount(
                f"account {existing.id} belongs to {existing.email}, not {config.email}: "
                "re-pairing must use the same mailbox"
            )
        provider = registry.build_provider("imap", config.to_dict(), {"password": password}, self.settings)
        try:
            identity, caps = provider.verify()
        finally:
            provider.close()
        smtp_error = (
            check_smtp(config, password, registry.connect_options(self.settings))
            if config.smtp_host
            else "no SMTP server configured"
        )
        capabilities = {**caps.server_facts(), "can_send": smtp_error is None, "smtp_error": smtp_error}
        secret = self.box.encrypt({"password": password})
        at = now()
        with self.db.engine.begin() as conn:
            if existing is not None:
                conn.execute(
                    update(accounts)
                    .where(accounts.c.id == existing.id)
                    .values(
                        config=config.to_dict(),
                        secret=secret,
                        capabilities=capabilities,
                        failures=0,
                        last_error=None,
                        next_attempt_at=None,
                    )
                )
                transition(conn, existing.id, AccountStatus.PENDING, "re-paired", user_action=True)
                new_id = existing.id
            else:
                new_id = uuid.uuid4().hex[:16]
                conn.execute(
                    insert(accounts).values(
                        id=new_id,
                        provider="imap",
                        email=identity.email,
                        display_name=identity.display_name,
                        status=AccountStatus.PENDING.value,
                        status_reason="paired",
                        status_at=at,
                        config=config.to_dict(),
                        secret=secret,
                        capabilities=capabilities,
                        sync_mode="headers" if headers_only else "full",
                        created_at=at,
                        failures=0,
                    )
                )
                conn.execute(
                    insert(account_transitions).values(
                        account_id=new_id,
                        from_status=None,
                        to_status=AccountStatus.PENDING.value,
                        reason="paired",
                        at=at,
                    )
                )
        return self.get(new_id)

    def _find(self, account_id: str | None, provider: str, email: str) -> AccountView | None:
        if account_id is not None:
            return self.get(account_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.id)
                .where(accounts.c.provider == provider, func.lower(accounts.c.email) == email.lower())
                .order_by(accounts.c.created_at)
            ).first()
        return self.get(row.id) if row else None

    # -- reading -------------------------------------------------------------------------------
    def all(self) -> list[AccountView]:
        with self.db.engine.connect() as conn:
            ids = [r.id for r in conn.execute(select(accounts.c.id).order_by(accounts.c.created_at))]
        return [self.get(i) for i in ids]

    def get(self, account_id: str) -> AccountView:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one_or_none()
            if row is None:
                raise NotFound(f"no account {account_id}")
            count = mailstore.count_messages(conn, account_id)
        return AccountView(
            id=row.id,
            provider=row.provider,
            email=row.email,
            status=row.status,
            status_reason=row.status_reason,
            status_at=row.status_at,
            created_at=row.created_at,
            last_sync_at=row.last_sync_at,
            last_error=row.last_error,
            message_count=int(count),
            sync_mode=row.sync_mode,
            config=dict(row.config or {}),
            capabilities=row.capabilities,
        )

    def transitions(self, account_id: str) -> list[Transition]:
        self.get(account_id)
        with self.db.engine.connect() as conn:
            return [
                Transition(r.from_status, r.to_status, r.reason, r.at)
                for r in conn.execute(
                    select(account_transitions)
                    .where(account_transitions.c.account_id == account_id)
                    .order_by(account_transitions.c.id)
                )
            ]

    def folders(self, account_id: str) -> list[dict[str, Any]]:
        self.get(account_id)
        with self.db.engine.connect() as conn:
            return [
                {"key": r.key, "name": r.name, "role": r.role, "synced_at": r.synced_at}
                for r in conn.execute(
                    select(folders).where(folders.c.account_id == account_id, folders.c.gone.is_(False))
                )
            ]

    # -- unpairing -----------------------------------------------------------------------------
    def unpair(self, account_id: str) -> AccountView:
        """Stop syncing and forget the credentials. The mail already synced stays."""
        self.get(account_id)
        with self.db.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(secret=None))
            transition(conn, account_id, AccountStatus.DISCONNECTED, "unpaired by the user", user_action=True)
        return self.get(account_id)
