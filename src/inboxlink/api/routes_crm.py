"""/api/v1: users, records (+ bulk import), timelines, messages, search, the review queue, linking
settings and the blocklist. Decode, authorize (`crm.access`), delegate."""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select

from inboxlink.api.deps import Offset, RowId, RuntimeDep, ViewerDep
from inboxlink.crm import linking, search, timeline
from inboxlink.crm import settings as crm_settings
from inboxlink.crm.access import Viewer, token_hash
from inboxlink.crm.records import Record, RecordInput, normalize_email
from inboxlink.errors import Forbidden, NotFound
from inboxlink.runtime import Runtime
from inboxlink.store.schema import blocklist, review_items, users
from inboxlink.sync.state import now

router = APIRouter(tags=["crm"])

RecordType = Literal["person", "company", "deal"]


def _system_only(viewer: Viewer, what: str) -> None:
    if not viewer.is_system:
        raise Forbidden(f"{what} needs the operator's token")


# -- users ------------------------------------------------------------------------------------------


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=320)
    email: str = Field(max_length=320)


class UserOut(BaseModel):
    id: str
    name: str
    email: str
    token: str | None = Field(default=None, description="the user's API token; shown once, at creation")


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserIn, rt: RuntimeDep, viewer: ViewerDep) -> UserOut:
    _system_only(viewer, "creating users")
    token = "ilu_" + secrets.token_urlsafe(32)
    uid = uuid.uuid4().hex[:16]
    email = normalize_email(body.email)
    with rt.db.engine.begin() as conn:
        conn.execute(
            insert(users).values(
                id=uid, name=body.name, email=email, token_hash=token_hash(token), created_at=now()
            )
        )
        linking.bump(conn)  # the team's own addresses changed
    return UserOut(id=uid, name=body.name, email=email, token=token)


@router.get("/users", response_model=list[UserOut])
def list_users(rt: RuntimeDep, viewer: ViewerDep) -> list[UserOut]:
    _system_only(viewer, "listing users")
    with rt.db.engine.connect() as conn:
        return [
            UserOut(id=r.id, name=r.name, email=r.email)
            for r in conn.execute(select(users).order_by(users.c.created_at))
        ]


# -- records ----------------------------------------------------------------------------------------


class RecordBody(BaseModel):
    name: str | None = Field(default=None, max_length=500)
    emails: list[str] | None = Field(default=None, description="people: their addresses")
    domains: list[str] | None = Field(default=None, description="companies: their domains")
    token: str | None = Field(default=None, description="deals/tickets: the short token, e.g. T-1042")
    status: Literal["open", "closed"] | None = None
    company_id: str | None = None
    person_id: str | None = None
    external_id: str | None = Field(default=None, max_length=256)
    data: dict[str, Any] | None = None

    def as_input(self) -> RecordInput:
        return RecordInput(**self.model_dump(exclude={"type"}))


class ImportItem(RecordBody):
    type: RecordType


class ImportBody(BaseModel):
    records: list[ImportItem] = Field(max_length=10_000)


@router.post("/records/{record_type}", status_code=201)
def create_record(record_type: RecordType, body: RecordBody, rt: RuntimeDep) -> dict[str, Any]:
    return rt.records.create(record_type, body.as_input()).to_dict()


