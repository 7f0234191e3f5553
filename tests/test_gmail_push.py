"""Gmail push end to end: the Google simulator plays Gmail and Pub/Sub, the product runs as `serve`
does (the API app with its scheduler and task consumer, on a real uvicorn server in a thread), and
the account is paired through the real OAuth flow. The poll interval is huge: a message reaches the
store only because Gmail's notification was pushed to `POST /push/google`.

What is asserted is behaviour (the message is stored, the push was acknowledged, the watch was
renewed); waits are bounded loops on those facts, never on durations."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from inboxlink.config import Settings
from inboxlink.runtime import Runtime
from inboxlink.store.schema import accounts, messages
from inboxlink.sync.state import now
from inboxlink_sim.google import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GoogleSim
from tests.gmail_support import running_sim
from tests.support import make_message, serving
from tests.test_google_pairing import consent

TOPIC = "projects/inboxlink-test/topics/gmail"


def push_settings(sim: GoogleSim, home: Path, url: str) -> Settings:
    """serve against the simulator with Pub/Sub push on and polling off: only pairing, pushes
    and explicit syncs start a sync."""
    return Settings(
        home=home,
        public_url=url,
        google_client_id=DEFAULT_CLIENT_ID,
        google_client_secret=DEFAULT_CLIENT_SECRET,
        google_discovery_url=f"{sim.base_url}/.well-known/openid-configuration",
        google_api_base=sim.base_url,
        google_pubsub_topic=TOPIC,
        sync_interval_seconds=1e9,
    )


USER = "pat@gmail.test"


@dataclass
class Served:
    url: str
    rt: Runtime
    sim: GoogleSim
    account_id: str

    def account(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/accounts/{self.account_id}", timeout=10)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def stored_subjects(self) -> set[str]:
        with self.rt.db.engine.connect() as conn:
            return {
                r.subject
                for r in conn.execute(
                    select(messages.c.subject).where(
                        messages.c.account_id == self.account_id, messages.c.deleted_at.is_(None)
                    )
                )
            }


def eventually(check: Callable[[], bool], what: str, *, limit: float = 60.0) -> None:
    """Wait until `check()` holds; the limit only bounds a broken run."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("gmail-push") / "home"
    with running_sim() as sim:
        sim.add_user(USER, messages=6, seed=21)

        def settings_for(url: str) -> Settings:
            return push_settings(sim, home, url)  # never polled: only pairing and pushes start a sync

        with serving(settings_for) as (url, rt, _app):
            # the operator reads the endpoint from the API and gives it to the push subscription
            endpoint = httpx.get(f"{url}/push/google", timeout=10).json()
            assert endpoint["mode"] == "pubsub" and endpoint["topic"] == TOPIC
            sim.set_push_endpoint(endpoint["endpoint"], TOPIC)
            served = Served(url, rt, sim, pair(url, sim))
            eventually(lambda: served.account()["status"] == "connected", "the first sync finished")
            yield served
        assert sim.schema_violations == []


def pair(url: str, sim: GoogleSim) -> str:
    start = httpx.get(f"{url}/oauth/google/start", params={"features": "read_mail"}, timeout=10)
    assert start.status_code == 302, start.text
    callback, _listed = consent(start.headers["location"], USER, "allow")
    assert callback.startswith(f"{url}/oauth/google/callback?")
    finished = httpx.get(callback, timeout=30)
    assert finished.status_code == 201, finished.text
    account_id: str = finished.json()["account"]["id"]
    return account_id


def test_pairing_subscribes_and_a_push_brings_new_mail_without_polling(served: Served) -> None:
    box = served.sim.mailbox(USER)
    assert box.watch is not None and box.watch.topic == TOPIC, "pairing called users.watch"
    push = served.account()["capabilities"]["push"]
    assert push["mode"] == "pubsub" and push["topic"] == TOPIC and push["expires_at"]
    assert len(served.stored_subjects()) == 6
    pushes = len(served.sim.push_log)

    served.sim.deliver(USER, make_message(700, subject="Pushed, not polled", to=USER))
    eventually(lambda: "Pushed, not polled" in served.stored_subjects(), "the pushed message was stored")
    delivered = served.sim.wait_for_pushes(pushes + 1)[pushes:]
    assert delivered and all(r.status == 204 for r in delivered), [(r.status, r.error) for r in delivered]


