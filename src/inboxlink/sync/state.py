"""The account state machine (DESIGN §5).

    pending ──> syncing ──> connected
                  ^  │          │
                  │  └──────────┤   connected ⇄ syncing (every sync run)
                  └─────────────┘
    any ──> auth_error      credentials rejected / revoked / password changed. Unpaired until the
                            user pairs again; all data kept. Only re-pairing leaves this state.
    any ──> connect_error   server unreachable after backoff; retried automatically (-> syncing).
    any ──> unsupported     the server is too old to be supported (e.g. Exchange before SE).
    any ──> disconnected    the user unpaired it; only re-pairing leaves this state.

Every transition is a row in `account_transitions` with its reason and time, and an
`account.status_changed` event in the same transaction (outbound/events.py; free when no webhook
listens). A transition to the same state with a new reason is recorded too (the reason
changed); one with the same reason is not.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from inboxlink.domain import AccountStatus as S
from inboxlink.outbound import events
from inboxlink.store.schema import account_transitions, accounts

# From each state, where a *sync run* may take an account. Pairing/re-pairing and unpairing are
# explicit user actions and may leave any state (see `repair` / `unpair` callers).
ALLOWED: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.SYNCING, S.AUTH_ERROR, S.CONNECT_ERROR, S.UNSUPPORTED, S.DISCONNECTED}),
    S.SYNCING: frozenset({S.CONNECTED, S.AUTH_ERROR, S.CONNECT_ERROR, S.UNSUPPORTED, S.DISCONNECTED}),
    S.CONNECTED: frozenset({S.SYNCING, S.AUTH_ERROR, S.CONNECT_ERROR, S.UNSUPPORTED, S.DISCONNECTED}),
    S.CONNECT_ERROR: frozenset({S.SYNCING, S.AUTH_ERROR, S.UNSUPPORTED, S.DISCONNECTED}),
    S.AUTH_ERROR: frozenset({S.DISCONNECTED}),
    S.UNSUPPORTED: frozenset({S.DISCONNECTED}),
    S.DISCONNECTED: frozenset(),
}

# States from which a sync run may start.
SYNCABLE = frozenset({S.PENDING, S.CONNECTED, S.SYNCING, S.CONNECT_ERROR})


class IllegalTransition(Exception):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def transition(conn: Connection, account_id: str, to: S, reason: str, *, user_action: bool = False) -> bool:
    """Move the account to `to`, recording why. Returns False when nothing changed.

    `user_action=True` is for pairing, re-pairing and unpairing, which may leave any state."""
    row = conn.execute(
        select(accounts.c.status, accounts.c.status_reason, accounts.c.email).where(
            accounts.c.id == account_id
        )
    ).one()
    current = S(row.status)
    if current == to and row.status_reason == reason:
        return False
    if current != to and not user_action and to not in ALLOWED[current]:
        raise IllegalTransition(f"account {account_id}: {current} -> {to} is not allowed ({reason})")
    at = now()
    conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(status=to.value, status_reason=reason, status_at=at)
    )
    _record(conn, account_id, row.email, current, to, reason, at)
    return True


def open_account(conn: Connection, *, provider: str, email: str, **values: Any) -> str:
    """Insert a newly paired account in `pending` and record that first transition (from nothing)
    like every later one: a row in `account_transitions` and an `account.status_changed` event."""
    account_id = uuid.uuid4().hex[:16]
    at = now()
    conn.execute(
        insert(accounts).values(
            id=account_id,
            provider=provider,
            email=email,
            status=S.PENDING.value,
            status_reason="paired",
            status_at=at,
            created_at=at,
            failures=0,
            **values,
        )
    )
    _record(conn, account_id, email, None, S.PENDING, "paired", at)
    return account_id


def _record(
    conn: Connection, account_id: str, email: str, current: S | None, to: S, reason: str, at: datetime
) -> None:
    conn.execute(
        insert(account_transitions).values(
            account_id=account_id,
            from_status=current.value if current else None,
            to_status=to.value,
            reason=reason,
            at=at,
        )
    )
    events.emit(
        conn,
        events.ACCOUNT_STATUS_CHANGED,
        {
            "account_id": account_id,
            "email": email,
            "from": current.value if current else None,
            "to": to.value,
            "reason": reason,
            "at": at,
        },
    )
