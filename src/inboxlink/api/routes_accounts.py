"""/api/v1/accounts: create (pair), list, show, transitions, folders, messages, sync now, unpair."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, SecretStr

from inboxlink.accounts import AccountView
from inboxlink.api.deps import ROW_ID_MAX, RuntimeDep, ViewerDep
from inboxlink.crm.access import Viewer, access_account
from inboxlink.errors import Conflict
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime

router = APIRouter(tags=["accounts"])


class ImapPairing(BaseModel):
    provider: Literal["imap"] = "imap"
    email: str = Field(max_length=320, examples=["ana@example.com"])
    username: str = Field(max_length=320)
    password: SecretStr
    imap_host: str = Field(max_length=253)
    imap_port: int = Field(default=993, ge=1, le=65535)
    smtp_host: str | None = Field(default=None, max_length=253)
    smtp_port: int | None = Field(default=587, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    smtp_security: Literal["tls", "starttls", "none"] | None = None
    headers_only: bool = False
    visibility: Literal["metadata", "subject", "everything"] | None = Field(
        default=None, description="what teammates see of this mailbox's linked mail (default everything)"
    )


class RePairing(BaseModel):
    password: SecretStr


class AccountOut(BaseModel):
    id: str
    provider: str
    email: str
    status: str = Field(
        description="pending | syncing | connected | auth_error | connect_error | unsupported | disconnected"
    )
    status_reason: str | None = Field(description="why the account is in this status, in plain words")
    status_at: datetime
    created_at: datetime
    last_sync_at: datetime | None
    last_error: str | None
    message_count: int = Field(description="messages; one stored in two folders counts once")
    placement_count: int = Field(description="their copies in folders, as the server counts them")
    sync_mode: str
    config: dict[str, Any]
    capabilities: dict[str, Any] | None
    owner_id: str | None = Field(default=None, description="the user who paired it; null: the operator")
    visibility: str = Field(default="everything", description="metadata | subject | everything")

    @classmethod
    def of(cls, v: AccountView) -> AccountOut:
        return cls(**v.to_dict())


class TransitionOut(BaseModel):
    from_status: str | None
    to_status: str
    reason: str
    at: datetime


class FolderOut(BaseModel):
    key: str
    name: str
    role: str
    synced_at: datetime | None


class PersonOut(BaseModel):
    email: str
    name: str | None


class PlacementOut(BaseModel):
    folder: str = Field(description="the folder's key, as in /folders")
    remote_key: str = Field(description="the message's key in that folder (IMAP: its UID)")
    flags: list[str]


class MessageOut(BaseModel):
    id: int = Field(description="inboxlink's id: /api/v1/messages/{id} shows the whole message")
    message_id: str | None = Field(description="the RFC 5322 Message-ID, without angle brackets")
    provider_id: str
    thread_id: str | None
    subject: str | None
    from_: PersonOut | None = Field(alias="from")
    to: list[PersonOut]
    cc: list[PersonOut]
    date: str | None
    internal_date: str | None
    size: int | None
    snippet: str | None
    headers_only: bool
    parse_note: str | None = Field(description="set when the message could not be read normally")
    placements: list[PlacementOut]


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next_after: int | None = Field(description="pass as `after` for the next page; null: no more")


class SyncOut(BaseModel):
    account: str
    status: str
    reason: str | None
    messages: int
    fetched: int
    fetched_bytes: int
    seconds: float


def _guard(rt: Runtime, viewer: Viewer, account_id: str) -> None:
    """Only the owner (or the operator) manages an account; others get the same 404 as for none."""
    with rt.db.engine.connect() as conn:
        access_account(conn, viewer, account_id)


class SharingBody(BaseModel):
    visibility: Literal["metadata", "subject", "everything"]


@router.get("/accounts", response_model=list[AccountOut])
def list_accounts(rt: RuntimeDep, viewer: ViewerDep) -> list[AccountOut]:
    return [AccountOut.of(v) for v in rt.accounts.all() if viewer.is_system or v.owner_id == viewer.user_id]


@router.patch("/accounts/{account_id}", response_model=AccountOut)
def share_account(account_id: str, body: SharingBody, rt: RuntimeDep, viewer: ViewerDep) -> AccountOut:
    """Change what teammates see of this mailbox's linked mail."""
    _guard(rt, viewer, account_id)
    return AccountOut.of(rt.accounts.set_sharing(account_id, visibility=body.visibility))


