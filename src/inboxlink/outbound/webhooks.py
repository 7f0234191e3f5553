"""Webhooks: endpoints, and the durable, signed, retried delivery of events to them.

    event_outbox (outbound/events.py, committed with the change)
        │ dispatch: one webhook_deliveries row per (event, enabled subscribed endpoint that
        │           existed when the event was emitted); the event is marked dispatched
        v
    delivery: pending ──claim (lease)──> POST ──2xx──────────────> succeeded
                 ^                          ├──410 Gone───────────> failed, endpoint disabled
                 └──── backoff + jitter ────┴──other / no answer──> pending again, or failed
                                                                   after MAX_ATTEMPTS

Durable and at least once. Every state lives in the database; `deliver_due` (called by serve's
`WebhookLoop`, or later by a task queue) dispatches new events and then sends what is due. A process
claims a delivery by writing its lease (`lease_owner` host:pid:nonce, `lease_until`) with a
compare-and-set UPDATE, so two processes never send the same delivery at the same time. If it dies
mid-send, another process takes the delivery over when the lease expires (at once when the holder
was a process of the same machine that no longer runs) and sends it again: the receiver may see an
event twice, always with the same ``Inboxlink-Event-Id``, which is its idempotency key.

A request. ``POST <url>`` with the JSON body ``{"id", "type", "created_at", "data"}`` and

    Inboxlink-Event-Id:   evt_...   (the same on every retry)
    Inboxlink-Timestamp:  unix seconds when this attempt was signed
    Inboxlink-Signature:  v1=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>

Receivers check it with `verify_signature` (standard library only, meant to be copied): recompute
the HMAC over the raw body bytes, compare in constant time, refuse timestamps older than 5 minutes
(replays), and skip event ids they have already processed. The header may carry several
comma-separated ``v1=`` values (room for secret rotation); one match is enough.

Retries. Attempt n+1 comes `backoff_seconds(n)` after attempt n fails: 30 s × 4ⁿ⁻¹ capped at 12 h,
±20 % jitter — 30 s, 2 min, 8 min, 32 min, 2.1 h, 8.5 h, 12 h: eight attempts over about a day.
2xx is success; 410 Gone disables the endpoint (its pending deliveries wait until it is enabled
again); anything else (other statuses, redirects, timeouts, refused connections) is retried.
Events whose deliveries are all done are deleted after `RETENTION_DAYS` (`Deliverer.prune`, run
hourly by `WebhookLoop`).

Where requests go. Endpoint URLs are user input: they pass `auth.netguard` when saved and again
before every attempt, and the socket is opened to the addresses that were checked (a second DNS
answer cannot redirect it); redirects are never followed. The secret is generated here
(``whsec_`` + 32 random bytes), returned once on creation and stored only as a Fernet token.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from inboxlink.auth.netguard import check_url, check_url_target
from inboxlink.auth.secrets import SecretBox
from inboxlink.config import Settings
from inboxlink.errors import Conflict, InboxlinkError, NotFound, ValidationError
from inboxlink.outbound import events
from inboxlink.store.db import Database
from inboxlink.store.schema import event_outbox, webhook_deliveries, webhook_endpoints
from inboxlink.sync.holders import holder_is_dead, new_holder

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "Inboxlink-Event-Id"
TIMESTAMP_HEADER = "Inboxlink-Timestamp"
SIGNATURE_HEADER = "Inboxlink-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300

MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_FACTOR = 4.0
BACKOFF_CAP_SECONDS = 12 * 3600.0
BACKOFF_JITTER = 0.2
REQUEST_TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 120  # > a request's worst case (connect + send + read timeouts)
MAX_URL_LENGTH = 2048
RETENTION_DAYS = 30  # events (and their deliveries) kept after they are done
PRUNE_EVERY_SECONDS = 3600.0

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


# -- signatures ---------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Inboxlink-Signature`` header value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a webhook request is authentic. For receivers; uses only the standard library
    (``hashlib``, ``hmac``, ``time``), so it can be copied as is.

    `body` is the raw request body (bytes, before any JSON parsing), `timestamp` and `signature`
    the ``Inboxlink-Timestamp`` and ``Inboxlink-Signature`` headers, `secret` the endpoint's secret
    (``whsec_...``, shown once when the endpoint was created)."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance:
        return False  # a replay of an old request, or a badly wrong clock
    expected = hmac.new(
        secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256
    ).hexdigest()
    for part in signature.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(value.encode("ascii", "replace"), expected.encode("ascii")):
            return True
    return False


def backoff_seconds(attempts: int, *, rng: Callable[[], float] = random.random) -> float:
    """Delay before the next attempt after `attempts` failed ones (1-based), with ±20 % jitter."""
    base = min(BACKOFF_BASE_SECONDS * BACKOFF_FACTOR ** max(attempts - 1, 0), BACKOFF_CAP_SECONDS)
    return base * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * rng())


# -- endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointView:
    id: str
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeliveryView:
    id: int
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookService:
    """Endpoints: create (the secret is returned once), list, show, change, delete; their
    deliveries; a test event."""

    def __init__(self, db: Database, box: SecretBox, settings: Settings) -> None:
        self.db = db
        self.box = box
        self.settings = settings

    def create(
        self, url: str, event_types: Sequence[str], *, description: str | None = None, enabled: bool = True
    ) -> tuple[EndpointView, str]:
        """The new endpoint and its signing secret (not retrievable later)."""
        url = self._check_url(url)
        types = _event_types(event_types)
        secret = "whsec_" + secrets.token_urlsafe(32)
        at = _now()
        endpoint_id = "wh_" + uuid.uuid4().hex[:16]
        with self.db.engine.begin() as conn:
            conn.execute(
                insert(webhook_endpoints).values(
                    id=endpoint_id,
                    url=url,
                    event_types=types,
                    description=description,
                    enabled=enabled,
                    secret=self.box.encrypt(secret),
                    created_at=at,
                    updated_at=at,
                )
            )
        events.invalidate_subscriptions(self.db.engine)
        return self.get(endpoint_id), secret

    def all(self) -> list[EndpointView]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(_ENDPOINT_SELECT.order_by(webhook_endpoints.c.created_at)).all()
        return [_endpoint_view(r) for r in rows]

    def get(self, endpoint_id: str) -> EndpointView:
        with self.db.engine.connect() as conn:
            row = conn.execute(_ENDPOINT_SELECT.where(webhook_endpoints.c.id == endpoint_id)).one_or_none()
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return _endpoint_view(row)

    def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> EndpointView:
        """Change what is given (None: unchanged; description "" clears it). Enabling clears the
        reason it was disabled; its pending deliveries then resume."""
        self.get(endpoint_id)
        values: dict[str, Any] = {"updated_at": _now()}
        if url is not None:
            values["url"] = self._check_url(url)
        if event_types is not None:
            values["event_types"] = _event_types(event_types)
        if description is not None:
            values["description"] = description or None
        if enabled is not None:
            values["enabled"] = enabled
            values["disabled_reason"] = None if enabled else "disabled by the user"
        with self.db.engine.begin() as conn:
            conn.execute(
                update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id).values(values)
            )
        events.invalidate_subscriptions(self.db.engine)
        return self.get(endpoint_id)

    def delete(self, endpoint_id: str) -> None:
        """Delete the endpoint and its deliveries (events stay for other endpoints)."""
        with self.db.engine.begin() as conn:
            gone = conn.execute(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id))
        events.invalidate_subscriptions(self.db.engine)
        if gone.rowcount == 0:
            raise NotFound(f"no webhook endpoint {endpoint_id}")

    def deliveries(
        self, endpoint_id: str, *, limit: int = 50, status: str | None = None
    ) -> list[DeliveryView]:
        """The endpoint's deliveries, newest first."""
        self.get(endpoint_id)
        query = _DELIVERY_SELECT.where(webhook_deliveries.c.endpoint_id == endpoint_id)
        if status is not None:
            query = query.where(webhook_deliveries.c.status == status)
        with self.db.engine.connect() as conn:
            rows = conn.execute(query.order_by(webhook_deliveries.c.id.desc()).limit(limit)).all()
        return [_delivery_view(r) for r in rows]

    def delivery(self, delivery_id: int) -> DeliveryView:
        with self.db.engine.connect() as conn:
            row = conn.execute(_DELIVERY_SELECT.where(webhook_deliveries.c.id == delivery_id)).one_or_none()
        if row is None:
            raise NotFound(f"no webhook delivery {delivery_id}")
        return _delivery_view(row)

    def send_test(self, endpoint_id: str) -> DeliveryView:
        """Send a `webhook.test` event to this endpoint now; the delivery after that first attempt
        (retried like any other when it failed)."""
        endpoint = self.get(endpoint_id)
        if not endpoint.enabled:
            raise Conflict(f"webhook endpoint {endpoint_id} is disabled; enable it first")
        at = _now()
        event_id = events.new_event_id()
        data = {"endpoint_id": endpoint_id, "message": "This is a test event from inboxlink."}
        with self.db.engine.begin() as conn:
            conn.execute(
                insert(event_outbox).values(
                    id=event_id, type=events.WEBHOOK_TEST, data=data, created_at=at, dispatched_at=at
                )
            )
            inserted = conn.execute(
                insert(webhook_deliveries).values(
                    event_id=event_id,
                    endpoint_id=endpoint_id,
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=at,
                    created_at=at,
                )
            ).inserted_primary_key
            assert inserted is not None
            delivery_id = int(inserted[0])
        Deliverer(self.db, self.box, DeliveryOptions.of(self.settings)).deliver_due(only=[delivery_id])
        return self.delivery(delivery_id)

    def _check_url(self, url: str) -> str:
        if len(url) > MAX_URL_LENGTH:
            raise ValidationError(f"URL is longer than {MAX_URL_LENGTH} characters")
        return check_url(url, allow_private=self.settings.allow_private_hosts)


