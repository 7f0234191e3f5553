"""Sending from a record: a real SMTP server (aiosmtpd, in-process) delivers, Dovecot keeps the Sent
copy, and the outbox never sends twice, even when the sending process is killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import make_message, server_state

CLI = [sys.executable, "-m", "inboxlink.cli"]


@dataclass
class Mailer:
    """What the SMTP server received, and how it should behave next."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)  # answered 451 at RCPT (greylisting)
    hold_rcpt: threading.Event | None = None  # block in RCPT until set
    hold_data: threading.Event | None = None  # block in DATA until set
    in_rcpt: threading.Event = field(default_factory=threading.Event)
    in_data: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.in_rcpt.set()
        if self.hold_rcpt is not None:
            import asyncio

            while not self.hold_rcpt.is_set():
                await asyncio.sleep(0.05)
        if address in self.reject:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        if self.hold_data is not None:
            import asyncio

            while not self.hold_data.is_set():
                await asyncio.sleep(0.05)
        content = envelope.original_content or b""
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 OK queued"


@contextmanager
def smtp_requiring_login(password: str) -> Iterator[tuple[Mailer, int, dict[str, str]]]:
    """An aiosmtpd server that requires AUTH and accepts `password`; change `accepted["password"]`
    to make it refuse the account's (a password changed on the server)."""
    import socket

    from aiosmtpd.smtp import AuthResult, LoginPassword

    accepted = {"password": password}

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password.decode() == accepted["password"]
        return AuthResult(success=ok, handled=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Mailer()
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_required=True, auth_require_tls=False)  # fmt: skip
    controller.start()
    try:
        yield handler, port, accepted
    finally:
        controller.stop()


@pytest.fixture
def mailer() -> Iterator[tuple[Mailer, int]]:
    import socket

    with socket.socket() as s:  # aiosmtpd's Controller needs a real port to check it started
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Mailer()
    controller = Controller(handler, hostname="127.0.0.1", port=port, data_size_limit=200_000)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client(home: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=home, allow_private_hosts=True))) as c:
        yield c