@router.get("/records/{record_type}")
def list_records(
    record_type: RecordType,
    rt: RuntimeDep,
    q: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return [r.to_dict() for r in rt.records.find(record_type, limit=limit, offset=offset, q=q)]


def _typed(rt: Runtime, record_type: str, record_id: str) -> Record:
    record = rt.records.get(record_id)
    if record.type != record_type:
        raise NotFound(f"no {record_type} {record_id}")
    return record


@router.get("/records/{record_type}/{record_id}")
def show_record(record_type: RecordType, record_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return _typed(rt, record_type, record_id).to_dict()


@router.patch("/records/{record_type}/{record_id}")
def update_record(
    record_type: RecordType, record_id: str, body: RecordBody, rt: RuntimeDep
) -> dict[str, Any]:
    _typed(rt, record_type, record_id)
    return rt.records.update(record_id, body.as_input()).to_dict()


@router.delete("/records/{record_type}/{record_id}", status_code=204)
def delete_record(record_type: RecordType, record_id: str, rt: RuntimeDep) -> None:
    _typed(rt, record_type, record_id)
    rt.records.delete(record_id)


@router.post("/records:import")
def import_records(body: ImportBody, rt: RuntimeDep) -> dict[str, Any]:
    """Create or update records by the host CRM's `external_id` (idempotent), then re-link once."""
    return rt.records.import_many([(item.type, item.as_input()) for item in body.records])


@router.get("/records/{record_type}/{record_id}/timeline")
def record_timeline(
    record_type: RecordType,
    record_id: str,
    rt: RuntimeDep,
    viewer: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Newest first; one entry per message however many mailboxes hold it; `rule` and `evidence`
    say why it is here (all reasons in `reasons`); fields the viewer may not see are null."""
    with rt.db.engine.connect() as conn:
        return timeline.timeline(conn, viewer, record_type, record_id, limit=limit, offset=offset)


# -- messages and search ----------------------------------------------------------------------------


@router.get("/messages/{message_id}")
def show_message(message_id: RowId, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    with rt.db.engine.begin() as conn:
        return timeline.message_detail(conn, rt.db.blobs, viewer, message_id)


_DOWNLOAD_HEADERS = {
    # bytes from strangers' mail: never rendered on our origin, never sniffed into something active
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}


def _attachment_disposition(filename: str) -> str:
    # The sender chose the name: keep its last path part ("../../x.html" -> "x.html") and no control
    # characters, so that no client saving it can be led out of its folder or into a header.
    filename = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable()).strip()
    filename = filename.lstrip(".") or "attachment"
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get(
    "/messages/{message_id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}, "description": "the message as received"}},
)
def message_raw(message_id: RowId, rt: RuntimeDep, viewer: ViewerDep) -> Response:
    """The message as it was received (RFC 5322), for those who may see all of it."""
    with rt.db.engine.connect() as conn:
        shown, raw = timeline.message_raw(conn, rt.db.blobs, viewer, message_id)
    headers = {**_DOWNLOAD_HEADERS, "Content-Disposition": _attachment_disposition(f"message-{shown}.eml")}
    return Response(raw, media_type="message/rfc822", headers=headers)


@router.get(
    "/messages/{message_id}/attachments/{index}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the decoded attachment"}},
)
def message_attachment(
    message_id: RowId, index: Annotated[int, Path(ge=0, le=10_000)], rt: RuntimeDep, viewer: ViewerDep
) -> Response:
    """Attachment `index` of the message's `attachments` list, decoded, always as a download."""
    with rt.db.engine.connect() as conn:
        attachment, data = timeline.message_attachment(conn, rt.db.blobs, viewer, message_id, index)
    name = attachment.filename or f"attachment-{index}"
    headers = {**_DOWNLOAD_HEADERS, "Content-Disposition": _attachment_disposition(name)}
    return Response(data, media_type=attachment.content_type or "application/octet-stream", headers=headers)


@router.get("/search")
def search_messages(
    rt: RuntimeDep,
    viewer: ViewerDep,
    q: Annotated[str, Query(min_length=1, max_length=500)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    with rt.db.engine.begin() as conn:
        return search.search(conn, viewer, q, limit=limit, offset=offset)


# -- review queue -----------------------------------------------------------------------------------


class ReviewAnswer(BaseModel):
    record_id: str | None = Field(description="the chosen candidate; null dismisses the question")


@router.get("/review")
def list_review(
    rt: RuntimeDep,
    viewer: ViewerDep,
    status: Literal["open", "resolved", "dismissed"] = "open",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    from inboxlink.crm.access import Level, message_levels

    with rt.db.engine.connect() as conn:
        rows = conn.execute(
            select(review_items)
            .where(review_items.c.status == status)
            .order_by(review_items.c.id)
            .limit(limit)
        ).all()
        levels = message_levels(conn, viewer, [r.message_id for r in rows])
        return [
            {
                "id": r.id,
                "message": r.message_id,
                "kind": r.kind,
                "candidates": r.candidates,
                "reason": r.reason,
                "status": r.status,
                "resolved_record_id": r.resolved_record_id,
            }
            for r in rows
            if levels.get(r.message_id, Level.NONE) > Level.NONE
        ]


@router.post("/review/{item_id}")
def answer_review(item_id: RowId, body: ReviewAnswer, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    from inboxlink.crm.access import access_message

    with rt.db.engine.begin() as conn:
        row = conn.execute(select(review_items.c.message_id).where(review_items.c.id == item_id)).first()
        if row is None:
            raise NotFound(f"no review item {item_id}")
        access_message(conn, viewer, row.message_id)
        return linking.resolve_review(conn, item_id, body.record_id, viewer.user_id)


# -- settings and blocklist -------------------------------------------------------------------------


class SettingsBody(BaseModel):
    auto_link: list[RecordType] | None = None
    exclude_internal: bool | None = None
    auto_create: Literal["none", "sent", "sent_and_received"] | None = None


@router.get("/settings/linking")
def get_link_settings(rt: RuntimeDep) -> dict[str, Any]:
    with rt.db.engine.connect() as conn:
        return crm_settings.load(conn).to_dict()


@router.patch("/settings/linking")
def set_link_settings(body: SettingsBody, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    _system_only(viewer, "changing the linking settings")
    with rt.db.engine.begin() as conn:
        before = crm_settings.load(conn)
        s = dataclasses.replace(before, **body.model_dump(exclude_none=True))
        crm_settings.save(conn, s)
        linking.settings_changed(conn, before, s)
        return s.to_dict()


class BlockBody(BaseModel):
    value: str = Field(description="an email address or a domain", max_length=320)


@router.get("/blocklist")
def get_blocklist(rt: RuntimeDep) -> list[str]:
    with rt.db.engine.connect() as conn:
        return sorted(crm_settings.blocked_values(conn))


@router.post("/blocklist", status_code=201)
def add_block(body: BlockBody, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    """Block an address or domain: its mail links nowhere from now on, and the links of mail
    already imported are removed, people's choices included, across the team: like the linking
    settings, the operator's to change."""
    _system_only(viewer, "changing the blocklist")
    value = crm_settings.normalize_block(body.value)
    with rt.db.engine.begin() as conn:
        conn.execute(delete(blocklist).where(blocklist.c.value == value))
        conn.execute(insert(blocklist).values(value=value, created_at=now()))
        removed = linking.purge_blocked(conn, value)
    return {"value": value, "links_removed": removed}


@router.delete("/blocklist/{value}", status_code=204)
def remove_block(value: str, rt: RuntimeDep, viewer: ViewerDep) -> None:
    _system_only(viewer, "changing the blocklist")
    v = crm_settings.normalize_block(value)
    with rt.db.engine.begin() as conn:
        if not conn.execute(delete(blocklist).where(blocklist.c.value == v)).rowcount:
            raise NotFound(f"{v} is not blocked")
        linking.relink_blocked(conn, v)