def _event_types(types: Sequence[str]) -> list[str]:
    if not types:
        raise ValidationError("subscribe to at least one event type (or '*' for all)")
    for t in types:
        if t != events.ALL and t not in events.EVENT_TYPES:
            known = ", ".join(sorted(events.EVENT_TYPES))
            raise ValidationError(f"unknown event type {t!r}; known: {known}, or '*'", event_type=t)
    return sorted(set(types))


_ENDPOINT_SELECT = select(
    webhook_endpoints.c.id,
    webhook_endpoints.c.url,
    webhook_endpoints.c.event_types,
    webhook_endpoints.c.description,
    webhook_endpoints.c.enabled,
    webhook_endpoints.c.disabled_reason,
    webhook_endpoints.c.created_at,
    webhook_endpoints.c.updated_at,
)

_DELIVERY_SELECT = select(
    webhook_deliveries.c.id,
    webhook_deliveries.c.event_id,
    event_outbox.c.type.label("event_type"),
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.status,
    webhook_deliveries.c.attempts,
    webhook_deliveries.c.next_attempt_at,
    webhook_deliveries.c.last_attempt_at,
    webhook_deliveries.c.last_status_code,
    webhook_deliveries.c.last_error,
    webhook_deliveries.c.created_at,
    webhook_deliveries.c.delivered_at,
).join_from(webhook_deliveries, event_outbox, webhook_deliveries.c.event_id == event_outbox.c.id)