def pair(client: TestClient, user: MailUser, smtp_port: int) -> str:
    r = client.post(
        "/api/v1/accounts",
        json={
            "email": user.email,
            "username": user.email,
            "password": user.password,
            "imap_host": user.host,
            "imap_port": user.port,
            "security": "none",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_security": "none",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["capabilities"]["can_send"] is True, r.json()["capabilities"]["smtp_error"]
    account: str = r.json()["id"]
    assert client.post(f"/api/v1/accounts/{account}/sync").json()["status"] == "connected"
    return account


def parsed(raw: bytes) -> Message:
    return message_from_bytes(raw)


def test_send_from_a_record_then_reply_in_thread(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser, mailer: tuple[Mailer, int]
) -> None:
    smtp, port = mailer
    inbound = make_message(1, sender="Dana <dana@client.example>", to=mail_user.email, subject="Quote?",
                           msgid="<q1@client.example>")  # fmt: skip
    dovecot.deliver_lmtp(mail_user.email, inbound)
    account = pair(client, mail_user, port)
    deal = client.post("/api/v1/records/deal", json={"name": "Quote", "token": "Q-9"}).json()["id"]
    sent = client.post(
        "/api/v1/outbox",
        json={
            "account_id": account,
            "to": ["dana@client.example"],
            "bcc": ["audit@inboxlink.test"],
            "text": "Here is the quote.",
            "reply_to_message": "q1@client.example",
            "records": [{"type": "deal", "id": deal}],
        },
    )
    assert sent.status_code == 201, sent.text
    item = sent.json()
    assert item["status"] == "sent" and item["error"] is None
    assert len(smtp.received) == 1
    mail_from, rcpts, raw = smtp.received[0]
    assert mail_from == mail_user.email and sorted(rcpts) == ["audit@inboxlink.test", "dana@client.example"]
    m = parsed(raw)
    assert m["Message-ID"] == f"<{item['message_id']}>" and item["message_id"].startswith(item["id"])
    assert m["In-Reply-To"] == "<q1@client.example>" and m["References"] == "<q1@client.example>"
    assert m["Subject"] == "Re: Quote?" and m["Bcc"] is None and "audit@" not in raw.decode()
    # the copy is in Sent on the server, and on the deal's timeline at once, saying why
    sent_folder = server_state(mail_user)["Sent"]
    assert item["message_id"] in sent_folder
    timeline = client.get(f"/api/v1/records/deal/{deal}/timeline").json()["entries"]
    assert [(e["message_id"], e["rule"]) for e in timeline] == [(item["message_id"], "sent")]
    assert timeline[0]["evidence"] == "sent from deal Quote"
    # the next sync finds the Sent copy already known: nothing downloaded again
    again = client.post(f"/api/v1/accounts/{account}/sync").json()
    assert again["fetched"] == 0
    # Dana answers: the reply joins the deal through the thread
    answer = make_message(2, sender="dana@client.example", to=mail_user.email, subject="Re: Quote?",
                          msgid="<a2@client.example>", in_reply_to=f"<{item['message_id']}>")  # fmt: skip
    dovecot.deliver_lmtp(mail_user.email, answer)
    client.post(f"/api/v1/accounts/{account}/sync")
    timeline = client.get(f"/api/v1/records/deal/{deal}/timeline").json()["entries"]
    rules = {e["message_id"]: e["rule"] for e in timeline}
    assert rules == {item["message_id"]: "sent", "a2@client.example": "thread"}


def test_rejections_keep_the_draft_and_send_nothing(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser, mailer: tuple[Mailer, int]
) -> None:
    smtp, port = mailer
    account = pair(client, mail_user, port)
    smtp.reject = {"nobody@client.example"}
    r = client.post(
        "/api/v1/outbox",
        json={"account_id": account, "to": ["ok@client.example", "nobody@client.example"], "subject": "Hi",
              "text": "x"},
    ).json()  # fmt: skip
    assert r["status"] == "failed" and r["error"]["code"] == "recipients_rejected"
    assert "nobody@client.example" in r["error"]["message"] and smtp.received == []
    # fix the draft and send again: exactly one message leaves, with the same Message-ID
    fixed = client.put(
        f"/api/v1/outbox/{r['id']}",
        json={"account_id": account, "to": ["ok@client.example"], "subject": "Hi", "text": "x"},
    )
    assert fixed.status_code == 200, fixed.text
    again = client.post(f"/api/v1/outbox/{r['id']}/send", json={}).json()
    assert again["status"] == "sent" and len(smtp.received) == 1
    assert parsed(smtp.received[0][2])["Message-ID"] == f"<{r['message_id']}>"
    big = client.post(
        "/api/v1/outbox",
        json={"account_id": account, "to": ["ok@client.example"], "subject": "big", "text": "y" * 300_000},
    ).json()
    assert big["status"] == "failed" and big["error"]["code"] == "message_too_large"
    assert len(smtp.received) == 1
    bad = client.post("/api/v1/outbox", json={"account_id": account, "to": ["not an address"], "text": "z"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
    broken = client.post(
        "/api/v1/outbox",
        json={"account_id": account, "to": ["ok@client.example"], "subject": "Hi\r\nBcc: x@y.z", "text": "x"},
    )
    assert broken.status_code == 422 and "line breaks" in broken.json()["error"]["message"]
    named = client.post("/api/v1/outbox", json={"account_id": account, "to": ["Dana <dana@client.example>"]})
    assert named.status_code == 422 and "give the bare address" in named.json()["error"]["message"]
    dovecot.set_password(mail_user.email, "changed-now")
    # SMTP here has no AUTH: a rejected IMAP login shows when the copy to Sent is attempted
    late = client.post(
        "/api/v1/outbox", json={"account_id": account, "to": ["ok@client.example"], "text": "z"}
    )
    assert late.json()["status"] == "sent" and "copy to the Sent folder failed" in late.json()["note"]


def test_a_recipient_deferred_at_rcpt_is_retried_and_a_refused_one_is_not(
    client: TestClient, mail_user: MailUser, mailer: tuple[Mailer, int]
) -> None:
    """451 at RCPT (greylisting) for every refused recipient: back to the queue, later, nothing
    sent; one 550 among them: failed, the user fixes the draft (nothing is sent to some only)."""
    smtp, port = mailer
    account = pair(client, mail_user, port)
    smtp.defer = {"grey@client.example"}
    r = client.post(
        "/api/v1/outbox", json={"account_id": account, "to": ["ok@client.example", "grey@client.example"],
                                "subject": "Hi", "text": "x"},
    ).json()  # fmt: skip
    assert r["status"] == "queued" and r["send_at"] is not None, r
    assert "deferred these recipients" in r["error"]["message"] and smtp.received == []
    smtp.reject = {"nobody@client.example"}
    mixed = client.post(
        "/api/v1/outbox", json={"account_id": account, "subject": "Hi", "text": "x",
                                "to": ["grey@client.example", "nobody@client.example"]},
    ).json()  # fmt: skip
    assert mixed["status"] == "failed" and mixed["error"]["code"] == "recipients_rejected", mixed
    assert "grey@client.example" in mixed["error"]["message"] and smtp.received == []


def test_send_later_is_queued_until_due(
    client: TestClient, mail_user: MailUser, mailer: tuple[Mailer, int], home: Path
) -> None:
    smtp, port = mailer
    account = pair(client, mail_user, port)
    later = client.post(
        "/api/v1/outbox",
        json={"account_id": account, "to": ["x@client.example"], "text": "later",
              "send_at": "2099-01-01T09:00:00+00:00"},
    ).json()  # fmt: skip
    assert later["status"] == "queued" and later["send_at"].startswith("2099-01-01T09:00")
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    assert rt.outbox.send_due() == 0 and smtp.received == []
    assert rt.queue.pending() == 1  # the Huey task waits for its time
    assert rt.outbox.send(later["id"])["status"] == "queued"  # not due: nothing happens
    soon = client.post(
        "/api/v1/outbox",
        json={
            "account_id": account,
            "to": ["y@client.example"],
            "text": "soon",
            "send_at": "2020-01-01T00:00:00Z",
        },
    ).json()
    assert rt.outbox.send_due() == 1 and len(smtp.received) == 1
    assert client.get(f"/api/v1/outbox/{soon['id']}").json()["status"] == "sent"
    assert rt.outbox.send_due() == 0 and len(smtp.received) == 1


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env.update(INBOXLINK_HOME=str(home), INBOXLINK_ALLOW_PRIVATE_HOSTS="1")
    return env


def _kill_cli_send(home: Path, account: str, hold: threading.Event) -> None:
    proc = subprocess.Popen(
        [*CLI, "send", account, "--to", "z@client.example", "--subject", "crash", "--text", "t", "--json"],
        env=_cli_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert hold.wait(60), "the send never reached the server"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("phase", ["rcpt", "data"])
def test_a_killed_send_is_never_sent_twice(
    client: TestClient, mail_user: MailUser, mailer: tuple[Mailer, int], home: Path, phase: str
) -> None:
    smtp, port = mailer
    account = pair(client, mail_user, port)
    release = threading.Event()
    if phase == "rcpt":
        smtp.hold_rcpt = release
        _kill_cli_send(home, account, smtp.in_rcpt)
    else:
        smtp.hold_data = release
        _kill_cli_send(home, account, smtp.in_data)
    release.set()
    time.sleep(0.3)  # let the server finish what the killed client left it
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    [row] = client.get("/api/v1/outbox").json()
    assert row["status"] == "sending"
    assert rt.outbox.recover() == 1
    rt.outbox.send_due()
    after = client.get(f"/api/v1/outbox/{row['id']}").json()
    if phase == "rcpt":
        # killed before DATA: nothing left, so it is sent now, once
        assert after["status"] == "sent" and len(smtp.received) == 1
    else:
        # killed during DATA: it may have left (here it did, as the server finished it): not resent
        assert after["status"] == "uncertain" and "may have been sent" in after["error"]["message"]
        assert len(smtp.received) <= 1
    assert rt.outbox.recover() == 0 and rt.outbox.send_due() == 0
    assert len(smtp.received) <= 1


def test_cli_send_and_timeline_contract(
    client: TestClient, mail_user: MailUser, mailer: tuple[Mailer, int], home: Path
) -> None:
    smtp, port = mailer
    account = pair(client, mail_user, port)
    env = _cli_env(home)

    def cli(*args: str) -> Any:
        proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    person = cli("records", "add", "person", "--name", "Dana", "--email", "dana@client.example", "--json")[
        "id"
    ]
    company = cli("records", "add", "company", "--name", "Client", "--domain", "client.example", "--json")[
        "id"
    ]
    deal = cli("records", "add", "deal", "--name", "Q", "--token", "T-1042", "--person", person, "--company",
               company, "--json")["id"]  # fmt: skip
    item = cli("send", account, "--to", "dana@client.example", "--subject", "[T-1042] offer", "--text", "hi",
               "--record", f"deal:{deal}", "--json")  # fmt: skip
    assert item["status"] == "sent" and len(smtp.received) == 1
    entries = cli("timeline", "deal", deal, "--json")
    assert isinstance(entries, list) and len(entries) == 1
    e = entries[0]
    assert e["message_id"] == item["message_id"] and e["subject"] == "[T-1042] offer" and e["date"]
    assert e["rule"] == "sent" and e["evidence"]
    people = cli("timeline", "person", person, "--json")
    assert (
        people[0]["rule"] == "participant"
        and people[0]["evidence"] == "dana@client.example is a recipient (To)"
    )
    queued = cli("send", account, "--to", "x@client.example", "--text", "later",
                 "--send-at", "2099-01-01T00:00:00Z", "--json")  # fmt: skip
    assert queued["status"] == "queued" and len(smtp.received) == 1
    bad = subprocess.run([*CLI, "send", account, "--to", "x@client.example", "--text", "a", "--html", "b"],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: give --text or --html")


def test_message_events_reach_webhooks(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser, mailer: tuple[Mailer, int]
) -> None:
    from inboxlink.outbound import events
    from inboxlink.outbound.webhooks import Deliverer, DeliveryOptions, WebhookService
    from tests.test_webhooks import Receiver

    rt = client.app.state.runtime  # type: ignore[attr-defined]
    receiver = Receiver()
    receiver.thread.start()
    try:
        _view, receiver.secret = WebhookService(rt.db, rt.box, rt.settings).create(
            receiver.url, [events.MESSAGE_CREATED, events.MESSAGE_LINKED, events.MESSAGE_SENT]
        )
        _smtp, port = mailer
        person = client.post(
            "/api/v1/records/person", json={"name": "Dana", "emails": ["dana@client.example"]}
        )
        inbound = make_message(
            7, sender="dana@client.example", to=mail_user.email, msgid="<in7@client.example>"
        )
        dovecot.deliver_lmtp(mail_user.email, inbound)
        account = pair(client, mail_user, port)
        sent = client.post(
            "/api/v1/outbox", json={"account_id": account, "to": ["dana@client.example"], "text": "x"}
        )
        deliverer = Deliverer(rt.db, rt.box, DeliveryOptions(allow_private_hosts=True))
        deliverer.deliver_due()
        got = [r.json for r in receiver.wait_for(4)]
        assert all(r.verified for r in receiver.received)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for event in got:
            by_type.setdefault(event["type"], []).append(event["data"])
        created = {d["message_id"] for d in by_type["message.created"]}
        assert "in7@client.example" in created
        linked = {(d["message_id"], d["record"]["id"], d["rule"]) for d in by_type["message.linked"]}
        assert ("in7@client.example", person.json()["id"], "participant") in linked
        assert (sent.json()["message_id"], person.json()["id"], "participant") in linked
        [sent_event] = by_type["message.sent"]
        assert sent_event["outbox_id"] == sent.json()["id"] and sent_event["account_id"] == account
        assert sent_event["recipients"]["to"] == [{"email": "dana@client.example", "name": None}]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


# aiosmtpd warns about AUTH without TLS (loopback, test only) and about its own deprecated
# Session.login_data, from its server thread: not ours to fix.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_smtp_auth_failure_fails_the_message_and_the_account(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    with smtp_requiring_login(mail_user.password) as (handler, port, accepted):
        account = pair(client, mail_user, port)  # pairing logged in to SMTP with the password
        accepted["password"] = "changed-on-the-server"
        r = client.post(
            "/api/v1/outbox", json={"account_id": account, "to": ["a@client.example"], "text": "x"}
        )
        item = r.json()
        assert item["status"] == "failed" and item["error"]["code"] == "auth_error", item["error"]
        assert "rejected the username or password" in item["error"]["message"]
        assert mail_user.password not in r.text and handler.received == []
        assert client.get(f"/api/v1/accounts/{account}").json()["status"] == "auth_error"
        assert client.get(f"/api/v1/outbox/{item['id']}").json()["to"] == ["a@client.example"]  # draft kept
