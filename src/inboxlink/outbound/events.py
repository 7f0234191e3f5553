"""The events outbox: what happened, written in the same transaction as the change itself.

    caller's transaction:  change rows ... + emit(conn, type, data)  ──commit──>  event_outbox row
    outbound/webhooks.py:  event_outbox ──fan out──> webhook_deliveries ──POST, retries──> receivers

An event exists if and only if its change committed: `emit` never commits, never talks to the
network, and a rollback takes the event with it. Each event gets a stable id (``evt_`` + 32 hex)
at emit time; every delivery attempt carries it, so it is the receivers' idempotency key.

Cheap when nobody listens. Emitting is on the sync hot path, so `emit` first asks a per-process
cache which event types some enabled endpoint subscribes to; an unsubscribed type costs a dict
lookup and writes nothing. The cache is refreshed every `SUBSCRIPTION_TTL_SECONDS` and dropped at
once when this process changes an endpoint (`invalidate_subscriptions`). Another process (a second
`serve`, a CLI sync) sees an endpoint change within the TTL: an endpoint receives the events emitted
after its creation, give or take those few seconds in other processes.

Event types and their `data` (the receiver gets ``{"id", "type", "created_at", "data"}``; times are
ISO 8601 in UTC; ids are strings except message ids, which are integers):

``account.status_changed`` (emitted by `sync.state.transition` and `sync.state.open_account`)
    ``{"account_id", "email", "from", "to", "reason", "at"}`` — from/to are account statuses
    (pending, syncing, connected, auth_error, connect_error, unsupported, disconnected); ``from``
    is null for a newly paired account.
``message.created`` (a message stored for the first time: synced, or sent through the outbox)
    ``{"account_id", "id", "message_id", "subject", "from": {"email", "name"}, "date"}`` — ``id`` is
    inboxlink's message id, ``message_id`` the RFC 5322 Message-ID without angle brackets.
``message.linked`` (a message linked to a CRM record)
    ``{"account_id", "id", "message_id", "record": {"type", "id"}, "rule", "evidence"}`` — ``rule``
    names the linking rule that matched, ``evidence`` what it matched on (e.g. an address).
``message.sent`` (an outbox message accepted by the mail server)
    ``{"outbox_id", "account_id", "message_id", "recipients": {"to": [...], "cc": [...],
    "bcc": [...]}}`` — recipients as ``{"email", "name"}`` objects.
``webhook.test``
    ``{"endpoint_id", "message"}`` — sent to one endpoint by ``POST /api/v1/webhooks/{id}/test``.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select

from inboxlink.store.schema import event_outbox, webhook_endpoints

ACCOUNT_STATUS_CHANGED = "account.status_changed"
MESSAGE_CREATED = "message.created"
MESSAGE_LINKED = "message.linked"
MESSAGE_SENT = "message.sent"
WEBHOOK_TEST = "webhook.test"

# What an endpoint may subscribe to; "*" means all of them. `webhook.test` is never broadcast.
EVENT_TYPES = frozenset({ACCOUNT_STATUS_CHANGED, MESSAGE_CREATED, MESSAGE_LINKED, MESSAGE_SENT})
ALL = "*"

SUBSCRIPTION_TTL_SECONDS = 5.0

_PENDING_KEY = "inboxlink.events_pending"


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def message_created(account_id: str, message_row: int, prepared: Sequence[Any]) -> dict[str, Any]:
    """The `message.created` payload of a message just stored, from its prepared row
    (`sync.prepare.Prepared`: message-id, subject, from email and name, date as stored). Synced and
    sent mail alike."""
    return {
        "account_id": account_id,
        "id": message_row,
        "message_id": prepared[1],
        "subject": prepared[2],
        "from": {"email": prepared[3], "name": prepared[4]},
        "date": _stored_iso(prepared[5]),
    }


def _stored_iso(value: Any) -> str | None:
    """A stored datetime (SQLite text in UTC, or an aware datetime) as ISO 8601."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.replace(" ", "T") + "+00:00"
    return str(value.isoformat())


