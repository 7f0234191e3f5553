"""IMAP wire values -> domain values: folder roles, flags, UID sets, Message-ID headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from inboxlink.domain import FolderRole

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


def flags_from_wire(flags: Iterable[bytes | str]) -> frozenset[str]:
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
    """The Message-ID from a `BODY[HEADER.FIELDS (MESSAGE-ID)]` answer, without angle brackets,
    normalised as `mime.parse` normalises it."""
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
    mid = " ".join(v for v in value if v).strip()
    mid = mid.strip("<>").strip() if mid.count("<") <= 1 else mid.split("<", 1)[1].split(">", 1)[0].strip()
    return mid or None
