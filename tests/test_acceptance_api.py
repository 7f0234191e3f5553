"""Acceptance, black-box: the REST API and `inboxlink serve` as an operator, an API user or an
embedding developer meets them. Every test starts a real `inboxlink serve` subprocess on a free port
with a fresh INBOXLINK_HOME, talks to it with httpx only, and builds its mailbox on the private
Dovecot with imaplib APPEND as a mail client would. The server's truth is read back with imaplib
(`tests.support.server_state`); ours only through HTTP, the data directory's files and serve's logs.

What is asserted comes from README.md ("Pair and sync a mailbox", "REST API", "Settings"),
docs/architecture.md (state machine, webhooks, message detail) and the OpenAPI document the service
serves. Error codes and HTTP statuses: `{"error": {"code", "message"}}` with auth_error 401,
connect_error 503, host_refused 422, not_found 404 (errors.py's tree, as the API answers it),
invalid 422 (request validation, with `fields`) and unauthorized 401 (the API token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inboxlink.testing.dovecot import Dovecot, MailUser, free_ports
from tests.support import imap_session, server_state
from tests.test_acceptance_cli import append, create, crlf, message
from tests.test_api import body_for
from tests.test_cli import CLI, env_for

_SCRIPT = Path(sys.executable).with_name("inboxlink")
SERVE = [str(_SCRIPT)] if _SCRIPT.exists() else CLI  # the console script, as an operator runs it
# README: Dovecot holds IDLE/NOTIFY notifications for 500 ms; then a sync (tens of ms), and a margin
# for a loaded machine
PUSH_BUDGET = 2.5


# -- serve, as a subprocess ----------------------------------------------------------------------------
@dataclass
class Served:
    url: str
    home: Path
    stdout: Path
    stderr: Path
    proc: subprocess.Popen[bytes]
    client: httpx.Client

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def account(self, account_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/v1/accounts/{account_id}")
        assert answer.status_code == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    def wait_account(
        self,
        account_id: str,
        pred: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 15.0,
        every: float = 0.05,
    ) -> tuple[dict[str, Any], float]:
        """Poll GET /accounts/{id} until `pred` holds; the account and the seconds it took."""
        start = time.monotonic()
        last: dict[str, Any] = {}
        while time.monotonic() - start < timeout:
            last = self.account(account_id)
            if pred(last):
                return last, time.monotonic() - start
            time.sleep(every)
        raise AssertionError(f"{what}: not within {timeout} s; last {last}\n{self.logs()[-3000:]}")

    def pair(self, user: MailUser, **kw: object) -> dict[str, Any]:
        created = self.client.post("/api/v1/accounts", json=body_for(user, **kw))
        assert created.status_code == 201, created.text
        account: dict[str, Any] = created.json()
        return account

    def messages(self, account_id: str, **params: str | int) -> list[dict[str, Any]]:
        """Every message of the account, through the keyset pages."""
        out: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            page = self.client.get(
                f"/api/v1/accounts/{account_id}/messages", params={**params, "after": after}
            )
            assert page.status_code == 200, page.text
            out.extend(page.json()["messages"])
            after = page.json()["next_after"]
        return out


@contextmanager
def serve(
    tmp_path: Path, name: str = "serve", *, allow_private: bool = True, **settings: str
) -> Iterator[Served]:
    """`inboxlink serve --port P` with a fresh home and INBOXLINK_ALLOW_PRIVATE_HOSTS=1 (unless
    `allow_private` is False); `settings` are further INBOXLINK_* variables. Stopped with SIGTERM,
    which must end it cleanly."""
    home = tmp_path / name
    env = env_for(home, **settings)
    if not allow_private:
        del env["INBOXLINK_ALLOW_PRIVATE_HOSTS"]
    (port,) = free_ports(1)
    out, err = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([*SERVE, "serve", "--port", str(port)], env=env, stdout=o, stderr=e)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)
    served = Served(url, home, out, err, proc, client)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}: {served.logs()}"
            try:
                if client.get("/api/v1/health").json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not start: {served.logs()}"
            time.sleep(0.05)
        yield served
    finally:
        client.close()
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"serve ignored SIGTERM for 30 s: {served.logs()[-3000:]}") from None
    # uvicorn re-raises the signal once it has shut down: -SIGTERM after a clean shutdown is normal
    assert code in (0, -signal.SIGTERM), f"serve exited {code} on SIGTERM: {served.logs()[-3000:]}"
    assert "Application shutdown complete" in served.logs(), served.logs()[-3000:]


def assert_secret_nowhere(secret: str, served: Served, *texts: str) -> None:
    """Not in any file under the data directory (SQLite with its WAL, blobs, the task queue), nor
    in serve's stdout/stderr, nor in `texts`: neither as typed nor base64-encoded."""
    forms = {secret.encode(), base64.b64encode(secret.encode())}
    for path in sorted(served.home.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for form in forms:
                assert form not in data, f"{form!r} found in {path}"
    logs = served.stdout.read_bytes() + served.stderr.read_bytes()
    for form in forms:
        assert form not in logs, f"{form!r} found in serve's logs"
        for text in texts:
            assert form.decode() not in text, f"{form!r} found in {text[:300]}"


def error_of(answer: httpx.Response, status: int, code: str) -> str:
    """The README's error shape, with this status and code; its message (one clear line).
    (`fields` says where a request is invalid: OpenAPI's ErrorBody.)"""
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert set(body["error"]) <= {"code", "message", "fields"}, body
    assert body["error"]["code"] == code, body
    text: str = body["error"]["message"]
    assert text.strip() and "\n" not in text and "Traceback" not in text, text
    return text


def counts_on_server(user: MailUser) -> tuple[int, int]:
    """(messages, placements) as the README counts them, from the server (Message-IDs are unique
    in these mailboxes)."""
    state = server_state(user)
    return len({mid for folder in state.values() for mid in folder}), sum(len(f) for f in state.values())


def auth_failures(dovecot: Dovecot, user: MailUser) -> int:
    """Logins Dovecot refused for this user so far (its login process logs each one)."""
    log = dovecot.log_path.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "auth failed" in line and f"user=<{user.email}>" in line)


