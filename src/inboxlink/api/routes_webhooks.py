"""/api/v1/webhooks: endpoints (the secret is shown once, on creation), their deliveries, a test
event. Signing, retries and the payloads are described in `inboxlink.outbound.webhooks` and
`inboxlink.outbound.events`. Operator only: an endpoint receives the events of every account."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from inboxlink.errors import Forbidden
from inboxlink.outbound.webhooks import DeliveryView, EndpointView, WebhookService
from inboxlink.runtime import Runtime


def operator_only(request: Request) -> None:
    """After the app's token check: users' own tokens may not see or change webhooks."""
    viewer = getattr(request.state, "viewer", None)
    if viewer is None or not viewer.is_system:
        raise Forbidden("webhooks need the operator's token: they receive every account's events")


router = APIRouter(tags=["webhooks"], dependencies=[Depends(operator_only)])


def get_webhooks(request: Request) -> WebhookService:
    rt: Runtime = request.app.state.runtime
    return WebhookService(rt.db, rt.box, rt.settings)


WebhooksDep = Annotated[WebhookService, Depends(get_webhooks)]

_TYPES_DOC = (
    "event types to receive: account.status_changed, message.created, message.linked, message.sent; "
    "or '*' for all"
)


class EndpointIn(BaseModel):
    url: str = Field(max_length=2048, examples=["https://crm.example.com/hooks/inboxlink"])
    event_types: list[str] = Field(min_length=1, max_length=20, description=_TYPES_DOC)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True


class EndpointPatch(BaseModel):
    url: str | None = Field(default=None, max_length=2048)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=20, description=_TYPES_DOC)
    description: str | None = Field(default=None, max_length=500, description='"" clears it')
    enabled: bool | None = Field(default=None, description="true also clears `disabled_reason`")


class EndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="why it was disabled (e.g. the receiver answered 410)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, v: EndpointView) -> EndpointOut:
        return cls(
            id=v.id,
            url=v.url,
            event_types=v.event_types,
            description=v.description,
            enabled=v.enabled,
            disabled_reason=v.disabled_reason,
            created_at=v.created_at,
            updated_at=v.updated_at,
        )


class EndpointCreated(EndpointOut):
    secret: str = Field(
        description="signing secret (whsec_...): shown only in this response; verify "
        "Inboxlink-Signature with it"
    )


class DeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="the Inboxlink-Event-Id header: the same on every attempt")
    event_type: str
    status: str = Field(description="pending | succeeded | failed")
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, v: DeliveryView) -> DeliveryOut:
        return cls(
            id=v.id,
            event_id=v.event_id,
            event_type=v.event_type,
            status=v.status,
            attempts=v.attempts,
            next_attempt_at=v.next_attempt_at,
            last_attempt_at=v.last_attempt_at,
            last_status_code=v.last_status_code,
            last_error=v.last_error,
            created_at=v.created_at,
            delivered_at=v.delivered_at,
        )


@router.post("/webhooks", response_model=EndpointCreated, status_code=201)
def create_webhook(body: EndpointIn, webhooks: WebhooksDep) -> EndpointCreated:
    """Register an endpoint. The response carries its signing secret, which is not shown again."""
    view, secret = webhooks.create(
        body.url, body.event_types, description=body.description, enabled=body.enabled
    )
    return EndpointCreated(**EndpointOut.of(view).model_dump(), secret=secret)


@router.get("/webhooks", response_model=list[EndpointOut])
def list_webhooks(webhooks: WebhooksDep) -> list[EndpointOut]:
    return [EndpointOut.of(v) for v in webhooks.all()]


@router.get("/webhooks/{endpoint_id}", response_model=EndpointOut)
def show_webhook(endpoint_id: str, webhooks: WebhooksDep) -> EndpointOut:
    return EndpointOut.of(webhooks.get(endpoint_id))


@router.patch("/webhooks/{endpoint_id}", response_model=EndpointOut)
def change_webhook(endpoint_id: str, body: EndpointPatch, webhooks: WebhooksDep) -> EndpointOut:
    return EndpointOut.of(
        webhooks.update(
            endpoint_id,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
            enabled=body.enabled,
        )
    )


@router.delete("/webhooks/{endpoint_id}", status_code=204)
def delete_webhook(endpoint_id: str, webhooks: WebhooksDep) -> Response:
    """Delete the endpoint and its delivery history; nothing more is sent to it."""
    webhooks.delete(endpoint_id)
    return Response(status_code=204)


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=list[DeliveryOut])
def webhook_deliveries(
    endpoint_id: str,
    webhooks: WebhooksDep,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeliveryOut]:
    """Deliveries to this endpoint, newest first."""
    return [DeliveryOut.of(v) for v in webhooks.deliveries(endpoint_id, limit=limit, status=status)]


@router.post("/webhooks/{endpoint_id}/test", response_model=DeliveryOut)
def test_webhook(endpoint_id: str, webhooks: WebhooksDep) -> DeliveryOut:
    """Send a `webhook.test` event now and answer with the delivery after that attempt."""
    return DeliveryOut.of(webhooks.send_test(endpoint_id))
