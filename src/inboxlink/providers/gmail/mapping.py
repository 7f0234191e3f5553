"""Gmail API resources -> domain values: labels to folders, label sets to placements and flags,
message resources to refs and raw messages.

Labels are placements. A message sits in each of its "folder-like" labels (INBOX, SENT, DRAFT, user
labels) under its Gmail id; UNREAD, STARRED and IMPORTANT are flags, categories and CHAT are neither.
Two rules keep this close to what Gmail's own IMAP view shows:

- TRASH and SPAM hide every other label (a trashed message is only in Trash);
- a message with no folder-like label (archived) sits in the synthetic `ARCHIVE` folder, so that
  archiving is a move and never looks like a deletion to the engine.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from inboxlink.domain import FetchParts, Folder, FolderRole, MessageRef, RawMessage

INBOX = "INBOX"
# Not a Gmail label: the folder of archived mail (no folder-like label). Gmail's system label ids
# are fixed upper-case words and user label ids are "Label_<n>", so this key cannot collide.
ARCHIVE = "ARCHIVE"

_ROLES = {
    "INBOX": (FolderRole.INBOX, "Inbox"),
    "SENT": (FolderRole.SENT, "Sent"),
    "DRAFT": (FolderRole.DRAFTS, "Drafts"),
    "SPAM": (FolderRole.JUNK, "Spam"),
    "TRASH": (FolderRole.TRASH, "Trash"),
}
# System labels that are not folders: flags, Gmail's categories, chat.
_NOT_FOLDERS = frozenset({"UNREAD", "STARRED", "IMPORTANT", "CHAT"})
_SYNC_ORDER = {
    FolderRole.INBOX: 0,
    FolderRole.SENT: 1,
    FolderRole.ARCHIVE: 2,
    FolderRole.OTHER: 3,
    FolderRole.DRAFTS: 5,
    FolderRole.JUNK: 7,
    FolderRole.TRASH: 8,
}

SEEN, FLAGGED, DRAFT_FLAG, IMPORTANT_FLAG = "\\Seen", "\\Flagged", "\\Draft", "$Important"


def is_folder_label(label_id: str) -> bool:
    if label_id in _ROLES:
        return True
    return label_id not in _NOT_FOLDERS and not label_id.startswith("CATEGORY_") and label_id != ARCHIVE


def folders_from_labels(labels: Iterable[Mapping[str, Any]]) -> list[Folder]:
    """The folders of a mailbox from `labels.list`, inbox first, plus the synthetic archive."""
    out = [Folder(key=ARCHIVE, name="Archive", role=FolderRole.ARCHIVE)]
    for label in labels:
        label_id = str(label["id"])
        if not is_folder_label(label_id):
            continue
        role, name = _ROLES.get(label_id, (FolderRole.OTHER, str(label.get("name") or label_id)))
        out.append(Folder(key=label_id, name=name, role=role))
    out.sort(key=lambda f: (_SYNC_ORDER.get(f.role, 3), f.name.lower()))
    return out


def placements(label_ids: Iterable[str]) -> frozenset[str]:
    """The folder keys a message with these labels sits in (never empty)."""
    labels = set(label_ids)
    if "TRASH" in labels:
        return frozenset({"TRASH"})
    if "SPAM" in labels:
        return frozenset({"SPAM"})
    found = frozenset(x for x in labels if is_folder_label(x))
    return found or frozenset({ARCHIVE})


def flags(label_ids: Iterable[str]) -> frozenset[str]:
    """IMAP-style flags, the neutral vocabulary the store and the CRM use."""
    labels = set(label_ids)
    out = set()
    if "UNREAD" not in labels:
        out.add(SEEN)
    if "STARRED" in labels:
        out.add(FLAGGED)
    if "DRAFT" in labels:
        out.add(DRAFT_FLAG)
    if "IMPORTANT" in labels:
        out.add(IMPORTANT_FLAG)
    return frozenset(out)


def refs_for(message: Mapping[str, Any]) -> list[MessageRef]:
    """One ref per placement of a message resource that carries `labelIds` (minimal, metadata,
    raw formats and history records all do)."""
    msg_id = str(message["id"])
    labels = [str(x) for x in message.get("labelIds") or ()]
    size = int(message["sizeEstimate"]) if message.get("sizeEstimate") is not None else None
    fl = flags(labels)
    return [
        MessageRef(folder=key, remote_key=msg_id, provider_id=msg_id, flags=fl, size=size)
        for key in sorted(placements(labels))
    ]


def decode_raw(value: str) -> bytes:
    """The `raw` field: base64url, with or without padding (Gmail pads; the spec allows both)."""
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("Gmail returned a raw message that is not base64url") from exc


def encode_raw(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def header_block(payload: Mapping[str, Any]) -> bytes:
    """A `format=metadata` payload's headers as an RFC 5322 header block ending in an empty line,
    so that the MIME parser reads it exactly like IMAP's BODY[HEADER]. Gmail gives the values
    unfolded and still encoded (RFC 2047 words intact); a stray line break would end the block
    early, so it becomes a space."""
    lines = []
    for header in payload.get("headers") or ():
        name = str(header.get("name") or "").strip()
        if not name:
            continue
        value = str(header.get("value") or "").replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}: {value}\r\n")
    return ("".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def internal_date(message: Mapping[str, Any]) -> datetime | None:
    value = message.get("internalDate")
    if value is None:
        return None
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def raw_message(ref: MessageRef, message: Mapping[str, Any], parts: FetchParts) -> RawMessage:
    """A fetched message resource (`format=raw`, or `format=metadata` for headers only)."""
    headers_only = parts is FetchParts.HEADERS
    if headers_only:
        data = header_block(message.get("payload") or {})
    else:
        data = decode_raw(str(message.get("raw") or ""))
    labels = [str(x) for x in message.get("labelIds") or ()]
    size = message.get("sizeEstimate")
    return RawMessage(
        ref=ref,
        raw=data,
        headers_only=headers_only,
        flags=flags(labels),
        internal_date=internal_date(message),
        size=int(size) if size is not None else len(data),
        provider_id=str(message["id"]),
        thread_id=str(message["threadId"]) if message.get("threadId") else None,
    )
