"""The test servers themselves: private Dovecot and PostgreSQL, and the realistic-mailbox generator.

Everything here talks to the servers with the standard library (imaplib, ssl, smtplib via
deliver_lmtp) or psycopg, so a failure points at the fixture, not at inboxlink's own IMAP code.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import select
import ssl
import statistics
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest

from inboxlink.testing import mailgen
from inboxlink.testing.dovecot import Dovecot, MailUser, _children_of
from inboxlink.testing.postgres import Postgres


def connect(user: MailUser) -> imaplib.IMAP4:
    client = imaplib.IMAP4(user.host, user.port, timeout=10)
    client.login(user.email, user.password)
    return client


def simple(subject: str, date: str = "Tue, 02 Jan 2024 10:00:00 +0100") -> bytes:
    return (
        f"From: Ann Example <ann@example.com>\r\nTo: someone@inboxlink.test\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\nMessage-ID: <{subject.replace(' ', '.')}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n"
    ).encode()


def untagged_number(client: imaplib.IMAP4, name: str) -> int:
    value = client.untagged_responses[name][0]
    assert isinstance(value, bytes)
    return int(value)


def fetch_all(client: imaplib.IMAP4, folder: str, items: str) -> list[tuple[bytes, bytes]]:
    """UID FETCH 1:* in `folder`: (metadata, literal or b"") per message."""
    typ, _ = client.select(f'"{folder}"', readonly=True)
    assert typ == "OK"
    typ, data = client.uid("FETCH", "1:*", items)
    assert typ == "OK"
    if data == [None]:
        return []
    out: list[tuple[bytes, bytes]] = []
    for item in data:
        if isinstance(item, tuple):
            out.append((item[0], item[1]))
        elif isinstance(item, bytes) and item != b")":
            out.append((item, b""))
    return out


# ----------------------------------------------------------------------------- Dovecot


def assert_login_fails(user: MailUser, email_address: str, password: str) -> None:
    client = imaplib.IMAP4(user.host, user.port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(email_address, password)
    finally:
        client.logout()


def test_login_and_wrong_password(mail_user: MailUser) -> None:
    with connect(mail_user) as client:
        assert client.state == "AUTH"
    assert_login_fails(mail_user, mail_user.email, mail_user.password + "x")
    assert_login_fails(mail_user, "nobody-here@inboxlink.test", "whatever")


def test_capabilities_after_login(mail_user: MailUser) -> None:
    with connect(mail_user) as client:
        typ, data = client.capability()
        assert typ == "OK"
        capabilities = set(data[0].decode().upper().split())
    assert {"CONDSTORE", "QRESYNC", "IDLE", "SPECIAL-USE", "UIDPLUS", "MOVE", "ENABLE"} <= capabilities


def test_special_use_folders(mail_user: MailUser) -> None:
    with connect(mail_user) as client:
        typ, data = client.list()
    assert typ == "OK"
    listed = {
        line.decode().rsplit(" ", 1)[-1].strip('"'): line.decode() for line in data if isinstance(line, bytes)
    }
    for name, flag in {
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }.items():
        assert flag in listed[name]
    assert "INBOX" in listed


def test_qresync_select_reports_modseq(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.write_messages(mail_user.email, "INBOX", [simple("one"), simple("two")])
    with connect(mail_user) as client:
        typ, _ = client.enable("QRESYNC")
        assert typ == "OK"
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"2"])
        assert untagged_number(client, "HIGHESTMODSEQ") >= 1


def test_written_messages_visible_with_flags(dovecot: Dovecot, mail_user: MailUser) -> None:
    raws = [simple(f"message {i}", f"Tue, 0{1 + i} Jan 2024 1{i}:00:00 +0000") for i in range(5)]
    dovecot.write_messages(mail_user.email, "INBOX", raws[:3], "\\Seen")
    dovecot.write_messages(
        mail_user.email, "Archive", [(raws[3], "\\Flagged \\Answered $Forwarded"), (raws[0], "RS")]
    )
    with pytest.raises(ValueError, match="maildir flag letters"):
        dovecot.write_messages(mail_user.email, "Archive", [raws[0]], flags="SA")
    dovecot.create_folder(mail_user.email, "Projects.Acme")
    dovecot.write_messages(mail_user.email, "Projects.Acme", [raws[4]])

    with connect(mail_user) as client:
        inbox = fetch_all(client, "INBOX", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        assert len(inbox) == 3
        for uid, (meta, body) in enumerate(inbox, start=1):
            assert f"UID {uid} ".encode() in meta  # UIDs follow the order written
            assert b"\\Seen" in meta
            assert body == raws[uid - 1]  # stored with LF, served with CRLF: byte for byte
        assert b'INTERNALDATE "01-Jan-2024 10:00:00 +0000"' in inbox[0][0]  # from the Date header

        client.select('"Archive"', readonly=True)
        _, data = client.uid("FETCH", "1:*", "(FLAGS)")
        flags = data[0].decode()
        assert (
            "\\Flagged" in flags and "\\Answered" in flags and "$Forwarded" in flags and "\\Seen" not in flags
        )
        assert "\\Seen" in data[1].decode() and "\\Answered" in data[1].decode()  # maildir letters "RS"

        nested = fetch_all(client, "Projects.Acme", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert [body for _, body in nested] == [b"Subject: message 4\r\n\r\n"]
        _, data = client.lsub()
        assert any(b"Projects.Acme" in line for line in data if isinstance(line, bytes))


def test_lmtp_delivery_appears(dovecot: Dovecot, mail_user: MailUser) -> None:
    with connect(mail_user) as client:
        client.select("INBOX")
        dovecot.deliver_lmtp(mail_user.email, simple("delivered"))
        client.noop()
        messages = fetch_all(client, "INBOX", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [body for _, body in messages] == [b"Subject: delivered\r\n\r\n"]
    assert b"\\Seen" not in messages[0][0]


def test_idle_sees_lmtp_delivery_at_once(dovecot: Dovecot, mail_user: MailUser) -> None:
    with connect(mail_user) as client:
        client.select("INBOX")
        client.send(b"I1 IDLE\r\n")
        assert client.readline().startswith(b"+ ")
        dovecot.deliver_lmtp(mail_user.email, simple("pushed"))
        started = time.monotonic()
        line = b""
        while b"EXISTS" not in line and time.monotonic() - started < 5:
            readable, _, _ = select.select([client.sock], [], [], 5 - (time.monotonic() - started))
            if readable:
                line = client.readline()
        assert line.strip() == b"* 1 EXISTS"
        assert time.monotonic() - started < 3  # inotify, not the 30 s polling fallback
        client.send(b"DONE\r\n")
        while not client.readline().startswith(b"I1 OK"):
            pass


def test_change_uidvalidity(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.write_messages(mail_user.email, "INBOX", [simple("a")])

    def uidvalidity() -> int:
        with connect(mail_user) as client:
            client.select("INBOX", readonly=True)
            return untagged_number(client, "UIDVALIDITY")

    before = uidvalidity()
    after = dovecot.change_uidvalidity(mail_user.email, "INBOX")
    assert after == before + 1
    assert uidvalidity() == after
    assert dovecot.change_uidvalidity(mail_user.email, "INBOX", 4242) == 4242
    assert uidvalidity() == 4242


def test_set_password(dovecot: Dovecot, mail_user: MailUser) -> None:
    with connect(mail_user):
        pass
    updated = dovecot.set_password(mail_user.email, "a new password: with spaces")
    assert_login_fails(mail_user, mail_user.email, mail_user.password)
    with connect(updated) as client:
        assert client.state == "AUTH"


def test_imaps_with_generated_ca(dovecot: Dovecot, mail_user: MailUser) -> None:
    context = ssl.create_default_context(cafile=str(dovecot.ca_cert_path))
    with imaplib.IMAP4_SSL(mail_user.host, mail_user.imaps_port, ssl_context=context, timeout=10) as client:
        client.login(mail_user.email, mail_user.password)
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            mail_user.host, mail_user.imaps_port, ssl_context=ssl.create_default_context(), timeout=10
        )


def test_private_dovecot_starts_fast_and_stops_cleanly() -> None:
    started = time.monotonic()
    with Dovecot(max_connections=50) as server:
        assert time.monotonic() - started < 5
        pid = server.pid
        assert pid is not None
        children = _children_of(pid)
        assert children
        user = server.add_user("solo@inboxlink.test", "pw")
        client = connect(user)  # left logged in: stop() must end its imap process too
        limits = re.search(r"Max open files\s+(\d+)", Path(f"/proc/{pid}/limits").read_text())
        assert limits is not None and int(limits.group(1)) >= 20_000
        root = server.dir
    assert not root.exists()
    for child, _ in [(pid, ""), *children]:
        assert not _alive(child)
    client.shutdown()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ----------------------------------------------------------------------------- PostgreSQL


def test_postgres_query(postgres: Postgres, postgres_url: str) -> None:
    import psycopg

    assert postgres_url.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/test_")
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t (name) VALUES ('a'), ('b')")
        row = conn.execute("SELECT count(*), current_database(), version() FROM t").fetchone()
    assert row is not None
    assert row[0] == 2
    assert postgres_url.endswith(f"/{row[1]}")
    assert "PostgreSQL" in row[2]


def test_postgres_url_works_with_sqlalchemy(postgres_url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 40 + 2")).scalar_one() == 42
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- mailgen


def parse_problems(raw: bytes) -> list[str]:
    """Everything the stdlib parser (policy.default) complains about, decoding every part."""
    problems: list[str] = []
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        for name in ("from", "to", "cc", "subject", "date", "message-id"):
            value = message[name]
            if value is None:
                if name in {"from", "to", "subject", "date", "message-id"}:
                    problems.append(f"missing {name}")
                continue
            problems += [type(defect).__name__ for defect in value.defects]
            if "\ufffd" in str(value):
                problems.append(f"undecodable {name}")
        for part in message.walk():
            if not part.is_multipart():
                part.get_content()
            problems += [type(defect).__name__ for defect in part.defects]
    except Exception as exc:  # any crash of the parser is a problem to report
        problems.append(repr(exc))
    return problems


def test_mailgen_is_deterministic() -> None:
    first = list(mailgen.generate(300, seed=11))
    assert first == list(mailgen.generate(300, seed=11))
    assert first[:100] == list(mailgen.generate(100, seed=11))
    assert first != list(mailgen.generate(300, seed=12))
    assert all(raw.count(b"\n") == raw.count(b"\r\n") for raw in first)  # CRLF throughout


def test_mailgen_messages_parse_cleanly_except_the_malformed_ones() -> None:
    messages = list(mailgen.generate_messages(5000, seed=5))
    malformed = [m for m in messages if m.malformed]
    assert [m.malformed for m in malformed] == list(mailgen.MALFORMED_KINDS)
    for message in malformed:
        assert parse_problems(message.raw), message.malformed
    for message in messages[:800]:
        if not message.malformed:
            assert parse_problems(message.raw) == [], (message.index, message.shape)
    ids = [m.message_id for m in messages if m.message_id]
    assert len(ids) == len(set(ids)) == len(messages) - 1  # one deliberately missing


def test_mailgen_mix_and_sizes() -> None:
    messages = list(mailgen.generate_messages(5000, seed=1))
    shapes = Counter(m.shape for m in messages)
    share = {shape: count / len(messages) for shape, count in shapes.items()}
    assert 0.31 < share["plain"] < 0.39
    assert 0.26 < share["alternative"] < 0.34
    assert 0.12 < share["html"] < 0.18
    assert 0.10 < share["attachment"] < 0.14
    assert 0.035 < share["legacy"] < 0.065
    assert {"calendar", "forward", "related"} <= set(shapes)
    assert 0.22 < sum(m.is_reply for m in messages) / len(messages) < 0.32
    assert 0.05 < sum(m.is_list for m in messages) / len(messages) < 0.11
    sizes = [len(m.raw) for m in messages]
    assert 22_000 < statistics.mean(sizes) < 32_000
    assert 2_500 < statistics.median(sizes) < 8_000
    attachments = sorted(len(m.raw) for m in messages if m.shape == "attachment" and not m.malformed)
    assert attachments[0] > 5 * 1024
    assert 1_500_000 < attachments[-1] < 3_500_000  # a long tail up to about 2 MB per file
    raws = b"".join(m.raw[:3000] for m in messages)
    for needle in (
        b"iso-2022-jp",
        b"koi8-r",
        b"iso-8859-1",
        b"windows-1252",
        b"quoted-printable",
        b"base64",
        b"text/calendar",
        b"List-Unsubscribe:",
        b"In-Reply-To:",
        b"References:",
    ):
        assert needle in raws, needle


def test_build_maildir(dovecot: Dovecot, mail_user: MailUser) -> None:
    counts = mailgen.build_maildir(dovecot, mail_user.email, 400, seed=3)
    assert sum(counts.values()) == 400
    assert set(counts) == {"INBOX", "Sent", "Archive"}
    assert counts["INBOX"] > counts["Archive"] > 20 and counts["Sent"] > 20
    with connect(mail_user) as client:
        for folder, count in counts.items():
            typ, data = client.status(folder, "(MESSAGES UNSEEN)")
            assert typ == "OK"
            assert f"MESSAGES {count} ".encode() in data[0]
        sent = fetch_all(client, "Sent", "(FLAGS BODY.PEEK[HEADER.FIELDS (FROM)])")
        assert all(mail_user.email.encode() in body and b"\\Seen" in meta for meta, body in sent)
        inbox = fetch_all(client, "INBOX", "(FLAGS)")
        flagged = sum(b"\\Flagged" in meta for meta, _ in inbox)
        seen = sum(b"\\Seen" in meta for meta, _ in inbox)
        assert 0.7 * len(inbox) < seen < len(inbox)
        assert flagged < 0.1 * len(inbox)
