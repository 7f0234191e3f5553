"""Neutral data shared by every layer: what providers return and the engine stores.

Providers translate their wire format into these types and never store anything; the sync engine
is the only writer. Nothing here knows about SQL, HTTP or a particular provider.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A provider's resumable position in one sync stream, e.g. IMAP {uidvalidity, uidnext, highestmodseq}.
# JSON-serialisable; opaque to the engine.
Cursor = Mapping[str, Any]


class AccountStatus(enum.StrEnum):
    PENDING = "pending"
    SYNCING = "syncing"
    CONNECTED = "connected"
    AUTH_ERROR = "auth_error"
    CONNECT_ERROR = "connect_error"
    UNSUPPORTED = "unsupported"
    DISCONNECTED = "disconnected"


class FolderRole(enum.StrEnum):
    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    JUNK = "junk"
    ARCHIVE = "archive"
    ALL = "all"
    FLAGGED = "flagged"
    OTHER = "other"


@dataclass(frozen=True)
class Identity:
    """Who the credentials belong to, as the server says."""

    email: str
    display_name: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What this mailbox can do; shown in the API and used by the engine to pick a strategy."""

    condstore: bool = False
    qresync: bool = False
    idle: bool = False
    special_use: bool = False
    can_send: bool = False
    server: str | None = None
    raw: tuple[str, ...] = ()

    def server_facts(self) -> dict[str, object]:
        """What the server itself says, as stored in `accounts.capabilities`. Whether sending works
        is not among them: pairing checks that and records `can_send` / `smtp_error` beside."""
        return {
            "condstore": self.condstore,
            "qresync": self.qresync,
            "idle": self.idle,
            "special_use": self.special_use,
            "server": self.server,
            "raw": list(self.raw),
        }


@dataclass(frozen=True)
class Folder:
    """A folder (IMAP), label (Gmail) or mail folder (Graph/EWS)."""

    key: str  # the provider's stable name or id
    name: str  # what a user sees
    role: FolderRole = FolderRole.OTHER
    selectable: bool = True


@dataclass(frozen=True)
class MessageRef:
    """One placement of a message on the server: it is in `folder` under `remote_key` (an IMAP UID,
    a Gmail message id ...). `provider_id` identifies the message across folders when it is known
    without fetching (Gmail/Graph ids); IMAP leaves it None until `identify()` or `fetch()`."""

    folder: str
    remote_key: str
    provider_id: str | None = None
    flags: frozenset[str] | None = None  # None: not known yet (arrives with the fetch)
    size: int | None = None


@dataclass(frozen=True)
class RawMessage:
    """What `fetch()` returns: the bytes as the server sent them, plus what the server knows."""

    ref: MessageRef
    raw: bytes
    headers_only: bool
    flags: frozenset[str] = frozenset()
    internal_date: datetime | None = None
    size: int | None = None
    provider_id: str | None = None  # for providers with their own ids; IMAP derives it from the MIME
    thread_id: str | None = None


@dataclass
class ChangeSet:
    """One step of `changes()` for one stream.

    - `reset`: the stream's identity changed (IMAP UIDVALIDITY): forget every placement in it first
      (messages stay, and are re-attached by provider id without downloading again).
    - `upserts`: placements that are new or whose flags changed, in the order the provider wants
      them checkpointed.
    - `removed`: placements (folder, remote_key) that are gone.
    - `present`: when not None, the complete set of remote keys now in `folder`; any stored
      placement not in it is gone (the no-CONDSTORE diff).
    - `present_by_folder`: the same for a stream that spans several folders (Gmail: labels are
      folders): for each folder named, the complete set of remote keys now in it. A folder the
      stream covers that holds nothing is named with an empty set; folders not named are left alone.
    - `next_cursor`: the cursor once everything here is stored; `checkpoint(n)` is a cursor that is
      already valid when the first n upserts are stored (lets a long full sync resume mid-way).
    - `more`: call again with `next_cursor` for the rest.
    """

    folder: str
    next_cursor: Cursor
    upserts: list[MessageRef] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    present: frozenset[str] | None = None
    present_by_folder: Mapping[str, frozenset[str]] | None = None
    reset: bool = False
    more: bool = False
    checkpoint: Callable[[int], Cursor] | None = None

    def presence(self) -> dict[str, frozenset[str]] | None:
        """Every complete listing this step carries, folder key -> remote keys (None: none)."""
        if self.present is None and self.present_by_folder is None:
            return None
        found = dict(self.present_by_folder or {})
        if self.present is not None:
            found[self.folder] = self.present
        return found


class FetchParts(enum.Enum):
    FULL = "full"
    HEADERS = "headers"


@dataclass(frozen=True)
class Address:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int
    content_id: str | None = None
    inline: bool = False


@dataclass
class ParsedMessage:
    """A message as inboxlink stores it, whatever the provider. Built by `mime.parse`."""

    message_id: str | None  # RFC 5322 Message-ID without angle brackets, or None when absent
    subject: str | None
    date: datetime | None  # timezone-aware
    from_: list[Address]
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    in_reply_to: str | None
    references: list[str]
    text: str | None  # plain-text body (from text/plain, else derived from HTML)
    html: str | None  # unsanitised HTML body; sanitised on display
    snippet: str
    attachments: list[Attachment]
    headers: dict[str, str]  # a selection: lower-cased name -> value (first occurrence)
    headers_only: bool = False
    parse_note: str | None = None  # set when a fallback was needed; the raw bytes are kept


@dataclass(frozen=True)
class OutgoingMessage:
    """A message ready to leave: complete RFC 5322 bytes (built by `mime.compose`, carrying our own
    Message-ID), the SMTP envelope, and a thread hint for providers with threads of their own
    (Gmail threadId, Graph conversationId). Bcc recipients are in `recipients`, never in `mime`."""

    mime: bytes
    sender: str
    recipients: tuple[str, ...]
    message_id: str  # without <>
    thread_hint: str | None = None
    # Called by the provider right before the step that cannot be taken back (SMTP DATA, the API
    # call that sends), so the outbox can record that a crash from here on may have sent the mail.
    on_commit: Callable[[], None] | None = None


@dataclass(frozen=True)
class SentMessage:
    """What a provider says about a message it sent or stored as a draft."""

    message_id: str  # RFC Message-ID without <>
    provider_id: str | None = None  # the provider's own id when it has one (Gmail, Graph)
    thread_id: str | None = None
    folder: str | None = None  # where the copy lies (IMAP Sent, Gmail SENT/DRAFT)
    remote_key: str | None = None
    note: str | None = None  # sent, but something short of perfect (e.g. the copy to Sent failed)