# -- 1. accounts through REST ---------------------------------------------------------------------------
def test_pair_list_show_unpair_and_the_password_is_nowhere(tmp_path: Path, mail_user: MailUser) -> None:
    imap = imap_session(mail_user)
    try:
        for n in range(3):
            append(imap, "INBOX", message(600 + n))
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1") as served:
        c = served.client
        created = c.post("/api/v1/accounts", json=body_for(mail_user))
        assert created.status_code == 201, created.text
        account = created.json()
        assert account["status"] == "pending" and account["provider"] == "imap"
        assert account["email"] == mail_user.email and account["message_count"] == 0
        assert "password" not in created.text.lower()
        aid = account["id"]

        listed = c.get("/api/v1/accounts")
        assert listed.status_code == 200 and [a["id"] for a in listed.json()] == [aid]
        shown, _ = served.wait_account(aid, lambda a: a["status"] == "connected", "first background sync")
        assert shown["message_count"] == 3 and shown["placement_count"] == 3
        assert shown["status_reason"] == "Connected" and shown["last_sync_at"]
        assert shown["config"]["imap_host"] == mail_user.host and "password" not in json.dumps(shown)
        history = c.get(f"/api/v1/accounts/{aid}/transitions").json()
        assert [(h["from_status"], h["to_status"]) for h in history][:3] == [
            (None, "pending"),
            ("pending", "syncing"),
            ("syncing", "connected"),
        ]

        key = served.home / "secret.key"
        assert key.stat().st_mode & 0o777 == 0o600, "the generated key is 0600 (README)"
        with sqlite3.connect(f"file:{served.home / 'inboxlink.db'}?mode=ro", uri=True) as db:
            (secret,) = db.execute("select secret from accounts where id = ?", (aid,)).fetchone()
        assert secret and mail_user.password not in secret, "credentials stored, encrypted"

        gone = c.delete(f"/api/v1/accounts/{aid}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["status"] == "disconnected" and gone.json()["message_count"] == 3
        assert served.account(aid)["status"] == "disconnected"
        assert len(served.messages(aid)) == 3, "synced mail stays"
        with sqlite3.connect(f"file:{served.home / 'inboxlink.db'}?mode=ro", uri=True) as db:
            (secret,) = db.execute("select secret from accounts where id = ?", (aid,)).fetchone()
        assert secret is None, "unpairing forgets the credentials"

        # mail arriving after unpairing is not synced, nor does a poll interval revive the account
        imap = imap_session(mail_user)
        try:
            append(imap, "INBOX", message(610))
        finally:
            imap.logout()
        time.sleep(2.5)
        assert served.account(aid)["message_count"] == 3
        assert c.post(f"/api/v1/accounts/{aid}/sync").json()["status"] == "disconnected"

        missing = c.get("/api/v1/accounts/no-such-account")
        error_of(missing, 404, "not_found")
        assert_secret_nowhere(mail_user.password, served)


def test_pair_errors_are_clear_and_carry_no_secret(tmp_path: Path, mail_user: MailUser) -> None:
    wrong_password = "Wrong-" + mail_user.password
    (closed_port,) = free_ports(1)
    with serve(tmp_path) as served:
        c = served.client
        wrong = c.post("/api/v1/accounts", json=body_for(mail_user, password=wrong_password))
        text = error_of(wrong, 401, "auth_error")
        assert f"the IMAP server {mail_user.host}:{mail_user.port} rejected the username or password" in text

        down = c.post("/api/v1/accounts", json=body_for(mail_user, imap_port=closed_port))
        text = error_of(down, 503, "connect_error")
        assert f"cannot connect to IMAP server 127.0.0.1:{closed_port}" in text, text

        assert c.get("/api/v1/accounts").json() == [], "a failed pairing stores nothing"
        assert_secret_nowhere(wrong_password, served, wrong.text, down.text)
        assert_secret_nowhere(mail_user.password, served, wrong.text, down.text)

    with serve(tmp_path, "strict", allow_private=False) as served:
        c = served.client
        answers = []
        for host, what in [("127.0.0.1", "127.0.0.1 is a loopback address"), ("localhost", "localhost")]:
            refused = c.post("/api/v1/accounts", json=body_for(mail_user, imap_host=host))
            text = error_of(refused, 422, "host_refused")
            assert what in text and "loopback" in text, text
            assert "INBOXLINK_ALLOW_PRIVATE_HOSTS" in text, "it names the setting that allows it"
            answers.append(refused.text)
        private = c.post("/api/v1/accounts", json=body_for(mail_user, imap_host="10.20.30.40"))
        assert "private address" in error_of(private, 422, "host_refused")
        assert c.get("/api/v1/accounts").json() == []
        assert_secret_nowhere(mail_user.password, served, *answers, private.text)


def test_tls_pairing_trusts_the_configured_ca_only(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """INBOXLINK_TLS_CA_FILE: an extra CA bundle for self-hosted mail servers (README, Settings)."""
    imap = imap_session(mail_user)
    try:
        append(imap, "INBOX", message(1500))
    finally:
        imap.logout()
    tls = body_for(mail_user, imap_port=mail_user.imaps_port, security="tls")
    starttls = body_for(mail_user, security="starttls")
    with serve(tmp_path, "untrusted") as served:
        for body in (tls, starttls):
            answer = served.client.post("/api/v1/accounts", json=body)
            text = error_of(answer, 503, "connect_error")
            where = f"127.0.0.1:{body['imap_port']}"
            assert text == f"the TLS certificate of {where} is not trusted: self-signed certificate"
        mismatch = served.client.post("/api/v1/accounts", json=body_for(mail_user, security="tls"))
        assert f"127.0.0.1:{mail_user.port}" in error_of(mismatch, 503, "connect_error")
        assert served.client.get("/api/v1/accounts").json() == []
    with serve(tmp_path, "trusted", INBOXLINK_TLS_CA_FILE=str(dovecot.ca_cert_path)) as served:
        aid = served.pair(mail_user, imap_port=mail_user.imaps_port, security="tls")["id"]
        shown, _ = served.wait_account(aid, lambda a: a["status"] == "connected", "sync over TLS")
        assert shown["message_count"] == 1 and shown["config"]["security"] == "tls"
        assert_secret_nowhere(mail_user.password, served)


def test_a_request_failing_validation_gets_the_error_shape_and_no_password_back(
    tmp_path: Path, mail_user: MailUser
) -> None:
    """Found by this file: FastAPI's own 422 echoed the whole request body, the pairing password
    included, in `{"detail": [...]}` (fixed in ca77417 while the file was written)."""
    with serve(tmp_path) as served:
        body = body_for(mail_user)
        del body["imap_host"]
        answer = served.client.post("/api/v1/accounts", json=body)
        assert "imap_host" in error_of(answer, 422, "invalid")
        repair = served.client.post("/api/v1/accounts/x/repair", json={"passwort": mail_user.password})
        assert "password" in error_of(repair, 422, "invalid")
        wrong_type = served.client.post("/api/v1/accounts", json=body_for(mail_user, imap_port="imap"))
        assert "imap_port" in error_of(wrong_type, 422, "invalid")
        assert_secret_nowhere(mail_user.password, served, answer.text, repair.text, wrong_type.text)


def test_every_error_answer_has_the_documented_shape(tmp_path: Path, mail_user: MailUser) -> None:
    """README: "Errors are JSON: {"error": {"code": "auth_error", "message": "…"}}" — the token
    check's 401 and request validation too (both were FastAPI's `{"detail": …}` until ca77417)."""
    with serve(tmp_path, INBOXLINK_API_TOKEN="operator-token-Acc3ptance") as served:
        c = served.client
        operator = {"Authorization": "Bearer operator-token-Acc3ptance"}
        assert c.get("/api/v1/accounts", headers=operator).json() == []
        unauthorized = c.get("/api/v1/accounts")
        assert error_of(unauthorized, 401, "unauthorized") == "missing or wrong API token"
        wrong = c.get("/api/v1/accounts", headers={"Authorization": "Bearer operator-token-wrong"})
        error_of(wrong, 401, "unauthorized")
        invalid = c.post("/api/v1/accounts", json=body_for(mail_user, imap_port=0), headers=operator)
        assert "imap_port" in error_of(invalid, 422, "invalid")
        error_of(c.get("/api/v1/no-such-route", headers=operator), 404, "not_found")
        assert_secret_nowhere("operator-token-Acc3ptance", served)


# -- 2. serve keeps accounts in sync ----------------------------------------------------------------------
def test_serve_polls_new_mail_expunges_and_copies_into_the_api(tmp_path: Path, mail_user: MailUser) -> None:
    """INBOXLINK_SYNC_INTERVAL_SECONDS=1 with the watchers off (INBOXLINK_PUSH_ENABLED=0): polling
    alone, no CLI sync anywhere."""
    imap = imap_session(mail_user)
    try:
        uids = [append(imap, "INBOX", message(700 + n)) for n in range(4)]
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1", INBOXLINK_PUSH_ENABLED="0") as served:
        aid = served.pair(mail_user)["id"]
        served.wait_account(aid, lambda a: a["status"] == "connected" and a["message_count"] == 4, "first")

        imap = imap_session(mail_user)
        try:
            new = append(imap, "INBOX", message(710, subject="arrived later"))
        finally:
            imap.logout()
        _, took = served.wait_account(aid, lambda a: a["message_count"] == 5, "appended mail", timeout=10)
        assert took < 5, f"the poll interval (1 s), a scheduler tick (1 s), a sync: {took:.2f} s"
        assert "arrived later" in {m["subject"] for m in served.messages(aid)}

        imap = imap_session(mail_user)
        try:
            imap.select("INBOX")
            assert imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
            assert imap.expunge()[0] == "OK"
            assert imap.uid("COPY", str(new), "Archive")[0] == "OK"
        finally:
            imap.logout()
        messages, placements = counts_on_server(mail_user)
        served.wait_account(
            aid,
            lambda a: (a["message_count"], a["placement_count"]) == (messages, placements),
            "expunge and copy",
            timeout=10,
        )
        assert (messages, placements) == (4, 5)
        listed = served.messages(aid)
        ours: dict[str, dict[str, frozenset[str]]] = {}
        for m in listed:
            for p in m["placements"]:
                ours.setdefault(p["folder"], {})[m["message_id"]] = frozenset(p["flags"])
        assert ours == {k: v for k, v in server_state(mail_user).items() if v}
        assert "acc-700" not in " ".join(m["message_id"] for m in listed), "the expunged one is gone"
        assert "Traceback" not in served.logs()


def test_serve_watchers_bring_new_mail_flags_and_expunges_within_the_push_delay(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Watchers on (the default) and a poll interval of ~11 days: whatever arrives, arrives by push.
    README: Dovecot holds IDLE/NOTIFY notifications for 500 ms."""
    imap = imap_session(mail_user)
    try:
        append(imap, "INBOX", message(800))
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1000000") as served:
        aid = served.pair(mail_user)["id"]
        first, _ = served.wait_account(aid, lambda a: a["status"] == "connected", "first sync")
        # the watcher starts within its 5 s rescan and syncs once on its first IDLE: then it is live
        served.wait_account(
            aid, lambda a: a["last_sync_at"] != first["last_sync_at"], "the watcher's first sync", timeout=12
        )
        time.sleep(0.3)

        imap = imap_session(mail_user)
        try:
            uid = append(imap, "INBOX", message(801, subject="pushed"))
            _, took = served.wait_account(aid, lambda a: a["message_count"] == 2, "new INBOX mail", timeout=8)
            assert took < PUSH_BUDGET, f"push delay 500 ms plus a sync: {took:.2f} s"

            imap.select("INBOX")
            assert imap.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Flagged)")[0] == "OK"
            start = time.monotonic()
            while time.monotonic() - start < 8:
                flags = {
                    p["folder"]: p["flags"]
                    for m in served.messages(aid)
                    if m["subject"] == "pushed"
                    for p in m["placements"]
                }
                if flags == {"INBOX": ["\\Flagged"]}:
                    break
                time.sleep(0.05)
            assert flags == {"INBOX": ["\\Flagged"]}, flags
            assert time.monotonic() - start < PUSH_BUDGET, "a flag change arrives by push too"

            append(imap, "Archive", message(802, subject="in another folder"))
            _, took = served.wait_account(
                aid, lambda a: a["message_count"] == 3, "mail in Archive", timeout=8
            )
            assert took < PUSH_BUDGET, f"NOTIFY reports other folders: {took:.2f} s"

            assert imap.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
            assert imap.expunge()[0] == "OK"
            _, took = served.wait_account(aid, lambda a: a["message_count"] == 2, "expunge", timeout=8)
            assert took < PUSH_BUDGET, f"an expunge arrives by push: {took:.2f} s"
        finally:
            imap.logout()
        assert (served.account(aid)["message_count"], served.account(aid)["placement_count"]) == (
            counts_on_server(mail_user)
        )

        # a password changed on the server: a watched account is not polled (30 min safety net), so
        # the next change it is told of is what finds the login refused
        changed = dovecot.set_password(mail_user.email, "Changed-" + mail_user.password)
        imap = imap_session(changed)
        try:
            append(imap, "INBOX", message(803, subject="after the password changed"))
        finally:
            imap.logout()
        broken, took = served.wait_account(aid, lambda a: a["status"] == "auth_error", "auth_error", 8)
        assert took < PUSH_BUDGET, f"by push: {took:.2f} s"
        assert "rejected the username or password" in broken["status_reason"]
        assert broken["message_count"] == 2


RACE_MESSAGES = 40  # of ~1 MB: a first sync of a few tenths of a second to land in


@pytest.mark.parametrize("action", ["unpair", "repair"])
def test_unpairing_or_repairing_during_a_background_sync_is_orderly(
    tmp_path: Path, mail_user: MailUser, action: str
) -> None:
    imap = imap_session(mail_user)
    try:
        body = "0123456789abcdef" * 4 + "\n"
        for n in range(RACE_MESSAGES):
            append(imap, "INBOX", message(900 + n, body=body * 15000))  # ~1 MB each
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1") as served:
        aid = served.pair(mail_user)["id"]
        served.wait_account(aid, lambda a: a["status"] == "syncing", "the first sync", timeout=5, every=0)
        if action == "unpair":
            answer = served.client.delete(f"/api/v1/accounts/{aid}")
        else:
            answer = served.client.post(
                f"/api/v1/accounts/{aid}/repair", json={"password": mail_user.password}
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == ("disconnected" if action == "unpair" else "pending")
        if action == "unpair" and answer.json()["message_count"] == RACE_MESSAGES:
            pytest.skip("the sync had stored everything before the unpair reached it")
        time.sleep(3)
        after = served.account(aid)
        if action == "unpair":
            assert after["status"] == "disconnected"
            assert after["message_count"] == answer.json()["message_count"], "nothing stored after unpairing"
        else:
            assert after["status"] == "connected" and after["message_count"] == RACE_MESSAGES
        assert "Traceback" not in served.logs() and "ERROR" not in served.logs(), served.logs()[-2000:]


# -- 3. account health -------------------------------------------------------------------------------------
def test_a_changed_password_shows_auth_error_keeps_the_mail_and_repair_downloads_nothing_again(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser
) -> None:
    imap = imap_session(mail_user)
    try:
        for n in range(3):
            append(imap, "INBOX", message(1000 + n))
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1", INBOXLINK_PUSH_ENABLED="0") as served:
        c = served.client
        aid = served.pair(mail_user)["id"]
        served.wait_account(aid, lambda a: a["status"] == "connected" and a["message_count"] == 3, "first")
        before = {m["message_id"]: m["id"] for m in served.messages(aid)}

        changed = dovecot.set_password(mail_user.email, "Changed-" + mail_user.password)
        broken, took = served.wait_account(aid, lambda a: a["status"] == "auth_error", "auth_error", 10)
        assert took < 5, f"the poll interval (1 s), a scheduler tick (1 s), a sync: {took:.2f} s"
        assert broken["status_reason"].startswith(
            f"the IMAP server {mail_user.host}:{mail_user.port} rejected the username or password"
        ), broken
        assert broken["message_count"] == 3 and len(served.messages(aid)) == 3, "the mail is kept"
        history = c.get(f"/api/v1/accounts/{aid}/transitions").json()
        assert history[-1]["to_status"] == "auth_error" and history[-1]["reason"] == broken["status_reason"]

        refused = auth_failures(dovecot, mail_user)
        time.sleep(2.5)
        assert auth_failures(dovecot, mail_user) == refused, "no login is retried in auth_error"

        imap = imap_session(changed)
        try:
            append(imap, "INBOX", message(1010, subject="arrived while the password was wrong"))
        finally:
            imap.logout()
        still_wrong = c.post(f"/api/v1/accounts/{aid}/repair", json={"password": mail_user.password})
        error_of(still_wrong, 401, "auth_error")
        assert served.account(aid)["status"] == "auth_error"

        repaired = c.post(f"/api/v1/accounts/{aid}/repair", json={"password": changed.password})
        assert repaired.status_code == 200, repaired.text
        assert repaired.json()["id"] == aid and repaired.json()["status"] == "pending"
        shown, _ = served.wait_account(
            aid, lambda a: a["status"] == "connected" and a["message_count"] == 4, "after re-pairing"
        )
        after = {m["message_id"]: m["id"] for m in served.messages(aid)}
        assert {k: after[k] for k in before} == before, "the same rows: nothing stored again"
        fetched = [
            int(n)
            for n in re.findall(rf"account {aid}: connected \(Connected\), (\d+) fetched", served.logs())
        ]
        assert fetched[0] == 3 and sum(fetched) == 4, f"only the new message is downloaded: {fetched}"
        assert_secret_nowhere(mail_user.password, served, still_wrong.text)
        assert_secret_nowhere(changed.password, served)
        del shown


# -- 4. reading messages -------------------------------------------------------------------------------------
HOSTILE_HTML = (
    '<html><body><p onclick="steal()">Click <b>here</b></p>'
    "<script>alert('xss')</script>"
    '<img src="https://tracker.example/p.gif" onerror="steal()">'
    '<a href="javascript:steal()">js link</a> <a href="https://ok.example/">ok link</a>'
    "</body></html>"
)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
NOTES = "Notizen: Grüße\n".encode()


def hostile() -> bytes:
    m = EmailMessage()
    m["From"] = "Mallory Sender <mallory@sender.example>"
    m["To"] = "inbox@acceptance.example"
    m["Cc"] = "Other <other@acceptance.example>"
    m["Subject"] = "HTML with a script and two attachments"
    m["Date"] = "Mon, 03 Mar 2025 10:00:00 +0000"
    m["Message-ID"] = "<hostile-html@sender.example>"
    m.set_content("The plain part.\n")
    m.add_alternative(HOSTILE_HTML, subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename="quote.pdf")
    m.add_attachment(NOTES, maintype="text", subtype="plain", filename="notizen-ü.txt")
    return bytes(m)


HOSTILE = hostile()  # once: its MIME boundaries are random
BROKEN = (
    b"From: broken@acceptance.example\r\n"
    b"To: inbox@acceptance.example\r\n"
    b"Subject: broken multipart\r\n"
    b"Date: Mon, 03 Mar 2025 11:00:00 +0000\r\n"
    b"Message-ID: <broken-mime@acceptance.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="declared-boundary"\r\n\r\n'
    b"--actual-boundary\r\n"
    b"Content-Type: text/plain\r\n\r\n"
    b"part one\r\n"
    b"--actual-boundary\r\n"
)


def test_message_endpoints_page_show_sanitize_and_download(tmp_path: Path, mail_user: MailUser) -> None:
    imap = imap_session(mail_user)
    try:
        plain = [append(imap, "INBOX", message(1100 + n)) for n in range(7)]
        append(imap, "INBOX", HOSTILE)
        append(imap, "INBOX", BROKEN)
        create(imap, "Projekte")
        append(imap, "Projekte", message(1200, subject="only in Projekte"))
    finally:
        imap.logout()
    assert len(plain) == 7
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1") as served:
        c = served.client
        aid = served.pair(mail_user)["id"]
        served.wait_account(aid, lambda a: a["status"] == "connected", "first sync")

        # keyset pages of 4: each message once, ids ascending, the last page says no more
        pages, after, seen = [], 0, []
        while after is not None:
            page = c.get(f"/api/v1/accounts/{aid}/messages", params={"after": after, "limit": 4}).json()
            pages.append(len(page["messages"]))
            seen.extend(page["messages"])
            after = page["next_after"]
        assert pages == [4, 4, 2], pages
        ids = [m["id"] for m in seen]
        assert ids == sorted(ids) and len(set(ids)) == 10
        inbox = c.get(f"/api/v1/accounts/{aid}/messages", params={"folder": "INBOX"}).json()
        assert inbox["next_after"] is None
        assert [m["subject"] for m in inbox["messages"]] == [
            *(f"acceptance message {1100 + n}" for n in range(7)),
            "HTML with a script and two attachments",
            "broken multipart",
        ], "oldest first"
        assert [m["subject"] for m in served.messages(aid, folder="Projekte")] == ["only in Projekte"]
        error_of(c.get(f"/api/v1/accounts/{aid}/messages", params={"folder": "Nope"}), 404, "not_found")
        assert c.get(f"/api/v1/accounts/{aid}/messages", params={"limit": 0}).status_code == 422
        assert c.get(f"/api/v1/accounts/{aid}/messages", params={"limit": 1001}).status_code == 422
        folders = {f["key"]: f for f in c.get(f"/api/v1/accounts/{aid}/folders").json()}
        assert {"INBOX", "Projekte", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(folders)

        by_subject = {m["subject"]: m for m in seen}
        one = by_subject["acceptance message 1100"]
        assert one["from"] == {"email": "zoe@acceptance.example", "name": "Zoë Acceptance"}
        assert one["to"] == [{"email": "inbox@acceptance.example", "name": None}]
        sent_at = parsedate_to_datetime(message_from_bytes(message(1100))["Date"])
        assert one["date"] == sent_at.isoformat() and one["parse_note"] is None
        assert one["placements"] == [{"folder": "INBOX", "remote_key": str(plain[0]), "flags": []}]
        detail = c.get(f"/api/v1/messages/{one['id']}").json()
        assert detail["text"].replace("\r\n", "\n") == "Body of acceptance message 1100.\n"
        assert detail["message_id"] == one["message_id"] and detail["attachments"] == []

        # sanitized HTML: no script, no event handler, no javascript: URL; the text survives
        rich = by_subject["HTML with a script and two attachments"]
        assert rich["cc"] == [{"email": "other@acceptance.example", "name": "Other"}]
        detail = c.get(f"/api/v1/messages/{rich['id']}").json()
        html = detail["html"]
        assert html and "Click <b>here</b>" in html and "ok link" in html, html
        for bad in ("<script", "alert(", "onclick", "onerror", "javascript:", "steal()"):
            assert bad not in html.lower(), (bad, html)
        assert detail["text"].replace("\r\n", "\n").startswith("The plain part.")
        assert detail["attachments"] == [
            {
                "filename": "quote.pdf",
                "content_type": "application/pdf",
                "size": len(PDF),
                "content_id": None,
                "inline": False,
            },
            {
                "filename": "notizen-ü.txt",
                "content_type": "text/plain",
                "size": len(NOTES),
                "content_id": None,
                "inline": False,
            },
        ]
        for index, content in enumerate((PDF, NOTES)):
            download = c.get(f"/api/v1/messages/{rich['id']}/attachments/{index}")
            assert download.status_code == 200 and download.content == content
            assert download.headers["content-disposition"].startswith("attachment;")
            assert download.headers["x-content-type-options"] == "nosniff"
            assert download.headers["content-security-policy"] == "sandbox"
        assert (
            "notizen-%C3%BC.txt"
            in c.get(f"/api/v1/messages/{rich['id']}/attachments/1").headers["content-disposition"]
        )
        error_of(c.get(f"/api/v1/messages/{rich['id']}/attachments/2"), 404, "not_found")
        raw = c.get(f"/api/v1/messages/{rich['id']}/raw")
        assert raw.status_code == 200 and raw.content == crlf(HOSTILE)
        assert raw.headers["content-type"].startswith("message/rfc822")
        assert raw.headers["content-disposition"].startswith("attachment;")

        # broken MIME: listed, with its raw fallback note, and its body kept as text
        broken = by_subject["broken multipart"]
        assert broken["message_id"] == "broken-mime@acceptance.example"
        assert broken["parse_note"] and "boundary" in broken["parse_note"], broken
        detail = c.get(f"/api/v1/messages/{broken['id']}").json()
        assert detail["parse_note"] == broken["parse_note"] and "part one" in detail["text"]
        assert c.get(f"/api/v1/messages/{broken['id']}/raw").content == BROKEN

        error_of(c.get("/api/v1/messages/999999"), 404, "not_found")


# -- 5. the rest of the README's API section -----------------------------------------------------------------
@dataclass
class Receiver:
    """A webhook receiver on loopback: keeps every request (headers, raw body) and answers 204."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_type(self, event_type: str) -> list[tuple[dict[str, str], bytes, dict[str, Any]]]:
        with self.lock:
            got = list(self.requests)
        return [(h, b, j) for h, b in got if (j := json.loads(b))["type"] == event_type]


@contextmanager
def receiver() -> Iterator[tuple[str, Receiver]]:
    kept = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with kept.lock:
                kept.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/inboxlink", kept
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def signed_correctly(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """docs/architecture.md, Webhooks: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>,
    several comma-separated v1= values possible, timestamps more than 5 min away refused."""
    timestamp = headers["inboxlink-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    values = [v.strip()[3:] for v in headers["inboxlink-signature"].split(",") if v.strip().startswith("v1=")]
    return any(hmac.compare_digest(v, expected) for v in values)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_webhooks_deliver_signed_message_created_events(tmp_path: Path, mail_user: MailUser) -> None:
    imap = imap_session(mail_user)
    try:
        append(imap, "INBOX", message(1300, subject="first for the hook"))
        append(imap, "INBOX", message(1301, subject="second for the hook"))
    finally:
        imap.logout()
    with receiver() as (hook_url, got), serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1") as served:
        c = served.client
        created = c.post("/api/v1/webhooks", json={"url": hook_url, "event_types": ["message.created"]})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        secret = endpoint["secret"]
        assert secret.startswith("whsec_") and endpoint["enabled"] is True
        assert "secret" not in c.get(f"/api/v1/webhooks/{endpoint['id']}").json(), "shown once"
        assert secret not in c.get("/api/v1/webhooks").text

        aid = served.pair(mail_user)["id"]
        wait_for(lambda: len(got.of_type("message.created")) == 2, "two message.created events")
        events = got.of_type("message.created")
        listed = {m["message_id"]: m for m in served.messages(aid)}
        for headers, raw, event in events:
            assert signed_correctly(secret, headers, raw), headers
            assert not signed_correctly("whsec_not-the-secret", headers, raw)
            assert headers["inboxlink-event-id"] == event["id"] and event["id"].startswith("evt_")
            assert set(event) == {"id", "type", "created_at", "data"}
            data = event["data"]
            assert set(data) == {"account_id", "id", "message_id", "subject", "from", "date"}, data
            mine = listed[data["message_id"]]
            assert data["account_id"] == aid and data["id"] == mine["id"]
            assert data["subject"] == mine["subject"]
            assert data["from"] == {"email": "zoe@acceptance.example", "name": "Zoë Acceptance"}
        assert {e[2]["data"]["subject"] for e in events} == {"first for the hook", "second for the hook"}
        assert not got.of_type("account.status_changed"), "only the subscribed type"

        # new mail later: one more event; the deliveries list says each succeeded at the first attempt
        imap = imap_session(mail_user)
        try:
            append(imap, "INBOX", message(1302, subject="third for the hook"))
        finally:
            imap.logout()
        wait_for(lambda: len(got.of_type("message.created")) == 3, "an event for new mail")
        deliveries = c.get(f"/api/v1/webhooks/{endpoint['id']}/deliveries").json()
        assert len(deliveries) == 3 and {d["status"] for d in deliveries} == {"succeeded"}
        sent = {h["inboxlink-event-id"] for h, _, _ in got.of_type("message.created")}
        assert {d["event_id"] for d in deliveries} == sent
        assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in deliveries)

        tested = c.post(f"/api/v1/webhooks/{endpoint['id']}/test")
        assert tested.status_code == 200 and tested.json()["status"] == "succeeded", tested.text
        ((headers, raw, event),) = got.of_type("webhook.test")
        assert signed_correctly(secret, headers, raw) and event["data"]["endpoint_id"] == endpoint["id"]

        assert c.delete(f"/api/v1/webhooks/{endpoint['id']}").status_code == 204
        error_of(c.get(f"/api/v1/webhooks/{endpoint['id']}"), 404, "not_found")
        assert_secret_nowhere(secret, served)


def test_records_link_synced_mail_with_their_evidence_and_search_finds_it(
    tmp_path: Path, mail_user: MailUser
) -> None:
    """README "Records, timelines and sending": mail already synced links to a record the moment it
    is created, and every link says why, in the documented words."""
    m = EmailMessage()
    m["From"] = "Jane Roe <jane@acme.example>"
    m["To"] = mail_user.email
    m["Subject"] = "[T-1042] offer for the renewal"
    m["Date"] = "Tue, 04 Mar 2025 09:00:00 +0000"
    m["Message-ID"] = "<offer@acme.example>"
    m.set_content("Please find the quinquennial figures below.\n")
    b = EmailMessage()
    b["From"] = "Bob <bob@acme.example>"
    b["To"] = mail_user.email
    b["Subject"] = "hello from Bob"
    b["Date"] = "Wed, 05 Mar 2025 09:00:00 +0000"
    b["Message-ID"] = "<bob@acme.example>"
    b.set_content("Nothing special.\n")
    imap = imap_session(mail_user)
    try:
        append(imap, "INBOX", bytes(m))
        append(imap, "INBOX", bytes(b))
        append(imap, "INBOX", message(1400, subject="unrelated"))
    finally:
        imap.logout()
    with serve(tmp_path, INBOXLINK_SYNC_INTERVAL_SECONDS="1") as served:
        c = served.client
        aid = served.pair(mail_user)["id"]
        served.wait_account(aid, lambda a: a["message_count"] == 3, "first sync")

        person = c.post("/api/v1/records/person", json={"name": "Jane Roe", "emails": ["jane@acme.example"]})
        assert person.status_code == 201, person.text
        company = c.post("/api/v1/records/company", json={"name": "Acme", "domains": ["acme.example"]})
        assert company.status_code == 201, company.text
        deal = c.post("/api/v1/records/deal", json={"name": "Renewal", "token": "T-1042"})
        assert deal.status_code == 201, deal.text

        def timeline(kind: str, rid: str) -> list[dict[str, Any]]:
            answer = c.get(f"/api/v1/records/{kind}/{rid}/timeline")
            assert answer.status_code == 200, answer.text
            entries: list[dict[str, Any]] = answer.json()["entries"]
            return entries

        (jane,) = timeline("person", person.json()["id"])
        assert (jane["message_id"], jane["rule"]) == ("offer@acme.example", "participant")
        assert jane["evidence"] == "jane@acme.example is the sender"
        acme = timeline("company", company.json()["id"])
        assert [e["message_id"] for e in acme] == ["bob@acme.example", "offer@acme.example"], "newest first"
        assert acme[0]["evidence"] == "bob@acme.example is at acme.example, a domain of Acme"
        (renewal,) = timeline("deal", deal.json()["id"])
        assert renewal["rule"] == "token" and renewal["evidence"] == "[T-1042] in the subject"

        found = c.get("/api/v1/search", params={"q": "quinquennial"})
        assert found.status_code == 200, found.text
        assert "offer@acme.example" in found.text and "bob@acme.example" not in found.text


def test_the_openapi_document_and_docs_cover_the_readme_api(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        spec = served.client.get("/openapi.json").json()
        docs = served.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text
    readme = [
        ("get", "/api/v1/accounts"),
        ("post", "/api/v1/accounts"),
        ("get", "/api/v1/accounts/{account_id}"),
        ("delete", "/api/v1/accounts/{account_id}"),
        ("post", "/api/v1/accounts/{account_id}/repair"),
        ("post", "/api/v1/accounts/{account_id}/sync"),
        ("get", "/api/v1/accounts/{account_id}/transitions"),
        ("get", "/api/v1/accounts/{account_id}/folders"),
        ("get", "/api/v1/accounts/{account_id}/messages"),
        ("get", "/api/v1/accounts/{account_id}/permissions"),
        ("patch", "/api/v1/accounts/{account_id}"),
        ("post", "/api/v1/records/{record_type}"),
        ("get", "/api/v1/records/{record_type}/{record_id}/timeline"),
        ("post", "/api/v1/records:import"),
        ("get", "/api/v1/messages/{message_id}"),
        ("get", "/api/v1/messages/{message_id}/raw"),
        ("get", "/api/v1/messages/{message_id}/attachments/{index}"),
        ("get", "/api/v1/search"),
        ("get", "/api/v1/review"),
        ("get", "/api/v1/settings/linking"),
        ("get", "/api/v1/blocklist"),
        ("post", "/api/v1/outbox"),
        ("post", "/api/v1/users"),
        ("post", "/api/v1/webhooks"),
        ("get", "/push/dovecot"),
    ]
    missing = [(m, p) for m, p in readme if m not in spec["paths"].get(p, {})]
    assert missing == []
    params = {p["name"] for p in spec["paths"]["/api/v1/accounts/{account_id}/messages"]["get"]["parameters"]}
    assert {"folder", "after", "limit"} <= params
    errors = spec["paths"]["/api/v1/accounts"]["post"]["responses"]
    for status in ("401", "422", "default"):
        schema = errors[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (status, errors)
    pairing = spec["components"]["schemas"]["ImapPairing"]["properties"]["password"]
    assert pairing.get("writeOnly") is True and pairing.get("format") == "password"