def _envelope(notification: Any) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(notification).encode()).decode()
    return {"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}


def test_push_endpoint_acks_unknown_mailboxes_and_refuses_bad_input(served: Served) -> None:
    endpoint = httpx.get(f"{served.url}/push/google", timeout=10).json()["endpoint"]
    token = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(endpoint).query))["token"]
    post = f"{served.url}/push/google"

    unknown = _envelope({"emailAddress": "nobody@gmail.test", "historyId": 5})
    assert httpx.post(post, params={"token": token}, json=unknown, timeout=10).status_code == 204
    for wrong in ({}, {"token": token[:-1] + ("A" if token[-1] != "A" else "B")}):
        refused = httpx.post(post, params=wrong, json=unknown, timeout=10)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "push_token_invalid"
    for body in (
        b"not json",
        json.dumps({"message": {}}).encode(),
        json.dumps({"message": {"data": "%%%"}}).encode(),
        json.dumps(_envelope({"emailAddress": USER})).encode(),
        json.dumps(_envelope(["a list"])).encode(),
    ):
        bad = httpx.post(post, params={"token": token}, content=body, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "push_malformed", body
    # Google's guide shows historyId as a string; Gmail sends a number: both are taken
    as_text = _envelope({"emailAddress": USER, "historyId": "12345"})
    assert httpx.post(post, params={"token": token}, json=as_text, timeout=10).status_code == 204


def _push_record(served: Served) -> dict[str, Any]:
    record: dict[str, Any] = served.account()["capabilities"]["push"]
    return record


def _age_push_record(served: Served, **changes: Any) -> None:
    with served.rt.db.engine.begin() as conn:
        caps = conn.execute(
            select(accounts.c.capabilities).where(accounts.c.id == served.account_id)
        ).scalar_one()
        caps = {**caps, "push": {**caps["push"], **changes}}
        conn.execute(update(accounts).where(accounts.c.id == served.account_id).values(capabilities=caps))


def test_watches_are_renewed_after_a_sync_near_expiry_and_daily_by_the_task(served: Served) -> None:
    box = served.sim.mailbox(USER)
    assert box.watch is not None
    box.watch.expiration_ms = 0  # Gmail's side lapses; our record says it expires within hours
    _age_push_record(served, expires_at=(now() + timedelta(hours=3)).isoformat())
    synced = httpx.post(f"{served.url}/api/v1/accounts/{served.account_id}/sync", timeout=60)
    assert synced.status_code == 200 and synced.json()["status"] == "connected", synced.text
    assert box.watch is not None and box.watch.expiration_ms > 0, "renewed after the sync"
    renewed = _push_record(served)
    assert renewed["mode"] == "pubsub"

    # a watch renewed more than a day ago is renewed by the periodic task (Huey), even with days left
    box.watch.expiration_ms = 0
    _age_push_record(served, renewed_at=(now() - timedelta(days=1)).isoformat())
    served.rt.queue.renew_push.call_local()
    assert box.watch is not None and box.watch.expiration_ms > 0
    assert _push_record(served)["renewed_at"] > (now() - timedelta(hours=1)).isoformat()
    # and one renewed just now is left alone
    box.watch.expiration_ms = 0
    served.rt.queue.renew_push.call_local()
    assert box.watch.expiration_ms == 0


def test_unpairing_ends_the_subscription(served: Served) -> None:
    """(Last in this module: it unpairs the account the others use.)"""
    box = served.sim.mailbox(USER)
    served.rt.queue.renew_push.call_local()
    _age_push_record(served, renewed_at=(now() - timedelta(days=1)).isoformat())
    served.rt.queue.renew_push.call_local()  # a live watch again, whatever the tests before left
    assert box.watch is not None and box.watch.expiration_ms > 0
    gone = httpx.delete(f"{served.url}/api/v1/accounts/{served.account_id}", timeout=30)
    assert gone.status_code == 200 and gone.json()["status"] == "disconnected", gone.text
    assert box.watch is None, "users.stop was called before the credentials were forgotten"
    assert _push_record(served) == {"mode": "stopped", "reason": "unpaired"}
    assert served.account()["status"] == "disconnected"
