"""Gmail API v1 (``/gmail/v1/users/{userId}/...``): routing, auth, scopes, faults and the methods.

Every call goes through :func:`dispatch` -- plain requests, each part of a batch, and media uploads
alike -- which, like Google, checks in order: the route (404), the access token (401 with Google's
error JSON and ``WWW-Authenticate``), ``userId`` (``me`` or the token's own address, else 403
``Delegation denied``), the method's scopes (403 ``insufficientPermissions``; the scope table is
the discovery document's), then injected faults, then the method itself. ``fields`` partial
responses are honoured; ``prettyPrint=false`` compacts the JSON.

Errors are Google's JSON (``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}],
"status"}}``): unknown ids 404 ``Requested entity was not found.``, ids that cannot be Gmail ids 400
``Invalid id value``, unknown labels 400 ``Invalid label: X``, an unknown ``threadId`` 400
``Invalid thread_id value``, a message without recipients 400 ``Recipient address required``.

The ``gmail.metadata`` scope behaves as Google documents: ``format=full``/``raw`` (messages,
threads, drafts) are refused with 403 ``Metadata scope doesn't allow format FULL`` (the default
format is full, so a plain ``messages.get`` is refused too) and ``q`` is refused in lists.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import discovery, mime
from .errors import ApiError, bad_request, insufficient_scopes, not_found, unauthenticated
from .query import QueryError, compile_query
from .scopes import AUTH, METHOD_RESPONSE_SCHEMA, METHOD_SCOPES
from .state import (
    WATCH_TTL_MS,
    AccessToken,
    CallRecord,
    Fault,
    Label,
    Mailbox,
    SentRecord,
    SimState,
    StoredMessage,
    User,
    Watch,
    decode_page_token,
    encode_page_token,
)

JSON_HEADERS = {
    "Content-Type": "application/json; charset=UTF-8",
    "Vary": "Origin, X-Origin, Referer",
    "Cache-Control": "private",
}
METADATA_SCOPES = frozenset({AUTH + "gmail.metadata", AUTH + "gmail.addons.current.message.metadata"})
MEDIA_METHODS = frozenset(
    {
        "gmail.users.messages.send",
        "gmail.users.messages.insert",
        "gmail.users.messages.import",
        "gmail.users.drafts.create",
        "gmail.users.drafts.update",
        "gmail.users.drafts.send",
    }
)
FORMATS = ("minimal", "full", "raw", "metadata")
MAX_PAGE = 500
TOPIC_RE = re.compile(r"projects/[^/]+/topics/[^/]+")


@dataclass
class ApiRequest:
    method: str
    path: str  # below /gmail/v1/, e.g. "users/me/messages/abc"
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    base_url: str = ""
    media: bytes | None = None
    batch: bool = False


@dataclass
class ApiResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    state: SimState
    req: ApiRequest
    method_id: str
    token: AccessToken
    user: User
    mailbox: Mailbox
    params: dict[str, str]
    _json: dict[str, Any] | None = None

    def q(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.req.query:
            if key == name:
                return value
        return default

    def qlist(self, name: str) -> list[str]:
        out: list[str] = []
        for key, value in self.req.query:
            if key == name:
                out.append(value)
        return out

    def qbool(self, name: str) -> bool:
        return (self.q(name) or "").lower() == "true"

    def qint(self, name: str, default: int) -> int:
        value = self.q(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError as exc:
            raise bad_request(f"Invalid value '{value}' for parameter {name}") from exc

    def body_json(self) -> dict[str, Any]:
        if self._json is None:
            if not self.req.body.strip():
                self._json = {}
            else:
                try:
                    data = json.loads(self.req.body)
                except ValueError as exc:
                    raise bad_request("Invalid JSON payload received.") from exc
                if not isinstance(data, dict):
                    raise bad_request("Invalid JSON payload received. Expected an object.")
                self._json = data
        return self._json

    def metadata_only(self) -> bool:
        """The token reaches this method only through the metadata scope."""
        accepted = METHOD_SCOPES[self.method_id] - METADATA_SCOPES
        return not (accepted & set(self.token.scopes))

    def fmt(self, allowed: tuple[str, ...] = FORMATS) -> str:
        fmt = (self.q("format") or "full").lower()
        if fmt not in allowed:
            raise bad_request(f"Invalid value at 'format' ({fmt})")
        if fmt in ("full", "raw") and self.metadata_only():
            raise ApiError(403, f"Metadata scope doesn't allow format {fmt.upper()}", reason="forbidden")
        return fmt


Handler = Callable[[Ctx], Any]
_U = r"users/(?P<userId>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str, Handler]] = []


def route(method: str, pattern: str, method_id: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _ROUTES.append((method, re.compile(_U + pattern), method_id, fn))
        return fn

    return deco


# --- JSON shapes ---------------------------------------------------------------------------


def message_json(
    state: SimState, msg: StoredMessage, fmt: str, metadata_headers: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": msg.id, "threadId": msg.thread_id}
    if msg.label_ids:
        out["labelIds"] = list(msg.label_ids)
    out["snippet"] = msg.parsed.snippet
    if fmt == "full":
        out["payload"] = mime.part_json(msg.parsed.root, msg.id, state.inline_limit)
    elif fmt == "metadata":
        wanted = {h.lower() for h in metadata_headers or []}
        headers = [
            {"name": k, "value": v} for k, v in msg.parsed.headers if not wanted or k.lower() in wanted
        ]
        out["payload"] = {
            "partId": "",
            "mimeType": msg.parsed.root.mime_type,
            "filename": "",
            "headers": headers,
            "body": {"size": 0},
        }
    elif fmt == "raw":
        out["raw"] = mime.b64url_padded(msg.raw)
    out["sizeEstimate"] = msg.size
    out["historyId"] = str(msg.history_id)
    out["internalDate"] = str(msg.internal_date)
    return out


def label_json(box: Mailbox, label: Label, counts: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": label.id, "name": label.name}
    if label.message_list_visibility:
        out["messageListVisibility"] = label.message_list_visibility
    if label.label_list_visibility:
        out["labelListVisibility"] = label.label_list_visibility
    out["type"] = label.type
    if counts:
        out.update(box.label_counts(label.id))
    if label.color:
        out["color"] = dict(label.color)
    return out


def thread_history_id(msgs: list[StoredMessage]) -> str:
    return str(max(m.history_id for m in msgs))


# --- search and paging ---------------------------------------------------------------------


def _search(ctx: Ctx, *, drafts_only: bool = False) -> list[StoredMessage]:
    box = ctx.mailbox
    q = ctx.q("q") or ""
    if q and ctx.metadata_only():
        raise ApiError(403, "Metadata scope does not support 'q' parameter", reason="forbidden")
    label_ids = [] if drafts_only else ctx.qlist("labelIds")
    try:
        query = (
            compile_query(q, now_ms=ctx.state.now_ms(), label_resolver=box.resolve_query_label) if q else None
        )
    except QueryError as exc:
        raise bad_request(f"Invalid query: {exc}") from exc
    lifted = (
        ctx.qbool("includeSpamTrash")
        or bool({"SPAM", "TRASH"} & set(label_ids))
        or (query is not None and query.wants_spam_trash)
    )
    draft_ids = {d.message_id for d in box.drafts.values()}
    out = []
    for msg in box.messages.values():
        if drafts_only and msg.id not in draft_ids:
            continue
        if not lifted and ("SPAM" in msg.label_ids or "TRASH" in msg.label_ids):
            continue
        if any(lid not in msg.label_ids for lid in label_ids):
            continue
        if query is not None and not query.matches(msg):
            continue
        out.append(msg)
    out.sort(key=lambda m: (m.internal_date, m.id), reverse=True)
    return out


def _page(ctx: Ctx, items: list[Any], key: Callable[[Any], tuple[int, str]]) -> tuple[list[Any], str | None]:
    size = max(1, min(ctx.qint("maxResults", 100), MAX_PAGE))
    token = ctx.q("pageToken")
    start = 0
    if token:
        parts = decode_page_token(token)
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise bad_request("Invalid pageToken")
        last = (int(parts[0]), parts[1])
        start = next((i for i, item in enumerate(items) if key(item) < last), len(items))
    page = items[start : start + size]
    more = start + size < len(items)
    next_token = encode_page_token(*key(page[-1])) if more and page else None
    return page, next_token


# --- profile / watch -----------------------------------------------------------------------


@route("GET", r"/profile", "gmail.users.getProfile")
def get_profile(ctx: Ctx) -> dict[str, Any]:
    return ctx.mailbox.profile()


@route("POST", r"/watch", "gmail.users.watch")
def watch(ctx: Ctx) -> dict[str, Any]:
    body = ctx.body_json()
    topic = str(body.get("topicName") or "")
    if not TOPIC_RE.fullmatch(topic):
        raise bad_request("Invalid topicName does not match projects/SOME-PROJECT/topics/SOME-TOPIC")
    label_ids = [str(x) for x in body.get("labelIds") or []]
    ctx.mailbox.check_labels(label_ids)
    behavior = str(body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include")
    if behavior not in ("include", "exclude"):
        raise bad_request(f"Invalid value at 'labelFilterBehavior' ({behavior})")
    expiration = ctx.state.now_ms() + WATCH_TTL_MS
    ctx.mailbox.watch = Watch(topic, label_ids, behavior, expiration)
    return {"historyId": str(ctx.mailbox.history_id), "expiration": str(expiration)}


@route("POST", r"/stop", "gmail.users.stop")
def stop(ctx: Ctx) -> None:
    ctx.mailbox.watch = None


# --- labels --------------------------------------------------------------------------------


@route("GET", r"/labels", "gmail.users.labels.list")
def labels_list(ctx: Ctx) -> dict[str, Any]:
    box = ctx.mailbox
    return {"labels": [label_json(box, label, False) for label in box.labels.values()]}


@route("POST", r"/labels", "gmail.users.labels.create")
def labels_create(ctx: Ctx) -> dict[str, Any]:
    body = ctx.body_json()
    label = ctx.mailbox.create_label(
        str(body.get("name") or ""),
        message_list_visibility=body.get("messageListVisibility"),
        label_list_visibility=body.get("labelListVisibility"),
        color=body.get("color"),
    )
    return label_json(ctx.mailbox, label, False)


@route("GET", r"/labels/(?P<id>[^/]+)", "gmail.users.labels.get")
def labels_get(ctx: Ctx) -> dict[str, Any]:
    label = ctx.mailbox.labels.get(ctx.params["id"])
    if label is None:
        raise not_found()
    return label_json(ctx.mailbox, label, True)


@route("PATCH", r"/labels/(?P<id>[^/]+)", "gmail.users.labels.patch")
def labels_patch(ctx: Ctx) -> dict[str, Any]:
    label = ctx.mailbox.update_label(ctx.params["id"], ctx.body_json(), replace=False)
    return label_json(ctx.mailbox, label, False)


@route("PUT", r"/labels/(?P<id>[^/]+)", "gmail.users.labels.update")
def labels_update(ctx: Ctx) -> dict[str, Any]:
    label = ctx.mailbox.update_label(ctx.params["id"], ctx.body_json(), replace=True)
    return label_json(ctx.mailbox, label, False)


@route("DELETE", r"/labels/(?P<id>[^/]+)", "gmail.users.labels.delete")
def labels_delete(ctx: Ctx) -> None:
    ctx.mailbox.delete_label(ctx.params["id"])


# --- messages ------------------------------------------------------------------------------


def _msg_key(m: StoredMessage) -> tuple[int, str]:
    return (m.internal_date, m.id)


@route("GET", r"/messages", "gmail.users.messages.list")
def messages_list(ctx: Ctx) -> dict[str, Any]:
    found = _search(ctx)
    page, token = _page(ctx, found, _msg_key)
    out: dict[str, Any] = {}
    if page:
        out["messages"] = [m.ref(False) for m in page]
    if token:
        out["nextPageToken"] = token
    out["resultSizeEstimate"] = len(found)
    return out


@route("GET", r"/messages/(?P<id>[^/]+)", "gmail.users.messages.get")
def messages_get(ctx: Ctx) -> dict[str, Any]:
    fmt = ctx.fmt()
    msg = ctx.mailbox.get(ctx.params["id"])
    return message_json(ctx.state, msg, fmt, ctx.qlist("metadataHeaders"))


@route(
    "GET", r"/messages/(?P<messageId>[^/]+)/attachments/(?P<id>[^/]+)", "gmail.users.messages.attachments.get"
)
def attachments_get(ctx: Ctx) -> dict[str, Any]:
    msg = ctx.mailbox.get(ctx.params["messageId"])
    parsed = mime.parse_attachment_id(ctx.params["id"])
    if parsed is None or parsed[0] != msg.id:
        raise bad_request("Invalid attachment token")
    part = msg.parsed.root.find(parsed[1])
    if part is None or part.is_multipart:
        raise not_found()
    return {"size": len(part.body), "data": mime.b64url_padded(part.body)}


def _raw_from(ctx: Ctx, message: dict[str, Any] | None) -> bytes:
    if ctx.req.media is not None:
        return ctx.req.media
    raw = (message or {}).get("raw")
    if not raw:
        raise bad_request(
            "'raw' RFC822 payload message string or uploading message via /upload/* URL required"
        )
    try:
        return mime.decode_bytes_field(str(raw))
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def _internal_date(ctx: Ctx, raw_parsed: mime.ParsedMessage, default_source: str) -> int:
    source = ctx.q("internalDateSource") or default_source
    if source not in ("receivedTime", "dateHeader"):
        raise bad_request(f"Invalid value at 'internal_date_source' ({source})")
    if source == "dateHeader" and raw_parsed.date_ms is not None:
        return raw_parsed.date_ms
    return ctx.state.now_ms()


def _store(ctx: Ctx, default_source: str) -> dict[str, Any]:
    body = ctx.body_json()
    raw = _raw_from(ctx, body)
    when = _internal_date(ctx, mime.parse(raw), default_source)
    msg = ctx.mailbox.add_message(
        raw,
        [str(x) for x in body.get("labelIds") or []],
        internal_date=when,
        thread_hint=body.get("threadId") or None,
    )
    return msg.ref()


@route("POST", r"/messages", "gmail.users.messages.insert")
def messages_insert(ctx: Ctx) -> dict[str, Any]:
    return _store(ctx, "receivedTime")


@route("POST", r"/messages/import", "gmail.users.messages.import")
def messages_import(ctx: Ctx) -> dict[str, Any]:
    return _store(ctx, "dateHeader")


_FROM_LINE = re.compile(rb"^From:[^\r\n]*(\r?\n[ \t][^\r\n]*)*\r?\n", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BCC_LINE = re.compile(rb"^Bcc:[^\r\n]*(\r?\n[ \t][^\r\n]*)*\r?\n", re.IGNORECASE | re.MULTILINE)


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    m = _HEADER_END.search(raw)
    return (raw[: m.start()] + b"\r\n", raw[m.start() + 2 :]) if m else (raw, b"")


def prepare_outgoing(state: SimState, user: User, raw: bytes) -> tuple[bytes, list[str]]:
    """What Gmail does to a message it sends: From forced to the account, Date/Message-ID added."""
    parsed = mime.parse(raw)
    recipients = [a for _, a in parsed.to_addrs + parsed.cc_addrs + parsed.bcc_addrs]
    if not recipients:
        raise bad_request("Recipient address required", reason="invalidArgument")
    for _, addr in parsed.to_addrs + parsed.cc_addrs + parsed.bcc_addrs:
        if "@" not in addr:
            raise bad_request(f"Invalid To header: {addr}")
    head, rest = _split_head(raw)
    name = parsed.from_addrs[0][0] if parsed.from_addrs else user.name
    new_from = f"From: {email.utils.formataddr((name, user.email))}\r\n".encode()
    if not parsed.from_addrs or parsed.from_addrs[0][1].lower() != user.email.lower():
        head = _FROM_LINE.sub(b"", head, count=1)
        head = new_from + head
    extra = b""
    if parsed.date_ms is None and not parsed.header("date"):
        now = dt.datetime.fromtimestamp(state.now(), dt.UTC)
        extra += f"Date: {email.utils.format_datetime(now)}\r\n".encode()
    if not parsed.message_id:
        extra += f"Message-ID: <CA+sim{secrets.token_hex(12)}@mail.gmail.com>\r\n".encode()
    return extra + head + rest, recipients


def send_message(ctx: Ctx, raw: bytes, thread_hint: str | None) -> StoredMessage:
    state, box, user = ctx.state, ctx.mailbox, ctx.user
    raw, recipients = prepare_outgoing(state, user, raw)
    to_self = user.email.lower() in {r.lower() for r in recipients}
    labels = ["SENT", "INBOX"] if to_self else ["SENT"]
    msg = box.add_message(raw, labels, thread_hint=thread_hint)
    head, rest = _split_head(raw)
    delivered = _BCC_LINE.sub(b"", head) + rest
    for rcpt in dict.fromkeys(r.lower() for r in recipients):
        if rcpt != user.email.lower() and rcpt in state.mailboxes:
            state.mailboxes[rcpt].add_message(delivered, ["INBOX", "UNREAD", "CATEGORY_PERSONAL"])
    state.outbox.append(SentRecord(user.email, msg.id, raw, recipients))
    return msg


@route("POST", r"/messages/send", "gmail.users.messages.send")
def messages_send(ctx: Ctx) -> dict[str, Any]:
    body = ctx.body_json()
    msg = send_message(ctx, _raw_from(ctx, body), body.get("threadId") or None)
    return msg.ref()


def _label_lists(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    add = [str(x) for x in body.get("addLabelIds") or []]
    remove = [str(x) for x in body.get("removeLabelIds") or []]
    if len(add) > 100 or len(remove) > 100:
        raise bad_request("Too many label ids (max 100)")
    return add, remove


@route("POST", r"/messages/(?P<id>[^/]+)/modify", "gmail.users.messages.modify")
def messages_modify(ctx: Ctx) -> dict[str, Any]:
    msg = ctx.mailbox.get(ctx.params["id"])
    add, remove = _label_lists(ctx.body_json())
    ctx.mailbox.modify([msg.id], add, remove)
    return msg.ref()


def _ids(body: dict[str, Any], limit: int = 1000) -> list[str]:
    ids = [str(x) for x in body.get("ids") or []]
    if not ids:
        raise bad_request("No message ids specified")
    if len(ids) > limit:
        raise bad_request(f"Too many message ids (max {limit})")
    return ids


@route("POST", r"/messages/batchModify", "gmail.users.messages.batchModify")
def messages_batch_modify(ctx: Ctx) -> None:
    body = ctx.body_json()
    ids = _ids(body)
    add, remove = _label_lists(body)
    ctx.mailbox.modify(ids, add, remove)


@route("POST", r"/messages/batchDelete", "gmail.users.messages.batchDelete")
def messages_batch_delete(ctx: Ctx) -> None:
    ctx.mailbox.delete(_ids(ctx.body_json()))


@route("DELETE", r"/messages/(?P<id>[^/]+)", "gmail.users.messages.delete")
def messages_delete(ctx: Ctx) -> None:
    ctx.mailbox.get(ctx.params["id"])
    ctx.mailbox.delete([ctx.params["id"]])


@route("POST", r"/messages/(?P<id>[^/]+)/trash", "gmail.users.messages.trash")
def messages_trash(ctx: Ctx) -> dict[str, Any]:
    return ctx.mailbox.trash([ctx.params["id"]])[0].ref()


@route("POST", r"/messages/(?P<id>[^/]+)/untrash", "gmail.users.messages.untrash")
def messages_untrash(ctx: Ctx) -> dict[str, Any]:
    return ctx.mailbox.untrash([ctx.params["id"]])[0].ref()


# --- threads -------------------------------------------------------------------------------


@route("GET", r"/threads", "gmail.users.threads.list")
def threads_list(ctx: Ctx) -> dict[str, Any]:
    found = _search(ctx)
    box = ctx.mailbox
    seen: dict[str, StoredMessage] = {}
    for msg in found:  # newest first: the first hit of a thread is its latest match
        seen.setdefault(msg.thread_id, msg)
    threads = list(seen.items())
    page, token = _page(ctx, threads, lambda t: _msg_key(t[1]))
    out: dict[str, Any] = {}
    if page:
        items = []
        for thread_id, _ in page:
            msgs = box.thread_messages(thread_id)
            items.append(
                {"id": thread_id, "snippet": msgs[-1].parsed.snippet, "historyId": thread_history_id(msgs)}
            )
        out["threads"] = items
    if token:
        out["nextPageToken"] = token
    out["resultSizeEstimate"] = len(threads)
    return out


@route("GET", r"/threads/(?P<id>[^/]+)", "gmail.users.threads.get")
def threads_get(ctx: Ctx) -> dict[str, Any]:
    fmt = ctx.fmt(("minimal", "full", "metadata"))
    msgs = ctx.mailbox.thread_messages(ctx.params["id"])
    headers = ctx.qlist("metadataHeaders")
    return {
        "id": ctx.params["id"],
        "historyId": thread_history_id(msgs),
        "messages": [message_json(ctx.state, m, fmt, headers) for m in msgs],
    }


def _thread_minimal(ctx: Ctx, thread_id: str) -> dict[str, Any]:
    msgs = ctx.mailbox.thread_messages(thread_id)
    return {"id": thread_id, "historyId": thread_history_id(msgs), "messages": [m.ref() for m in msgs]}


@route("POST", r"/threads/(?P<id>[^/]+)/modify", "gmail.users.threads.modify")
def threads_modify(ctx: Ctx) -> dict[str, Any]:
    msgs = ctx.mailbox.thread_messages(ctx.params["id"])
    add, remove = _label_lists(ctx.body_json())
    ctx.mailbox.modify([m.id for m in msgs], add, remove)
    return _thread_minimal(ctx, ctx.params["id"])


@route("POST", r"/threads/(?P<id>[^/]+)/trash", "gmail.users.threads.trash")
def threads_trash(ctx: Ctx) -> dict[str, Any]:
    ctx.mailbox.trash([m.id for m in ctx.mailbox.thread_messages(ctx.params["id"])])
    return _thread_minimal(ctx, ctx.params["id"])


@route("POST", r"/threads/(?P<id>[^/]+)/untrash", "gmail.users.threads.untrash")
def threads_untrash(ctx: Ctx) -> dict[str, Any]:
    ctx.mailbox.untrash([m.id for m in ctx.mailbox.thread_messages(ctx.params["id"])])
    return _thread_minimal(ctx, ctx.params["id"])


@route("DELETE", r"/threads/(?P<id>[^/]+)", "gmail.users.threads.delete")
def threads_delete(ctx: Ctx) -> None:
    ctx.mailbox.delete([m.id for m in ctx.mailbox.thread_messages(ctx.params["id"])])


# --- drafts --------------------------------------------------------------------------------


def _draft_message(ctx: Ctx) -> tuple[bytes, str | None]:
    body = ctx.body_json()
    message = body.get("message") if isinstance(body.get("message"), dict) else {}
    raw = _raw_from(ctx, message)
    return raw, (message or {}).get("threadId") or None


def _draft_ref(draft_id: str, msg: StoredMessage) -> dict[str, Any]:
    return {"id": draft_id, "message": msg.ref()}


@route("GET", r"/drafts", "gmail.users.drafts.list")
def drafts_list(ctx: Ctx) -> dict[str, Any]:
    box = ctx.mailbox
    by_msg = {d.message_id: d.id for d in box.drafts.values()}
    found = _search(ctx, drafts_only=True)
    page, token = _page(ctx, found, _msg_key)
    out: dict[str, Any] = {}
    if page:
        out["drafts"] = [{"id": by_msg[m.id], "message": m.ref(False)} for m in page]
    if token:
        out["nextPageToken"] = token
    out["resultSizeEstimate"] = len(found)
    return out


@route("POST", r"/drafts", "gmail.users.drafts.create")
def drafts_create(ctx: Ctx) -> dict[str, Any]:
    from .state import Draft

    raw, thread = _draft_message(ctx)
    box = ctx.mailbox
    msg = box.add_message(raw, ["DRAFT"], thread_hint=thread)
    draft = Draft(box.new_draft_id(), msg.id)
    box.drafts[draft.id] = draft
    return _draft_ref(draft.id, msg)


@route("GET", r"/drafts/(?P<id>[^/]+)", "gmail.users.drafts.get")
def drafts_get(ctx: Ctx) -> dict[str, Any]:
    fmt = ctx.fmt()
    draft, msg = ctx.mailbox.get_draft(ctx.params["id"])
    return {"id": draft.id, "message": message_json(ctx.state, msg, fmt)}


@route("PUT", r"/drafts/(?P<id>[^/]+)", "gmail.users.drafts.update")
def drafts_update(ctx: Ctx) -> dict[str, Any]:
    box = ctx.mailbox
    draft, old = box.get_draft(ctx.params["id"])
    raw, thread = _draft_message(ctx)
    msg = box.add_message(raw, ["DRAFT"], thread_hint=thread or None)
    box.delete([old.id])
    draft.message_id = msg.id
    box.drafts[draft.id] = draft
    return _draft_ref(draft.id, msg)


@route("DELETE", r"/drafts/(?P<id>[^/]+)", "gmail.users.drafts.delete")
def drafts_delete(ctx: Ctx) -> None:
    _, msg = ctx.mailbox.get_draft(ctx.params["id"])
    ctx.mailbox.delete([msg.id])


@route("POST", r"/drafts/send", "gmail.users.drafts.send")
def drafts_send(ctx: Ctx) -> dict[str, Any]:
    body = ctx.body_json()
    draft_id = body.get("id")
    if not draft_id:
        raise bad_request("Invalid draft id")
    box = ctx.mailbox
    _, old = box.get_draft(str(draft_id))
    message = body.get("message") if isinstance(body.get("message"), dict) else None
    replaced = ctx.req.media is not None or bool(message and message.get("raw"))
    raw = _raw_from(ctx, message) if replaced else old.raw
    others = [i for i in box.threads.get(old.thread_id, []) if i != old.id]
    box.delete([old.id])
    msg = send_message(ctx, raw, old.thread_id if others else None)
    return msg.ref()


# --- history -------------------------------------------------------------------------------

_HISTORY_TYPES = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}


@route("GET", r"/history", "gmail.users.history.list")
def history_list(ctx: Ctx) -> dict[str, Any]:
    box = ctx.mailbox
    start_text = ctx.q("startHistoryId")
    if not start_text:
        raise bad_request("Missing required parameter: startHistoryId", reason="required")
    if not start_text.isdigit():
        raise bad_request(f"Invalid value '{start_text}' for parameter startHistoryId")
    start = int(start_text)
    if start < box.history_floor:
        raise not_found()
    types = ctx.qlist("historyTypes")
    for t in types:
        if t not in _HISTORY_TYPES:
            raise bad_request(f"Invalid value at 'history_types' ({t})")
    keep = {_HISTORY_TYPES[t] for t in types} if types else set(_HISTORY_TYPES.values())
    label_id = ctx.q("labelId")
    records: list[dict[str, Any]] = []
    for rec in box.history:
        if rec.id <= start or (label_id and label_id not in rec.label_ids):
            continue
        item: dict[str, Any] = {"id": str(rec.id), "messages": rec.messages}
        parts = {
            "messagesAdded": rec.messages_added,
            "messagesDeleted": rec.messages_deleted,
            "labelsAdded": rec.labels_added,
            "labelsRemoved": rec.labels_removed,
        }
        present = False
        for name, value in parts.items():
            if value and name in keep:
                item[name] = value
                present = True
        if present:
            records.append(item)
    size = max(1, min(ctx.qint("maxResults", 100), MAX_PAGE))
    offset = 0
    token = ctx.q("pageToken")
    if token:
        parts_tok = decode_page_token(token)
        if len(parts_tok) != 2 or parts_tok[0] != "h" or not parts_tok[1].isdigit():
            raise bad_request("Invalid pageToken")
        after = int(parts_tok[1])
        offset = next((i for i, r in enumerate(records) if int(r["id"]) > after), len(records))
    page = records[offset : offset + size]
    out: dict[str, Any] = {}
    if page:
        out["history"] = page
    if offset + size < len(records) and page:
        out["nextPageToken"] = encode_page_token("h", page[-1]["id"])
    out["historyId"] = str(box.history_id)
    return out


# --- settings ------------------------------------------------------------------------------


def _send_as(user: User) -> dict[str, Any]:
    return {
        "sendAsEmail": user.email,
        "displayName": user.name,
        "replyToAddress": "",
        "signature": "",
        "isPrimary": True,
        "isDefault": True,
        "treatAsAlias": False,
    }


@route("GET", r"/settings/sendAs", "gmail.users.settings.sendAs.list")
def send_as_list(ctx: Ctx) -> dict[str, Any]:
    return {"sendAs": [_send_as(ctx.user)]}


@route("GET", r"/settings/sendAs/(?P<sendAsEmail>[^/]+)", "gmail.users.settings.sendAs.get")
def send_as_get(ctx: Ctx) -> dict[str, Any]:
    if ctx.params["sendAsEmail"].lower() != ctx.user.email.lower():
        raise not_found()
    return _send_as(ctx.user)


# --- dispatch ------------------------------------------------------------------------------


def match_route(method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
    """(method id, handler, path params) of a request, or None."""
    path = path.strip("/")
    for http_method, pattern, method_id, handler in _ROUTES:
        if http_method != method:
            continue
        m = pattern.fullmatch(path)
        if m:
            return method_id, handler, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
    return None


def bearer_token(headers: dict[str, str], query: list[tuple[str, str]]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for key, value in query:
        if key in ("access_token", "oauth_token"):
            return value
    return None


def valid_access_token(state: SimState, token: str | None) -> AccessToken | None:
    if not token:
        return None
    at = state.access_tokens.get(token)
    if at is None or at.revoked or at.expires_at <= state.now() or state.user(at.user) is None:
        return None
    return at


def take_fault(state: SimState, method_id: str, user: str | None) -> Fault | None:
    for fault in state.faults:
        if fault.count <= 0:
            continue
        if fault.methods is None and method_id == "batch":
            continue
        if fault.methods is not None and method_id not in fault.methods:
            continue
        if fault.user and (user or "").lower() != fault.user.lower():
            continue
        fault.count -= 1
        state.faults = [f for f in state.faults if f.count > 0]
        return fault
    return None


def fault_error(state: SimState, fault: Fault) -> ApiError:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(fault.retry_after)
    status, reason = fault.status, fault.reason
    domain = (
        "usageLimits"
        if reason in ("rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded")
        else "global"
    )
    if fault.message:
        message = fault.message
    elif status == 429:
        retry_at = dt.datetime.fromtimestamp(state.now() + (fault.retry_after or 1), dt.UTC)
        message = (
            f"User-rate limit exceeded.  Retry after {retry_at.isoformat(timespec='milliseconds')[:-6]}Z"
        )
    elif reason == "userRateLimitExceeded":
        message = "User Rate Limit Exceeded"
    elif reason == "rateLimitExceeded":
        message = "Rate Limit Exceeded"
    elif reason == "dailyLimitExceeded":
        message = "Daily Limit Exceeded"
    elif status == 503:
        message = "The service is currently unavailable."
    elif status >= 500:
        message = "Backend Error"
    else:
        message = "Precondition check failed." if status == 400 else "Simulated error"
    return ApiError(status, message, reason=reason, domain=domain, headers=headers)


_DOC: dict[str, Any] = {}


def _validate(state: SimState, method_id: str, result: Any) -> None:
    if "doc" not in _DOC:
        try:
            _DOC["doc"] = discovery.load_gmail_discovery()
        except FileNotFoundError as exc:
            state.schema_violations.append(f"cannot validate: {exc}")
            state.validate_responses = False
            return
    schema = METHOD_RESPONSE_SCHEMA.get(method_id)
    problems = (
        discovery.validate(_DOC["doc"], schema, result)
        if schema
        else ([] if result is None else [f"{method_id}: expected an empty body"])
    )
    state.schema_violations.extend(f"{method_id}: {p}" for p in problems)


def error_response(err: ApiError) -> ApiResponse:
    return ApiResponse(err.code, err.to_bytes(), {**JSON_HEADERS, **err.headers})


def dispatch(state: SimState, req: ApiRequest) -> ApiResponse:
    """Run one Gmail API call."""
    found = match_route(req.method, req.path)
    if found is None:
        return error_response(not_found(f"Method not found: {req.method} /gmail/v1/{req.path}"))
    method_id, handler, params = found
    user_email: str | None = None
    with state.lock:
        try:
            token = valid_access_token(state, bearer_token(req.headers, req.query))
            if token is None:
                raise unauthenticated(missing=bearer_token(req.headers, req.query) is None)
            user = state.users[token.user.lower()]
            user_email = user.email
            user_id = params.get("userId", "me")
            if user_id != "me" and user_id.lower() != user.email.lower():
                raise ApiError(403, f"Delegation denied for {user.email}", reason="forbidden")
            accepted = METHOD_SCOPES[method_id]
            if not accepted & set(token.scopes):
                raise insufficient_scopes(method_id, accepted)
            if req.media is not None and method_id not in MEDIA_METHODS:
                raise bad_request("Media upload is not supported by this method")
            fault = take_fault(state, method_id, user.email)
            if fault is not None:
                raise fault_error(state, fault)
            ctx = Ctx(state, req, method_id, token, user, state.mailboxes[user.email.lower()], params)
            result = handler(ctx)
            if state.validate_responses:
                _validate(state, method_id, result)
        except ApiError as err:
            state.calls.append(CallRecord(method_id, user_email, err.code, req.batch, state.now()))
            return error_response(err)
        state.calls.append(
            CallRecord(method_id, user_email, 200 if result is not None else 204, req.batch, state.now())
        )
    if result is None:
        return ApiResponse(204, b"", {"Vary": JSON_HEADERS["Vary"]})
    fields = next((v for k, v in req.query if k == "fields"), None)
    if fields:
        result = apply_fields(result, parse_fields(fields))
    compact = next((v for k, v in req.query if k == "prettyPrint"), "true").lower() == "false"
    body = json.dumps(result, ensure_ascii=False, indent=None if compact else 2).encode()
    return ApiResponse(200, body, dict(JSON_HEADERS))


# --- partial responses (fields=) -----------------------------------------------------------

FieldTree = dict[str, "FieldTree | None"]


def parse_fields(text: str) -> FieldTree:
    """Parse a ``fields`` selector like ``messages(id,threadId),nextPageToken`` or ``a/b``."""
    pos = 0

    def parse_list() -> FieldTree:
        nonlocal pos
        tree: FieldTree = {}
        while pos < len(text):
            m = re.compile(r"\s*([A-Za-z0-9_*@.]+(?:/[A-Za-z0-9_*@.]+)*)\s*").match(text, pos)
            if not m:
                raise bad_request(f"Invalid field selection {text}")
            pos = m.end()
            names = m.group(1).split("/")
            sub: FieldTree | None = None
            if pos < len(text) and text[pos] == "(":
                pos += 1
                sub = parse_list()
                if pos >= len(text) or text[pos] != ")":
                    raise bad_request(f"Invalid field selection {text}")
                pos += 1
            _merge(tree, names, sub)
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            break
        return tree

    tree = parse_list()
    if pos != len(text):
        raise bad_request(f"Invalid field selection {text}")
    return tree


def _merge(tree: FieldTree, names: list[str], sub: FieldTree | None) -> None:
    node = tree
    for name in names[:-1]:
        if name in node and node[name] is None:
            return  # the whole of it is already selected
        child = node.get(name) or {}
        node[name] = child
        node = child
    last = names[-1]
    if sub is None or (last in node and node[last] is None):
        node[last] = None
    else:
        merged = dict(node.get(last) or {})
        merged.update(sub)
        node[last] = merged


def apply_fields(value: Any, tree: FieldTree) -> Any:
    if isinstance(value, list):
        return [apply_fields(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree:
        sub = tree["*"]
        return {k: (v if sub is None else apply_fields(v, sub)) for k, v in value.items()}
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key in value:
            out[key] = value[key] if sub is None else apply_fields(value[key], sub)
    return out
