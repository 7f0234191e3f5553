"""Gmail (API v1) behind the provider seam: sync, send, drafts, labels, push registration.

One stream, one cursor. Gmail's history ids are global to the mailbox, so the whole mailbox is a
single sync stream, keyed "INBOX" (the engine keeps a stream's cursor on the folder of that key,
and the inbox is the stream that must come first). Its upserts and removals name the folders they
touch (see `mapping`: labels are placements, archived mail sits in the synthetic ARCHIVE folder).

    cursor None                 full pass: historyId from users.getProfile FIRST (so a change made
                                while listing is replayed afterwards, never lost), then
                                messages.list pages (spam and trash included) and a batched
                                messages.get?format=minimal for each page's labels
                                -> {"history_id": h, "full": {"page": token}} while pages remain,
                                   checkpointed at page starts (a killed sync resumes there)
                                -> {"history_id": h} once the listing is done, with
                                   `present_by_folder`: every placement the pass saw (or, for
                                   a pass resumed by another instance, messages.list per folder
                                   label: ~5 units per 500 ids), so that mail deleted and labels
                                   removed while the cursor was unusable leave the store
    {"history_id": h}           history.list from h: messagesAdded / messagesDeleted /
                                labelsAdded / labelsRemoved, netted per message (a record's message
                                carries its whole label set, so placements before and after follow
                                from it) -> {"history_id": newest}
    404 on history.list         CursorExpired: Gmail keeps about a week of history; the engine
                                starts again from None and its upsert by Gmail id duplicates nothing
    400 on a stale page token   CursorExpired as well: the full pass starts over

Fetching is `messages.get` in batches of 50: `format=raw` for whole messages, `format=metadata`
(headers only, rebuilt into a header block) in header-only mode, which is also all that an
account granted only `gmail.metadata` may read.

Quota: the client spends units per call from a per-user budget (`client.QuotaBudget`); a full sync
costs about 10 units per message (minimal get + raw get), an incremental one 2 per history page
plus 5 per new message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
from inboxlink.errors import (
    AuthError,
    CursorExpired,
    MessageTooLarge,
    ProviderError,
    RecipientsRejected,
    SendRejected,
)
from inboxlink.providers.base import TokenSource
from inboxlink.providers.gmail import mapping
from inboxlink.providers.gmail.client import (
    Call,
    GmailClient,
    GmailNotFound,
    GmailRequestError,
    QuotaBudget,
)

MAIL = "https://mail.google.com/"
AUTH = "https://www.googleapis.com/auth/"
# Scopes under which messages.get may return bodies (format=raw). gmail.metadata alone refuses.
_BODY_SCOPES = frozenset({MAIL, AUTH + "gmail.readonly", AUTH + "gmail.modify"})
_SEND_SCOPES = frozenset({MAIL, AUTH + "gmail.send", AUTH + "gmail.compose", AUTH + "gmail.modify"})

STREAM = mapping.INBOX
_LIST_PAGE = 500  # messages.list and history.list maximum
_RAMP = (50, 100, 200)  # messages per fetched chunk: the first land fast, later ones in bulk
_MODIFY_IDS = 1000  # batchModify maximum
# Units of Gmail's per-user quota (developers.google.com/gmail/api/reference/quota).
UNITS = {"get": 5, "list": 5, "history": 2, "send": 100, "modify": 5, "batchModify": 50, "labels": 1}


@dataclass(frozen=True)
class GmailConfig:
    email: str
    api_base: str = "https://gmail.googleapis.com"


@dataclass(frozen=True)
class WatchInfo:
    """What users.watch answered: notifications start after `history_id`; renew before
    `expiration` (Google: at least every 7 days; daily is safer)."""

    history_id: str
    expiration: datetime


class GmailProvider:
    """One Gmail mailbox. Implements `MailProvider`, `SendingProvider` and `LabelingProvider`;
    see the module docstring for the stream and cursor model."""

    def __init__(
        self,
        config: GmailConfig,
        tokens: TokenSource,
        *,
        budget: QuotaBudget | None = None,
        timeout: float = 30.0,
        client: GmailClient | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.client = client or GmailClient(config.api_base, tokens, timeout=timeout, budget=budget)
        self._folder_keys: list[str] | None = None
        self._labels_by_name: dict[str, str] | None = None  # lower-cased name -> label id
        self._drafts: dict[str, str] = {}  # Gmail message id -> draft id, for drafts made here
        # The full pass this instance is making: the placements it listed so far, and the cursor
        # it expects next; a pass resumed from a cursor it did not hand out lists them at the end.
        self._pass_seen: dict[str, set[str]] | None = None
        self._pass_next: Cursor | None = None

    def close(self) -> None:
        self.client.close()

    # -- seam: identity and folders ------------------------------------------------------------
    def verify(self) -> tuple[Identity, Capabilities]:
        profile = self.client.call(Call("GET", "profile", units=1))
        scopes = self.tokens.granted_scopes
        return (
            Identity(email=str(profile["emailAddress"])),
            Capabilities(
                can_send=bool(scopes & _SEND_SCOPES),
                server="gmail",
                raw=tuple(sorted(scopes)),
            ),
        )

    def _labels(self) -> list[dict[str, Any]]:
        data = self.client.call(Call("GET", "labels", units=UNITS["labels"])) or {}
        labels: list[dict[str, Any]] = list(data.get("labels") or [])
        self._labels_by_name = {str(x.get("name", "")).lower(): str(x["id"]) for x in labels}
        return labels

    def folders(self) -> list[Folder]:
        found = mapping.folders_from_labels(self._labels())
        self._folder_keys = [f.key for f in found]
        return found

    def streams(self) -> list[str]:
        return [STREAM]

    # -- seam: changes --------------------------------------------------------------------------
    def changes(self, stream: str, cursor: Cursor | None, limit: int) -> ChangeSet:
        if stream != STREAM:
            raise ValueError(f"Gmail has one stream, {STREAM!r}, not {stream!r}")
        if cursor is None or "full" in cursor:
            return self._full_pass(cursor, limit)
        return self._history(cursor, limit)

    def _full_pass(self, cursor: Cursor | None, limit: int) -> ChangeSet:
        if cursor is None:
            # Before listing: whatever changes while we list is in the history after this id.
            profile = self.client.call(Call("GET", "profile", units=1))
            history_id = str(profile["historyId"])
            token: str | None = None
            self._pass_seen = {}
        else:
            history_id = str(cursor["history_id"])
            token = cursor["full"].get("page")
            if cursor != self._pass_next:
                self._pass_seen = None  # resumed (a checkpoint, another process): pages unseen
        refs: list[MessageRef] = []
        page_starts: list[tuple[int, str | None]] = []  # (index of the page's first ref, its token)
        listed = 0
        while True:
            params = [
                ("maxResults", str(min(_LIST_PAGE, max(1, limit - listed)))),
                ("includeSpamTrash", "true"),
            ]
            params.append(("fields", "messages/id,nextPageToken"))
            if token:
                params.append(("pageToken", token))
            try:
                page = self.client.call(Call("GET", "messages", params, units=UNITS["list"])) or {}
            except GmailRequestError as exc:
                if token and exc.status == 400:
                    raise CursorExpired("Gmail no longer accepts the listing position") from exc
                raise
            ids = [str(m["id"]) for m in page.get("messages") or ()]
            page_starts.append((len(refs), token))
            refs.extend(self._minimal_refs(ids))
            listed += len(ids)
            token = page.get("nextPageToken")
            if not token or listed >= limit:
                break
        more = bool(token)
        next_cursor: dict[str, Any] = {"history_id": history_id}
        if more:
            next_cursor["full"] = {"page": token}
        present: dict[str, frozenset[str]] | None = None
        if self._pass_seen is not None:
            for ref in refs:
                self._pass_seen.setdefault(ref.folder, set()).add(ref.remote_key)
        if not more:
            present = self._present(self._pass_seen)
            self._pass_seen = None
        self._pass_next = next_cursor if more else None

        def checkpoint(n: int) -> Cursor:
            if n >= len(refs):
                return next_cursor
            # resume at the start of the page holding the first ref not stored yet
            start: str | None = None
            for first, tok in page_starts:
                if first <= n:
                    start = tok
            return {"history_id": history_id, "full": {"page": start}}

        return ChangeSet(
            folder=STREAM,
            next_cursor=next_cursor,
            upserts=refs,
            present_by_folder=present,
            more=more,
            checkpoint=checkpoint,
        )

    def _present(self, seen: dict[str, set[str]] | None) -> dict[str, frozenset[str]]:
        """Every placement of the mailbox at the end of a full pass, per folder (every folder
        named, the empty ones too): what the pass saw, or when it did not see every page, what
        messages.list says per folder label (TRASH and SPAM hide the others, as in `mapping`)."""
        keys = self._folder_keys or self._known_folder_keys()
        if seen is None:
            labels_of: dict[str, set[str]] = {mid: set() for mid in self._list_ids(None)}
            for key in keys:
                if key != mapping.ARCHIVE:
                    for mid in self._list_ids(key):
                        labels_of.setdefault(mid, set()).add(key)
            seen = {}
            for mid, labels in labels_of.items():
                for folder in mapping.placements(labels):
                    seen.setdefault(folder, set()).add(mid)
        return {key: frozenset(seen.get(key, ())) for key in {*keys, *seen}}

    def _list_ids(self, label: str | None) -> Iterator[str]:
        """Ids of the messages carrying `label` (None: every message), spam and trash included."""
        token: str | None = None
        while True:
            params = [
                ("maxResults", str(_LIST_PAGE)),
                ("includeSpamTrash", "true"),
                ("fields", "messages/id,nextPageToken"),
            ]
            if label is not None:
                params.append(("labelIds", label))
            if token:
                params.append(("pageToken", token))
            try:
                page = self.client.call(Call("GET", "messages", params, units=UNITS["list"])) or {}
            except (GmailNotFound, GmailRequestError):
                if label is None:
                    raise
                return  # the label was deleted meanwhile: nothing is in it (folders() drops it)
            yield from (str(m["id"]) for m in page.get("messages") or ())
            token = page.get("nextPageToken")
            if not token:
                return

    def _minimal_refs(self, ids: Sequence[str]) -> list[MessageRef]:
        """Refs (one per placement, with flags) of these messages; vanished ones are skipped."""
        calls = [
            Call(
                "GET",
                f"messages/{mid}",
                [("format", "minimal"), ("fields", "id,threadId,labelIds,sizeEstimate")],
                units=UNITS["get"],
            )
            for mid in ids
        ]
        refs: list[MessageRef] = []
        for reply in self.client.batch(calls):
            if reply.error is not None:
                if isinstance(reply.error, GmailNotFound):
                    continue  # deleted since listed; history reports it
                raise reply.error
            refs.extend(mapping.refs_for(reply.data))
        return refs

    def _history(self, cursor: Cursor, limit: int) -> ChangeSet:
        start = str(cursor["history_id"])
        changes = _NetChanges()
        token: str | None = None
        newest = start
        more = False
        while True:
            params = [("startHistoryId", start), ("maxResults", str(_LIST_PAGE))]
            if token:
                params.append(("pageToken", token))
            try:
                page = self.client.call(Call("GET", "history", params, units=UNITS["history"])) or {}
            except GmailNotFound as exc:
                raise CursorExpired(f"Gmail no longer has history since {start}") from exc
            records = page.get("history") or []
            for record in records:
                changes.add(record)
            token = page.get("nextPageToken")
            if not token:
                newest = str(page.get("historyId") or (records[-1]["id"] if records else start))
                break
            if changes.touched >= limit:
                # stop at a page boundary; the next call resumes after the last record read
                newest, more = str(records[-1]["id"]), True
                break
        unknown = changes.without_labels()
        if unknown:
            for mid, refs in self._labels_of(unknown).items():
                changes.resolve(mid, refs)
        upserts, removed = changes.result(self._folder_keys or self._known_folder_keys())
        return ChangeSet(
            folder=STREAM,
            next_cursor={"history_id": newest},
            upserts=upserts,
            removed=removed,
            more=more,
        )

    def _labels_of(self, ids: Sequence[str]) -> dict[str, list[MessageRef] | None]:
        """Placements of messages whose history records lacked labels (None: gone)."""
        calls = [
            Call(
                "GET",
                f"messages/{mid}",
                [("format", "minimal"), ("fields", "id,labelIds")],
                units=UNITS["get"],
            )
            for mid in ids
        ]
        out: dict[str, list[MessageRef] | None] = {}
        for mid, reply in zip(ids, self.client.batch(calls), strict=True):
            if isinstance(reply.error, GmailNotFound):
                out[mid] = None
            elif reply.error is not None:
                raise reply.error
            else:
                out[mid] = mapping.refs_for(reply.data)
        return out

    def _known_folder_keys(self) -> list[str]:
        self.folders()
        return self._folder_keys or []

    # -- seam: identify and fetch ---------------------------------------------------------------
    def identify(self, refs: Sequence[MessageRef]) -> list[MessageRef]:
        # Gmail ids are known from the listing: nothing to do.
        return [r if r.provider_id else _with_id(r) for r in refs]

    def fetch(self, refs: Sequence[MessageRef], parts: FetchParts) -> Iterator[list[RawMessage]]:
        if parts is FetchParts.FULL and not (self.tokens.granted_scopes & _BODY_SCOPES):
            raise AuthError(
                "this Gmail account granted header access only (gmail.metadata): sync it in "
                "headers-only mode, or pair again granting gmail.readonly"
            )
        params = (
            [
                ("format", "metadata"),
                ("fields", "id,threadId,labelIds,sizeEstimate,internalDate,payload/headers"),
            ]
            if parts is FetchParts.HEADERS
            else [("format", "raw"), ("fields", "id,threadId,labelIds,sizeEstimate,internalDate,raw")]
        )
        ramp = 0
        i = 0
        while i < len(refs):
            want = _RAMP[min(ramp, len(_RAMP) - 1)] * (4 if parts is FetchParts.HEADERS else 1)
            ramp += 1
            group = refs[i : i + want]
            i += len(group)
            ids = list(dict.fromkeys(r.provider_id or r.remote_key for r in group))
            calls = [Call("GET", f"messages/{mid}", params, units=UNITS["get"]) for mid in ids]
            got: dict[str, Any] = {}
            for mid, reply in zip(ids, self.client.batch(calls), strict=True):
                if reply.error is None:
                    got[mid] = reply.data
                elif not isinstance(reply.error, GmailNotFound):
                    if isinstance(reply.error, GmailRequestError) and reply.error.reason == "invalidArgument":
                        continue  # not a Gmail id (a ref from elsewhere): nothing to fetch
                    raise reply.error
            chunk = [
                mapping.raw_message(ref, got[mid], parts)
                for ref in group
                if (mid := ref.provider_id or ref.remote_key) in got
            ]
            yield chunk

    # -- sending and drafts ---------------------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SentMessage:
        meta: dict[str, Any] = {"threadId": message.thread_hint} if message.thread_hint else {}
        try:
            sent = self._upload("messages/send", meta, message.mime, UNITS["send"])
        except GmailRequestError as exc:
            if message.thread_hint and "thread" in exc.message.lower():
                # The hint names a thread Gmail no longer has (deleted): send unthreaded.
                sent = self._upload("messages/send", {}, message.mime, UNITS["send"])
            else:
                raise _send_error(exc) from exc
        return SentMessage(
            message_id=message.message_id,
            provider_id=str(sent["id"]),
            thread_id=str(sent.get("threadId") or "") or None,
            folder="SENT",
            remote_key=str(sent["id"]),
        )

    def save_draft(self, message: OutgoingMessage, replaces: SentMessage | None = None) -> SentMessage:
        inner: dict[str, Any] = {"threadId": message.thread_hint} if message.thread_hint else {}
        draft_id = self._draft_id(replaces.provider_id) if replaces and replaces.provider_id else None
        try:
            if draft_id is not None:
                draft = self._upload(f"drafts/{draft_id}", {"message": inner}, message.mime, 0, method="PUT")
            else:
                draft = self._upload("drafts", {"message": inner}, message.mime, 0)
        except GmailRequestError as exc:
            raise _send_error(exc) from exc
        msg = draft.get("message") or {}
        self._drafts[str(msg["id"])] = str(draft["id"])
        return SentMessage(
            message_id=message.message_id,
            provider_id=str(msg["id"]),
            thread_id=str(msg.get("threadId") or "") or None,
            folder="DRAFT",
            remote_key=str(msg["id"]),
        )

    def _upload(
        self, path: str, meta: dict[str, Any], raw: bytes, units: int, *, method: str = "POST"
    ) -> Any:
        if method == "PUT":
            # drafts.update: the JSON form (the upload form of PUT is not one call in the simulator
            # nor simpler at Google); raw as base64url inside the draft's message
            body = {"message": {**meta.get("message", {}), "raw": mapping.encode_raw(raw)}}
            return self.client.call(Call("PUT", path, body=body, units=units))
        return self.client.upload(path, meta, raw, units=units)

    def _draft_id(self, message_id: str) -> str | None:
        """The draft holding Gmail message `message_id` (drafts made by this instance are
        remembered; others are looked up in drafts.list). None when it is no longer a draft."""
        if message_id in self._drafts:
            return self._drafts[message_id]
        token: str | None = None
        while True:
            params = [("maxResults", "500")] + ([("pageToken", token)] if token else [])
            page = self.client.call(Call("GET", "drafts", params, units=UNITS["list"])) or {}
            for draft in page.get("drafts") or ():
                if str((draft.get("message") or {}).get("id")) == message_id:
                    return str(draft["id"])
            token = page.get("nextPageToken")
            if not token:
                return None

    # -- labels ---------------------------------------------------------------------------------
    def modify(
        self, refs: Sequence[MessageRef], *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> None:
        """Neutral names: "seen", "flagged" (IMAP's "\\Seen", "\\Flagged" too), a folder key
        (a label id, or "ARCHIVE": adding it archives), or a label name, created when missing."""
        add_ids: set[str] = set()
        remove_ids: set[str] = set()
        for name in add:
            plus, minus = self._label_ops(name, create=True)
            add_ids |= plus
            remove_ids |= minus
        for name in remove:
            plus, minus = self._label_ops(name, create=False)
            add_ids |= minus  # removing "seen" adds UNREAD
            remove_ids |= plus
        if not add_ids and not remove_ids:
            return
        ids = list(dict.fromkeys(r.provider_id or r.remote_key for r in refs))
        body: dict[str, Any] = {
            "addLabelIds": sorted(add_ids),
            "removeLabelIds": sorted(remove_ids - add_ids),
        }
        if len(ids) == 1:
            self.client.call(Call("POST", f"messages/{ids[0]}/modify", body=body, units=UNITS["modify"]))
            return
        for i in range(0, len(ids), _MODIFY_IDS):
            chunk = {**body, "ids": ids[i : i + _MODIFY_IDS]}
            self.client.call(Call("POST", "messages/batchModify", body=chunk, units=UNITS["batchModify"]))

    def _label_ops(self, name: str, *, create: bool) -> tuple[set[str], set[str]]:
        """(labels to add, labels to remove) that adding `name` means."""
        key = name.strip()
        lowered = key.lstrip("\\").lower()
        if lowered == "seen":
            return set(), {"UNREAD"}
        if lowered == "flagged":
            return {"STARRED"}, set()
        if key == mapping.ARCHIVE:
            return set(), {"INBOX"}
        if self._labels_by_name is None:
            self._labels()
        assert self._labels_by_name is not None
        ids = set(self._labels_by_name.values())
        if key in ids:
            return {key}, set()
        found = self._labels_by_name.get(key.lower())
        if found is not None:
            return {found}, set()
        if not create:
            return set(), set()  # removing a label that does not exist: nothing to do
        try:
            label = self.client.call(
                Call(
                    "POST",
                    "labels",
                    body={"name": key, "labelListVisibility": "labelShow", "messageListVisibility": "show"},
                    units=UNITS["labels"],
                )
            )
        except GmailRequestError as exc:
            if exc.status != 409:
                raise
            self._labels()  # made meanwhile by someone else: use theirs
            assert self._labels_by_name is not None
            return {self._labels_by_name[key.lower()]}, set()
        self._labels_by_name[key.lower()] = str(label["id"])
        return {str(label["id"])}, set()

    # -- push ----------------------------------------------------------------------------------
    def watch(self, topic: str, label_ids: Sequence[str] = ()) -> WatchInfo:
        """Ask Gmail to publish this mailbox's changes to Pub/Sub `topic`
        ("projects/P/topics/T"); optionally only changes touching `label_ids`."""
        body: dict[str, Any] = {"topicName": topic}
        if label_ids:
            body.update(labelIds=list(label_ids), labelFilterBehavior="include")
        try:
            data = self.client.call(Call("POST", "watch", body=body, units=100))
        except GmailRequestError as exc:
            raise ProviderError(f"Gmail refused the push subscription: {exc.message}") from exc
        return WatchInfo(
            history_id=str(data["historyId"]),
            expiration=datetime.fromtimestamp(int(data["expiration"]) / 1000, UTC),
        )

    def stop(self) -> None:
        """Stop push notifications for this mailbox."""
        try:
            self.client.call(Call("POST", "stop", units=100))
        except GmailRequestError as exc:
            raise ProviderError(f"Gmail refused to stop the push subscription: {exc.message}") from exc


class _NetChanges:
    """History records netted per message: its labels after the last record, and every placement
    it had on the way (those not among the final ones are removed)."""

    def __init__(self) -> None:
        self.final: dict[str, frozenset[str] | None] = {}  # id -> labels; None: deleted
        self.seen: dict[str, set[str]] = {}  # id -> placements it had before or during
        self.no_labels: set[str] = set()
        self.resolved: dict[str, list[MessageRef] | None] = {}

    @property
    def touched(self) -> int:
        return len(self.final)

    def _note(self, message: dict[str, Any], after: set[str] | None, before: set[str] | None) -> None:
        mid = str(message["id"])
        self.final.pop(mid, None)  # re-insert: order of the last change
        seen = self.seen.setdefault(mid, set())
        if before is not None:
            seen |= mapping.placements(before)
        if after is None:
            self.final[mid] = None
            return
        seen |= mapping.placements(after)
        self.final[mid] = frozenset(after)

    def add(self, record: dict[str, Any]) -> None:
        for item in record.get("messagesAdded") or ():
            msg = item["message"]
            if "labelIds" not in msg:
                self.no_labels.add(str(msg["id"]))
                self.final[str(msg["id"])] = frozenset()
                continue
            self._note(msg, set(msg["labelIds"]), None)
        # One record may add and remove labels of the same message (trash: +TRASH -INBOX); its
        # labels before the record are those after it, less the added, plus the removed.
        changed: dict[str, tuple[dict[str, Any], set[str], set[str]]] = {}
        for key in ("labelsAdded", "labelsRemoved"):
            for item in record.get(key) or ():
                msg = item["message"]
                entry = changed.setdefault(str(msg["id"]), (msg, set(), set()))
                (entry[1] if key == "labelsAdded" else entry[2]).update(item.get("labelIds") or ())
        for mid, (msg, added, removed) in changed.items():
            if "labelIds" not in msg:
                self.no_labels.add(mid)
                self.final[mid] = frozenset()
                continue
            after = set(msg["labelIds"])
            self._note(msg, after, (after - added) | removed)
        for item in record.get("messagesDeleted") or ():
            msg = item["message"]
            mid = str(msg["id"])
            self.no_labels.discard(mid)
            labels = msg.get("labelIds")
            if labels is None:
                self.seen.setdefault(mid, set()).add("*")  # every folder: we do not know which
                self.final.pop(mid, None)
                self.final[mid] = None
            else:
                self._note(msg, None, set(labels))

    def without_labels(self) -> list[str]:
        return [mid for mid in self.no_labels if self.final.get(mid) is not None]

    def resolve(self, mid: str, refs: list[MessageRef] | None) -> None:
        self.resolved[mid] = refs

    def result(self, all_folders: Sequence[str]) -> tuple[list[MessageRef], list[tuple[str, str]]]:
        upserts: list[MessageRef] = []
        removed: list[tuple[str, str]] = []
        for mid, labels in self.final.items():
            if mid in self.resolved:
                refs = self.resolved[mid] or []
            elif labels is None:
                refs = []
            else:
                refs = mapping.refs_for({"id": mid, "labelIds": sorted(labels)})
            keep = {r.folder for r in refs}
            had = self.seen.get(mid, set())
            if "*" in had or (mid in self.no_labels and not had):
                had = set(all_folders) | had - {"*"}
            removed.extend((folder, mid) for folder in sorted(had - keep))
            upserts.extend(refs)
        return upserts, removed


def _with_id(ref: MessageRef) -> MessageRef:
    return MessageRef(
        folder=ref.folder,
        remote_key=ref.remote_key,
        provider_id=ref.remote_key,
        flags=ref.flags,
        size=ref.size,
    )


def _send_error(exc: GmailRequestError) -> SendRejected:
    text = exc.message.lower()
    if "recipient" in text or "invalid to header" in text or "invalid cc header" in text:
        return RecipientsRejected(exc.message, rejected=[])
    if exc.status == 413 or "too large" in text or "exceeds" in text:
        return MessageTooLarge(exc.message)
    return SendRejected(exc.message)
