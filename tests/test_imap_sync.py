"""The IMAP sync against a real Dovecot: full sync equals the server; incremental add, flag
change, expunge, move; UIDVALIDITY change; password change and re-pairing; headers-only mode.
Each runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.errors import AuthError, HostRefused, TransientError, WrongAccount
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.testing.dovecot import Dovecot, MailUser
from inboxlink.testing.mailgen import generate
from tests.support import (
    config_for,
    imap_session,
    local_state,
    make_message,
    message_rows,
    offer_only,
    pair,
    server_state,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    runtime = Runtime.open(
        Settings(
            home=tmp_path / "home",
            database_url=url,
            allow_private_hosts=True,
            backoff_attempts_before_error=2,
        )
    )
    yield runtime
    runtime.close()


def fill(dovecot: Dovecot, user: MailUser) -> None:
    raws = list(generate(120, seed=7))
    dovecot.write_messages(user.email, "INBOX", raws[:70], flags="S")
    dovecot.create_folder(user.email, "Archive")
    dovecot.write_messages(user.email, "Archive", raws[70:100])
    dovecot.write_messages(user.email, "Sent", [(r, "RS") for r in raws[100:120]])


def assert_in_sync(rt: Runtime, account_id: str, user: MailUser) -> None:
    server = server_state(user)
    ours = local_state(rt.db, account_id)
    assert ours == server
    # one row per distinct message: no duplicates
    distinct = {mid for folder in server.values() for mid in folder}
    rows = message_rows(rt.db, account_id)
    assert len(rows) == len(set(rows)) == len(distinct)


def test_full_sync_equals_server_and_second_sync_adds_nothing(
    rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    fill(dovecot, mail_user)
    account = pair(rt, mail_user)
    report = rt.engine.sync(account)
    assert report.status == "connected", report.reason
    assert report.reason == "Connected"
    assert report.messages == 120 and report.fetched == 120
    assert_in_sync(rt, account, mail_user)
    again = rt.engine.sync(account)
    assert (again.fetched, again.messages) == (0, 120)
    view = rt.accounts.get(account)
    assert view.capabilities and view.capabilities["qresync"] and view.capabilities["idle"]
    roles = {f["key"]: f["role"] for f in rt.accounts.folders(account)}
    assert roles["INBOX"] == "inbox" and roles["Sent"] == "sent" and roles["Archive"] == "archive"


@pytest.mark.parametrize("caps", ["qresync", "condstore-only", "plain"])
def test_incremental_add_flag_expunge_move(
    rt: Runtime, dovecot: Dovecot, mail_user: MailUser, caps: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same changes are found whichever extensions the server offers: QRESYNC, CONDSTORE only,
    or neither (a UID/flags diff)."""
    offer_only(monkeypatch, caps)
    fill(dovecot, mail_user)
    account = pair(rt, mail_user)
    rt.engine.sync(account)

    dovecot.deliver_lmtp(mail_user.email, make_message(1000, subject="New lead"))
    imap = imap_session(mail_user)
    try:
        imap.select("INBOX")
        imap.uid("STORE", "1:3", "+FLAGS", "(\\Flagged)")
        imap.uid("STORE", "4", "-FLAGS", "(\\Seen)")
        imap.uid("STORE", "5:6", "+FLAGS", "(\\Deleted)")
        imap.expunge()
        imap.uid("MOVE", "7:9", "Archive")
    finally:
        imap.logout()
    report = rt.engine.sync(account)
    assert report.status == "connected"
    assert report.fetched == 1, "only the new message is downloaded; moved ones are re-attached"
    assert_in_sync(rt, account, mail_user)
    assert report.messages == 120 + 1 - 2


