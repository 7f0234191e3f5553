"""Acceptance: webhooks and the outbox, as an embedding CRM developer uses them.

Written black-box from README.md and docs/architecture.md ("Webhooks", "Outbox") and the payloads in
the `outbound/events.py` docstring the map points at: mail is APPENDed with imaplib, SMTP is
aiosmtpd, everything else goes through the REST API (TestClient, or `serve` as run in-process by
`tests.support.serving` where deliveries need its background loop). Signatures are recomputed from
the documented recipe, not with inboxlink's own `verify_signature`. Where the retry schedule needs
time to pass, the documented one-pass entry point `deliver_due(..., now=...)` ("a task queue can
call it as is") moves the schedule's clock; what it did is read back through the API.
"""

# ruff: noqa: F811 (pytest fixtures imported from the other suites are parameters here)
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inboxlink.config import Settings
from inboxlink.outbound.webhooks import deliver_due
from inboxlink.testing.dovecot import MailUser
from tests.support import server_state, serving
from tests.test_acceptance_api import signed_correctly, wait_for
from tests.test_acceptance_crm import (  # noqa: F401 (api, smtp, hooks: fixtures)
    api,
    error,
    hooks,
    letter,
    ok,
    pair_sending,
    put,
    received,
    smtp,
)
from tests.test_send import Mailer, mailer, smtp_requiring_login  # noqa: F401 (mailer: a fixture)
from tests.test_webhooks import Received, Receiver, receiver  # noqa: F401 (receiver: a fixture)

TYPES = ["account.status_changed", "message.created", "message.linked", "message.sent"]
DATA_KEYS = {  # the `outbound/events.py` docstring, which the map names as the payloads' reference
    "account.status_changed": {"account_id", "email", "from", "to", "reason", "at"},
    "message.created": {"account_id", "id", "message_id", "subject", "from", "date"},
    "message.linked": {"account_id", "id", "message_id", "record", "rule", "evidence"},
    "message.sent": {"outbox_id", "account_id", "message_id", "recipients"},
    "webhook.test": {"endpoint_id", "message"},
}
BASE, FACTOR, CAP, JITTER = 30.0, 4.0, 12 * 3600.0, 0.2  # "30 s × 4ⁿ⁻¹ (cap 12 h) ±20 % jitter"
UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


# -- helpers --------------------------------------------------------------------------------------------
def runtime_of(c: TestClient) -> Any:
    return c.app.state.runtime  # type: ignore[attr-defined]


def one_pass(c: TestClient, at: datetime | None = None) -> None:
    """One delivery pass, as a task queue runs it; `at` moves the schedule's clock."""
    rt = runtime_of(c)
    deliver_due(rt.db, rt.box, rt.settings, now=at)


def subscribe(c: TestClient | httpx.Client, to: Receiver, types: list[str]) -> str:
    created = ok(c.post("/api/v1/webhooks", json={"url": to.url, "event_types": types}), 201)
    assert created["secret"].startswith("whsec_") and created["enabled"] is True
    to.secret = created["secret"]
    endpoint: str = created["id"]
    return endpoint


