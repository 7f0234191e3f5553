"""The outbox: every message inboxlink sends is a row here first, and its id is its Message-ID.

States of a row:

    draft ──(send)──> queued ──(claimed)──> sending ──> sent
      ^                 ^  │                  │  │
      │                 │  └─(send_at later)  │  └──> uncertain   crashed or cut off after the point
      │                 │                     │                   of no return and no copy found:
      │                 └──(transient error,  │                   never re-sent on its own
      │                     before DATA)──────┤
      └────────────(rejected: recipients,     │
                    size, auth, bad input)────┘  -> failed, the draft kept: fix it and send again

`phase` records how far a send got: `connect` (nothing can have left yet: MAIL/RCPT only) or `data`
(the provider is about to hand the message over: SMTP DATA, the API call). A crashed send is
recovered (`recover`) by its phase: `connect` goes back to the queue, `data` is looked for in the
account's synced mail by its Message-ID (found: sent; not found: uncertain, for a human to decide).
So a crash or a retry never sends twice. Providers that cannot report the exact moment (no
`precise_commit`) are treated as past it as soon as they are called.

Once sent, the message is stored like synced mail (its copy in Sent, when the provider says
where) and linked at once: to the records it was sent from (rule `sent`) and by every usual rule.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, or_, select, update

from inboxlink.crm import linking
from inboxlink.crm.access import Level, Viewer, access_account, readable_copy
from inboxlink.domain import AccountStatus, FolderRole, OutgoingMessage, SentMessage
from inboxlink.errors import (
    AuthError,
    InboxlinkError,
    NotFound,
    ProviderError,
    TransientError,
    ValidationError,
)
from inboxlink.mime import compose
from inboxlink.outbound import events
from inboxlink.providers.base import MailProvider, SendingProvider
from inboxlink.store import mailstore
from inboxlink.store.db import Database
from inboxlink.store.schema import accounts, folders, messages, outbox, records
from inboxlink.sync.holders import holder_is_dead, new_holder
from inboxlink.sync.policy import backoff_seconds
from inboxlink.sync.prepare import prepare_batch
from inboxlink.sync.state import now, transition

log = logging.getLogger(__name__)

CLAIM_SECONDS = 300  # a send that holds its claim longer than this is presumed dead
MAX_ATTEMPTS = 6  # transient failures before a queued message is given up (failed, kept)
EDITABLE = ("draft", "failed")
UNCERTAIN = (
    "the sending process stopped while handing the message over; it may have been sent. Not sent "
    "again automatically: check the recipient or the Sent folder, then send it again if needed"
)


@dataclass
class SendRequest:
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    reply_to_message: str | None = None  # RFC Message-ID of the message answered (with or without <>)
    records: list[tuple[str, str]] = field(default_factory=list)  # (type, id) to link at once
    send_at: datetime | None = None
    draft: bool = False


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def view(row: Any) -> dict[str, Any]:
    c = row.compose or {}
    return {
        "id": row.id,
        "account_id": row.account_id,
        "status": row.status,
        "message_id": row.message_id,
        "to": c.get("to", []),
        "cc": c.get("cc", []),
        "bcc": c.get("bcc", []),
        "subject": c.get("subject", ""),
        "in_reply_to": c.get("in_reply_to"),
        "records": c.get("records", []),
        "send_at": _iso(row.send_at),
        "sent_at": _iso(row.sent_at),
        "attempts": row.attempts,
        "error": {"code": row.last_error_code, "message": row.last_error} if row.last_error else None,
        "note": c.get("note"),
    }


def _iso(value: datetime | None) -> str | None:
    v = _aware(value)
    return v.isoformat() if v else None


class OutboxService:
    def __init__(self, db: Database, open_provider: Any, *, on_queued: Any = None) -> None:
        self.db = db
        self.open_provider = open_provider  # account id -> MailProvider (AccountService.open_provider)
        self.owner = new_holder()
        self.on_queued = on_queued  # callable(outbox_id, when) that schedules a send (the task queue)

    # -- writing drafts -----------------------------------------------------------------------------
    def create(self, viewer: Viewer, account_id: str, req: SendRequest) -> dict[str, Any]:
        """Store the message (draft, or queued to send now or at `send_at`). Sending itself is
        `send()`; the caller decides whether to wait for it (CLI) or leave it to the queue."""
        with self.db.engine.begin() as conn:
            access_account(conn, viewer, account_id)
            acc = conn.execute(select(accounts).where(accounts.c.id == account_id)).one()
            body = self._compose_fields(conn, viewer, acc, req)
            oid = uuid.uuid4().hex[:24]
            at = now()
            status = "draft" if req.draft else "queued"
            send_at = _aware(req.send_at)
            conn.execute(
                outbox.insert().values(
                    id=oid,
                    account_id=account_id,
                    created_by=viewer.user_id,
                    status=status,
                    message_id=compose.message_id_for(oid, acc.email),
                    compose=body,
                    send_at=send_at,
                    attempts=0,
                    created_at=at,
                    updated_at=at,
                )
            )
            row = conn.execute(select(outbox).where(outbox.c.id == oid)).one()
        if status == "queued" and send_at is not None and self.on_queued is not None:
            self.on_queued(oid, send_at)
        return view(row)

    def _compose_fields(self, conn: Connection, viewer: Viewer, acc: Any, req: SendRequest) -> dict[str, Any]:
        to = [compose.normalize(a) for a in req.to]
        cc = [compose.normalize(a) for a in req.cc]
        bcc = [compose.normalize(a) for a in req.bcc]
        if not req.draft and not (to or cc or bcc):
            raise ValidationError("a message needs at least one recipient")
        if not req.draft and req.text is None and req.html is None:
            raise ValidationError("a message needs a text or an HTML body (--text or --html)")
        subject = req.subject
        if subject and ("\r" in subject or "\n" in subject):
            # a header value: a line break would end it (the email library refuses it when sending)
            raise ValidationError("the subject cannot contain line breaks")
        in_reply_to = references = thread_hint = None
        if req.reply_to_message:
            parent_id = req.reply_to_message.strip().strip("<>")
            parent = conn.execute(
                select(messages)
                .where(messages.c.message_id == parent_id)
                .order_by((messages.c.account_id == acc.id).desc(), messages.c.id)
            ).first()
            if parent is None:
                raise NotFound(f"no stored message has Message-ID <{parent_id}>")
            # Read what the reply takes from the copy the viewer may open, at the level granted: a
            # message shared at the metadata level lends its threading headers, never its subject.
            shown, level = readable_copy(conn, viewer, parent.id)
            if shown != parent.id:
                parent = conn.execute(select(messages).where(messages.c.id == shown)).one()
            in_reply_to = parent_id
            references = list(parent.references or [])
            if parent.account_id == acc.id:
                thread_hint = parent.thread_id
            if not subject and level >= Level.SUBJECT:
                subject = compose.reply_subject(parent.subject)
        targets = []
        for kind, rid in req.records:
            found = conn.execute(select(records.c.type).where(records.c.id == rid)).scalar()
            if found != kind:
                raise NotFound(f"no {kind} {rid}")
            targets.append([kind, rid])
        return {
            "sender": acc.email,
            "sender_name": acc.display_name,
            "to": to,
            "cc": cc,
            "bcc": bcc,
            "subject": subject,
            "text": req.text,
            "html": req.html,
            "in_reply_to": in_reply_to,
            "references": references or [],
            "thread_hint": thread_hint,
            "records": targets,
        }

    def update_draft(self, viewer: Viewer, outbox_id: str, req: SendRequest) -> dict[str, Any]:
        with self.db.engine.begin() as conn:
            row = self._load(conn, viewer, outbox_id)
            if row.status not in EDITABLE:
                raise ValidationError(
                    f"message {outbox_id} is {row.status}: only drafts and failed ones change"
                )
            acc = conn.execute(select(accounts).where(accounts.c.id == row.account_id)).one()
            body = self._compose_fields(conn, viewer, acc, SendRequest(**{**req.__dict__, "draft": True}))
            conn.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id)
                .values(compose=body, send_at=_aware(req.send_at),
                                                                     updated_at=now())
            )  # fmt: skip
            return view(conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one())

    def queue(self, viewer: Viewer, outbox_id: str, send_at: datetime | None = None) -> dict[str, Any]:
        """A draft (or a failed message, fixed) goes to the queue."""
        with self.db.engine.begin() as conn:
            row = self._load(conn, viewer, outbox_id)
            if row.status not in EDITABLE:
                raise ValidationError(f"message {outbox_id} is {row.status}")
            c = row.compose or {}
            if not (c.get("to") or c.get("cc") or c.get("bcc")):
                raise ValidationError("a message needs at least one recipient")
            if c.get("text") is None and c.get("html") is None:
                raise ValidationError("a message needs a text or an HTML body")
            conn.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id)
                .values(status="queued", send_at=_aware(send_at), attempts=0, last_error=None,
                        last_error_code=None, updated_at=now())
            )  # fmt: skip
        if send_at is not None and self.on_queued is not None:
            self.on_queued(outbox_id, _aware(send_at))
        return self.get(viewer, outbox_id)

    def get(self, viewer: Viewer, outbox_id: str) -> dict[str, Any]:
        with self.db.engine.connect() as conn:
            return view(self._load(conn, viewer, outbox_id))

    def find(self, viewer: Viewer, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(outbox).order_by(outbox.c.created_at.desc()).limit(limit)
        if status:
            stmt = stmt.where(outbox.c.status == status)
        with self.db.engine.connect() as conn:
            if not viewer.is_system:
                stmt = stmt.join(accounts, accounts.c.id == outbox.c.account_id).where(
                    accounts.c.owner_id == viewer.user_id
                )
            return [view(r) for r in conn.execute(stmt)]

    def discard(self, viewer: Viewer, outbox_id: str) -> None:
        with self.db.engine.begin() as conn:
            row = self._load(conn, viewer, outbox_id)
            if row.status not in (*EDITABLE, "queued"):
                raise ValidationError(f"message {outbox_id} is {row.status} and cannot be discarded")
            conn.execute(outbox.delete().where(outbox.c.id == outbox_id))

    def _load(self, conn: Connection, viewer: Viewer, outbox_id: str) -> Any:
        row = conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one_or_none()
        if row is None:
            raise NotFound(f"no outbox message {outbox_id}")
        access_account(conn, viewer, row.account_id)
        return row

    # -- sending ------------------------------------------------------------------------------------
    def send(self, outbox_id: str) -> dict[str, Any]:
        """Send one queued message if it is due and nobody else is sending it; return its state.
        Safe to call any number of times, from any number of processes."""
        at = now()
        with self.db.engine.begin() as conn:
            claimed = conn.execute(
                update(outbox)
                .where(
                    outbox.c.id == outbox_id,
                    outbox.c.status == "queued",
                    or_(outbox.c.send_at.is_(None), outbox.c.send_at <= at),
                )
                .values(
                    status="sending",
                    phase="connect",
                    attempts=outbox.c.attempts + 1,
                    claimed_by=self.owner,
                    claimed_until=at + timedelta(seconds=CLAIM_SECONDS),
                    updated_at=at,
                )
            ).rowcount
            row = conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one_or_none()
        if row is None:
            raise NotFound(f"no outbox message {outbox_id}")
        if not claimed:
            return view(row)
        self._deliver(row)
        with self.db.engine.connect() as conn:
            return view(conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one())

    def _mark(self, outbox_id: str, **values: Any) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id, outbox.c.claimed_by == self.owner)
                .values(updated_at=now(), **values)
            )

    def _deliver(self, row: Any) -> None:
        c = row.compose
        draft = compose.Draft(
            sender=c["sender"],
            sender_name=c.get("sender_name"),
            to=c.get("to", []),
            cc=c.get("cc", []),
            bcc=c.get("bcc", []),
            subject=c.get("subject", ""),
            text=c.get("text"),
            html=c.get("html"),
            in_reply_to=c.get("in_reply_to"),
            references=c.get("references", []),
        )
        try:
            mime = compose.compose(draft, row.message_id, now())
        except (ValueError, TypeError) as exc:  # the email library refuses the draft: nothing left
            self._fail(row, ValidationError(f"the message cannot be written: {exc}"))
            return
        provider: MailProvider | None = None
        try:
            message = OutgoingMessage(
                mime=mime,
                sender=draft.sender,
                recipients=compose.recipients(draft),
                message_id=row.message_id,
                thread_hint=c.get("thread_hint"),
                on_commit=lambda: self._mark(row.id, phase="data"),
            )
            provider = self.open_provider(row.account_id)
            sender = provider
            if not isinstance(sender, SendingProvider):
                raise ValidationError("this account cannot send mail")
            if not getattr(sender, "precise_commit", False):
                self._mark(row.id, phase="data")
            sent = sender.send(message)
        except TransientError as exc:
            self._after_transient(row, exc)
            return
        except AuthError as exc:
            self._fail(row, exc)
            with self.db.engine.begin() as conn:
                transition(conn, row.account_id, AccountStatus.AUTH_ERROR, exc.message)
            return
        except (ProviderError, ValidationError, NotFound) as exc:  # SendRejected among them
            self._fail(row, exc)
            return
        except Exception as exc:  # a bug: keep the row honest, then surface it
            self._mark(
                row.id, status="uncertain", last_error=f"internal error: {exc!r}", last_error_code="bug"
            )
            raise
        finally:
            if provider is not None:
                provider.close()
        self._sent(row, sent, mime)

    def _fail(self, row: Any, exc: InboxlinkError) -> None:
        # the draft stays as it was: the user fixes it and sends again
        self._mark(row.id, status="failed", phase=None, last_error=exc.message, last_error_code=exc.code,
                   claimed_by=None, claimed_until=None)  # fmt: skip

    def _after_transient(self, row: Any, exc: TransientError) -> None:
        with self.db.engine.connect() as conn:
            phase = conn.execute(select(outbox.c.phase).where(outbox.c.id == row.id)).scalar()
        if phase == "data":
            # cut off after the message was handed over: it may have left
            self._mark(row.id, status="uncertain", last_error=exc.message, last_error_code=exc.code,
                       claimed_by=None, claimed_until=None)  # fmt: skip
            return
        if row.attempts + 1 >= MAX_ATTEMPTS:
            self._fail(row, exc)
            return
        delay = backoff_seconds(row.attempts + 1, base=30.0, cap=1800.0, exc=exc)
        when = now() + timedelta(seconds=delay)
        self._mark(row.id, status="queued", phase=None, send_at=when, last_error=exc.message,
                   last_error_code=exc.code, claimed_by=None, claimed_until=None)  # fmt: skip
        if self.on_queued is not None:
            self.on_queued(row.id, when)

    def _sent(self, row: Any, sent: SentMessage, mime: bytes) -> None:
        at = now()
        with self.db.engine.begin() as conn:
            compose_doc = dict(row.compose)
            if sent.note:
                compose_doc["note"] = sent.note
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row.id)
                .values(status="sent", phase=None, sent_at=at, sent_folder=sent.folder, compose=compose_doc,
                        last_error=None, last_error_code=None, claimed_by=None, claimed_until=None,
                        updated_at=at)
            )  # fmt: skip
            self._store_copy(conn, row, sent, mime, at)
            c = row.compose or {}
            events.emit(
                conn,
                events.MESSAGE_SENT,
                {
                    "outbox_id": row.id,
                    "account_id": row.account_id,
                    "message_id": row.message_id,
                    "recipients": {
                        k: [{"email": a, "name": None} for a in c.get(k, [])] for k in ("to", "cc", "bcc")
                    },
                },
            )

    def _store_copy(self, conn: Connection, row: Any, sent: SentMessage, mime: bytes, at: datetime) -> None:
        """The sent message joins the account's mail now, linked at once; the next sync finds its
        copy in Sent already known and downloads nothing."""
        sqlite = conn.dialect.name == "sqlite"
        prepared = prepare_batch([mime], False, sqlite)[0]
        pid = sent.provider_id or prepared[0]
        blob = self.db.blobs.put_many([mime])[0]
        self.db.blobs.flush()
        item = mailstore.NewMessage(pid, prepared, blob, at, len(mime), sent.thread_id)
        known = mailstore.messages_by_provider_id(conn, row.account_id, [pid])
        ids = mailstore.write_messages(conn, row.account_id, [item], known, at)
        mid = ids[pid]
        if pid not in known:  # stored here first: a sync will find it known and say nothing
            events.emit(conn, events.MESSAGE_CREATED, events.message_created(row.account_id, mid, prepared))
        if sent.folder and sent.remote_key:
            folder_id: Any = conn.execute(
                select(folders.c.id).where(
                    folders.c.account_id == row.account_id, folders.c.key == sent.folder
                )
            ).scalar()
            if folder_id is None:  # never synced yet: the next sync fills in the rest
                folder_id = conn.execute(
                    folders.insert()
                    .values(account_id=row.account_id, key=sent.folder, name=sent.folder,
                            role=FolderRole.SENT.value, gone=False)
                    .returning(folders.c.id)
                ).scalar()  # fmt: skip
            mailstore.put_placements(
                conn, [(mid, int(folder_id), sent.remote_key, mailstore.flags_text(["\\Seen"]))]
            )
        who = f" by user {row.created_by}" if row.created_by else ""
        targets = [(kind, rid) for kind, rid in (row.compose or {}).get("records", [])]
        if targets:  # first, so that this reason stands over any rule that matches too
            names = dict(
                conn.execute(
                    select(records.c.id, records.c.name).where(records.c.id.in_([r for _k, r in targets]))
                ).all()
            )
            linking.insert_links(
                conn,
                [(mid, rid, "sent", f"sent from {kind} {names.get(rid, rid)}{who}") for kind, rid in targets],
            )
        linking.link_messages(conn, linking.load_facts(conn, [mid]))

    # -- the queue's periodic work ------------------------------------------------------------------
    def due(self, limit: int = 100) -> list[str]:
        at = now()
        with self.db.engine.connect() as conn:
            return [
                r.id
                for r in conn.execute(
                    select(outbox.c.id)
                    .where(
                        outbox.c.status == "queued", or_(outbox.c.send_at.is_(None), outbox.c.send_at <= at)
                    )
                    .order_by(outbox.c.send_at)
                    .limit(limit)
                )
            ]

    def send_due(self) -> int:
        sent = 0
        for oid in self.due():
            if self.send(oid)["status"] == "sent":
                sent += 1
        return sent

    def recover(self) -> int:
        """Sends whose process died (claim expired, or its pid gone): decide by their phase."""
        at = now()
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(outbox).where(outbox.c.status == "sending")).all()
        fixed = 0
        for row in rows:
            until = _aware(row.claimed_until)
            expired = until is None or until < at
            if row.claimed_by == self.owner or not (expired or holder_is_dead(row.claimed_by or "")):
                continue
            with self.db.engine.begin() as conn:
                if row.phase != "data":
                    values: dict[str, Any] = {
                        "status": "queued",
                        "phase": None,
                        "last_error": "the sending process stopped before anything was sent; queued again",
                    }
                else:
                    found = conn.execute(
                        select(messages.c.id).where(
                            messages.c.account_id == row.account_id, messages.c.message_id == row.message_id
                        )
                    ).first()
                    values = (
                        {"status": "sent", "phase": None, "sent_at": at}
                        if found
                        else {
                            "status": "uncertain",
                            "last_error": UNCERTAIN,
                            "last_error_code": "uncertain",
                        }
                    )
                changed = conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.id == row.id,
                        outbox.c.status == "sending",
                        outbox.c.claimed_by == row.claimed_by,
                    )
                    .values(claimed_by=None, claimed_until=None, updated_at=at, **values)
                ).rowcount
                fixed += changed
        return fixed