def _endpoint_view(r: Any) -> EndpointView:
    return EndpointView(
        id=r.id,
        url=r.url,
        event_types=list(r.event_types),
        description=r.description,
        enabled=bool(r.enabled),
        disabled_reason=r.disabled_reason,
        created_at=_aware(r.created_at),
        updated_at=_aware(r.updated_at),
    )


def _delivery_view(r: Any) -> DeliveryView:
    return DeliveryView(
        id=int(r.id),
        event_id=r.event_id,
        event_type=r.event_type,
        endpoint_id=r.endpoint_id,
        status=r.status,
        attempts=int(r.attempts),
        next_attempt_at=_aware_or_none(r.next_attempt_at),
        last_attempt_at=_aware_or_none(r.last_attempt_at),
        last_status_code=r.last_status_code,
        last_error=r.last_error,
        created_at=_aware(r.created_at),
        delivered_at=_aware_or_none(r.delivered_at),
    )


# -- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOptions:
    allow_private_hosts: bool = False
    ca_file: str | None = None
    timeout: float = REQUEST_TIMEOUT_SECONDS
    max_attempts: int = MAX_ATTEMPTS
    batch: int = 50  # deliveries claimed per pass
    workers: int = 4  # concurrent requests per pass

    @classmethod
    def of(cls, settings: Settings) -> DeliveryOptions:
        return cls(allow_private_hosts=settings.allow_private_hosts, ca_file=settings.tls_ca_file)


