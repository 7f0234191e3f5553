"""Webhooks against a real HTTP receiver that checks every signature: an account state change is
delivered signed; failures are retried with growing backoff under the same event id; 410 disables
the endpoint; a delivery process killed mid-request is resumed by another; two deliverers never send
one delivery at once; the network guard; secrets encrypted at rest; the outbox writes nothing when
nobody listens and nothing for a rolled-back change; the REST API; end to end through `serve`.
Each runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.outbound import events
from inboxlink.outbound.webhooks import (
    Deliverer,
    DeliveryOptions,
    WebhookService,
    backoff_seconds,
    sign,
    verify_signature,
)
from inboxlink.runtime import Runtime
from inboxlink.store.schema import accounts, event_outbox, webhook_deliveries, webhook_endpoints
from inboxlink.sync.state import transition
from inboxlink.testing.dovecot import MailUser

SRC = Path(__file__).resolve().parents[1] / "src"


# -- a real receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    """A threaded HTTP server that records each POST, checks its signature with the endpoint's
    secret (as a receiver would: `verify_signature`) and answers with the next scripted status."""

    def __init__(self) -> None:
        self.secret = ""
        self.statuses: list[int] = []  # answered in order; 200 once exhausted
        self.received: list[Received] = []
        self.hold = False  # block each request until `release` is set
        self.release = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = verify_signature(
                    receiver.secret,
                    body,
                    headers.get("inboxlink-timestamp", ""),
                    headers.get("inboxlink-signature", ""),
                )
                with receiver._cond:
                    receiver.received.append(Received(headers, body, verified))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    hold = receiver.hold
                    receiver._cond.notify_all()
                if hold:
                    receiver.release.wait(60)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/inboxlink?source=test"

    def wait_for(self, count: int) -> list[Received]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout=60)
            assert len(self.received) >= count, f"received {len(self.received)} of {count} requests"
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


# -- a runtime on SQLite and PostgreSQL -----------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Settings(home=tmp_path / "home", database_url=url, allow_private_hosts=True)


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.open(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def service(rt: Runtime) -> WebhookService:
    return WebhookService(rt.db, rt.box, rt.settings)


def deliverer(rt: Runtime, **kw: Any) -> Deliverer:
    return Deliverer(rt.db, rt.box, DeliveryOptions(allow_private_hosts=True, **kw))


def subscribe(service: WebhookService, receiver: Receiver, types: list[str] | None = None) -> str:
    view, secret = service.create(receiver.url, types or [events.ACCOUNT_STATUS_CHANGED])
    receiver.secret = secret
    return view.id


def make_account(rt: Runtime) -> str:
    account_id = uuid.uuid4().hex[:16]
    at = datetime.now(UTC)
    with rt.db.engine.begin() as conn:
        conn.execute(
            insert(accounts).values(
                id=account_id,
                provider="imap",
                email=f"{account_id}@example.com",
                status="pending",
                status_reason="paired",
                status_at=at,
                config={},
                created_at=at,
                failures=0,
                sync_mode="full",
            )
        )
    return account_id


def change_status(rt: Runtime, account_id: str, to: AccountStatus, reason: str) -> None:
    with rt.db.engine.begin() as conn:
        assert transition(conn, account_id, to, reason)


def count(rt: Runtime, table: Any) -> int:
    with rt.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- tests ------------------------------------------------------------------------------------------


def test_status_change_is_delivered_signed(rt: Runtime, service: WebhookService, receiver: Receiver) -> None:
    endpoint = subscribe(service, receiver)
    account = make_account(rt)
    change_status(rt, account, AccountStatus.SYNCING, "sync started")
    report = deliverer(rt).deliver_due()
    assert (report.dispatched, report.succeeded) == (1, 1)
    [got] = receiver.wait_for(1)
    assert got.verified
    event = got.json
    assert set(event) == {"id", "type", "created_at", "data"}
    assert event["type"] == "account.status_changed"
    assert got.headers["inboxlink-event-id"] == event["id"] and event["id"].startswith("evt_")
    data = event["data"]
    assert data["account_id"] == account and data["email"] == f"{account}@example.com"
    assert (data["from"], data["to"], data["reason"]) == ("pending", "syncing", "sync started")
    assert datetime.fromisoformat(data["at"]).tzinfo is not None
    [delivery] = service.deliveries(endpoint)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    assert delivery.event_id == event["id"]
    # nothing left to do: a second pass sends nothing
    assert deliverer(rt).deliver_due().attempted == 0
    assert len(receiver.received) == 1


def test_failures_are_retried_with_backoff_under_one_event_id(
    rt: Runtime, service: WebhookService, receiver: Receiver
) -> None:
    endpoint = subscribe(service, receiver)
    change_status(rt, make_account(rt), AccountStatus.SYNCING, "sync started")
    receiver.statuses = [500, 503]
    d = deliverer(rt)
    at = datetime.now(UTC)
    gaps = []
    for attempt in (1, 2):
        assert d.deliver_due(now=at).retrying == 1
        [row] = service.deliveries(endpoint)
        assert (row.status, row.attempts, row.last_status_code) == (
            "pending",
            attempt,
            receiver_code(attempt),
        )
        assert row.next_attempt_at is not None
        gaps.append((row.next_attempt_at - at).total_seconds())
        # not due yet: nothing is sent before the backoff has passed
        assert d.deliver_due(now=row.next_attempt_at - timedelta(seconds=1)).attempted == 0
        at = row.next_attempt_at
    assert 24 <= gaps[0] <= 36 and 96 <= gaps[1] <= 144  # 30 s, then 2 min, ±20 %
    assert d.deliver_due(now=at).succeeded == 1
    [row] = service.deliveries(endpoint)
    assert (row.status, row.attempts, row.last_status_code, row.next_attempt_at) == (
        "succeeded",
        3,
        200,
        None,
    )
    got = receiver.wait_for(3)
    assert len(got) == 3 and all(r.verified for r in got)
    assert len({r.headers["inboxlink-event-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1  # the same event, byte for byte


def receiver_code(attempt: int) -> int:
    return {1: 500, 2: 503}[attempt]


def test_gives_up_after_the_last_attempt(rt: Runtime, service: WebhookService, receiver: Receiver) -> None:
    endpoint = subscribe(service, receiver)
    change_status(rt, make_account(rt), AccountStatus.SYNCING, "sync started")
    receiver.statuses = [500] * 10
    d = deliverer(rt, max_attempts=4)
    at = datetime.now(UTC)
    for _ in range(4):
        d.deliver_due(now=at)
        [row] = service.deliveries(endpoint)
        at = row.next_attempt_at or at
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 4, None)
    assert row.last_error is not None and row.last_error.startswith("HTTP 500")
    assert d.deliver_due(now=at + timedelta(days=30)).attempted == 0
    assert len(receiver.wait_for(4)) == 4


def test_backoff_schedule_spans_about_a_day() -> None:
    low = sum(backoff_seconds(n, rng=lambda: 0.0) for n in range(1, 8))
    high = sum(backoff_seconds(n, rng=lambda: 1.0) for n in range(1, 8))
    assert 16 * 3600 < low < high < 30 * 3600  # 7 waits between 8 attempts
    assert [round(backoff_seconds(n, rng=lambda: 0.5)) for n in (1, 2, 3, 8, 20)] == [
        30,
        120,
        480,
        43200,
        43200,
    ]


def test_410_disables_the_endpoint(rt: Runtime, service: WebhookService, receiver: Receiver) -> None:
    endpoint = subscribe(service, receiver)
    account = make_account(rt)
    change_status(rt, account, AccountStatus.SYNCING, "sync started")
    receiver.statuses = [410]
    assert deliverer(rt).deliver_due().failed == 1
    view = service.get(endpoint)
    assert not view.enabled and view.disabled_reason and "410" in view.disabled_reason
    [row] = service.deliveries(endpoint)
    assert (row.status, row.last_status_code) == ("failed", 410)
    # a disabled endpoint is no longer a subscriber: later changes write no event
    before = count(rt, event_outbox)
    change_status(rt, account, AccountStatus.CONNECTED, "Connected")
    assert count(rt, event_outbox) == before
    assert deliverer(rt).deliver_due().attempted == 0
    assert len(receiver.received) == 1


def test_killed_delivery_process_is_resumed(
    rt: Runtime, settings: Settings, service: WebhookService, receiver: Receiver
) -> None:
    endpoint = subscribe(service, receiver)
    change_status(rt, make_account(rt), AccountStatus.SYNCING, "sync started")
    receiver.hold = True
    script = (
        "import sys\n"
        "from inboxlink.config import Settings\n"
        "from inboxlink.runtime import Runtime\n"
        "from inboxlink.outbound.webhooks import deliver_due\n"
        "rt = Runtime.open(Settings(home=sys.argv[1], database_url=sys.argv[2] or None,"
        " allow_private_hosts=True))\n"
        "deliver_due(rt.db, rt.box, rt.settings)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(settings.home), settings.database_url or ""], env=env
    )
    try:
        [first] = receiver.wait_for(1)  # the request is in flight, the delivery leased
        [row] = service.deliveries(endpoint)
        assert (row.status, row.attempts) == ("pending", 1)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    receiver.hold = False
    receiver.release.set()
    report = deliverer(rt).deliver_due()  # the holder is dead: its lease is taken over at once
    assert report.succeeded == 1
    got = receiver.wait_for(2)
    assert got[1].headers["inboxlink-event-id"] == first.headers["inboxlink-event-id"]
    assert all(r.verified for r in got)
    [row] = service.deliveries(endpoint)
    assert (row.status, row.attempts) == ("succeeded", 2)


def test_a_delivery_in_flight_is_not_sent_twice(
    rt: Runtime, service: WebhookService, receiver: Receiver
) -> None:
    subscribe(service, receiver)
    change_status(rt, make_account(rt), AccountStatus.SYNCING, "sync started")
    receiver.hold = True
    first, second = deliverer(rt), deliverer(rt)
    reports = []
    worker = threading.Thread(target=lambda: reports.append(first.deliver_due()))
    worker.start()
    try:
        receiver.wait_for(1)
        assert second.deliver_due().attempted == 0  # leased by a live holder: left alone
    finally:
        receiver.release.set()
        worker.join()
    assert reports[0].succeeded == 1
    assert second.deliver_due().attempted == 0
    assert len(receiver.received) == 1


def test_network_guard(rt: Runtime, service: WebhookService, receiver: Receiver, tmp_path: Path) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        refused = c.post(
            "/api/v1/webhooks",
            json={"url": "http://169.254.169.254/latest/meta-data", "event_types": ["*"]},
        )
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "host_refused"
        assert c.get("/api/v1/webhooks").json() == []
    strict = Settings(home=tmp_path / "strict", allow_private_hosts=False)
    with TestClient(create_app(strict)) as c:
        loopback = c.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]})
        assert loopback.status_code == 422 and loopback.json()["error"]["code"] == "host_refused"
    # checked again before each attempt: an endpoint saved while loopback was allowed is not
    # called by a deliverer that does not allow it
    endpoint = subscribe(service, receiver)
    change_status(rt, make_account(rt), AccountStatus.SYNCING, "sync started")
    guarded = Deliverer(rt.db, rt.box, DeliveryOptions(allow_private_hosts=False))
    assert guarded.deliver_due().retrying == 1
    [row] = service.deliveries(endpoint)
    assert row.last_error is not None and "loopback" in row.last_error
    assert receiver.received == []


def test_secret_shown_once_and_encrypted_at_rest(tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(home=tmp_path / "home", allow_private_hosts=True)
    with TestClient(create_app(settings)) as c:
        created = c.post(
            "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["account.status_changed"]}
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        assert secret.startswith("whsec_") and len(secret) > 40
        endpoint = created.json()["id"]
        assert secret not in c.get(f"/api/v1/webhooks/{endpoint}").text
        assert secret not in c.get("/api/v1/webhooks").text
        receiver.secret = secret
        sent = c.post(f"/api/v1/webhooks/{endpoint}/test").json()
        assert sent["status"] == "succeeded"
        rt: Runtime = c.app.state.runtime  # type: ignore[attr-defined]
        with rt.db.engine.connect() as conn:
            token = conn.execute(select(webhook_endpoints.c.secret)).scalar_one()
        assert rt.box.decrypt(token).decode() == secret  # stored, encrypted
    assert receiver.wait_for(1)[0].verified  # signed with the secret that was shown
    files = list((tmp_path / "home").glob("inboxlink.db*"))
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path.name


def test_nothing_written_when_nobody_listens(
    rt: Runtime, service: WebhookService, receiver: Receiver
) -> None:
    account = make_account(rt)
    change_status(rt, account, AccountStatus.SYNCING, "sync started")
    assert count(rt, event_outbox) == 0
    only_messages = subscribe(service, receiver, [events.MESSAGE_CREATED])
    change_status(rt, account, AccountStatus.CONNECTED, "Connected")
    assert count(rt, event_outbox) == 0
    with rt.db.engine.begin() as conn:
        ids = events.emit_many(conn, events.MESSAGE_CREATED, [{"id": 1}, {"id": 2}])
    assert len(ids) == 2 and count(rt, event_outbox) == 2
    service.update(only_messages, event_types=["*"])
    change_status(rt, account, AccountStatus.SYNCING, "sync started")
    assert count(rt, event_outbox) == 3


def test_rolled_back_change_has_no_event(rt: Runtime, service: WebhookService, receiver: Receiver) -> None:
    subscribe(service, receiver)
    account = make_account(rt)
    with pytest.raises(RuntimeError), rt.db.engine.begin() as conn:
        transition(conn, account, AccountStatus.SYNCING, "sync started")
        raise RuntimeError("the change fails after the event was emitted")
    assert count(rt, event_outbox) == 0
    assert deliverer(rt).deliver_due().attempted == 0
    with rt.db.engine.connect() as conn:
        assert conn.execute(select(accounts.c.status).where(accounts.c.id == account)).scalar() == "pending"


def test_endpoint_gets_only_events_emitted_after_it_existed(
    rt: Runtime, service: WebhookService, receiver: Receiver
) -> None:
    early = Receiver()
    early.thread.start()
    try:
        subscribe(service, early)
        account = make_account(rt)
        change_status(rt, account, AccountStatus.SYNCING, "sync started")
        subscribe(service, receiver)  # created before the first event is dispatched
        change_status(rt, account, AccountStatus.CONNECTED, "Connected")
        assert deliverer(rt).deliver_due().succeeded == 3
        assert sorted(r.json["data"]["to"] for r in early.wait_for(2)) == ["connected", "syncing"]
        assert [r.json["data"]["to"] for r in receiver.wait_for(1)] == ["connected"]
        assert count(rt, webhook_deliveries) == 3
    finally:
        early.server.shutdown()
        early.server.server_close()


def test_done_events_are_pruned_after_the_retention(
    rt: Runtime, service: WebhookService, receiver: Receiver
) -> None:
    endpoint = subscribe(service, receiver)
    account = make_account(rt)
    change_status(rt, account, AccountStatus.SYNCING, "sync started")
    d = deliverer(rt)
    assert d.deliver_due().succeeded == 1
    receiver.statuses = [500]
    change_status(rt, account, AccountStatus.CONNECTED, "Connected")
    assert d.deliver_due().retrying == 1
    assert d.prune() == 0  # both are recent
    assert d.prune(now=datetime.now(UTC) + timedelta(days=31)) == 1  # the pending one stays
    [left] = service.deliveries(endpoint)
    assert left.status == "pending" and count(rt, event_outbox) == 1


def test_verify_signature() -> None:
    body = b'{"id":"evt_1"}'
    ts = "1700000000"
    good = sign("whsec_a", ts, body)
    assert verify_signature("whsec_a", body, ts, good, now=1700000100)
    assert verify_signature("whsec_a", body, ts, f"v1=00ff, {good}", now=1700000100)  # rotation
    assert not verify_signature("whsec_b", body, ts, good, now=1700000100)
    assert not verify_signature("whsec_a", body + b" ", ts, good, now=1700000100)
    assert not verify_signature("whsec_a", body, "1700000001", good, now=1700000100)
    assert not verify_signature("whsec_a", body, ts, good, now=1700000000 + 301)  # replayed later
    assert not verify_signature("whsec_a", body, "soon", good)
    assert not verify_signature("whsec_a", body, ts, good.replace("v1=", "v0="), now=1700000100)


def test_api(rt: Runtime, receiver: Receiver) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        base = "/api/v1/webhooks"
        bad = c.post(base, json={"url": receiver.url, "event_types": ["message.deleted"]})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
        assert c.post(base, json={"url": receiver.url, "event_types": []}).status_code == 422
        created = c.post(
            base,
            json={
                "url": receiver.url,
                "event_types": ["message.sent", "account.status_changed"],
                "description": "CRM",
            },
        ).json()
        receiver.secret = created["secret"]
        hook = created["id"]
        assert created["event_types"] == ["account.status_changed", "message.sent"]
        assert [h["id"] for h in c.get(base).json()] == [hook]
        assert c.get(f"{base}/{hook}").json()["description"] == "CRM"
        off = c.patch(f"{base}/{hook}", json={"enabled": False}).json()
        assert not off["enabled"] and off["disabled_reason"] == "disabled by the user"
        refused = c.post(f"{base}/{hook}/test")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
        on = c.patch(f"{base}/{hook}", json={"enabled": True, "description": ""}).json()
        assert on["enabled"] and on["disabled_reason"] is None and on["description"] is None
        receiver.statuses = [500]
        failed = c.post(f"{base}/{hook}/test").json()
        assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("pending", 1, 500)
        assert failed["event_type"] == "webhook.test" and failed["next_attempt_at"]
        ok = c.post(f"{base}/{hook}/test").json()
        assert (ok["status"], ok["last_status_code"]) == ("succeeded", 200)
        [test_event] = [r.json for r in receiver.wait_for(2)][1:]
        assert test_event["type"] == "webhook.test" and test_event["data"]["endpoint_id"] == hook
        history = c.get(f"{base}/{hook}/deliveries").json()
        assert [d["status"] for d in history] == ["succeeded", "pending"]
        assert [d["id"] for d in c.get(f"{base}/{hook}/deliveries?status=pending").json()] == [failed["id"]]
        assert c.delete(f"{base}/{hook}").status_code == 204
        missing = c.get(f"{base}/{hook}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert c.delete(f"{base}/{hook}").status_code == 404
        assert count(rt, webhook_deliveries) == 0
        # a user's own token may not manage webhooks: they would see every account's events
        user = c.post("/api/v1/users", json={"name": "Bob", "email": "bob@example.com"}).json()
        as_user = {"Authorization": f"Bearer {user['token']}"}
        for method, path in [("get", base), ("post", base), ("post", f"{base}/{hook}/test")]:
            denied = c.request(
                method, path, headers=as_user, json={"url": receiver.url, "event_types": ["*"]}
            )
            assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        paths = set(c.get("/openapi.json").json()["paths"])
        assert {base, f"{base}/{{endpoint_id}}", f"{base}/{{endpoint_id}}/deliveries"} <= paths


def test_serve_delivers_account_changes(settings: Settings, mail_user: MailUser, receiver: Receiver) -> None:
    with TestClient(create_app(settings, background_sync=True)) as c:
        created = c.post(
            "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["account.status_changed"]}
        ).json()
        receiver.secret = created["secret"]
        paired = c.post(
            "/api/v1/accounts",
            json={
                "email": mail_user.email,
                "username": mail_user.email,
                "password": mail_user.password,
                "imap_host": mail_user.host,
                "imap_port": mail_user.port,
                "security": "none",
            },
        ).json()
        got = receiver.wait_for(3)  # paired; the scheduler syncs the new account; the loop delivers
    assert all(r.verified for r in got)
    changes = sorted((r.json["data"]["from"] or "", r.json["data"]["to"]) for r in got)
    assert changes == [("", "pending"), ("pending", "syncing"), ("syncing", "connected")]
    assert {r.json["data"]["account_id"] for r in got} == {paired["id"]}
