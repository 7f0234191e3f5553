"""In-memory state of the Google simulator: users, mailboxes, OAuth grants and tokens, faults.

Everything is guarded by one re-entrant lock (:attr:`SimState.lock`): the ASGI app and the test
thread driving :class:`~inboxlink_sim.google.server.GoogleSim` both mutate it.

Gmail semantics simulated here (see the package docstring for the whole fidelity list):

* message ids are 16 hex digits, ``(time_ms << 20 | counter)`` like Gmail's (so ids of seeded old
  mail sort by date); a thread's id is the id of its first message; user label ids are
  ``Label_<n>``; draft ids ``r<signed 63-bit>``;
* threading: a message joins a thread when it names one of the thread's Message-IDs in
  ``In-Reply-To``/``References`` *and* its normalised subject (``Re:``/``Fwd:`` stripped) equals the
  thread's; an explicit ``threadId`` (send/insert/import/drafts) is honoured when the subject
  matches, and an unknown ``threadId`` is a 400 ``Invalid thread_id value``;
* history: each change of a message is one history record (``messagesAdded``,
  ``messagesDeleted``, ``labelsAdded``/``labelsRemoved``) with a new mailbox ``historyId``; the
  ``historyId`` grows by a varying step (1..3), never by a fixed one; records older than the
  retained window (:meth:`Mailbox.expire_history`) make ``history.list`` 404;
* ``trash`` adds TRASH and removes INBOX and SPAM; ``untrash`` only removes TRASH (a message does
  not go back to the inbox by itself, as in Gmail).
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import mime
from .errors import ApiError, bad_request, not_found
from .mime import ParsedMessage
from .signing import SigningKey

if TYPE_CHECKING:
    from .push import Pusher

DEFAULT_CLIENT_ID = "inboxlink-sim.apps.googleusercontent.com"
DEFAULT_CLIENT_SECRET = "GOCSPX-inboxlink-sim-secret"
WATCH_TTL_MS = 7 * 24 * 3600 * 1000

#: (id, messageListVisibility, labelListVisibility) of Gmail's system labels, as labels.list shows them
SYSTEM_LABELS: list[tuple[str, str | None, str | None]] = [
    ("CHAT", "hide", "labelHide"),
    ("SENT", "hide", "labelShow"),
    ("INBOX", "hide", "labelShow"),
    ("IMPORTANT", "hide", "labelShow"),
    ("TRASH", "hide", "labelHide"),
    ("DRAFT", "hide", "labelShow"),
    ("SPAM", "hide", "labelHide"),
    ("CATEGORY_FORUMS", None, None),
    ("CATEGORY_UPDATES", None, None),
    ("CATEGORY_PERSONAL", None, None),
    ("CATEGORY_PROMOTIONS", None, None),
    ("CATEGORY_SOCIAL", None, None),
    ("STARRED", "hide", "labelShow"),
    ("UNREAD", "hide", "labelShow"),
]
#: labels messages.modify refuses to add or remove
UNMODIFIABLE_LABELS = frozenset({"DRAFT"})
#: what a message or thread id looks like; anything else is a 400 ``Invalid id value``, as in Gmail
_ID_RE = re.compile(r"[0-9a-f]{1,16}")


@dataclass
class User:
    email: str
    name: str
    sub: str
    picture: str


@dataclass
class Label:
    id: str
    name: str
    type: str
    message_list_visibility: str | None = None
    label_list_visibility: str | None = None
    color: dict[str, str] | None = None


@dataclass
class StoredMessage:
    id: str
    thread_id: str
    raw: bytes
    label_ids: list[str]
    internal_date: int
    history_id: int
    parsed: ParsedMessage

    @property
    def size(self) -> int:
        return len(self.raw)

    def ref(self, with_labels: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if with_labels and self.label_ids:
            out["labelIds"] = list(self.label_ids)
        return out


@dataclass
class HistoryRecord:
    id: int
    messages: list[dict[str, Any]]
    messages_added: list[dict[str, Any]] = field(default_factory=list)
    messages_deleted: list[dict[str, Any]] = field(default_factory=list)
    labels_added: list[dict[str, Any]] = field(default_factory=list)
    labels_removed: list[dict[str, Any]] = field(default_factory=list)
    #: labels the affected messages carried (before and after), for ``labelId`` filtering
    label_ids: set[str] = field(default_factory=set)


@dataclass
class Watch:
    topic: str
    label_ids: list[str]
    behavior: str
    expiration_ms: int


@dataclass
class Draft:
    id: str
    message_id: str


@dataclass
class Client:
    client_id: str
    client_secret: str | None
    redirect_uris: list[str] | None = None  # None: any redirect URI is accepted
    name: str = "inboxlink (simulated client)"


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    user: str
    scopes: list[str]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    offline: bool
    issue_refresh: bool
    expires_at: float
    used: bool = False


@dataclass
class RefreshToken:
    token: str
    user: str
    client_id: str
    scopes: list[str]
    revoked: bool = False


@dataclass
class AccessToken:
    token: str
    user: str
    client_id: str
    scopes: list[str]
    expires_at: float
    refresh_token: str | None
    revoked: bool = False


@dataclass
class PendingAuth:
    id: str
    params: dict[str, str]
    scopes: list[str]
    expires_at: float


@dataclass
class Fault:
    """An injected error for the next ``count`` matching Gmail calls."""

    status: int
    reason: str
    count: int
    retry_after: int | None = None
    message: str | None = None
    methods: frozenset[str] | None = None  # Gmail method ids; "batch" targets the batch envelope
    user: str | None = None


@dataclass
class TokenFault:
    """An injected error for the next ``count`` matching token endpoint calls."""

    error: str
    description: str
    count: int = 1
    status: int = 400
    grant_type: str | None = "refresh_token"
    user: str | None = None


@dataclass
class CallRecord:
    method: str
    user: str | None
    status: int
    batch: bool
    time: float


@dataclass
class PushRecord:
    url: str | None
    payload: dict[str, Any]
    notification: dict[str, Any]
    status: int | None = None
    error: str | None = None
    attempts: int = 0
    #: delivered, or given up on (no endpoint, attempts exhausted)
    done: bool = False


@dataclass
class SentRecord:
    user: str
    message_id: str
    raw: bytes
    recipients: list[str]


class Mailbox:
    def __init__(self, state: SimState, user: User) -> None:
        self.state = state
        self.user = user
        self.messages: dict[str, StoredMessage] = {}
        self.threads: dict[str, list[str]] = {}
        self.by_rfc_id: dict[str, list[str]] = {}
        self.labels: dict[str, Label] = {
            lid: Label(lid, lid, "system", mlv, llv) for lid, mlv, llv in SYSTEM_LABELS
        }
        self.next_label = 1
        self.drafts: dict[str, Draft] = {}
        self.history: list[HistoryRecord] = []
        self.history_id = state.rng.randint(1000, 9000)
        self.history_floor = self.history_id
        self.watch: Watch | None = None

    # --- ids and history -------------------------------------------------------------------

    def next_history_id(self) -> int:
        self.history_id += self.state.rng.randint(1, 3)
        return self.history_id

    def _record(self, rec: HistoryRecord) -> HistoryRecord:
        self.history.append(rec)
        return rec

    def _snapshot(self, msg: StoredMessage) -> dict[str, Any]:
        return msg.ref(with_labels=True)

    # --- labels ----------------------------------------------------------------------------

    def label_by_name(self, name: str) -> Label | None:
        lname = name.lower()
        for label in self.labels.values():
            if label.name.lower() == lname:
                return label
        return None

    def resolve_query_label(self, value: str) -> str | None:
        if value in self.labels:
            return value
        if value.upper() in self.labels and self.labels[value.upper()].type == "system":
            return value.upper()
        wanted = value.lower()
        for label in self.labels.values():
            name = label.name.lower()
            variants = {
                name,
                name.replace(" ", "-"),
                name.replace("/", "-"),
                name.replace(" ", "-").replace("/", "-"),
            }
            if wanted in variants:
                return label.id
        return None

    def check_labels(self, label_ids: Iterable[str]) -> None:
        for lid in label_ids:
            if lid not in self.labels:
                raise bad_request(f"Invalid label: {lid}")

    def create_label(self, name: str, **attrs: Any) -> Label:
        name = (name or "").strip()
        if not name:
            raise bad_request("Invalid label name")
        if name.upper() in self.labels and self.labels[name.upper()].type == "system":
            raise bad_request("Invalid label name")
        if self.label_by_name(name):
            raise ApiError(409, "Label name exists or conflicts", reason="duplicate", status="ALREADY_EXISTS")
        label = Label(f"Label_{self.next_label}", name, "user", **attrs)
        self.next_label += 1
        self.labels[label.id] = label
        return label

    def ensure_user_label(self, name: str) -> Label:
        return self.label_by_name(name) or self.create_label(
            name, message_list_visibility="show", label_list_visibility="labelShow"
        )

    def update_label(self, label_id: str, patch: dict[str, Any], replace: bool) -> Label:
        label = self.labels.get(label_id)
        if label is None:
            raise not_found()
        if label.type == "system":
            raise bad_request("Invalid update request")
        if "name" in patch or replace:
            name = str(patch.get("name") or "").strip()
            if not name:
                raise bad_request("Invalid label name")
            other = self.label_by_name(name)
            if other is not None and other.id != label.id:
                raise ApiError(
                    409, "Label name exists or conflicts", reason="duplicate", status="ALREADY_EXISTS"
                )
            if name.upper() in self.labels and self.labels[name.upper()].type == "system":
                raise bad_request("Invalid label name")
            label.name = name
        for key, attr in (
            ("messageListVisibility", "message_list_visibility"),
            ("labelListVisibility", "label_list_visibility"),
            ("color", "color"),
        ):
            if key in patch or replace:
                setattr(label, attr, patch.get(key))
        return label

    def delete_label(self, label_id: str) -> None:
        label = self.labels.get(label_id)
        if label is None:
            raise not_found()
        if label.type == "system":
            raise bad_request("Invalid delete request")
        for msg in list(self.messages.values()):
            if label_id in msg.label_ids:
                self._change_labels(msg, set(), {label_id})
        del self.labels[label_id]
        self.state.notify(self)

    def label_counts(self, label_id: str) -> dict[str, int]:
        msgs = [m for m in self.messages.values() if label_id in m.label_ids]
        threads = {m.thread_id for m in msgs}
        unread_threads = {m.thread_id for m in msgs if "UNREAD" in m.label_ids}
        return {
            "messagesTotal": len(msgs),
            "messagesUnread": sum(1 for m in msgs if "UNREAD" in m.label_ids),
            "threadsTotal": len(threads),
            "threadsUnread": len(unread_threads),
        }

    # --- messages --------------------------------------------------------------------------

    def get(self, message_id: str) -> StoredMessage:
        msg = self.messages.get(message_id)
        if msg is None:
            raise not_found() if _ID_RE.fullmatch(message_id) else bad_request("Invalid id value")
        return msg

    def _thread_for(self, parsed: ParsedMessage, thread_hint: str | None) -> str | None:
        subject = mime.normalize_subject(parsed.subject)
        if thread_hint:
            ids = self.threads.get(thread_hint)
            if ids is None:
                raise bad_request("Invalid thread_id value")
            first = self.messages[ids[0]]
            return thread_hint if mime.normalize_subject(first.parsed.subject) == subject else None
        for ref in reversed([*parsed.references, *parsed.in_reply_to]):
            for mid in self.by_rfc_id.get(ref, []):
                msg = self.messages[mid]
                thread_first = self.messages[self.threads[msg.thread_id][0]]
                if mime.normalize_subject(thread_first.parsed.subject) == subject:
                    return msg.thread_id
        return None

    def add_message(
        self,
        raw: bytes,
        label_ids: Iterable[str] = (),
        *,
        internal_date: int | None = None,
        thread_hint: str | None = None,
        record: bool = True,
        notify: bool = True,
    ) -> StoredMessage:
        labels = list(dict.fromkeys(label_ids))
        self.check_labels(labels)
        parsed = mime.parse(raw)
        thread_id = self._thread_for(parsed, thread_hint)
        when = internal_date if internal_date is not None else self.state.now_ms()
        msg_id = self.state.new_message_id(when)
        thread_id = thread_id or msg_id
        hid = self.next_history_id()
        msg = StoredMessage(msg_id, thread_id, raw, labels, when, hid, parsed)
        self.messages[msg_id] = msg
        self.threads.setdefault(thread_id, []).append(msg_id)
        self.threads[thread_id].sort(key=lambda i: (self.messages[i].internal_date, i))
        if parsed.message_id:
            self.by_rfc_id.setdefault(parsed.message_id, []).append(msg_id)
        if record:
            snap = self._snapshot(msg)
            self._record(
                HistoryRecord(
                    hid, [msg.ref(False)], messages_added=[{"message": snap}], label_ids=set(labels)
                )
            )
            if notify:
                self.state.notify(self, [set(labels)])
        return msg

    def _change_labels(
        self, msg: StoredMessage, add: set[str], remove: set[str]
    ) -> tuple[list[str], list[str]]:
        before = set(msg.label_ids)
        added = [lid for lid in add if lid not in before and lid not in remove]
        removed = [lid for lid in msg.label_ids if lid in remove]
        if not added and not removed:
            return [], []
        msg.label_ids = [lid for lid in msg.label_ids if lid not in remove] + sorted(added)
        hid = self.next_history_id()
        msg.history_id = hid
        snap = self._snapshot(msg)
        rec = HistoryRecord(hid, [msg.ref(False)], label_ids=before | set(msg.label_ids))
        if added:
            rec.labels_added.append({"message": snap, "labelIds": sorted(added)})
        if removed:
            rec.labels_removed.append({"message": snap, "labelIds": removed})
        self._record(rec)
        return added, removed

    def modify(
        self, message_ids: Iterable[str], add: Iterable[str], remove: Iterable[str]
    ) -> list[StoredMessage]:
        add_set, remove_set = set(add), set(remove)
        self.check_labels(add_set | remove_set)
        bad = (add_set | remove_set) & UNMODIFIABLE_LABELS
        if bad:
            raise bad_request(f"Invalid label: {sorted(bad)[0]}")
        changed: list[set[str]] = []
        out: list[StoredMessage] = []
        for mid in message_ids:
            msg = self.messages.get(mid)
            if msg is None:
                continue
            before = set(msg.label_ids)
            added, removed = self._change_labels(msg, add_set, remove_set)
            if added or removed:
                changed.append(before | set(msg.label_ids))
            out.append(msg)
        if changed:
            self.state.notify(self, changed)
        return out

    def trash(self, message_ids: Iterable[str]) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        changed: list[set[str]] = []
        for mid in message_ids:
            msg = self.get(mid)
            before = set(msg.label_ids)
            added, removed = self._change_labels(msg, {"TRASH"}, {"INBOX", "SPAM"})
            if added or removed:
                changed.append(before | set(msg.label_ids))
            out.append(msg)
        if changed:
            self.state.notify(self, changed)
        return out

    def untrash(self, message_ids: Iterable[str]) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        changed: list[set[str]] = []
        for mid in message_ids:
            msg = self.get(mid)
            before = set(msg.label_ids)
            added, removed = self._change_labels(msg, set(), {"TRASH"})
            if added or removed:
                changed.append(before)
            out.append(msg)
        if changed:
            self.state.notify(self, changed)
        return out

    def delete(self, message_ids: Iterable[str], *, notify: bool = True) -> None:
        changed: list[set[str]] = []
        for mid in message_ids:
            msg = self.messages.pop(mid, None)
            if msg is None:
                continue
            ids = self.threads.get(msg.thread_id, [])
            if mid in ids:
                ids.remove(mid)
            if not ids:
                self.threads.pop(msg.thread_id, None)
            if msg.parsed.message_id in self.by_rfc_id:
                refs = self.by_rfc_id[msg.parsed.message_id]
                if mid in refs:
                    refs.remove(mid)
            for draft_id in [d.id for d in self.drafts.values() if d.message_id == mid]:
                del self.drafts[draft_id]
            hid = self.next_history_id()
            self._record(
                HistoryRecord(
                    hid,
                    [msg.ref(False)],
                    messages_deleted=[{"message": msg.ref(True)}],
                    label_ids=set(msg.label_ids),
                )
            )
            changed.append(set(msg.label_ids))
        if changed and notify:
            self.state.notify(self, changed)

    def thread_messages(self, thread_id: str) -> list[StoredMessage]:
        ids = self.threads.get(thread_id)
        if not ids:
            raise not_found() if _ID_RE.fullmatch(thread_id) else bad_request("Invalid id value")
        return [self.messages[i] for i in ids]

    # --- drafts ----------------------------------------------------------------------------

    def new_draft_id(self) -> str:
        while True:
            draft_id = f"r{self.state.rng.randint(-(2**63), 2**63 - 1)}"
            if draft_id not in self.drafts:
                return draft_id

    def get_draft(self, draft_id: str) -> tuple[Draft, StoredMessage]:
        draft = self.drafts.get(draft_id)
        if draft is None or draft.message_id not in self.messages:
            raise not_found()
        return draft, self.messages[draft.message_id]

    # --- history ---------------------------------------------------------------------------

    def expire_history(self) -> None:
        """Drop all history before now: any older ``startHistoryId`` now 404s."""
        self.history.clear()
        self.history_floor = self.history_id

    # --- counts ----------------------------------------------------------------------------

    def profile(self) -> dict[str, Any]:
        return {
            "emailAddress": self.user.email,
            "messagesTotal": len(self.messages),
            "threadsTotal": len(self.threads),
            "historyId": str(self.history_id),
        }


def encode_page_token(*parts: object) -> str:
    return base64.urlsafe_b64encode(":".join(str(p) for p in parts).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> list[str]:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("Invalid pageToken") from exc


class SimState:
    """All simulator state. ``base_url`` is the issuer; empty means "derive from each request"."""

    def __init__(
        self,
        *,
        seed: int = 0,
        base_url: str = "",
        access_token_ttl: int = 3600,
        inline_limit: int = mime.DEFAULT_INLINE_LIMIT,
        validate_responses: bool = False,
        push_max_attempts: int = 5,
    ) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.base_url = base_url.rstrip("/")
        self.access_token_ttl = access_token_ttl
        self.inline_limit = inline_limit
        self.validate_responses = validate_responses
        self.push_max_attempts = push_max_attempts
        self.clock_offset = 0.0
        self.users: dict[str, User] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.clients: dict[str, Client] = {}
        self.signing_key = SigningKey()
        self.codes: dict[str, AuthCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        #: (user, client_id) -> scopes granted so far (incremental consent accumulates here)
        self.grants: dict[tuple[str, str], set[str]] = {}
        #: (user, client_id) pairs that already received a refresh token
        self.offline_grants: set[tuple[str, str]] = set()
        self.pending_auth: dict[str, PendingAuth] = {}
        self.faults: list[Fault] = []
        self.token_faults: list[TokenFault] = []
        #: topic name (or "*") -> push endpoint URL
        self.push_endpoints: dict[str, str] = {}
        self.push_log: list[PushRecord] = []
        self.outbox: list[SentRecord] = []
        self.calls: list[CallRecord] = []
        self.schema_violations: list[str] = []
        self.uploads: dict[str, dict[str, Any]] = {}
        self._msg_counter = 0
        self._used_ids: set[str] = set()
        self._pusher: Pusher | None = None

    # --- time and ids ----------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance_clock(self, seconds: float) -> None:
        with self.lock:
            self.clock_offset += seconds

    def new_message_id(self, when_ms: int) -> str:
        while True:
            self._msg_counter += 1
            value = (max(when_ms, 0) << 20) | (self._msg_counter & 0xFFFFF)
            msg_id = f"{value & 0xFFFFFFFFFFFFFFFF:016x}"
            if msg_id not in self._used_ids:
                self._used_ids.add(msg_id)
                return msg_id

    # --- users -----------------------------------------------------------------------------

    def add_user(self, email: str, name: str | None = None) -> User:
        with self.lock:
            key = email.lower()
            if key in self.users:
                return self.users[key]
            display = name or email.split("@")[0].replace(".", " ").title()
            sub = str(100000000000000000000 + self.rng.randint(0, 10**20 - 1))
            user = User(email, display, sub, f"https://lh3.googleusercontent.com/a/sim-{sub}=s96-c")
            self.users[key] = user
            self.mailboxes[key] = Mailbox(self, user)
            return user

    def user(self, email: str) -> User | None:
        return self.users.get(email.lower())

    def mailbox(self, email: str) -> Mailbox:
        box = self.mailboxes.get(email.lower())
        if box is None:
            raise KeyError(f"no simulated user {email!r}")
        return box

    def add_client(
        self, client_id: str, client_secret: str | None, redirect_uris: list[str] | None = None
    ) -> Client:
        with self.lock:
            client = Client(client_id, client_secret, redirect_uris)
            self.clients[client_id] = client
            return client

    # --- push ------------------------------------------------------------------------------

    @property
    def pusher(self) -> Pusher:
        if self._pusher is None:
            from .push import Pusher

            self._pusher = Pusher(self)
        return self._pusher

    def notify(self, mailbox: Mailbox, label_sets: list[set[str]] | None = None) -> None:
        """A mailbox changed: publish a Pub/Sub notification if it is watched."""
        watch = mailbox.watch
        if watch is None or self.now_ms() > watch.expiration_ms:
            return
        if watch.label_ids and label_sets is not None:
            wanted = set(watch.label_ids)
            hit = any(s & wanted for s in label_sets)
            if (watch.behavior == "include" and not hit) or (
                watch.behavior == "exclude" and all(s & wanted for s in label_sets)
            ):
                return
        self.pusher.publish(watch.topic, mailbox.user.email, mailbox.history_id)

    def close(self) -> None:
        if self._pusher is not None:
            self._pusher.close()
            self._pusher = None
