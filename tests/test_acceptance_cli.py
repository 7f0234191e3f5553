"""Acceptance, black-box: mailboxes inboxlink's developers never saw (CPython's email test corpus,
folder names that need modified UTF-7, reused and missing Message-IDs, 8-bit headers, a 5 MB
attachment, broken MIME, keywords), put on a real Dovecot with imaplib APPEND as a mail client
would, then synced through the real CLI in subprocesses. The server's truth is read back with
imaplib alone; our copy through `inboxlink messages --json` and `accounts --json`.

The counting rule asserted (README "Pair and sync a mailbox", docs/architecture.md "Identity and
idempotence"): `messages` counts each message once, `placements` each copy in a folder. A message
is identified by its Message-ID (the first `<...>`, brackets and whitespace stripped), or, without
one, by its header block; copies share the same bytes, so two messages with one identity but a
different RFC822.SIZE are two messages (`<id> #size=N`), and the same identity at the same size is
one message with several placements.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import json
import random
import re
import sqlite3
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from inboxlink.testing.dovecot import Dovecot, MailUser, free_ports
from tests.support import imap_session
from tests.test_cli import env_for, pair_args, run

CORPUS = Path(sysconfig.get_path("stdlib")) / "test" / "test_email" / "data"
BIG_ATTACHMENT = 3_800_000  # raw bytes: ~5.1 MB once base64-encoded


# -- modified UTF-7 (RFC 3501 §5.1.3), written here so that no code of the product is trusted --------
def utf7_encode(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
            out.append("&" + b64.decode() + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def utf7_decode(name: str) -> str:
    def one(m: re.Match[str]) -> str:
        if not m.group(1):
            return "&"
        b64 = m.group(1).replace(",", "/")
        return base64.b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", one, name)


def quoted(wire_name: str) -> str:
    return '"' + wire_name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the server's truth, through imaplib alone --------------------------------------------------------
@dataclass(frozen=True)
class Copy:
    """One message in one folder, as the server has it."""

    folder: str  # decoded (Unicode) name, hierarchy with the server's separator
    uid: int
    message_id: str | None
    size: int
    flags: frozenset[str]
    header: bytes

    @property
    def identity(self) -> tuple[str, str, int]:
        """What the docs say makes two copies one message: Message-ID (else the header block) and size."""
        if self.message_id is not None:
            return ("mid", self.message_id, self.size)
        return ("header", hashlib.sha256(self.header).hexdigest(), self.size)


_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<sep>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')


def normalize_message_id(value: bytes) -> str | None:
    text = re.sub(r"\r?\n[ \t]+", " ", value.decode("ascii", "replace")).strip()
    m = re.search(r"<([^>]*)>", text)
    if m:
        return m.group(1).strip() or None
    return text.split()[0] if text.split() else None


def folders_of(imap: imaplib.IMAP4) -> list[tuple[str, str, bool]]:
    """(wire name, separator, selectable) of every folder the server lists."""
    typ, listing = imap.list()
    assert typ == "OK"
    result = []
    for line in listing:
        if isinstance(line, tuple):  # a name sent as a literal
            line = line[0].rsplit(b"{", 1)[0] + b'"' + line[1] + b'"'
        assert isinstance(line, bytes)
        m = _LIST.match(line)
        assert m, line
        name = m.group("name").decode()
        if name.startswith('"'):
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        sep = m.group("sep").decode().strip('"')
        selectable = not re.search(rb"\\(Noselect|NonExistent)", m.group("attrs"), re.I)
        result.append((name, sep, selectable))
    return result


def _fetch(imap: imaplib.IMAP4, items: str) -> dict[int, tuple[bytes, bytes]]:
    """UID -> (the response's non-literal text, its literal) for every message of the selected folder."""
    typ, data = imap.uid("FETCH", "1:*", items)
    assert typ == "OK", data
    out: dict[int, tuple[bytes, bytes]] = {}
    for i, item in enumerate(data):
        if not isinstance(item, tuple):
            continue
        after = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
        meta = item[0] + b" " + (after or b"")
        uid = re.search(rb"UID (\d+)", meta)
        assert uid, meta
        out[int(uid.group(1))] = (meta, item[1])
    return out


def server_truth(user: MailUser) -> tuple[list[Copy], set[str]]:
    """Every message copy on the server, and the (decoded) names of its selectable folders."""
    imap = imap_session(user)
    try:
        copies: list[Copy] = []
        names: set[str] = set()
        for wire, _sep, selectable in folders_of(imap):
            if not selectable:
                continue
            folder = utf7_decode(wire)
            names.add(folder)
            typ, _ = imap.select(quoted(wire), readonly=True)
            assert typ == "OK", wire
            ids = _fetch(imap, "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            headers = _fetch(imap, "(UID BODY.PEEK[HEADER])")
            for uid, (meta, literal) in ids.items():
                size = re.search(rb"RFC822\.SIZE (\d+)", meta)
                flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
                assert size and flags, meta
                value = re.search(rb"^message-id:(.*(?:\r\n[ \t].*)*)", literal, re.I | re.M)
                copies.append(
                    Copy(
                        folder=folder,
                        uid=uid,
                        message_id=normalize_message_id(value.group(1)) if value else None,
                        size=int(size.group(1)),
                        flags=frozenset(f for f in flags.group(1).decode().split() if f != "\\Recent"),
                        header=headers[uid][1],
                    )
                )
            imap.close()
        return copies, names
    finally:
        imap.logout()


# -- our copy, through the CLI --------------------------------------------------------------------------
def stored(env: dict[str, str], account: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(run(["messages", account, "--json"], env).stdout)
    return listed


def stored_folders(home: Path, account: str) -> set[str]:
    """The CLI lists no folders (empty ones never show in `messages`), so read them from SQLite, read-only."""
    with sqlite3.connect(f"file:{home / 'inboxlink.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute("select key from folders where account_id = ? and not gone", (account,))
        return {r[0] for r in rows}


@dataclass
class Expected:
    messages: int
    placements: int
    message_ids: Counter[str | None]  # one entry per message
    copies: Counter[tuple[str, str | None, int, frozenset[str]]]  # (folder, Message-ID, size, flags)


def expected_from(copies: list[Copy]) -> Expected:
    one_each = {c.identity: c for c in copies}
    return Expected(
        messages=len(one_each),
        placements=len(copies),
        message_ids=Counter(c.message_id for c in one_each.values()),
        copies=Counter((c.folder, c.message_id, c.size, c.flags) for c in copies),
    )


def ours(listed: list[dict[str, Any]]) -> Expected:
    return Expected(
        messages=len(listed),
        placements=sum(len(m["placements"]) for m in listed),
        message_ids=Counter(m["message_id"] for m in listed),
        copies=Counter(
            (p["folder"], m["message_id"], m["size"], frozenset(p["flags"]))
            for m in listed
            for p in m["placements"]
        ),
    )


def pair(user: MailUser, env: dict[str, str]) -> str:
    paired = json.loads(run(pair_args(user), env, stdin=user.password + "\n").stdout)
    assert paired["status"] == "pending", paired
    account: str = paired["id"]
    return account


def sync(env: dict[str, str], account: str, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(run(["sync", account, "--once", "--json", *extra], env).stdout)
    assert report["account"] == account and report["status"] == "connected", report
    assert {"messages", "fetched_bytes", "seconds"} <= set(report)
    return report


def assert_matches(report: dict[str, Any], listed: list[dict[str, Any]], copies: list[Copy]) -> None:
    want, got = expected_from(copies), ours(listed)
    assert report["messages"] == want.messages, (report, want.messages)
    assert report.get("placements", want.placements) == want.placements, report
    assert got.messages == want.messages, "messages --json lists each message once"
    assert got.message_ids == want.message_ids, {
        "missing": want.message_ids - got.message_ids,
        "extra": got.message_ids - want.message_ids,
    }
    assert got.copies == want.copies, {"missing": want.copies - got.copies, "extra": got.copies - want.copies}
    for m in listed:
        if m["message_id"] is None:
            assert m["provider_id"].startswith("sha256:"), m


# -- the mailboxes: built with imaplib APPEND, none by the project's generator -----------------------
def message(
    n: int,
    *,
    subject: str | None = None,
    msgid: str | None = "auto",
    body: str | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = "Zoë Acceptance <zoe@acceptance.example>"
    m["To"] = "inbox@acceptance.example"
    m["Subject"] = subject or f"acceptance message {n}"
    m["Date"] = format_datetime(datetime(2025, 3, 1, 9, tzinfo=UTC) + timedelta(hours=n))
    if msgid == "auto":
        m["Message-ID"] = f"<acc-{n}.{random.Random(n).getrandbits(32):08x}@acceptance.example>"
    elif msgid is not None:
        m["Message-ID"] = msgid
    m.set_content(body or f"Body of acceptance message {n}.\n")
    return bytes(m)


def crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def append(imap: imaplib.IMAP4, folder: str, raw: bytes, flags: str | None = None) -> int:
    typ, data = imap.append(quoted(utf7_encode(folder)), flags, None, crlf(raw))
    assert typ == "OK", data
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
    assert uid, data
    return int(uid.group(1))


def create(imap: imaplib.IMAP4, folder: str) -> None:
    typ, data = imap.create(quoted(utf7_encode(folder)))
    assert typ == "OK", (folder, data)


def separator(imap: imaplib.IMAP4) -> str:
    return next(sep for name, sep, _ in folders_of(imap) if name == "INBOX")


def build_cpython_corpus(imap: imaplib.IMAP4) -> None:
    files = sorted(CORPUS.glob("msg_*.txt"))
    if not files:
        pytest.skip(f"CPython's email test corpus is not installed ({CORPUS})")
    for path in files:
        append(imap, "INBOX", path.read_bytes())


def build_folders(imap: imaplib.IMAP4) -> None:
    sep = separator(imap)
    names = [
        "Entwürfe",
        "日本語",
        "A & B",
        "With spaces",
        "Empty",
        f"Projects{sep}2026{sep}Q1 Ünïcode",
        f"Projects{sep}2026",
        f"日本語{sep}子供",
    ]
    for name in names:
        create(imap, name)
    for n, name in enumerate(["INBOX", *names]):
        if name != "Empty":
            append(imap, name, message(100 + n, subject=f"in {name}"))


def build_edge_cases(imap: imaplib.IMAP4) -> None:
    create(imap, "Kopien & Duplikate")
    copied = message(1, subject="the same message in two folders")
    append(imap, "INBOX", copied)
    append(imap, "Kopien & Duplikate", copied)
    # two different messages, one Message-ID (different sizes), in one folder
    append(imap, "INBOX", message(2, msgid="<reused@acceptance.example>", subject="first of two"))
    append(
        imap,
        "INBOX",
        message(3, msgid="<reused@acceptance.example>", subject="second of two", body="longer body\n" * 20),
    )
    # the same bytes twice in one folder: one message, two placements
    twice = message(4, subject="appended twice to INBOX")
    append(imap, "INBOX", twice)
    append(imap, "INBOX", twice)
    # no Message-ID at all: two different ones, and one copied to another folder
    append(imap, "INBOX", message(5, msgid=None, subject="no message-id, first"))
    append(imap, "INBOX", message(6, msgid=None, subject="no message-id, second"))
    orphan = message(7, msgid=None, subject="no message-id, copied")
    append(imap, "INBOX", orphan)
    append(imap, "Kopien & Duplikate", orphan)
    # 8-bit header bytes that are not UTF-8 (Latin-1, undeclared)
    append(
        imap,
        "INBOX",
        b"From: J\xf6rg M\xfcller <joerg@acceptance.example>\r\n"
        b"To: inbox@acceptance.example\r\n"
        b"Subject: Gr\xfc\xdfe aus K\xf6ln \xe0 la carte\r\n"
        b"Date: Sat, 01 Mar 2025 10:00:00 +0100\r\n"
        b"Message-ID: <latin1-header@acceptance.example>\r\n"
        b"Content-Type: text/plain\r\n\r\n"
        b"Body with 8-bit \xe9\xe8 bytes too.\r\n",
    )
    # ~5 MB: a base64 attachment
    big = EmailMessage()
    big["From"] = "archive@acceptance.example"
    big["To"] = "inbox@acceptance.example"
    big["Subject"] = "a large attachment"
    big["Date"] = "Sat, 01 Mar 2025 11:00:00 +0000"
    big["Message-ID"] = "<big-attachment@acceptance.example>"
    big.set_content("See the attached scan.\n")
    big.add_attachment(
        random.Random(5).randbytes(BIG_ATTACHMENT),
        maintype="application",
        subtype="octet-stream",
        filename="scan.bin",
    )
    append(imap, "INBOX", bytes(big))
    # broken MIME: the declared boundary never occurs, and nothing is closed
    append(
        imap,
        "INBOX",
        b"From: broken@acceptance.example\r\n"
        b"To: inbox@acceptance.example\r\n"
        b"Subject: broken multipart\r\n"
        b"Date: Sat, 01 Mar 2025 12:00:00 +0000\r\n"
        b"Message-ID: <broken-mime@acceptance.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="declared-boundary"\r\n\r\n'
        b"--actual-boundary\r\n"
        b"Content-Type: text/plain\r\n\r\n"
        b"part one\r\n"
        b"--actual-boundary\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK!!!not base64!!!\r\n",
    )


def build_flags(imap: imaplib.IMAP4) -> None:
    for n, flags in enumerate(
        [
            None,
            r"(\Seen)",
            r"(\Flagged)",
            r"($Forwarded)",
            r"(AcceptanceKeyword)",
            r"(\Seen \Flagged \Answered $Forwarded AcceptanceKeyword $Junk)",
        ]
    ):
        append(imap, "INBOX", message(200 + n, subject=f"flags {flags}"), flags)
    append(imap, "Drafts", message(210, subject="a draft"), r"(\Draft \Seen)")


BUILDERS: dict[str, Callable[[imaplib.IMAP4], None]] = {
    "cpython_corpus": build_cpython_corpus,
    "folders_dot": build_folders,
    "folders_slash": build_folders,
    "edge_cases": build_edge_cases,
    "flags": build_flags,
}


@pytest.fixture(scope="module")
def slash_dovecot(dovecot: Dovecot) -> Iterator[Dovecot]:
    """A second private Dovecot whose hierarchy separator is "/" (the session's uses ".")."""
    with Dovecot(separator="/") as server:
        yield server


@pytest.fixture(scope="module")
def mailboxes(dovecot: Dovecot, request: pytest.FixtureRequest) -> Callable[[str], MailUser]:
    """Build each named mailbox once per module (tests only read them)."""
    built: dict[str, MailUser] = {}

    def get(name: str) -> MailUser:
        if name not in built:
            server = request.getfixturevalue("slash_dovecot") if name == "folders_slash" else dovecot
            user = server.add_user(
                f"acceptance-{name.replace('_', '-')}@inboxlink.test", f"pw-{name}-Secret9"
            )
            imap = imap_session(user)
            try:
                BUILDERS[name](imap)
            finally:
                imap.logout()
            built[name] = user
        return built[name]

    return get


# -- the tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILDERS))
def test_sync_once_equals_the_server_and_a_second_sync_adds_nothing(
    tmp_path: Path, mailboxes: Callable[[str], MailUser], name: str
) -> None:
    user = mailboxes(name)
    copies, folder_names = server_truth(user)
    home = tmp_path / "home"
    env = env_for(home)
    account = pair(user, env)

    first = sync(env, account)
    assert first["fetched_bytes"] > 0
    listed = stored(env, account)
    assert_matches(first, listed, copies)
    assert folder_names <= stored_folders(home, account), "every folder, the empty one too"
    assert not any(m["headers_only"] for m in listed)
    if name == "edge_cases":
        subjects = {m["message_id"]: m["subject"] for m in listed}
        assert subjects["latin1-header@acceptance.example"] == "Grüße aus Köln à la carte"
        assert subjects["broken-mime@acceptance.example"] == "broken multipart"

    again = sync(env, account)
    assert again["fetched_bytes"] == 0 and again.get("fetched", 0) == 0, again
    assert again["messages"] == first["messages"] and again.get("placements") == first.get("placements")
    accounts = json.loads(run(["accounts", "--json"], env).stdout)
    assert [(a["id"], a["status"], a["messages"]) for a in accounts] == [
        (account, "connected", expected_from(copies).messages)
    ]
    assert accounts[0]["placements"] == len(copies) and accounts[0]["last_sync_at"]


def test_edge_case_mailbox_counts_as_documented(mailboxes: Callable[[str], MailUser]) -> None:
    """Pins the rule the generic comparison applies, on the mailbox built for it, so a wrong
    truth reader cannot make both sides agree on the wrong numbers."""
    copies, _ = server_truth(mailboxes("edge_cases"))
    want = expected_from(copies)
    # 13 APPENDs, 10 messages: a copy in two folders (1), a reused Message-ID (2), the same bytes
    # twice in INBOX (1), three without a Message-ID, one copied (3), Latin-1 headers, 5 MB, broken MIME
    assert len(copies) == 13 and want.messages == 10 and want.message_ids[None] == 3
    assert want.message_ids["reused@acceptance.example"] == 2
    assert max(c.size for c in copies) > 5_000_000


def test_cpython_corpus_counts_as_documented(mailboxes: Callable[[str], MailUser]) -> None:
    """Every corpus file is a message of its own: five reuse one Message-ID at five sizes, two
    another, and some 30 have none (each with its own header block)."""
    copies, _ = server_truth(mailboxes("cpython_corpus"))
    want = expected_from(copies)
    files = len(list(CORPUS.glob("msg_*.txt")))
    assert len(copies) == want.messages == files
    assert want.message_ids["15090.61304.110929.45684@aaa.zzz.org"] == 5
    assert want.message_ids["15261.36209.358846.118674@anthem.python.org"] == 2
    assert want.message_ids[None] >= 30


def test_headers_only_on_a_fresh_home_gives_the_same_count(
    tmp_path: Path, mailboxes: Callable[[str], MailUser]
) -> None:
    """On the edge-case mailbox (5 MB, reused and missing Message-IDs): the same messages, headers
    only; then a full sync fetches each body once."""
    user = mailboxes("edge_cases")
    copies, _ = server_truth(user)
    env = env_for(tmp_path / "home")
    account = pair(user, env)
    first = sync(env, account, "--headers-only")
    listed = stored(env, account)
    assert_matches(first, listed, copies)
    assert all(m["headers_only"] for m in listed)
    total = sum(c.size for c in {c.identity: c for c in copies}.values())
    assert 0 < first["fetched_bytes"] < total / 2, "headers only, not the bodies"
    again = sync(env, account, "--headers-only")
    assert again["fetched_bytes"] == 0 and again["messages"] == first["messages"]
    # back in full mode every body is fetched, each message's once (docs: "each once")
    full = sync(env, account)
    listed = stored(env, account)
    assert_matches(full, listed, copies)
    assert not any(m["headers_only"] for m in listed)
    assert full.get("fetched", first["messages"]) == first["messages"] and full["fetched_bytes"] == total


def test_sync_converges_after_the_server_changes(tmp_path: Path, mail_user: MailUser) -> None:
    imap = imap_session(mail_user)
    try:
        create(imap, "Entwürfe")
        uids = [append(imap, "INBOX", message(300 + n)) for n in range(4)]
        small = append(imap, "INBOX", message(310, msgid="<again@acceptance.example>"))
        large = append(imap, "INBOX", message(311, msgid="<again@acceptance.example>", body="x\n" * 300))
        orphan = append(imap, "INBOX", message(312, msgid=None, subject="no id, will move"))
        append(imap, "Archive", message(313))
        create(imap, "Projekt alt")
        append(imap, "Projekt alt", message(314, subject="in a folder that will be renamed"))
    finally:
        imap.logout()
    env = env_for(tmp_path / "home")
    account = pair(mail_user, env)
    sync(env, account)

    new = message(320, subject="arrived after the first sync")
    imap = imap_session(mail_user)
    try:
        append(imap, "INBOX", new)
        imap.select("INBOX")
        assert imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
        assert imap.expunge()[0] == "OK"
        assert imap.uid("MOVE", str(uids[1]), "Archive")[0] == "OK"
        assert imap.uid("MOVE", f"{large},{orphan}", quoted(utf7_encode("Entwürfe")))[0] == "OK"
        assert imap.uid("STORE", str(uids[2]), "+FLAGS.SILENT", r"(\Flagged AcceptanceKeyword)")[0] == "OK"
        assert imap.uid("STORE", str(small), "+FLAGS.SILENT", r"(\Seen)")[0] == "OK"
        imap.close()
        assert imap.rename(quoted("Projekt alt"), quoted(utf7_encode("Projekt neü")))[0] == "OK"
    finally:
        imap.logout()

    copies, _ = server_truth(mail_user)
    after = sync(env, account)
    assert_matches(after, stored(env, account), copies)
    assert after.get("fetched", 1) == 1 and after["fetched_bytes"] == len(crlf(new)), (
        "only the new message is downloaded: moves (the reused-id and id-less ones too) and a renamed "
        "folder download nothing"
    )
    again = sync(env, account)
    assert (
        again["fetched_bytes"] == 0
        and again["messages"] == after["messages"] == expected_from(copies).messages
    )


def test_a_folder_deleted_on_the_server_takes_its_only_copies_along(
    tmp_path: Path, mail_user: MailUser
) -> None:
    both = message(400, subject="in INBOX and in the doomed folder")
    imap = imap_session(mail_user)
    try:
        create(imap, "Zu löschen")
        append(imap, "INBOX", both)
        append(imap, "Zu löschen", both)
        append(imap, "Zu löschen", message(401, subject="only in the doomed folder"))
    finally:
        imap.logout()
    env = env_for(tmp_path / "home")
    account = pair(mail_user, env)
    assert sync(env, account)["messages"] == 2

    imap = imap_session(mail_user)
    try:
        assert imap.delete(quoted(utf7_encode("Zu löschen")))[0] == "OK"
    finally:
        imap.logout()
    copies, _ = server_truth(mail_user)
    after = sync(env, account)
    listed = stored(env, account)
    assert [m for m in listed if not m["placements"]] == [], "no live message without a folder"
    assert_matches(after, listed, copies)
    accounts = json.loads(run(["accounts", "--json"], env).stdout)
    assert accounts[0]["messages"] == 1


def test_password_changed_on_the_server_then_repairing_downloads_nothing_again(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """README: the account goes to auth_error, keeps its mail, and once paired again with the new
    password resumes where it stopped, downloading nothing again."""
    imap = imap_session(mail_user)
    try:
        for n in range(3):
            append(imap, "INBOX", message(500 + n))
    finally:
        imap.logout()
    env = env_for(tmp_path / "home")
    account = pair(mail_user, env)
    assert sync(env, account)["messages"] == 3

    changed = dovecot.set_password(mail_user.email, "Changed-" + mail_user.password)
    rejected = run(["sync", account, "--once", "--json"], env, check=False)
    assert rejected.returncode != 0
    report = json.loads(rejected.stdout)
    assert report["status"] == "auth_error" and "rejected the username or password" in report["reason"]
    assert mail_user.password not in rejected.stdout + rejected.stderr
    assert changed.password not in rejected.stdout + rejected.stderr
    (listing,) = json.loads(run(["accounts", "--json"], env).stdout)
    assert listing["status"] == "auth_error" and listing["messages"] == 3, "the mail is kept"

    imap = imap_session(changed)
    try:
        new = message(510, subject="arrived while the password was wrong")
        append(imap, "INBOX", new)
    finally:
        imap.logout()
    assert pair(changed, env) == account, "pairing the same address again re-pairs that account"
    resumed = sync(env, account)
    assert resumed["messages"] == 4 and resumed["fetched_bytes"] == len(crlf(new))
    copies, _ = server_truth(changed)
    assert_matches(resumed, stored(env, account), copies)


def _one_line_error(proc: Any, secret: str) -> str:
    assert proc.returncode != 0
    assert proc.stdout == "", "nothing on stdout (a --json caller must not parse an error as an account)"
    assert proc.stderr.count("\n") == 1 and proc.stderr.strip(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert secret not in proc.stderr and secret not in proc.stdout
    return str(proc.stderr).lower()


def test_pair_errors_are_one_clear_line(tmp_path: Path, mail_user: MailUser) -> None:
    env = env_for(tmp_path / "home")
    wrong_password = "Wrong-" + mail_user.password
    wrong = run(pair_args(mail_user), env, stdin=wrong_password + "\n", check=False)
    text = _one_line_error(wrong, wrong_password)
    assert "reject" in text and ("password" in text or "credential" in text), text

    (closed_port,) = free_ports(1)
    down = run(pair_args(mail_user, port=closed_port), env, stdin=mail_user.password + "\n", check=False)
    text = _one_line_error(down, mail_user.password)
    assert "connect" in text and f"127.0.0.1:{closed_port}" in text, text

    strict = {k: v for k, v in env.items() if k != "INBOXLINK_ALLOW_PRIVATE_HOSTS"}
    refused = run(pair_args(mail_user), strict, stdin=mail_user.password + "\n", check=False)
    text = _one_line_error(refused, mail_user.password)
    assert "loopback" in text or "private" in text, text
    assert "INBOXLINK_ALLOW_PRIVATE_HOSTS".lower() in text or "refus" in text or "not allowed" in text, text

    assert json.loads(run(["accounts", "--json"], env).stdout) == [], "a failed pairing stores nothing"
