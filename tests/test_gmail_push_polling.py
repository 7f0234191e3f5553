"""Gmail accounts that push keeps in sync are polled only as a safety net (`sync/gmail_push.py`).

The Google simulator plays Gmail and Pub/Sub; the product runs as `serve` does (tests.support.serving:
API, scheduler, task consumer on a real uvicorn server), its scheduler syncing only what is poked
(poll interval 10⁹ s); accounts are paired through the real OAuth flow, and pushes are the
simulator's own, posted to `POST /push/google` when mail is delivered. Whether an account would be
polled is asked of `Scheduler._due()` (tests.support.polled: a one-minute poll interval, the served
scheduler's `pushed`, the last sync set back); the push registry's clock is moved, not waited for.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from inboxlink.api.app import create_app
from inboxlink.cli import _with_push
from inboxlink.config import Settings
from inboxlink.runtime import Runtime
from inboxlink.store.schema import accounts, messages
from inboxlink.sync import push as push_module
from inboxlink.sync.scheduler import PUSHED_POLL_SECONDS, Scheduler, any_of
from inboxlink.sync.state import now
from inboxlink_sim.google import GoogleSim
from tests.gmail_support import running_sim
from tests.support import make_message, polled, serving, sync_idle
from tests.test_gmail_push import TOPIC, eventually, push_settings
from tests.test_google_pairing import consent

SOON = timedelta(minutes=5)  # since the last sync: past the one-minute interval, within the safety net
LATE = timedelta(seconds=PUSHED_POLL_SECONDS + 60)  # past the safety net too
_users = itertools.count(1)


@dataclass
class Served:
    url: str
    rt: Runtime
    sim: GoogleSim
    scheduler: Scheduler  # serve's own, whose `pushed` the checks use

    def pushed(self) -> frozenset[str]:
        assert self.scheduler.pushed is not None, "serve wires Gmail's pushed accounts"
        return frozenset(self.scheduler.pushed())

    def polled(self, account_id: str, *, last_sync: timedelta) -> bool:
        return polled(self.rt, account_id, last_sync=last_sync, pushed=self.scheduler.pushed)

    def push_record(self, account_id: str) -> dict[str, Any]:
        with self.rt.db.engine.connect() as conn:
            caps = conn.execute(
                select(accounts.c.capabilities).where(accounts.c.id == account_id)
            ).scalar_one()
        record: dict[str, Any] = caps["push"]
        return record

    def set_push_record(self, account_id: str, **changes: Any) -> None:
        with self.rt.db.engine.begin() as conn:
            caps = conn.execute(
                select(accounts.c.capabilities).where(accounts.c.id == account_id)
            ).scalar_one()
            caps = {**caps, "push": {**caps["push"], **changes}}
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(capabilities=caps))

    def subjects(self, account_id: str) -> set[str]:
        with self.rt.db.engine.connect() as conn:
            return set(
                conn.execute(select(messages.c.subject).where(messages.c.account_id == account_id)).scalars()
            )


@dataclass
class Gmail:
    email: str
    account_id: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("gmail-push-polling") / "home"
    with running_sim() as sim:

        def settings_for(url: str) -> Settings:
            return push_settings(sim, home, url)  # only what is poked syncs

        with serving(settings_for) as (url, rt, app):
            endpoint = httpx.get(f"{url}/push/google", timeout=10).json()["endpoint"]
            sim.set_push_endpoint(endpoint, TOPIC)  # the operator's push subscription
            yield Served(url, rt, sim, app.state.scheduler)
        assert sim.schema_violations == []


@pytest.fixture
def gmail(served: Served) -> Gmail:
    """A new mailbox, paired (users.watch called) and through its first sync; no push yet."""
    email = f"polled{next(_users)}@gmail.test"
    served.sim.add_user(email, messages=2, seed=5)
    start = httpx.get(f"{served.url}/oauth/google/start", params={"features": "read_mail"}, timeout=10)
    assert start.status_code == 302, start.text
    callback, _listed = consent(start.headers["location"], email, "allow")
    finished = httpx.get(callback, timeout=30)
    assert finished.status_code == 201, finished.text
    account_id: str = finished.json()["account"]["id"]
    eventually(
        lambda: (
            str(served.rt.accounts.get(account_id).status) == "connected" and sync_idle(served.rt, account_id)
        ),
        "the first sync finished",
    )
    assert served.push_record(account_id)["mode"] == "pubsub", "pairing subscribed"
    return Gmail(email, account_id)


def push_arrives(served: Served, gmail: Gmail, n: int) -> None:
    """Mail for the mailbox: the simulator pushes to the endpoint, the poked sync stores it."""
    subject = f"Pushed {n}"
    served.sim.deliver(gmail.email, make_message(n, subject=subject, to=gmail.email))
    eventually(
        lambda: subject in served.subjects(gmail.account_id) and sync_idle(served.rt, gmail.account_id),
        f"{subject!r} stored by the pushed sync",
    )


def test_a_live_watch_and_a_push_leave_only_the_safety_net_poll(served: Served, gmail: Gmail) -> None:
    push_arrives(served, gmail, 1)
    assert gmail.account_id in served.pushed()
    assert not served.polled(gmail.account_id, last_sync=SOON), "pushed: not polled every minute"
    assert served.polled(gmail.account_id, last_sync=LATE), "but still after PUSHED_POLL_SECONDS"


def test_a_watch_without_a_received_push_is_polled_normally(served: Served, gmail: Gmail) -> None:
    """A watch proves nothing about the topic's subscription: only a push that came in does."""
    assert served.push_record(gmail.account_id)["expires_at"] > now().isoformat(), "the watch is live"
    assert gmail.account_id not in served.pushed()
    assert served.polled(gmail.account_id, last_sync=SOON)


