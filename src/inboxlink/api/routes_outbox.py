"""/api/v1/outbox: write, send now or later, drafts, and what happened to each message."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from inboxlink.api.deps import RuntimeDep, ViewerDep
from inboxlink.outbound.outbox import SendRequest

router = APIRouter(tags=["outbox"])


_BARE = "bare addresses (name@example.com), without display names"


class RecordRef(BaseModel):
    type: Literal["person", "company", "deal"]
    id: str


class MessageBody(BaseModel):
    account_id: str
    to: list[str] = Field(default_factory=list, max_length=500, description=_BARE)
    cc: list[str] = Field(default_factory=list, max_length=500, description=_BARE)
    bcc: list[str] = Field(default_factory=list, max_length=500, description=_BARE)
    subject: str = Field(default="", max_length=998)
    text: str | None = None
    html: str | None = None
    reply_to_message: str | None = Field(default=None, description="RFC Message-ID of the message answered")
    records: list[RecordRef] = Field(
        default_factory=list, description="link the sent message to these at once"
    )
    # AwareDatetime: a time without its zone is refused (422) rather than guessed, as `inboxlink send
    # --send-at` refuses it
    send_at: AwareDatetime | None = Field(default=None, description="send later (ISO 8601 with a time zone)")
    draft: bool = Field(default=False, description="keep it as a draft; send it later with POST .../send")

    def request(self) -> SendRequest:
        return SendRequest(
            to=self.to,
            cc=self.cc,
            bcc=self.bcc,
            subject=self.subject,
            text=self.text,
            html=self.html,
            reply_to_message=self.reply_to_message,
            records=[(r.type, r.id) for r in self.records],
            send_at=self.send_at,
            draft=self.draft,
        )


class SendLater(BaseModel):
    send_at: AwareDatetime | None = Field(default=None, description="send at (ISO 8601 with a time zone)")


@router.post("/outbox", status_code=201)
def write_message(body: MessageBody, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    """Create a message. Without `send_at` or `draft` it is sent now and the answer says how it
    went (`status`: sent, failed with `error`, queued again after a transient failure, uncertain)."""
    item = rt.outbox.create(viewer, body.account_id, body.request())
    if item["status"] == "queued" and body.send_at is None:
        item = rt.outbox.send(item["id"])
    return item


@router.get("/outbox")
def list_outbox(
    rt: RuntimeDep,
    viewer: ViewerDep,
    status: Literal["draft", "queued", "sending", "sent", "failed", "uncertain"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    return rt.outbox.find(viewer, status=status, limit=limit)


@router.get("/outbox/{outbox_id}")
def show_outbox(outbox_id: str, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    return rt.outbox.get(viewer, outbox_id)


@router.put("/outbox/{outbox_id}")
def edit_draft(outbox_id: str, body: MessageBody, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    """Change a draft (or a failed message before sending it again)."""
    return rt.outbox.update_draft(viewer, outbox_id, body.request())


@router.post("/outbox/{outbox_id}/send")
def send_draft(outbox_id: str, body: SendLater, rt: RuntimeDep, viewer: ViewerDep) -> dict[str, Any]:
    item = rt.outbox.queue(viewer, outbox_id, body.send_at)
    if body.send_at is None:
        item = rt.outbox.send(outbox_id)
    return item


@router.delete("/outbox/{outbox_id}", status_code=204)
def discard(outbox_id: str, rt: RuntimeDep, viewer: ViewerDep) -> None:
    rt.outbox.discard(viewer, outbox_id)
