"""Dovecot's delivery hook end to end (`api/routes_push_dovecot.py`): a private Dovecot with the
push_notification plugin's OX driver pointed at the app, which runs as `serve` does (API, scheduler,
task consumer on a real uvicorn server in a thread) but without the IMAP IDLE watchers and with a
poll interval of ~30 years. After an account's first sync, mail reaches the store only because
Dovecot's LMTP called `PUT /push/dovecot`.

Behaviour only: waits for what must happen are bounded loops on the fact. What must not happen
(a sync for an unknown user) is looked for after a pause longer than a poked sync takes here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from inboxlink.config import Settings
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.sync.scheduler import Scheduler
from inboxlink.testing import dovecot as dovecot_module
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import make_message, message_rows, polled, serving, sync_idle

NEVER = 1e9  # seconds: the poll interval
OPERATOR = "operator-token-for-dovecot-push"
SENDER = "rosa@customer.example"
QUIET = 1.5  # seconds: a poked account syncs well within this here (one new message, loopback)


def eventually(check: Callable[[], Any], what: str, *, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)
    return found


def mid(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: <([^>]+)>", raw, re.M | re.I)
    assert found is not None
    return found.group(1).decode()


@dataclass
class Served:
    url: str
    rt: Runtime
    dovecot: Dovecot
    endpoint: str
    poked: list[str]  # every account the scheduler was asked to sync (the real trigger runs too)
    scheduler: Scheduler  # serve's own
    users: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {OPERATOR}"}

    @property
    def token(self) -> str:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.endpoint).query))["token"]

    def new_user(self, *, register: bool = True) -> MailUser:
        self.users += 1
        user = self.dovecot.add_user(f"hooked{self.users}.{time.monotonic_ns()}@inboxlink.test", "pw-hook-1")
        if register:
            self.dovecot.register_push(user.email)
        return user

    def pair(self, user: MailUser, *, username: str | None = None, host: str | None = None) -> str:
        config = ImapConfig(
            email=user.email,
            imap_host=host or user.host,
            imap_port=user.port,
            username=username or user.email,
            security="none",
        )
        account: str = self.rt.accounts.pair_imap(config, user.password).id
        eventually(lambda: self.account(account)["status"] == "connected", "the first sync")
        return account

    def account(self, account: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/accounts/{account}", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def person(self, email: str) -> str:
        created = httpx.post(
            f"{self.url}/api/v1/records/person",
            json={"name": "Rosa Customer", "emails": [email]},
            headers=self.headers,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        person: str = created.json()["id"]
        return person

    def timeline_ids(self, person: str) -> set[str]:
        response = httpx.get(
            f"{self.url}/api/v1/records/person/{person}/timeline", headers=self.headers, timeout=10
        )
        assert response.status_code == 200, response.text
        return {entry["message_id"].strip("<>") for entry in response.json()["entries"]}

    def put(self, body: Any, *, token: str | None = None, **params: str) -> httpx.Response:
        query = {"token": self.token if token is None else token, **params}
        content = body if isinstance(body, bytes) else httpx.Request("PUT", "/", json=body).content
        return httpx.put(
            f"{self.url}/push/dovecot",
            params={k: v for k, v in query.items() if v},
            content=content,
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=10,
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not dovecot_module.is_available():
        pytest.skip("dovecot not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    home = tmp_path_factory.mktemp("dovecot-push") / "home"

    def settings_for(url: str) -> Settings:
        return Settings(
            home=home,
            public_url=url,
            allow_private_hosts=True,
            api_token=OPERATOR,
            sync_interval_seconds=NEVER,  # never polled: only pairing and pushes start a sync
        )

    with serving(settings_for) as (url, rt, app):
        scheduler, poked = app.state.scheduler, []
        trigger = scheduler.trigger

        def recorded(account_id: str) -> None:
            poked.append(account_id)
            trigger(account_id)

        setattr(scheduler, "trigger", recorded)  # noqa: B010 (mypy: a method may not be assigned)
        # the operator reads the URL from the API and puts it in dovecot.conf
        shown = httpx.get(f"{url}/push/dovecot", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
        assert shown.status_code == 200, shown.text
        endpoint = shown.json()["endpoint"]
        with Dovecot(push_url=endpoint) as dovecot:
            yield Served(url, rt, dovecot, endpoint, poked, scheduler)


def test_a_delivery_reaches_the_timeline_through_the_hook(served: Served) -> None:
    user = served.new_user()
    person = served.person(SENDER)
    early = make_message(1, sender=SENDER, to=user.email)
    served.dovecot.write_messages(user.email, "INBOX", [early])
    # Dovecot names its user as its userdb spells it (lowercase here); the login was typed otherwise
    account = served.pair(user, username=user.email.upper())
    assert served.timeline_ids(person) == {mid(early)}
    delivered = [early]
    for n in (2, 3):  # twice: each delivery is told
        raw = make_message(n, sender=SENDER, to=user.email, subject=f"Delivered {n}")
        served.dovecot.deliver_lmtp(user.email, raw)
        delivered.append(raw)
        eventually(lambda raw=raw: mid(raw) in served.timeline_ids(person), f"delivery {n} in the timeline")
    assert message_rows(served.rt.db, account) == sorted(mid(raw) for raw in delivered)
    assert "push-notification-ox: Error" not in served.dovecot.log_path.read_text()


def test_only_users_registered_with_dovecot_are_told(served: Served) -> None:
    silent = served.new_user(register=False)
    told = served.new_user()
    silent_account, told_account = served.pair(silent), served.pair(told)
    quiet = make_message(10, to=silent.email)
    served.dovecot.deliver_lmtp(silent.email, quiet)
    heard = make_message(11, to=told.email)
    served.dovecot.deliver_lmtp(told.email, heard)
    eventually(lambda: mid(heard) in message_rows(served.rt.db, told_account), "the registered user's mail")
    time.sleep(QUIET)
    assert mid(quiet) not in message_rows(served.rt.db, silent_account), "no hook, no poll: not synced"


def test_inboxlink_registers_the_mailbox_itself_when_told_to(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INBOXLINK_DOVECOT_PUSH_REGISTER: after its first sync the account registers itself with
    SETMETADATA, so the operator's doveadm step is not needed; once only."""
    monkeypatch.setattr(served.rt.settings, "dovecot_push_register", True)
    user = served.new_user(register=False)
    account = served.pair(user)
    hook = eventually(lambda: served.account(account)["capabilities"].get("delivery_hook"), "registered")
    assert hook == {"registered": True, "reason": None}
    shown = served.dovecot.doveadm(
        "mailbox", "metadata", "get", "-u", user.email, "-s", "", "/private/vendor/vendor.dovecot/http-notify"
    )
    assert shown.strip() == f"user={user.email}"
    heard = make_message(30, to=user.email)
    served.dovecot.deliver_lmtp(user.email, heard)
    eventually(lambda: mid(heard) in message_rows(served.rt.db, account), "the self-registered user's mail")