def test_a_push_older_than_the_window_restores_normal_polling(
    served: Served, gmail: Gmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_arrives(served, gmail, 2)
    assert not served.polled(gmail.account_id, last_sync=SOON)
    pushes = served.rt.gmail_pushes
    later = pushes.clock() + PUSHED_POLL_SECONDS + 1
    monkeypatch.setattr(pushes, "clock", lambda: later)
    assert gmail.account_id not in served.pushed()
    assert served.polled(gmail.account_id, last_sync=SOON)


def test_an_expired_watch_restores_normal_polling(served: Served, gmail: Gmail) -> None:
    push_arrives(served, gmail, 3)
    assert gmail.account_id in served.pushed()
    served.set_push_record(gmail.account_id, expires_at=(now() - timedelta(minutes=1)).isoformat())
    assert gmail.account_id not in served.pushed(), "a push is no proof once the watch lapsed"
    assert served.polled(gmail.account_id, last_sync=SOON)


def test_unpairing_stops_the_watch_and_the_account_is_no_longer_pushed(served: Served, gmail: Gmail) -> None:
    push_arrives(served, gmail, 4)
    assert gmail.account_id in served.pushed()
    gone = httpx.delete(f"{served.url}/api/v1/accounts/{gmail.account_id}", timeout=30)
    assert gone.status_code == 200, gone.text
    assert served.push_record(gmail.account_id)["mode"] == "stopped"
    assert gmail.account_id not in served.pushed()


def test_serve_with_imap_watchers_reports_both_kinds_of_pushed_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` runs the IMAP watchers around the API's lifespan (`cli._with_push`): the scheduler's
    `pushed` is then their live set and the Gmail accounts', not the watchers' alone."""

    class Watcher:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def live(self) -> frozenset[str]:
            return frozenset({"imap-in-idle"})

        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

    monkeypatch.setattr(push_module, "PushWatcher", Watcher)
    rt = Runtime.open(Settings(home=tmp_path / "home"))
    monkeypatch.setattr(rt.gmail_pushes, "live", lambda: frozenset({"gmail-pushed"}))
    app = create_app(rt.settings, background_sync=True, runtime=rt)
    _with_push(app)

    async def pushed_while_serving() -> frozenset[str]:
        async with app.router.lifespan_context(app):
            return frozenset(app.state.scheduler.pushed())

    try:
        assert asyncio.run(pushed_while_serving()) == {"imap-in-idle", "gmail-pushed"}
    finally:
        rt.close()


def test_any_of_is_the_union_of_the_sources_given() -> None:
    assert any_of(None, lambda: ["a"], lambda: frozenset({"b", "a"}))() == {"a", "b"}
    assert any_of(None)() == frozenset()