def test_uidvalidity_change_makes_no_duplicate_and_downloads_nothing(
    rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    fill(dovecot, mail_user)
    account = pair(rt, mail_user)
    rt.engine.sync(account)
    dovecot.change_uidvalidity(mail_user.email, "INBOX")
    dovecot.change_uidvalidity(mail_user.email, "Archive")
    report = rt.engine.sync(account)
    assert report.status == "connected"
    assert report.fetched == 0
    assert_in_sync(rt, account, mail_user)


def test_password_change_then_repair_resumes_without_downloading(
    rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    fill(dovecot, mail_user)
    account = pair(rt, mail_user)
    rt.engine.sync(account)
    dovecot.set_password(mail_user.email, "new-secret-42")
    report = rt.engine.sync(account)
    assert report.status == AccountStatus.AUTH_ERROR
    assert report.reason and "rejected the username or password" in report.reason
    assert "new-secret-42" not in report.reason and mail_user.password not in report.reason
    assert report.messages == 120, "all data kept"
    # auth_error is final until the user pairs again: the scheduler's runs do nothing
    assert rt.engine.sync(account).status == AccountStatus.AUTH_ERROR
    with pytest.raises(AuthError):
        pair(rt, mail_user, password=mail_user.password)
    dovecot.deliver_lmtp(mail_user.email, make_message(2000))
    same = rt.accounts.pair_imap(config_for(mail_user), "new-secret-42")
    assert same.id == account and same.status == "pending"
    report = rt.engine.sync(account)
    assert report.status == "connected"
    assert report.fetched == 1, "only the message that arrived meanwhile"
    statuses = [t.to_status for t in rt.accounts.transitions(account)]
    assert statuses[:3] == ["pending", "syncing", "connected"]
    assert "auth_error" in statuses and statuses[-1] == "connected"
    reasons = {t.to_status: t.reason for t in rt.accounts.transitions(account)}
    assert reasons["pending"] == "re-paired"


def test_repair_with_another_mailbox_is_refused(rt: Runtime, dovecot: Dovecot, mail_user: MailUser) -> None:
    account = pair(rt, mail_user)
    other = dovecot.add_user(f"other-{mail_user.email}", "pw-other")
    with pytest.raises(WrongAccount):
        rt.accounts.pair_imap(config_for(other), other.password, account_id=account)


def test_pairing_errors_are_clear_and_store_nothing(rt: Runtime, mail_user: MailUser) -> None:
    with pytest.raises(AuthError, match="rejected the username or password"):
        pair(rt, mail_user, password="wrong")
    with pytest.raises(TransientError, match=r"cannot connect to IMAP server 127\.0\.0\.1:1"):
        rt.accounts.pair_imap(config_for(mail_user, imap_port=1), mail_user.password)
    strict = Runtime.open(rt.settings.model_copy(update={"allow_private_hosts": False}))
    try:
        with pytest.raises(HostRefused):
            strict.accounts.pair_imap(config_for(mail_user), mail_user.password)
    finally:
        strict.close()
    assert rt.accounts.all() == []


def test_unreachable_server_backs_off_then_connect_error(
    rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    account = pair(rt, mail_user)
    rt.engine.sync(account)
    from sqlalchemy import update

    from inboxlink.store.schema import accounts

    with rt.db.engine.begin() as conn:
        row = conn.execute(accounts.select().where(accounts.c.id == account)).one()
        conn.execute(
            update(accounts).where(accounts.c.id == account).values(config={**row.config, "imap_port": 1})
        )
    slept: list[float] = []
    report = rt.engine.sync(account, attempts=3, sleep=slept.append)
    assert report.status == AccountStatus.CONNECT_ERROR
    assert report.reason and "127.0.0.1:1" in report.reason
    assert len(slept) == 2 and slept[1] > 0
    view = rt.accounts.get(account)
    assert view.last_error and view.message_count == 0
    # connect_error is retried: once the server is back, the account comes back by itself
    with rt.db.engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == account).values(config={**row.config}))
    assert rt.engine.sync(account).status == "connected"


def test_headers_only_then_full(rt: Runtime, dovecot: Dovecot, mail_user: MailUser) -> None:
    fill(dovecot, mail_user)
    account = pair(rt, mail_user)
    report = rt.engine.sync(account, headers_only=True)
    assert report.status == "connected" and report.messages == 120
    assert_in_sync(rt, account, mail_user)
    from sqlalchemy import select

    from inboxlink.store.schema import messages

    with rt.db.engine.connect() as conn:
        rows = conn.execute(select(messages.c.headers_only, messages.c.text_body, messages.c.subject)).all()
    assert all(r.headers_only and r.text_body is None for r in rows)
    assert sum(1 for r in rows if r.subject) >= 100
    # a full-mode sync downloads the bodies of header-only messages, and nothing else
    full = rt.engine.sync(account)
    assert full.fetched == 120 and full.messages == 120
    assert rt.engine.sync(account).fetched == 0
    with rt.db.engine.connect() as conn:
        rows = conn.execute(select(messages.c.headers_only)).all()
    assert not any(r.headers_only for r in rows)
    assert_in_sync(rt, account, mail_user)


def test_a_dropped_connection_is_closed_not_leaked(dovecot: Dovecot, mail_user: MailUser) -> None:
    """The server kicks the session mid-use: the next call is a TransientError and the dead socket
    is closed at once (pytest -W error turns a socket left to the garbage collector into a failure)."""
    import gc

    from inboxlink.providers.imap.provider import ConnectOptions, ImapProvider

    provider = ImapProvider(
        ImapConfig(email=mail_user.email, imap_host=mail_user.host, imap_port=mail_user.port,
                   username=mail_user.email, security="none"),
        mail_user.password,
        ConnectOptions(allow_private_hosts=True, timeout=10),
    )  # fmt: skip
    provider.verify()
    sock = provider._client._imap.sock  # type: ignore[union-attr]
    dovecot.doveadm("kick", mail_user.email)
    with pytest.raises(TransientError, match="lost during"):
        for _ in range(3):  # the kick may land between two calls
            provider.folders()
    assert sock.fileno() == -1  # closed by us, not by the collector
    provider.close()
    gc.collect()


@pytest.mark.parametrize(
    ("security", "port", "hint"),
    [
        ("tls", "port", "for a plaintext or STARTTLS port (usually 143) use security starttls"),
        ("none", "imaps_port", "no IMAP greeting came: for a TLS port (usually 993) use security tls"),
        ("starttls", "imaps_port", "no IMAP greeting came: for a TLS port (usually 993) use security tls"),
    ],
)
def test_the_wrong_security_for_the_port_says_what_to_try(
    mail_user: MailUser, security: str, port: str, hint: str
) -> None:
    """TLS spoken to a plaintext port, or plaintext (and STARTTLS) to a TLS port: the error names
    the likely mistake rather than only OpenSSL's 'wrong version number' or a bare time-out."""
    from inboxlink.providers.imap.provider import ConnectOptions, ImapProvider

    provider = ImapProvider(
        ImapConfig(email=mail_user.email, imap_host=mail_user.host, imap_port=getattr(mail_user, port),
                   username=mail_user.email, security=security),
        mail_user.password,
        ConnectOptions(allow_private_hosts=True, timeout=1),
    )  # fmt: skip
    with pytest.raises(TransientError) as caught:
        provider.verify()
    assert hint in caught.value.message
    provider.close()


def test_a_reused_message_id_keeps_both_messages(rt: Runtime, dovecot: Dovecot, mail_user: MailUser) -> None:
    """Two different messages with one Message-ID (broken mailers, spam) are two messages, each
    with its own body; a copy of one (same bytes) stays one message in two folders; moving them
    later downloads nothing."""
    mid = "<reused@broken.example>"
    first = make_message(1, msgid=mid, body="The first message.\n")
    second = make_message(2, msgid=mid, body="A second, different message that reuses the id.\n")
    dovecot.write_messages(mail_user.email, "INBOX", [first, second])
    dovecot.create_folder(mail_user.email, "Archive")
    dovecot.write_messages(mail_user.email, "Archive", [first])
    account = pair(rt, mail_user)
    report = rt.engine.sync(account)
    assert (report.messages, report.fetched) == (2, 3)

    def stored() -> dict[str, set[str]]:
        """text body -> the folders holding it"""
        with rt.db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT m.text_body, f.key FROM messages m JOIN placements p ON p.message_id = m.id "
                    "JOIN folders f ON f.id = p.folder_id WHERE m.account_id = :a AND m.deleted_at IS NULL"
                ),
                {"a": account},
            ).all()
        out: dict[str, set[str]] = {}
        for body, folder in rows:
            out.setdefault(body.strip(), set()).add(folder)
        return out

    assert stored() == {
        "The first message.": {"INBOX", "Archive"},
        "A second, different message that reuses the id.": {"INBOX"},
    }
    assert rt.engine.sync(account).fetched == 0
    imap = imap_session(mail_user)
    try:
        imap.select("INBOX")
        imap.uid("MOVE", "1:2", "Archive")
    finally:
        imap.logout()
    moved = rt.engine.sync(account)
    assert (moved.messages, moved.fetched) == (2, 0), "both are re-attached by id and size"
    assert stored() == {
        "The first message.": {"Archive"},
        "A second, different message that reuses the id.": {"Archive"},
    }