def deliveries(c: TestClient | httpx.Client, endpoint: str, **params: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = ok(c.get(f"/api/v1/webhooks/{endpoint}/deliveries", params=params))
    return got


def at_of(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def check_request(r: Received, secret: str) -> dict[str, Any]:
    """The documented request: JSON body {id, type, created_at, data}, Inboxlink-Event-Id equal to
    the body's id, unix-seconds timestamp within the 5-min window, v1 HMAC over f"{ts}.{raw body}"."""
    body = r.json
    assert set(body) == {"id", "type", "created_at", "data"}, body
    assert re.fullmatch(r"evt_[0-9a-f]{32}", body["id"]), body["id"]
    assert UTC_ISO.match(body["created_at"]), body["created_at"]
    assert r.headers["inboxlink-event-id"] == body["id"]
    assert r.headers["content-type"].startswith("application/json")
    assert re.fullmatch(r"\d+", r.headers["inboxlink-timestamp"])
    assert abs(time.time() - int(r.headers["inboxlink-timestamp"])) < 60
    assert signed_correctly(secret, r.headers, r.body), r.headers
    assert not signed_correctly(secret, r.headers, r.body + b" "), "a changed body must not verify"
    assert not signed_correctly("whsec_other", r.headers, r.body)
    stale = {**r.headers, "inboxlink-timestamp": str(int(r.headers["inboxlink-timestamp"]) - 301)}
    assert not signed_correctly(secret, stale, r.body), "outside the replay window"
    assert set(body["data"]) == DATA_KEYS[body["type"]], (body["type"], body["data"])
    return body


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    wait_for(pred, what, timeout)


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


# == 1. webhooks =======================================================================================
def test_every_event_type_arrives_once_signed_with_its_documented_body(
    tmp_path: Path, mail_user: MailUser, smtp: tuple[Mailer, int], hooks: Receiver
) -> None:
    """Through serve's background loop: pairing, a sync, a link and a send from a record each
    announce themselves once; the Sent copy's later sync announces nothing again."""
    server, port = smtp
    me = mail_user.email
    home = tmp_path / "home"
    settings = lambda url: Settings(home=home, allow_private_hosts=True, public_url=url)  # noqa: E731
    with serving(settings) as (url, _rt, _app), httpx.Client(base_url=url, timeout=30) as c:
        endpoint = subscribe(c, hooks, TYPES)
        assert "secret" not in ok(c.get(f"/api/v1/webhooks/{endpoint}"))
        assert hooks.secret not in c.get("/api/v1/webhooks").text, "the secret is shown once"
        dana = ok(
            c.post("/api/v1/records/person", json={"name": "Dana", "emails": ["dana@client.example"]}), 201
        )
        deal = ok(c.post("/api/v1/records/deal", json={"name": "Renewal", "token": "T-1042"}), 201)
        put(mail_user, letter("Dana <dana@client.example>", me, "Question", msgid="q1@client.example"))
        account = pair_sending(c, mail_user, port)
        wait_until(
            lambda: (
                ok(c.get(f"/api/v1/accounts/{account}"))["message_count"] == 1
                and ok(c.get(f"/api/v1/accounts/{account}"))["status"] == "connected"
            ),
            "the background sync",
        )
        item = ok(c.post("/api/v1/outbox", json={
            "account_id": account, "to": ["Dana@client.example"], "cc": ["ops@client.example"],
            "bcc": ["audit@client.example"], "subject": "Offer", "text": "Hi",
            "records": [{"type": "deal", "id": deal["id"]}],
        }), 201)  # fmt: skip
        assert item["status"] == "sent", item

        def types() -> Counter[str]:
            return Counter(r.json["type"] for r in list(hooks.received))

        wait_until(lambda: types()["message.sent"] >= 1 and types()["message.linked"] >= 3, "the events")
        again = ok(c.post(f"/api/v1/accounts/{account}/sync"))
        assert again["status"] == "connected" and again["fetched"] == 0
        assert item["message_id"] in server_state(mail_user)["Sent"]
        [entry] = ok(c.get(f"/api/v1/records/deal/{deal['id']}/timeline"))["entries"]  # one, after the sync
        assert (entry["message_id"], entry["rule"], entry["evidence"]) == (
            item["message_id"],
            "sent",
            "sent from deal Renewal",
        )
        time.sleep(2.5)  # the loop's tick: anything late or repeated would arrive by now
        got = [check_request(r, hooks.secret) for r in list(hooks.received)]
        assert all(r.verified for r in hooks.received)

        # each event once (every answer was 200), and the deliveries say so
        assert [n for n in Counter(e["id"] for e in got).values() if n > 1] == []
        listed = deliveries(c, endpoint)
        assert {d["event_id"] for d in listed} == {e["id"] for e in got}
        assert {(d["status"], d["attempts"]) for d in listed} == {("succeeded", 1)}
        assert deliveries(c, endpoint, status="pending") == []

        by_type: dict[str, list[dict[str, Any]]] = {}
        for e in sorted(got, key=lambda e: e["created_at"]):
            by_type.setdefault(e["type"], []).append(e["data"])
        # account.status_changed: from null for the newly paired account, a chain a receiver can
        # put in order by created_at
        status = by_type["account.status_changed"]
        assert status[0]["from"] is None and status[0]["to"] == "pending", status
        assert [s["from"] for s in status[1:]] == [s["to"] for s in status[:-1]], status
        assert status[-1]["to"] == "connected"
        assert {(s["account_id"], s["email"]) for s in status} == {(account, me)}
        assert all(UTC_ISO.match(s["at"]) for s in status)

        # (the sent message's own message.created: test_a_sent_message_is_announced_as_created)
        assert len({d["id"] for d in by_type["message.created"]}) == len(by_type["message.created"])
        created = {d["message_id"]: d for d in by_type["message.created"]}
        assert "q1@client.example" in created, created
        q1 = created["q1@client.example"]
        assert q1["from"] == {"email": "dana@client.example", "name": "Dana"}
        assert q1["subject"] == "Question" and q1["account_id"] == account
        assert isinstance(q1["id"], int)

        linked = sorted(
            (d["message_id"], d["record"]["type"], d["record"]["id"], d["rule"])
            for d in by_type["message.linked"]
        )
        assert linked == sorted([
            ("q1@client.example", "person", dana["id"], "participant"),
            (item["message_id"], "deal", deal["id"], "sent"),
            (item["message_id"], "person", dana["id"], "participant"),
        ]), linked  # fmt: skip
        assert all(isinstance(d["id"], int) and d["evidence"] for d in by_type["message.linked"])

        [sent] = by_type["message.sent"]
        assert sent == {
            "outbox_id": item["id"],
            "account_id": account,
            "message_id": item["message_id"],
            "recipients": {
                "to": [{"email": "Dana@client.example", "name": None}],
                "cc": [{"email": "ops@client.example", "name": None}],
                "bcc": [{"email": "audit@client.example", "name": None}],
            },
        }
        assert len(server.received) == 1

        # the test event: to this endpoint only, signed like the rest
        before = len(hooks.received)
        tested = ok(c.post(f"/api/v1/webhooks/{endpoint}/test"))
        assert (tested["status"], tested["attempts"], tested["event_type"]) == (
            "succeeded",
            1,
            "webhook.test",
        )
        test_event = check_request(hooks.wait_for(before + 1)[before], hooks.secret)
        assert test_event["id"] == tested["event_id"]
        assert test_event["data"]["endpoint_id"] == endpoint


def test_a_sent_message_is_announced_as_created(
    api: TestClient, mail_user: MailUser, smtp: tuple[Mailer, int], hooks: Receiver
) -> None:
    server, port = smtp
    c = api
    account = pair_sending(c, mail_user, port)
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    subscribe(c, hooks, ["message.created"])
    item = ok(
        c.post("/api/v1/outbox", json={"account_id": account, "to": ["d@client.example"], "text": "x"}), 201
    )
    assert item["status"] == "sent" and len(server.received) == 1
    listed = ok(c.get(f"/api/v1/accounts/{account}/messages"))["messages"]
    assert [m["message_id"] for m in listed] == [item["message_id"]]  # stored, as the map says
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    one_pass(c)
    created = [check_request(r, hooks.secret)["data"]["message_id"] for r in hooks.received]
    assert created == [item["message_id"]]


def test_a_failing_receiver_is_retried_on_the_documented_schedule_under_one_event_id(
    api: TestClient, hooks: Receiver
) -> None:
    c = api
    hooks.statuses = [500] * 8
    endpoint = subscribe(c, hooks, ["account.status_changed"])
    first = ok(c.post(f"/api/v1/webhooks/{endpoint}/test"))
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("pending", 1, 500)
    assert first["last_error"].startswith("HTTP 500")
    event_id = first["event_id"]
    delays = []
    state = first
    at = at_of(state["last_attempt_at"])
    for n in range(1, 8):
        wait = (at_of(state["next_attempt_at"]) - at).total_seconds()
        base = min(BASE * FACTOR ** (n - 1), CAP)
        assert base * (1 - JITTER) - 1 <= wait <= base * (1 + JITTER) + 1, (n, wait, base)
        delays.append(wait)
        one_pass(c, at_of(state["next_attempt_at"]) - timedelta(seconds=1))
        assert len(hooks.received) == n, "not before its time"
        at = at_of(state["next_attempt_at"])
        one_pass(c, at)
        [state] = deliveries(c, endpoint)
        assert state["attempts"] == n + 1, state
    assert state["status"] == "failed" and state["next_attempt_at"] is None, state
    assert 0.8 * 84_150 <= sum(delays) <= 1.2 * 84_150  # "8 attempts over ~24 h"
    got = hooks.wait_for(8)
    assert len(got) == 8 and {r.headers["inboxlink-event-id"] for r in got} == {event_id}
    for r in got:
        check_request(r, hooks.secret)
    one_pass(c, at + timedelta(days=2))
    assert len(hooks.received) == 8, "failed is final"
    # a delivery that failed for good does not disable the endpoint (only 410 does)
    shown = ok(c.get(f"/api/v1/webhooks/{endpoint}"))
    assert shown["enabled"] is True and shown["disabled_reason"] is None
    assert ok(c.post(f"/api/v1/webhooks/{endpoint}/test"))["status"] == "succeeded"


def test_a_receiver_that_times_out_is_retried_with_the_same_event_id(
    api: TestClient, hooks: Receiver
) -> None:
    c = api
    endpoint = subscribe(c, hooks, ["*"])
    hooks.hold = True  # the receiver never answers within the request timeout
    began, started = time.monotonic(), time.time()
    first = ok(c.post(f"/api/v1/webhooks/{endpoint}/test"))
    assert time.monotonic() - began < 30
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("pending", 1, None), first
    assert first["last_error"], first
    # 30 s ±20 % after attempt 1 failed (the docs: "after attempt n fails"), not after it began
    wait = at_of(first["next_attempt_at"]).timestamp() - at_of(first["last_attempt_at"]).timestamp()
    assert 24 - 0.5 <= wait <= 36 + 0.5, wait
    assert at_of(first["next_attempt_at"]).timestamp() - started >= 24 + 9, "counted from the time-out"
    hooks.hold = False
    hooks.release.set()
    one_pass(c, at_of(first["next_attempt_at"]))
    [done] = deliveries(c, endpoint)
    assert (done["status"], done["attempts"], done["event_id"]) == ("succeeded", 2, first["event_id"])
    both = hooks.wait_for(2)
    assert [r.headers["inboxlink-event-id"] for r in both] == [first["event_id"]] * 2
    assert both[0].body == both[1].body, "the same event, byte for byte"
    for r in both:
        check_request(r, hooks.secret)


def test_410_disables_the_endpoint_and_a_disabled_endpoint_keeps_its_pending_deliveries(
    api: TestClient, mail_user: MailUser, hooks: Receiver, second_receiver: Receiver
) -> None:
    c = api
    hooks.statuses = [410]
    gone = subscribe(c, hooks, ["account.status_changed"])
    tried = ok(c.post(f"/api/v1/webhooks/{gone}/test"))
    assert (tried["status"], tried["last_status_code"]) == ("failed", 410)
    shown = ok(c.get(f"/api/v1/webhooks/{gone}"))
    assert shown["enabled"] is False and "410" in shown["disabled_reason"], shown
    error(c.post(f"/api/v1/webhooks/{gone}/test"), 409, "conflict")
    account = ok(c.post("/api/v1/accounts", json=_imap_only(mail_user)), 201)["id"]
    one_pass(c)
    assert len(hooks.received) == 1, "a disabled endpoint receives nothing"

    # a pending retry waits while its endpoint is disabled, and goes out once it is enabled again
    flaky = second_receiver
    flaky.statuses = [503]
    ep = subscribe(c, flaky, ["account.status_changed"])
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    one_pass(c)
    pending = deliveries(c, ep, status="pending")
    assert pending and all(d["last_status_code"] in (503, None) for d in pending), pending
    ok(c.patch(f"/api/v1/webhooks/{ep}", json={"enabled": False}))
    count = len(flaky.received)
    one_pass(c, datetime.now(UTC) + timedelta(hours=1))
    assert len(flaky.received) == count
    assert deliveries(c, ep, status="pending") == pending
    enabled = ok(c.patch(f"/api/v1/webhooks/{ep}", json={"enabled": True}))
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    one_pass(c, datetime.now(UTC) + timedelta(hours=1))
    assert deliveries(c, ep, status="pending") == []
    assert {d["status"] for d in deliveries(c, ep)} == {"succeeded"}
    ids = [r.headers["inboxlink-event-id"] for r in flaky.received]
    assert set(ids) == {d["event_id"] for d in deliveries(c, ep)}
    # and the endpoint disabled by 410 comes back when enabled
    ok(c.patch(f"/api/v1/webhooks/{gone}", json={"enabled": True}))
    assert ok(c.post(f"/api/v1/webhooks/{gone}/test"))["status"] == "succeeded"


def _imap_only(user: MailUser) -> dict[str, Any]:
    return {
        "email": user.email,
        "username": user.email,
        "password": user.password,
        "imap_host": user.host,
        "imap_port": user.port,
        "security": "none",
    }


def test_changing_an_endpoint_takes_effect_and_a_deleted_one_receives_nothing(
    api: TestClient, mail_user: MailUser, hooks: Receiver, second_receiver: Receiver
) -> None:
    c = api
    me = mail_user.email
    endpoint = subscribe(c, hooks, ["account.status_changed"])
    put(mail_user, letter("dana@client.example", me, "One", msgid="one@client.example"))
    account = ok(c.post("/api/v1/accounts", json=_imap_only(mail_user)), 201)["id"]
    one_pass(c)
    assert [r.json["type"] for r in hooks.received] == ["account.status_changed"]

    # another URL and other types: the next events go there, and only those types
    changed = ok(c.patch(f"/api/v1/webhooks/{endpoint}", json={
        "url": second_receiver.url, "event_types": ["message.created"]}))  # fmt: skip
    assert changed["url"] == second_receiver.url and changed["event_types"] == ["message.created"]
    second_receiver.secret = hooks.secret  # the secret stays with the endpoint
    error(c.patch(f"/api/v1/webhooks/{endpoint}", json={"event_types": ["message.deleted"]}), 422, "invalid")
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    one_pass(c)
    assert len(hooks.received) == 1, "the old URL gets nothing more"
    [only] = [check_request(r, hooks.secret) for r in second_receiver.received]
    assert (only["type"], only["data"]["message_id"]) == ("message.created", "one@client.example")

    # deleted: gone from the API, nothing more sent, not even a pending retry
    second_receiver.statuses = [500]
    put(mail_user, letter("dana@client.example", me, "Two", msgid="two@client.example"))
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    one_pass(c)
    assert len(second_receiver.received) == 2 and deliveries(c, endpoint, status="pending")
    assert c.delete(f"/api/v1/webhooks/{endpoint}").status_code == 204
    error(c.get(f"/api/v1/webhooks/{endpoint}"), 404, "not_found")
    error(c.get(f"/api/v1/webhooks/{endpoint}/deliveries"), 404, "not_found")
    assert ok(c.get("/api/v1/webhooks")) == []
    put(mail_user, letter("dana@client.example", me, "Three", msgid="three@client.example"))
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    one_pass(c, datetime.now(UTC) + timedelta(hours=1))
    assert len(second_receiver.received) == 2 and len(hooks.received) == 1


# == 2. outbox =========================================================================================
def test_drafts_are_written_changed_sent_once_and_discarded_and_the_listing_filters(
    api: TestClient, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    c = api
    account = pair_sending(c, mail_user, port)
    base = {"account_id": account, "to": ["dana@client.example"], "subject": "Draft", "text": "v1"}
    draft = ok(c.post("/api/v1/outbox", json={**base, "draft": True}), 201)
    assert (draft["status"], draft["send_at"], draft["sent_at"]) == ("draft", None, None)
    other = ok(c.post("/api/v1/outbox", json={**base, "subject": "Other", "draft": True}), 201)
    assert server.received == []

    changed = ok(
        c.put(
            f"/api/v1/outbox/{draft['id']}", json={**base, "subject": "Final", "cc": ["ops@client.example"]}
        )
    )
    assert (changed["status"], changed["subject"], changed["cc"]) == (
        "draft",
        "Final",
        ["ops@client.example"],
    )
    assert changed["message_id"] == draft["message_id"]

    # the listing: newest first, by status, limited; bad parameters are the documented 422
    assert [o["id"] for o in ok(c.get("/api/v1/outbox"))] == [other["id"], draft["id"]]
    assert [o["id"] for o in ok(c.get("/api/v1/outbox", params={"limit": 1}))] == [other["id"]]
    assert len(ok(c.get("/api/v1/outbox", params={"status": "draft"}))) == 2
    assert ok(c.get("/api/v1/outbox", params={"status": "sent"})) == []
    for bad in ({"limit": 0}, {"limit": 501}, {"status": "bogus"}):
        error(c.get("/api/v1/outbox", params=bad), 422, "invalid")

    # discarded: gone
    assert c.delete(f"/api/v1/outbox/{other['id']}").status_code == 204
    error(c.get(f"/api/v1/outbox/{other['id']}"), 404, "not_found")

    # sent twice at once: it goes out once
    answers: list[httpx.Response] = []
    start = threading.Barrier(2)

    def send() -> None:
        start.wait()
        answers.append(c.post(f"/api/v1/outbox/{draft['id']}/send", json={}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(server.received) == 1, [a.text for a in answers]
    assert [a.json().get("status") for a in answers if a.status_code == 200].count("sent") >= 1
    for a in answers:
        assert a.status_code == 200 or a.json()["error"]["code"] == "invalid", a.text
    error(c.post(f"/api/v1/outbox/{draft['id']}/send", json={}), 422, "invalid")
    error(c.put(f"/api/v1/outbox/{draft['id']}", json=base), 422, "invalid")
    error(c.delete(f"/api/v1/outbox/{draft['id']}"), 422, "invalid")
    [(_from, rcpts, raw)] = server.received
    m = received(raw)
    assert sorted(rcpts) == ["dana@client.example", "ops@client.example"]
    assert (m["Subject"], m["Cc"], m["Message-ID"]) == (
        "Final",
        "ops@client.example",
        f"<{draft['message_id']}>",
    )
    assert [o["status"] for o in ok(c.get("/api/v1/outbox"))] == ["sent"]
    assert draft["message_id"] in server_state(mail_user)["Sent"]


def test_a_reply_carries_in_reply_to_and_references_and_a_single_re(
    api: TestClient, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    c, me = api, mail_user.email
    p1 = letter("dana@client.example", me, "Angebot", msgid="p1@client.example")
    refs = "<p1@client.example> <x@inboxlink.test>"
    p2 = letter("dana@client.example", me, "RE: Angebot", msgid="p2@client.example",
                in_reply_to="<x@inboxlink.test>", references=refs)  # fmt: skip
    put(mail_user, p1, p2)
    account = pair_sending(c, mail_user, port)
    ok(c.post(f"/api/v1/accounts/{account}/sync"))
    reply = {"account_id": account, "to": ["dana@client.example"]}
    first = ok(
        c.post("/api/v1/outbox", json={**reply, "text": "a", "reply_to_message": "p1@client.example"}), 201
    )
    second = ok(
        c.post("/api/v1/outbox", json={**reply, "text": "b", "reply_to_message": "<p2@client.example>"}), 201
    )
    assert first["status"] == second["status"] == "sent"
    assert (first["in_reply_to"], second["in_reply_to"]) == ("p1@client.example", "p2@client.example")
    a, b = (received(raw) for _f, _r, raw in server.received)
    assert (a["Subject"], a["In-Reply-To"], a["References"]) == (
        "Re: Angebot",
        "<p1@client.example>",
        "<p1@client.example>",
    )
    assert b["Subject"] in ("RE: Angebot", "Re: Angebot"), b["Subject"]
    assert b["In-Reply-To"] == "<p2@client.example>"
    assert b["References"].split() == ["<p1@client.example>", "<x@inboxlink.test>", "<p2@client.example>"]


def test_a_message_too_large_for_the_servers_size_fails_and_keeps_the_draft(
    api: TestClient, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp  # aiosmtpd announces SIZE 200000
    c = api
    account = pair_sending(c, mail_user, port)
    big = {
        "account_id": account,
        "to": ["dana@client.example"],
        "subject": "Big",
        "text": "x" * 300_000 + "\n",
    }
    item = ok(c.post("/api/v1/outbox", json=big), 201)
    assert item["status"] == "failed" and item["error"]["code"] == "message_too_large", item
    assert server.received == []
    kept = ok(c.get(f"/api/v1/outbox/{item['id']}"))
    assert (kept["status"], kept["to"], kept["subject"]) == ("failed", ["dana@client.example"], "Big")
    assert item["message_id"] not in server_state(mail_user).get("Sent", {})
    ok(c.put(f"/api/v1/outbox/{item['id']}", json={**big, "text": "smaller\n"}))
    sent = ok(c.post(f"/api/v1/outbox/{item['id']}/send", json={}))
    assert sent["status"] == "sent" and len(server.received) == 1


# aiosmtpd warns about AUTH without TLS (loopback, test only) and about its own deprecated login_data
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_an_smtp_auth_failure_fails_the_message_and_moves_the_account_to_auth_error(
    api: TestClient, mail_user: MailUser, hooks: Receiver
) -> None:
    c = api
    with smtp_requiring_login(mail_user.password) as (handler, port, accepted):
        account = pair_sending(c, mail_user, port)
        ok(c.post(f"/api/v1/accounts/{account}/sync"))
        subscribe(c, hooks, ["account.status_changed"])
        accepted["password"] = "changed-on-the-server"
        answer = c.post(
            "/api/v1/outbox", json={"account_id": account, "to": ["a@client.example"], "text": "x"}
        )
        item = ok(answer, 201)
        assert item["status"] == "failed" and item["error"]["code"] == "auth_error", item
        assert mail_user.password not in answer.text and handler.received == []
        shown = ok(c.get(f"/api/v1/accounts/{account}"))
        assert shown["status"] == "auth_error", shown
        one_pass(c)
        [event] = [check_request(r, hooks.secret) for r in hooks.received]
        assert (event["data"]["from"], event["data"]["to"]) == ("connected", "auth_error"), event
        assert ok(c.get(f"/api/v1/outbox/{item['id']}"))["to"] == ["a@client.example"]


def test_send_later_goes_out_through_serve_at_its_time_and_not_before(
    tmp_path: Path, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    home = tmp_path / "home"
    settings = lambda url: Settings(home=home, allow_private_hosts=True, public_url=url)  # noqa: E731
    with serving(settings) as (url, _rt, _app), httpx.Client(base_url=url, timeout=30) as c:
        account = pair_sending(c, mail_user, port)
        due = datetime.fromtimestamp(int(time.time()) + 4, UTC)
        to_x = {"account_id": account, "to": ["x@client.example"], "text": "later"}
        later = ok(
            c.post("/api/v1/outbox", json={**to_x, "send_at": due.isoformat().replace("+00:00", "Z")}), 201
        )
        assert later["status"] == "queued" and at_of(later["send_at"]) == due
        to_y = {"account_id": account, "to": ["y@client.example"], "text": "draft later", "draft": True}
        draft = ok(c.post("/api/v1/outbox", json=to_y), 201)
        queued = ok(c.post(f"/api/v1/outbox/{draft['id']}/send", json={"send_at": due.isoformat()}))
        dropped = ok(
            c.post("/api/v1/outbox", json={**to_x, "to": ["z@client.example"], "send_at": due.isoformat()}),
            201,
        )
        assert c.delete(f"/api/v1/outbox/{dropped['id']}").status_code == 204  # a queued one may be discarded
        assert queued["status"] == "queued" and at_of(queued["send_at"]) == due
        while datetime.now(UTC) < due - timedelta(seconds=0.3):
            assert server.received == [], "sent before its time"
            time.sleep(0.1)

        def both_sent() -> bool:
            return all(
                ok(c.get(f"/api/v1/outbox/{i}"))["status"] == "sent" for i in (later["id"], draft["id"])
            )

        wait_until(both_sent, "both sent at their time", timeout=8)
        time.sleep(0.5)  # the discarded one's task fired with the others: nothing may follow
        for i in (later["id"], draft["id"]):
            sent_at = at_of(ok(c.get(f"/api/v1/outbox/{i}"))["sent_at"])
            assert due <= sent_at < due + timedelta(seconds=4), (i, sent_at)
        assert sorted(r for _f, rcpts, _raw in server.received for r in rcpts) == [
            "x@client.example",
            "y@client.example",
        ]


def test_a_send_later_time_with_an_offset_keeps_its_instant(api: TestClient, mail_user: MailUser) -> None:
    c = api
    account = ok(c.post("/api/v1/accounts", json=_imap_only(mail_user)), 201)["id"]
    base = {"account_id": account, "to": ["x@client.example"], "text": "later"}
    for given in ("2099-01-01T09:00:00+09:00", "2099-01-01T09:00:00-05:00", "2099-01-01T09:00:00Z"):
        item = ok(c.post("/api/v1/outbox", json={**base, "send_at": given}), 201)
        shown = ok(c.get(f"/api/v1/outbox/{item['id']}"))
        assert at_of(item["send_at"]) == at_of(shown["send_at"]) == at_of(given), (given, shown["send_at"])
    draft = ok(c.post("/api/v1/outbox", json={**base, "draft": True}), 201)
    queued = ok(c.post(f"/api/v1/outbox/{draft['id']}/send", json={"send_at": "2099-01-01T09:00:00+09:00"}))
    assert at_of(queued["send_at"]) == at_of("2099-01-01T00:00:00Z")