def emit(conn: Connection, type: str, data: Mapping[str, Any]) -> str | None:
    """Record one event in the caller's transaction; its id, or None when nobody subscribes."""
    ids = emit_many(conn, type, (data,))
    return ids[0] if ids else None


def emit_many(conn: Connection, type: str, datas: Iterable[Mapping[str, Any]]) -> list[str]:
    """Record events of one type in the caller's transaction (one bulk insert); their ids, or an
    empty list when no enabled endpoint subscribes to `type` (nothing is written then)."""
    if not is_subscribed(conn, type):
        return []
    at = datetime.now(UTC)
    rows = [{"id": new_event_id(), "type": type, "data": jsonable(dict(d)), "created_at": at} for d in datas]
    if not rows:
        return []
    conn.execute(insert(event_outbox), rows)
    conn.info[_PENDING_KEY] = True  # wakes the deliverers of this process once committed
    return [r["id"] for r in rows]


def jsonable(value: Any) -> Any:
    """`value` with datetimes as ISO 8601 (UTC), enums as their values, tuples/sets as lists."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


# -- which types someone listens to -------------------------------------------------------------


@dataclass(frozen=True)
class _Subscriptions:
    types: frozenset[str]
    expires: float


_subscriptions: weakref.WeakKeyDictionary[Engine, _Subscriptions] = weakref.WeakKeyDictionary()


def is_subscribed(conn: Connection, type: str) -> bool:
    """True when some enabled endpoint wants `type` (as of at most `SUBSCRIPTION_TTL_SECONDS` ago)."""
    engine = conn.engine
    entry = _subscriptions.get(engine)
    clock = time.monotonic()
    if entry is None or entry.expires <= clock:
        types: set[str] = set()
        for (listed,) in conn.execute(
            select(webhook_endpoints.c.event_types).where(webhook_endpoints.c.enabled.is_(True))
        ):
            types.update(str(t) for t in listed or ())
        entry = _Subscriptions(frozenset(types), clock + SUBSCRIPTION_TTL_SECONDS)
        _subscriptions[engine] = entry
    return type in entry.types or (ALL in entry.types and type in EVENT_TYPES)


def invalidate_subscriptions(engine: Engine) -> None:
    """Forget the cached subscriptions of `engine` (after an endpoint changed in this process)."""
    _subscriptions.pop(engine, None)


# -- waking deliverers when events commit -------------------------------------------------------
# `commit` fires before the database has committed, so it only marks the connection; the wake-up
# happens when the connection goes back to the pool, after the commit is durable.

_COMMITTED_KEY = "inboxlink.events_committed"
_listeners_lock = threading.Lock()
_listeners: weakref.WeakKeyDictionary[Engine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


def on_events_committed(engine: Engine, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` after a transaction on `engine` that wrote events has committed and its
    connection was returned; returns the unsubscriber.

    Only a hint to deliver sooner: deliverers also poll, and see other processes' events that way."""
    with _listeners_lock:
        callbacks = _listeners.get(engine)
        if callbacks is None:
            callbacks = _listeners[engine] = []
            _install(engine, callbacks)
        callbacks.append(callback)

    def remove() -> None:
        with _listeners_lock:
            if callback in callbacks:
                callbacks.remove(callback)

    return remove


def _install(engine: Engine, callbacks: list[Callable[[], None]]) -> None:
    def committed(conn: Connection) -> None:
        if conn.info.pop(_PENDING_KEY, False):
            conn.info[_COMMITTED_KEY] = True

    def rolled_back(conn: Connection) -> None:
        conn.info.pop(_PENDING_KEY, None)

    def checked_in(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(_COMMITTED_KEY, False):
            for callback in list(callbacks):
                callback()

    event.listen(engine, "commit", committed)
    event.listen(engine, "rollback", rolled_back)
    event.listen(engine, "checkin", checked_in)