def test_the_hook_refuses_wrong_tokens_and_malformed_notifications(served: Served) -> None:
    user = served.new_user()
    account = served.pair(user)
    note = {
        "user": user.email,
        "event": "messageNew",
        "folder": "INBOX",
        "imap-uidvalidity": 1,
        "imap-uid": 1,
    }
    wrong = served.token[:-1] + ("A" if served.token[-1] != "A" else "B")
    for token in ("", wrong):
        refused = served.put(note, token=token)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "push_token_invalid"
    for body in (
        b"not json",
        b"[]",
        b'{"event": "messageNew"}',
        b'{"user": "", "event": "messageNew"}',
        b'{"user": 7, "event": "messageNew"}',
        b'{"user": "x@inboxlink.test"}',
        b'{"user": "x@inboxlink.test", "event": "messageNew", "imap-uid": -1}',
    ):
        bad = served.put(body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["error"]["code"] == "push_malformed"
    assert served.put(note, token="").status_code == 403  # the token is checked before the body
    # none of that synced anything: mail written behind Dovecot's back is still not stored
    unseen = make_message(20, to=user.email)
    served.dovecot.write_messages(user.email, "INBOX", [unseen])
    time.sleep(QUIET)
    assert mid(unseen) not in message_rows(served.rt.db, account)
    # a well-formed notification for the right user does sync it (the route works with this token)
    assert served.put(note).status_code == 204
    eventually(lambda: mid(unseen) in message_rows(served.rt.db, account), "synced once poked")


def test_unknown_users_other_hosts_and_unpaired_accounts_are_acknowledged_and_not_synced(
    served: Served,
) -> None:
    user = served.new_user()
    account = served.pair(user)
    pending = make_message(30, to=user.email)
    served.dovecot.write_messages(user.email, "INBOX", [pending])
    synced_at = served.account(account)["last_sync_at"]
    served.poked.clear()
    for note, params in (
        ({"user": "nobody@inboxlink.test", "event": "messageNew"}, {}),
        ({"user": user.email, "event": "messageNew"}, {"host": "imap.elsewhere.example"}),
    ):
        response = served.put(note, **params)
        assert response.status_code == 204, response.text  # or Dovecot would log an error per delivery
    assert account not in served.poked
    time.sleep(QUIET)
    assert served.account(account)["last_sync_at"] == synced_at
    assert mid(pending) not in message_rows(served.rt.db, account)
    # with the account's own host it is reached
    assert served.put({"user": user.email, "event": "messageNew"}, host=user.host).status_code == 204
    eventually(lambda: mid(pending) in message_rows(served.rt.db, account), "synced for its host")
    eventually(
        lambda: (
            served.account(account)["last_sync_at"] != synced_at
            and served.account(account)["status"] == "connected"
        ),
        "that run finished",
    )

    # an unpaired account (disconnected) is not poked, though Dovecot still tells of deliveries
    unpaired = httpx.delete(f"{served.url}/api/v1/accounts/{account}", headers=served.headers, timeout=10)
    assert unpaired.status_code == 200, unpaired.text
    assert served.account(account)["status"] == "disconnected"
    after = make_message(31, to=user.email)
    served.dovecot.deliver_lmtp(user.email, after)
    time.sleep(QUIET)
    assert mid(after) not in message_rows(served.rt.db, account)
    assert served.account(account)["status"] == "disconnected"
    assert served.poked.count(account) == 1, "poked while paired, not after"
    assert "push-notification-ox: Error" not in served.dovecot.log_path.read_text()


def test_the_hook_does_not_count_as_push_for_polling(served: Served) -> None:
    """Unlike Gmail's pushes (`sync/gmail_push.py`), the hook tells of new INBOX mail only: an
    account it keeps up to date is still polled every poll interval, for flags, expunges and Sent."""
    user = served.new_user()
    account = served.pair(user)
    raw = make_message(40, to=user.email)
    served.dovecot.deliver_lmtp(user.email, raw)
    eventually(
        lambda: mid(raw) in message_rows(served.rt.db, account) and sync_idle(served.rt, account),
        "the hooked delivery synced",
    )
    assert account in served.poked
    pushed = served.scheduler.pushed
    assert pushed is not None and account not in pushed()
    assert polled(served.rt, account, last_sync=timedelta(minutes=5), pushed=pushed, interval=60)


def test_the_operator_reads_the_url_and_a_config_dovecot_accepts(served: Served, tmp_path: Path) -> None:
    assert httpx.get(f"{served.url}/push/dovecot", timeout=10).status_code == 401
    shown = httpx.get(
        f"{served.url}/push/dovecot", params={"host": "imap.example.com"}, headers=served.headers, timeout=10
    ).json()
    parts = urllib.parse.urlsplit(shown["endpoint"])
    assert f"{parts.scheme}://{parts.netloc}" == served.url and parts.path == "/push/dovecot"
    assert dict(urllib.parse.parse_qsl(parts.query)) == {"token": served.token, "host": "imap.example.com"}
    assert "/private/vendor/vendor.dovecot/http-notify" in shown["register_all"]
    # the lines parse in Dovecot's own configuration, and set the driver to exactly this URL
    doveconf = shutil.which("doveconf") or "/usr/bin/doveconf"
    config = tmp_path / "dovecot.conf"
    config.write_text(served.dovecot.config_path.read_text() + "\n" + shown["dovecot_conf"])
    parsed = subprocess.run(
        [doveconf, "-c", str(config), "-n"], capture_output=True, text=True, timeout=30, check=False
    )
    assert parsed.returncode == 0, parsed.stderr
    assert f"push_notification_driver = ox:url={shown['endpoint'].replace('%', '%%')} timeout_msecs=1000" in (
        parsed.stdout
    )
    assert "imap_metadata = yes" in shown["dovecot_conf"]  # for INBOXLINK_DOVECOT_PUSH_REGISTER


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_rt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    runtime = Runtime.open(Settings(home=tmp_path / "home", database_url=url, allow_private_hosts=True))
    yield runtime
    runtime.close()


def test_the_login_lookup_reads_the_plain_config_on_both_databases(
    backend_rt: Runtime, mail_user: MailUser
) -> None:
    config = ImapConfig(
        email=f"alias.{mail_user.email}",  # an address that is not the login
        imap_host=mail_user.host,
        imap_port=mail_user.port,
        username=mail_user.email.upper(),
        security="none",
    )
    account = backend_rt.accounts.pair_imap(config, mail_user.password).id
    lookup = backend_rt.accounts.syncable_imap_by_login
    assert lookup(mail_user.email) == [account]  # by login, whatever its case
    assert lookup(f"ALIAS.{mail_user.email}") == [account]  # or by address
    assert lookup(mail_user.email, mail_user.host) == [account]
    assert lookup(mail_user.email, "imap.elsewhere.example") == []
    assert lookup("someone.else@inboxlink.test") == []
    backend_rt.accounts.unpair(account)
    assert lookup(mail_user.email) == []