@router.post("/accounts", response_model=AccountOut, status_code=201)
def pair_account(body: ImapPairing, rt: RuntimeDep, request: Request, viewer: ViewerDep) -> AccountOut:
    config = ImapConfig(
        email=body.email,
        imap_host=body.imap_host,
        imap_port=body.imap_port,
        username=body.username,
        security=body.security,
        smtp_host=body.smtp_host,
        smtp_port=body.smtp_port if body.smtp_host else None,
        smtp_security=body.smtp_security,
    )
    if not viewer.is_system:
        # checked before pairing touches anything: another user's mailbox is not re-paired by you
        for existing in rt.accounts.all():
            same = existing.provider == "imap" and existing.email.lower() == body.email.lower()
            if same and existing.owner_id not in (None, viewer.user_id):
                raise Conflict("this mailbox is paired by another user")
    view = rt.accounts.pair_imap(config, body.password.get_secret_value(), headers_only=body.headers_only)
    view = rt.accounts.set_sharing(view.id, owner_id=viewer.user_id, visibility=body.visibility)
    _poke(request, view.id)
    return AccountOut.of(view)


@router.get("/accounts/{account_id}", response_model=AccountOut)
def show_account(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> AccountOut:
    _guard(rt, viewer, account_id)
    return AccountOut.of(rt.accounts.get(account_id))


@router.post("/accounts/{account_id}/repair", response_model=AccountOut)
def repair_account(
    account_id: str, body: RePairing, rt: RuntimeDep, request: Request, viewer: ViewerDep
) -> AccountOut:
    """Pair again with a new password: same mailbox, cursors kept, nothing downloaded again."""
    _guard(rt, viewer, account_id)
    current = rt.accounts.get(account_id)
    config = ImapConfig.from_dict(current.config)
    view = rt.accounts.pair_imap(config, body.password.get_secret_value(), account_id=account_id)
    _poke(request, view.id)
    return AccountOut.of(view)


@router.get("/accounts/{account_id}/transitions", response_model=list[TransitionOut])
def account_transitions(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> list[TransitionOut]:
    _guard(rt, viewer, account_id)
    return [
        TransitionOut(from_status=t.from_status, to_status=t.to_status, reason=t.reason, at=t.at)
        for t in rt.accounts.transitions(account_id)
    ]


class GrantedScopeOut(BaseModel):
    scope: str
    description: str = Field(description="what the scope lets inboxlink do, in plain words")
    powers: list[str] = Field(description="feature ids it serves (sign_in for identity scopes)")


class FeatureStatusOut(BaseModel):
    id: str
    title: str
    description: str
    enabled: bool
    works: bool = Field(description="every scope it needs is granted (or implied by a granted one)")
    missing_scopes: list[str]


class PermissionsOut(BaseModel):
    provider: str
    checked: str = Field(description="when the feature-to-scope table was last checked")
    scopes: list[GrantedScopeOut]
    features: list[FeatureStatusOut]


@router.get("/accounts/{account_id}/permissions", response_model=PermissionsOut)
def account_permissions(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> PermissionsOut:
    """Each granted OAuth scope, what it powers, and which features work or miss a scope."""
    _guard(rt, viewer, account_id)
    return PermissionsOut.model_validate(asdict(rt.accounts.permissions(account_id)))


@router.get("/accounts/{account_id}/folders", response_model=list[FolderOut])
def account_folders(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> list[FolderOut]:
    _guard(rt, viewer, account_id)
    return [FolderOut(**f) for f in rt.accounts.folders(account_id)]


@router.get("/accounts/{account_id}/messages", response_model=MessagePage, response_model_by_alias=True)
def account_messages(
    account_id: str,
    rt: RuntimeDep,
    viewer: ViewerDep,
    folder: Annotated[str | None, Query(max_length=512, description="only this folder (its key)")] = None,
    after: Annotated[
        int, Query(ge=0, le=ROW_ID_MAX, description="the `next_after` of the previous page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MessagePage:
    """The mailbox's messages with their folders and flags, a page at a time (owner or operator)."""
    _guard(rt, viewer, account_id)
    page, next_after = rt.accounts.messages(account_id, folder=folder, after=after, limit=limit)
    return MessagePage.model_validate({"messages": page, "next_after": next_after})


@router.post("/accounts/{account_id}/sync", response_model=SyncOut)
def sync_account(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> SyncOut:
    """Sync now and answer when done."""
    _guard(rt, viewer, account_id)
    rt.accounts.get(account_id)
    return SyncOut(**rt.engine.sync(account_id).summary())


@router.delete("/accounts/{account_id}", response_model=AccountOut)
def unpair_account(account_id: str, rt: RuntimeDep, viewer: ViewerDep) -> AccountOut:
    """Unpair: stop syncing and forget the credentials. Synced mail stays."""
    _guard(rt, viewer, account_id)
    return AccountOut.of(rt.accounts.unpair(account_id))


def _poke(request: Request, account_id: str) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.trigger(account_id)