@dataclass
class DeliveryReport:
    dispatched: int = 0  # events fanned out into deliveries
    attempted: int = 0
    succeeded: int = 0
    retrying: int = 0
    failed: int = 0  # gave up (attempts exhausted, or 410)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, outcome: str) -> None:
        with self._lock:
            self.attempted += 1
            setattr(self, outcome, getattr(self, outcome) + 1)


@dataclass(frozen=True)
class _Claimed:
    id: int
    attempts: int
    endpoint_id: str
    url: str
    secret_token: str
    event_id: str
    event_type: str
    event_data: Any
    event_created_at: datetime


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str | None


def deliver_due(
    db: Database, box: SecretBox, settings: Settings, *, now: datetime | None = None
) -> DeliveryReport:
    """One pass: dispatch new events, then send the deliveries that are due. For task queues."""
    return Deliverer(db, box, DeliveryOptions.of(settings)).deliver_due(now=now)


class Deliverer:
    """Sends deliveries as one lease owner (this process, or one thread of it)."""

    def __init__(self, db: Database, box: SecretBox, options: DeliveryOptions) -> None:
        self.db = db
        self.box = box
        self.options = options
        self.owner = new_holder()

    def deliver_due(
        self, *, now: datetime | None = None, only: Sequence[int] | None = None
    ) -> DeliveryReport:
        """Dispatch new events, claim up to `options.batch` due deliveries and send them.
        `now` moves the schedule's clock (the signature timestamp is always the real time);
        `only` restricts the pass to those deliveries (and skips dispatching)."""
        at = now or _now()
        report = DeliveryReport()
        if only is None:
            report.dispatched = self.dispatch(at)
        claimed = self._claim(at, only)
        if len(claimed) <= 1 or self.options.workers <= 1:
            for c in claimed:
                self._attempt(c, at, report)
        else:
            with ThreadPoolExecutor(
                max_workers=min(self.options.workers, len(claimed)), thread_name_prefix="webhook"
            ) as pool:
                for future in [pool.submit(self._attempt, c, at, report) for c in claimed]:
                    future.result()
        return report

    # -- dispatch
    def dispatch(self, at: datetime, *, limit: int = 500) -> int:
        """Fan undispatched events out into deliveries; how many events were dispatched.

        Reads first, then writes in a transaction that starts with a write: on SQLite a read
        transaction upgraded to a write fails at once when another process wrote in between."""
        with self.db.engine.connect() as conn:
            pending = conn.execute(
                select(event_outbox.c.id, event_outbox.c.type, event_outbox.c.created_at)
                .where(event_outbox.c.dispatched_at.is_(None))
                .order_by(event_outbox.c.created_at)
                .limit(limit)
            ).all()
            if not pending:
                return 0
            endpoints = conn.execute(
                select(
                    webhook_endpoints.c.id, webhook_endpoints.c.event_types, webhook_endpoints.c.created_at
                ).where(webhook_endpoints.c.enabled.is_(True))
            ).all()
        rows = [
            {
                "event_id": ev.id,
                "endpoint_id": ep.id,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": at,
                "created_at": at,
            }
            for ev in pending
            for ep in endpoints
            if _wants(ep.event_types, ev.type) and _aware(ep.created_at) <= _aware(ev.created_at)
        ]
        with self.db.engine.begin() as conn:
            conn.execute(
                update(event_outbox)
                .where(event_outbox.c.id.in_([ev.id for ev in pending]))
                .values(dispatched_at=at)
            )
            if rows:  # a concurrent dispatcher may have inserted some: those are skipped
                conn.execute(_insert_ignoring_duplicates(conn), rows)
        return len(pending)

    def prune(
        self, *, older_than: timedelta = timedelta(days=RETENTION_DAYS), now: datetime | None = None
    ) -> int:
        """Delete events older than `older_than` with no delivery still pending (their deliveries
        go with them); how many events were deleted."""
        cutoff = (now or _now()) - older_than
        d = webhook_deliveries
        still_pending = (
            select(d.c.id).where(d.c.event_id == event_outbox.c.id, d.c.status == PENDING).exists()
        )
        with self.db.engine.begin() as conn:
            gone = conn.execute(
                delete(event_outbox).where(
                    event_outbox.c.dispatched_at.is_not(None),
                    event_outbox.c.created_at < cutoff,
                    ~still_pending,
                )
            )
        return int(gone.rowcount)

    # -- claim
    def _claim(self, at: datetime, only: Sequence[int] | None) -> list[_Claimed]:
        d = webhook_deliveries
        local = socket.gethostname() + ":"
        query = (
            select(d.c.id, d.c.lease_owner, d.c.lease_until)
            .join_from(d, webhook_endpoints, d.c.endpoint_id == webhook_endpoints.c.id)
            .where(
                d.c.status == PENDING,
                d.c.next_attempt_at <= at,
                webhook_endpoints.c.enabled.is_(True),
                d.c.lease_until.is_(None)
                | (d.c.lease_until < at)
                # leases of this machine's processes: taken over at once if their holder died
                | ((func.substr(d.c.lease_owner, 1, len(local)) == local) & (d.c.lease_owner != self.owner)),
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(self.options.batch * 2)
        )
        if only is not None:
            query = query.where(d.c.id.in_(list(only)))
        claim = {
            "lease_owner": self.owner,
            "lease_until": at + timedelta(seconds=LEASE_SECONDS),
            "attempts": d.c.attempts + 1,
        }
        with self.db.engine.connect() as conn:
            candidates = conn.execute(query).all()
        claimable = []
        for row in candidates:
            if row.lease_until is None or _aware(row.lease_until) < at:
                claimable.append((row.id, d.c.lease_until.is_(None) | (d.c.lease_until < at)))
            elif row.lease_owner and holder_is_dead(row.lease_owner):
                claimable.append((row.id, d.c.lease_owner == row.lease_owner))
            # else another live process is sending it right now
        if not claimable:
            return []
        ids: list[int] = []
        # compare-and-set: of two processes claiming one row, the second updates nothing
        with self.db.engine.begin() as conn:
            for delivery_id, free in claimable[: self.options.batch]:
                won = conn.execute(
                    update(d).where(d.c.id == delivery_id, d.c.status == PENDING, free).values(claim)
                ).rowcount
                if won == 1:
                    ids.append(int(delivery_id))
            if not ids:
                return []
            rows = conn.execute(
                select(
                    d.c.id,
                    d.c.attempts,
                    d.c.endpoint_id,
                    webhook_endpoints.c.url,
                    webhook_endpoints.c.secret,
                    event_outbox.c.id.label("event_id"),
                    event_outbox.c.type,
                    event_outbox.c.data,
                    event_outbox.c.created_at,
                )
                .join_from(d, webhook_endpoints, d.c.endpoint_id == webhook_endpoints.c.id)
                .join(event_outbox, d.c.event_id == event_outbox.c.id)
                .where(d.c.id.in_(ids))
                .order_by(d.c.next_attempt_at, d.c.id)
            ).all()
        return [
            _Claimed(
                id=int(r.id),
                attempts=int(r.attempts),
                endpoint_id=r.endpoint_id,
                url=r.url,
                secret_token=r.secret,
                event_id=r.event_id,
                event_type=r.type,
                event_data=r.data,
                event_created_at=_aware(r.created_at),
            )
            for r in rows
        ]

    # -- attempt
    def _attempt(self, c: _Claimed, at: datetime, report: DeliveryReport) -> None:
        started = _now()
        outcome = self._send(c)
        # the schedule's clock when the attempt ended: attempt n+1 comes a backoff after attempt n
        # failed, not after it began (a 10 s time-out would eat a third of a 30 s backoff)
        ended = at + (_now() - started)
        d = webhook_deliveries
        values: dict[str, Any] = {
            "last_attempt_at": _now(),
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "lease_owner": None,
            "lease_until": None,
        }
        code = outcome.status_code
        gone = code == 410
        if code is not None and 200 <= code < 300:
            values.update(status=SUCCEEDED, next_attempt_at=None, delivered_at=values["last_attempt_at"])
            result = "succeeded"
        elif gone or c.attempts >= self.options.max_attempts:
            values.update(status=FAILED, next_attempt_at=None)
            result = "failed"
        else:
            values.update(next_attempt_at=ended + timedelta(seconds=backoff_seconds(c.attempts)))
            result = "retrying"
        with self.db.engine.begin() as conn:
            conn.execute(update(d).where(d.c.id == c.id, d.c.lease_owner == self.owner).values(values))
            if gone:
                conn.execute(
                    update(webhook_endpoints)
                    .where(webhook_endpoints.c.id == c.endpoint_id)
                    .values(
                        enabled=False,
                        disabled_reason="the receiver answered 410 Gone",
                        updated_at=values["last_attempt_at"],
                    )
                )
        if gone:
            events.invalidate_subscriptions(self.db.engine)
            log.warning("webhook endpoint %s answered 410 Gone: disabled", c.endpoint_id)
        elif result != "succeeded":
            log.info(
                "webhook delivery %d to endpoint %s, attempt %d: %s",
                c.id,
                c.endpoint_id,
                c.attempts,
                outcome.error,
            )
        report.count(result)

    def _send(self, c: _Claimed) -> _Outcome:
        body = json.dumps(
            {
                "id": c.event_id,
                "type": c.event_type,
                "created_at": c.event_created_at.isoformat(),
                "data": c.event_data,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        try:
            secret = self.box.decrypt(c.secret_token).decode("utf-8")
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "inboxlink-webhooks/1",
                EVENT_ID_HEADER: c.event_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
            }
            status, reply = _post(c.url, body, headers, self.options)
        except InboxlinkError as exc:  # refused by the guard, name does not resolve, key missing
            return _Outcome(None, exc.message)
        except (OSError, http.client.HTTPException) as exc:
            return _Outcome(None, _describe(exc))
        if 200 <= status < 300:
            return _Outcome(status, None)
        snippet = reply.decode("utf-8", "replace").strip()[:200]
        return _Outcome(status, f"HTTP {status}" + (f": {snippet}" if snippet else ""))


def _wants(event_types: Any, type: str) -> bool:
    listed = set(event_types or ())
    return type in listed or (events.ALL in listed and type in events.EVENT_TYPES)


def _insert_ignoring_duplicates(conn: Connection) -> Any:
    """INSERT that skips (event, endpoint) pairs another dispatcher inserted concurrently."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(webhook_deliveries).on_conflict_do_nothing()
    return sqlite.insert(webhook_deliveries).on_conflict_do_nothing()


# -- HTTP to checked addresses only -------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address netguard checked, whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)  # SNI + cert name


_tls_lock = threading.Lock()
_tls_contexts: dict[str | None, ssl.SSLContext] = {}


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    with _tls_lock:
        context = _tls_contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context()
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            _tls_contexts[ca_file] = context
        return context


def _post(url: str, body: bytes, headers: dict[str, str], options: DeliveryOptions) -> tuple[int, bytes]:
    target = check_url_target(url, allow_private=options.allow_private_hosts)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    last: OSError | None = None
    for address in target.addresses:
        conn: _PinnedHTTPConnection
        if parts.scheme.lower() == "https":
            context = _tls_context(options.ca_file)
            conn = _PinnedHTTPSConnection(target.host, target.port, address, options.timeout, context)
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, address, options.timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:  # try the next checked address
                last = exc
                continue
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(1024)
        finally:
            conn.close()
    assert last is not None  # check_url_target returns at least one address
    raise last


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer within the timeout"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


# -- serve's background loop --------------------------------------------------------------------


class WebhookLoop:
    """Runs `Deliverer.deliver_due` in a thread of `serve`: woken when this process commits
    events, and at least every `tick` seconds (for other processes' events and retries)."""

    def __init__(self, db: Database, box: SecretBox, settings: Settings, *, tick: float = 2.0) -> None:
        self.deliverer = Deliverer(db, box, DeliveryOptions.of(settings))
        self.tick = tick
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)

    def start(self) -> None:
        self._unsubscribe = events.on_events_committed(self.deliverer.db.engine, self._wake.set)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS * 2)
        if self._unsubscribe is not None:
            self._unsubscribe()

    def _loop(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.is_set():
            self._wake.clear()
            busy = False
            try:
                report = self.deliverer.deliver_due()
                busy = report.attempted >= self.deliverer.options.batch
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                    self.deliverer.prune()
            except Exception:
                log.exception("webhook delivery pass failed")
            if not busy:
                self._wake.wait(self.tick)


# -- helpers ------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)
