"""IMAP wire values -> domain values: folder roles, flags, UID sets, Message-ID headers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from inboxlink.domain import FolderRole
from inboxlink.mime.parse import normalize_message_id

# RFC 6154 SPECIAL-USE attributes.
_SPECIAL_USE = {
    b"\\sent": FolderRole.SENT,
    b"\\drafts": FolderRole.DRAFTS,
    b"\\trash": FolderRole.TRASH,
    b"\\junk": FolderRole.JUNK,
    b"\\archive": FolderRole.ARCHIVE,
    b"\\all": FolderRole.ALL,
    b"\\flagged": FolderRole.FLAGGED,
}
# Servers without SPECIAL-USE: the names people and clients actually use.
_BY_NAME = {
    "sent": FolderRole.SENT,
    "sent items": FolderRole.SENT,
    "sent mail": FolderRole.SENT,
    "sent messages": FolderRole.SENT,
    "gesendet": FolderRole.SENT,
    "envoyés": FolderRole.SENT,
    "drafts": FolderRole.DRAFTS,
    "draft": FolderRole.DRAFTS,
    "entwürfe": FolderRole.DRAFTS,
    "trash": FolderRole.TRASH,
    "deleted items": FolderRole.TRASH,
    "deleted messages": FolderRole.TRASH,
    "papierkorb": FolderRole.TRASH,
    "junk": FolderRole.JUNK,
    "spam": FolderRole.JUNK,
    "junk e-mail": FolderRole.JUNK,
    "bulk mail": FolderRole.JUNK,
    "archive": FolderRole.ARCHIVE,
    "archives": FolderRole.ARCHIVE,
    "all mail": FolderRole.ALL,
}

_SYNC_ORDER = {
    FolderRole.INBOX: 0,
    FolderRole.SENT: 1,
    FolderRole.ARCHIVE: 2,
    FolderRole.OTHER: 3,
    FolderRole.FLAGGED: 4,
    FolderRole.DRAFTS: 5,
    FolderRole.ALL: 6,
    FolderRole.JUNK: 7,
    FolderRole.TRASH: 8,
}


def folder_role(name: str, attributes: Iterable[bytes], delimiter: str | None) -> FolderRole:
    if name.upper() == "INBOX":
        return FolderRole.INBOX
    for attr in attributes:
        role = _SPECIAL_USE.get(attr.lower())
        if role is not None:
            return role
    leaf = name.rsplit(delimiter, 1)[-1] if delimiter else name
    return _BY_NAME.get(leaf.strip().lower(), FolderRole.OTHER)


def sync_order(role: FolderRole) -> int:
    return _SYNC_ORDER.get(role, 3)


def is_selectable(attributes: Iterable[bytes]) -> bool:
    lowered = {a.lower() for a in attributes}
    return not ({b"\\noselect", b"\\nonexistent"} & lowered)


_FLAG_SETS: dict[tuple[bytes | str, ...], frozenset[str]] = {}


def flags_from_wire(flags: Iterable[bytes | str]) -> frozenset[str]:
    if isinstance(flags, tuple):  # a mailbox has a handful of distinct flag lists: remember them
        found = _FLAG_SETS.get(flags)
        if found is None:
            if len(_FLAG_SETS) >= 1024:
                _FLAG_SETS.clear()
            found = _FLAG_SETS[flags] = _flags_from_wire(flags)
        return found
    return _flags_from_wire(flags)


def _flags_from_wire(flags: Iterable[bytes | str]) -> frozenset[str]:
    out = set()
    for f in flags:
        s = f.decode("utf-8", "replace") if isinstance(f, bytes) else f
        if s.lower() != "\\recent":  # session-scoped, never a state to store
            out.add(s)
    return frozenset(out)


def uid_set(uids: Sequence[int]) -> str:
    """Compress UIDs into an IMAP sequence set ("1:5,9,12:14"): a plain comma list of 20,000 UIDs
    exceeds servers' command-line limits (Dovecot: 64 KiB)."""
    if not uids:
        raise ValueError("empty UID set")
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def parse_uid_set(text: str) -> list[int]:
    """The reverse of `uid_set`, for VANISHED responses ("1:3,7")."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if ":" in part:
            a, b = (int(x) for x in part.split(":", 1))
            lo, hi = min(a, b), max(a, b)
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    return out


def message_id_from_header(block: bytes) -> str | None:
    """The Message-ID from a `BODY[HEADER.FIELDS (MESSAGE-ID)]` answer, normalised exactly as
    `mime.parse` normalises it (one rule, or identify() and fetch() would disagree)."""
    text = block.decode("utf-8", "replace")
    value: list[str] = []
    found = False
    for line in text.splitlines():
        if found and line[:1] in (" ", "\t"):
            value.append(line.strip())
            continue
        if found:
            break
        if line.lower().startswith("message-id:"):
            found = True
            value.append(line.split(":", 1)[1].strip())
    if not found:
        return None
    return normalize_message_id(" ".join(v for v in value if v).strip())


# -- FETCH responses, fast path ------------------------------------------------------------------
# imapclient's response parser lexes the non-literal text character by character in Python: for a
# bulk FETCH of 10,000 messages that measured 2.5 s against 0.46 s for imaplib's whole transfer
# (docs/architecture.md). Our bulk FETCHes have one fixed shape — "<seq> (UID n FLAGS (...)
# INTERNALDATE "..." RFC822.SIZE n BODY[...] {n}" + literal + ")" — which these expressions read;
# anything else (other servers' orderings, unusual atoms) goes back to imapclient's parser.
_FETCH_HEAD = re.compile(
    rb"^\d+ \((.*?)(BODY\[[^\]]*\](?:<\d+>)?|RFC822(?:\.HEADER|\.TEXT)?) \{(\d+)\}$", re.S
)
_ITEM_UID = re.compile(rb"(?:^|[ (])UID (\d+)")
_ITEM_FLAGS = re.compile(rb"(?:^|[ (])FLAGS \(([^)]*)\)")
_ITEM_DATE = re.compile(rb'(?:^|[ (])INTERNALDATE "([^"]+)"')
_ITEM_SIZE = re.compile(rb"(?:^|[ (])RFC822\.SIZE (\d+)")
_ITEM_MODSEQ = re.compile(rb"(?:^|[ (])MODSEQ \((\d+)\)")
_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1
    )
}


def parse_internaldate(value: bytes) -> datetime | None:
    """'17-Jul-1996 02:44:25 -0700' -> an aware datetime (None when malformed)."""
    try:
        day, mon, rest = value.strip().split(b"-", 2)
        year, clock, zone = rest.split(b" ")
        hh, mm, ss = clock.split(b":")
        sign = -1 if zone[:1] == b"-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
        return datetime(
            int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset)
        )
    except (ValueError, KeyError, IndexError):
        return None


# What Dovecot answers to our bulk FETCH, in this order: one match instead of five searches.
_ITEMS_USUAL = re.compile(rb'UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE "([^"]+)" RFC822\.SIZE (\d+) ?$')
_DATES: dict[bytes, datetime | None] = {}
_ZONES: dict[bytes, timezone] = {}


def _internaldate(value: bytes) -> datetime | None:
    """`parse_internaldate`, remembered (a mailbox imported at once shares many dates); the usual
    shape parsed by slicing, with the time zone objects shared."""
    found = _DATES.get(value, _DATES)
    if found is not _DATES:
        return found  # type: ignore[return-value]
    date: datetime | None = None
    if len(value) == 26 and value[2:3] == b"-" and value[6:7] == b"-" and value[21:22] in (b"+", b"-"):
        zone = value[21:]
        tz = _ZONES.get(zone)
        try:
            if tz is None:
                tz = _ZONES[zone] = timezone(
                    timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * (-1 if zone[:1] == b"-" else 1)
                )
            date = datetime(
                int(value[7:11]),
                _MONTHS[value[3:6].lower()],
                int(value[:2]),
                int(value[12:14]),
                int(value[15:17]),
                int(value[18:20]),
                tzinfo=tz,
            )
        except (ValueError, KeyError):
            date = parse_internaldate(value)
    else:
        date = parse_internaldate(value)
    if len(_DATES) >= 4096:
        _DATES.clear()
    _DATES[value] = date
    return date


def _items(text: bytes, out: dict[bytes, Any]) -> bool:
    usual = _ITEMS_USUAL.fullmatch(text)
    if usual is not None:
        out[b"UID"] = int(usual.group(1))
        out[b"FLAGS"] = tuple(usual.group(2).split())
        out[b"INTERNALDATE"] = _internaldate(usual.group(3))
        out[b"RFC822.SIZE"] = int(usual.group(4))
        return True
    uid = _ITEM_UID.search(text)
    if uid is None:
        return False
    out[b"UID"] = int(uid.group(1))
    flags = _ITEM_FLAGS.search(text)
    if flags is not None:
        out[b"FLAGS"] = tuple(flags.group(1).split())
    date = _ITEM_DATE.search(text)
    if date is not None:
        out[b"INTERNALDATE"] = parse_internaldate(date.group(1))
    size = _ITEM_SIZE.search(text)
    if size is not None:
        out[b"RFC822.SIZE"] = int(size.group(1))
    modseq = _ITEM_MODSEQ.search(text)
    if modseq is not None:
        out[b"MODSEQ"] = int(modseq.group(1))
    return True


def parse_fetch_fast(data: list[Any]) -> dict[int, dict[bytes, Any]] | None:
    """imaplib's FETCH data -> {uid: {item: value}} in imapclient's shape, or None when a response
    is not of the simple shape (the caller then uses imapclient's parser)."""
    out: dict[int, dict[bytes, Any]] = {}
    i, n = 0, len(data)
    while i < n:
        item = data[i]
        i += 1
        if item is None:
            continue
        entry: dict[bytes, Any] = {}
        if isinstance(item, tuple):
            m = _FETCH_HEAD.match(item[0])
            if m is None or len(item[1]) != int(m.group(3)):
                return None
            if i < n and data[i] == b")":
                i += 1
            else:
                return None  # items after the literal: leave to the full parser
            if not _items(m.group(1), entry):
                return None
            key = m.group(2).replace(b".PEEK", b"")
            entry[key] = item[1]
        else:
            text = bytes(item)
            if not text.endswith(b")") or b"{" in text:
                return None
            if not _items(text.split(b" ", 1)[1] if b" " in text else text, entry):
                return None
        out[int(entry[b"UID"])] = entry
    return out
