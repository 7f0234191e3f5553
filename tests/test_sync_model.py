"""Random mailbox histories against a real Dovecot: after every few changes made by another client
(new mail, copies, moves, flag changes, expunges, a message without a Message-ID, a second message
reusing a Message-ID, the same bytes appended twice, a UIDVALIDITY change), one sync must leave
inboxlink holding exactly what the server holds: per folder, the same placements, each with its
message's Message-ID, size and flags; and copies of one message must share one stored message.

Seeded (`random.Random(seed)`), so a failure names its seed and replays exactly."""

from __future__ import annotations

import imaplib
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from inboxlink.config import Settings
from inboxlink.runtime import Runtime
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import imap_session, make_message, offer_only, pair

FOLDERS = ("INBOX", "Archive", "Sent", "Work")
# (folder, Message-ID or "?", RFC822.SIZE, flags) -> how many placements
Placements = Counter[tuple[str, str, int, frozenset[str]]]

_MID = re.compile(rb"Message-ID:\s*<([^>]*)>", re.IGNORECASE)
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_UID = re.compile(rb"UID (\d+)")


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.open(Settings(home=tmp_path / "home", allow_private_hosts=True))
    yield runtime
    runtime.close()


def server_placements(imap: imaplib.IMAP4) -> tuple[Placements, dict[str, list[int]]]:
    """What the server holds, and the UIDs of each folder (for picking what to change next)."""
    held: Placements = Counter()
    uids: dict[str, list[int]] = {}
    for folder in FOLDERS:
        imap.select(folder)
        _typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        uids[folder] = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, header = item
            uid, size, flags = _UID.search(meta), _SIZE.search(meta), _FLAGS.search(meta)
            assert uid and size and flags, meta
            found = _MID.search(header)
            mid = found.group(1).decode().strip() if found else "?"
            kept = frozenset(f for f in flags.group(1).decode().split() if f != "\\Recent")
            held[(folder, mid, int(size.group(1)), kept)] += 1
            uids[folder].append(int(uid.group(1)))
    return held, uids


