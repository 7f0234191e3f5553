"""The provider seam: what every mail backend (IMAP+SMTP, Gmail, Graph, EWS) promises.

The sync engine, linking and sending import only this module and `providers.registry`; never an
adapter. An adapter talks its wire protocol and translates into `inboxlink.domain` types. It never
touches the database: the engine is the only writer (the opposite of designs where adapters open
sessions).

Errors crossing the seam are ours (see `inboxlink.errors`), translated at the boundary with
`raise ... from exc`:

- `AuthError`       credentials rejected or revoked: the engine moves the account to auth_error at
                    once and stops; nothing is retried until the user pairs again.
- `TransientError`  network trouble, timeouts, 5xx, 429 (`RateLimited.retry_after`): back off, retry.
- `CursorExpired`   the server forgot the cursor: the engine starts the stream again from None; the
                    idempotent upsert guarantees no duplicate.
Anything else is a bug and surfaces loudly.

Streams. Incremental sync runs per *stream*: an IMAP folder, a Graph folder, an EWS folder; Gmail
has one stream for the whole mailbox (history ids are global). `streams()` lists them, in the order
the engine should sync them (the inbox first, so a user sees recent mail soonest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from inboxlink.domain import (
    Capabilities,
    ChangeSet,
    Cursor,
    FetchParts,
    Folder,
    Identity,
    MessageRef,
    OutgoingMessage,
    RawMessage,
    SentMessage,
)


@runtime_checkable
class MailProvider(Protocol):
    """One connected mailbox. Instances are used from one thread at a time; `close()` releases the
    connection. Constructing one does no I/O: `verify()` is the first call that talks to the server."""

    def verify(self) -> tuple[Identity, Capabilities]:
        """Log in and say whose mailbox this is and what it supports.

        Raises `AuthError` for rejected credentials, `TransientError` when the server cannot be
        reached (the message says which host and why), `UnsupportedServer` when the server is too old.
        """
        ...

    def folders(self) -> list[Folder]:
        """Every folder/label the user can see, with its role (inbox, sent ...) when known."""
        ...

    def streams(self) -> list[str]:
        """The keys of the sync streams, inbox first."""
        ...

    def changes(self, stream: str, cursor: Cursor | None, limit: int) -> ChangeSet:
        """What changed in `stream` since `cursor`; `None` means everything (a full sync).

        At most about `limit` upserts per call (`more` says whether to call again). Raises
        `CursorExpired` when the server no longer knows the cursor."""
        ...

    def identify(self, refs: Sequence[MessageRef]) -> list[MessageRef]:
        """Return `refs` with `provider_id` filled in, cheaply (IMAP: the Message-ID header only), so
        that the engine can attach known messages to a new placement without downloading them
        again. Providers whose refs already carry ids return them unchanged."""
        ...

    def fetch(self, refs: Sequence[MessageRef], parts: FetchParts) -> Iterator[list[RawMessage]]:
        """Download `refs`, yielding chunks in the order given (a chunk may be smaller than asked).
        A ref that vanished meanwhile is skipped (the next `changes()` reports the removal)."""
        ...

    def close(self) -> None:
        """Log out and release the connection. Safe to call twice."""
        ...


def provider_id_for_message_id(message_id: str | None, raw: bytes) -> str:
    """The cross-folder identity of a message for providers that have none of their own (IMAP):
    its RFC Message-ID, or, when it has none, a digest of its header block (stable across folders
    and servers, since servers don't rewrite headers on copy)."""
    if message_id:
        return message_id
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    return "sha256:" + hashlib.sha256(head).hexdigest()[:40]


def sized_provider_id(provider_id: str, size: int) -> str:
    """The id of a message whose derived id (its Message-ID) an earlier, different message already
    holds: broken mailers and spam reuse Message-IDs, and a second message must not overwrite the
    first. The size the server reports tells them apart (copies of one message have the same bytes,
    so the same size). A Message-ID ends in its domain, never in " #size=N", so none looks like this."""
    return f"{provider_id} #size={size}"


@runtime_checkable
class SendingProvider(Protocol):
    """A mailbox that can send (IMAP+SMTP, Gmail, Graph, EWS). Optional beside `MailProvider`:
    check with `isinstance(p, SendingProvider)`.

    Errors: `AuthError` / `TransientError` as for sync; `RecipientsRejected`, `MessageTooLarge` (or
    another `SendRejected`) when the server refuses this message: the caller keeps the draft."""

    def send(self, message: OutgoingMessage) -> SentMessage:
        """Hand `message` to the server for delivery and keep a copy where the user's client shows
        sent mail (IMAP: APPEND to the Sent folder; Gmail/Graph do it themselves)."""
        ...

    def save_draft(self, message: OutgoingMessage, replaces: SentMessage | None = None) -> SentMessage:
        """Store `message` as a draft on the server, replacing an earlier version when given."""
        ...


@runtime_checkable
class LabelingProvider(Protocol):
    """A mailbox whose messages can be flagged/labelled (read state, the "inboxlink/Linked" label)."""

    def modify(
        self,
        refs: Sequence[MessageRef],
        *,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> None:
        """Add/remove flags or labels. Names are neutral: "seen", "flagged", or a label/folder name
        (created when missing)."""
        ...


class Subscription(Protocol):
    """A push subscription the provider holds for us; it lapses at `expiration` unless renewed."""

    @property
    def expiration(self) -> datetime: ...


@runtime_checkable
class PushSubscriber(Protocol):
    """A mailbox that publishes its changes to a channel whose messages reach our HTTP endpoint
    (Gmail: users.watch to a Pub/Sub topic, pushed to `POST /push/google`). Optional."""

    def watch(self, topic: str, label_ids: Sequence[str] = ()) -> Subscription:
        """Subscribe (again: a renewal replaces the previous subscription) to `topic`."""
        ...

    def stop(self) -> None:
        """End the subscription (unpairing): the mailbox's changes are published no more."""
        ...


@runtime_checkable
class DeliveryHookRegistrar(Protocol):
    """A mailbox that can ask its server to announce new mail to our HTTP endpoint itself (IMAP on
    Dovecot: the push_notification plugin's registration, `api/routes_push_dovecot.py`). Optional."""

    def register_delivery_hook(self) -> str | None:
        """Register; None when done, else why it cannot be (the server lacks the extension...)."""
        ...


@runtime_checkable
class TokenSource(Protocol):
    """Where an OAuth provider gets its bearer token. Implemented by `auth.oauth` (which refreshes
    before expiry and saves rotated tokens at once); adapters only ask for the token, and ask again
    with `force_refresh=True` once after a 401. Raises `AuthError` when the grant is gone."""

    def access_token(self, *, force_refresh: bool = False) -> str: ...

    @property
    def granted_scopes(self) -> frozenset[str]: ...