def server_messages(imap: imaplib.IMAP4) -> int:
    """How many different messages the server holds: copies (same Message-ID, same size) count
    once; a message without a Message-ID is told apart by its bytes (two of one size may differ)."""
    seen: set[tuple[str, int] | bytes] = set()
    for folder in FOLDERS:
        imap.select(folder)
        _typ, data = imap.uid("FETCH", "1:*", "(RFC822.SIZE BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                meta, raw = item
                size, found = _SIZE.search(meta), _MID.search(raw.split(b"\r\n\r\n", 1)[0])
                assert size, meta
                seen.add((found.group(1).decode().strip(), int(size.group(1))) if found else raw)
    return len(seen)


def stored_placements(rt: Runtime, account: str) -> tuple[Placements, int]:
    """What inboxlink holds (through the account's message listing), and its number of messages."""
    held: Placements = Counter()
    rows = 0
    after: int | None = 0
    while after is not None:
        page, after = rt.accounts.messages(account, after=after, limit=1000)
        for m in page:
            rows += 1
            for p in m["placements"]:
                held[(p["folder"], m["message_id"] or "?", m["size"], frozenset(p["flags"]))] += 1
    return held, rows


class History:
    """Changes made by another client, chosen at random."""

    def __init__(self, seed: int, imap: imaplib.IMAP4, dovecot: Dovecot, user: MailUser) -> None:
        self.rng = random.Random(seed)
        self.imap = imap
        self.dovecot = dovecot
        self.user = user
        self.n = 0
        self.sent: list[bytes] = []  # every message appended so far

    def _new(self) -> bytes:
        self.n += 1
        kind = self.rng.random()
        body = "words " * self.rng.randint(1, 400) + "\n"
        if kind < 0.1 and self.sent:  # a different message reusing an earlier Message-ID
            earlier = _MID.search(self.rng.choice(self.sent))
            if earlier:
                return make_message(self.n, msgid=f"<{earlier.group(1).decode()}>", body=body + "(reused)\n")
        if kind < 0.2:  # no Message-ID at all
            raw = make_message(self.n, body=body)
            return re.sub(rb"Message-ID: <[^>]*>\r?\n", b"", raw, count=1)
        if kind < 0.25 and self.sent:  # the same bytes once more
            return self.rng.choice(self.sent)
        return make_message(self.n, msgid=f"<h{self.n}.{self.rng.randrange(10**9)}@model.example>", body=body)

    def step(self, uids: dict[str, list[int]]) -> str:
        folder = self.rng.choice(FOLDERS)
        have = uids[folder]
        op = self.rng.choice(["append", "append", "append", "copy", "move", "flag", "expunge", "uidvalidity"])
        if op == "uidvalidity" and self.rng.random() < 0.7:
            op = "append"  # rarer than the rest
        if op != "append" and op != "uidvalidity" and not have:
            op = "append"
        self.imap.select(folder)
        if op == "append":
            raw = self._new()
            self.sent.append(raw)
            flags = self.rng.choice(["", "(\\Seen)", "(\\Seen \\Flagged)"])
            typ, _ = self.imap.append(folder, flags or None, None, raw)
            assert typ == "OK"
            return f"append to {folder}"
        uid = str(self.rng.choice(have)) if have else "-"  # (drawn for uidvalidity too: seeds replay)
        other = self.rng.choice([f for f in FOLDERS if f != folder])
        if op == "uidvalidity":  # of a folder, empty or not
            self.imap.close()
            self.dovecot.change_uidvalidity(self.user.email, folder)
            self.imap.select(folder)
            return f"uidvalidity {folder}:{uid}"
        if op == "copy":
            assert self.imap.uid("COPY", uid, other)[0] == "OK"
        elif op == "move":
            assert self.imap.uid("MOVE", uid, other)[0] == "OK"
        elif op == "flag":
            change = self.rng.choice(["+FLAGS", "-FLAGS"])
            flag = self.rng.choice(["(\\Seen)", "(\\Flagged)", "(\\Answered)", "($Label1)"])
            assert self.imap.uid("STORE", uid, change, flag)[0] == "OK"
        else:  # expunge
            assert self.imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")[0] == "OK"
            assert self.imap.uid("EXPUNGE", uid)[0] == "OK"
        return f"{op} {folder}:{uid}" + (f" -> {other}" if op in ("copy", "move") else "")


CASES = [(seed, "qresync") for seed in range(12)] + [
    (seed, caps) for caps in ("condstore-only", "plain", "headers-then-full") for seed in range(12, 16)
]


@pytest.mark.parametrize(("seed", "case"), CASES)
def test_random_histories_stay_exactly_in_sync(
    seed: int, case: str, rt: Runtime, dovecot: Dovecot, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`case`: the server's extensions as offered (QRESYNC), CONDSTORE only, or neither (a UID and
    flags diff); or headers-only syncs for the first half of the history, full ones after."""
    offer_only(monkeypatch, case if case in ("condstore-only", "plain") else "qresync")
    for folder in FOLDERS[1:]:
        dovecot.create_folder(mail_user.email, folder)
    account = pair(rt, mail_user)
    imap = imap_session(mail_user)
    try:
        history = History(seed, imap, dovecot, mail_user)
        done: list[str] = []
        for round_ in range(14):
            _held, uids = server_placements(imap)
            for _ in range(history.rng.randint(1, 4)):
                done.append(history.step(uids))
                _held, uids = server_placements(imap)
            headers_only = case == "headers-then-full" and round_ < 7
            report = rt.engine.sync(account, headers_only=True if headers_only else None)
            assert report.status == "connected", report.reason
            server, _uids = server_placements(imap)
            ours, rows = stored_placements(rt, account)
            assert ours == server, f"seed {seed}, after: {done}"
            # copies are one message; anything else is a message of its own
            assert rows == server_messages(imap), f"seed {seed}, after: {done}"
            again = rt.engine.sync(account, headers_only=True if headers_only else None)
            assert again.fetched == 0, f"seed {seed}: a second sync downloaded {again.fetched}"
    finally:
        imap.logout()
