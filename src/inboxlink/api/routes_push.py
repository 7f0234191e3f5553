"""Provider push receivers: `POST /push/google` takes Gmail's Pub/Sub push deliveries.

    Gmail (users.watch) -> Pub/Sub topic (INBOXLINK_GOOGLE_PUBSUB_TOPIC) -> push subscription ->
    POST /push/google?token=T  {"message": {"data": base64 {"emailAddress", "historyId"}, ...},
                                "subscription": ...}
        wrong or missing token                       403 (not acknowledged)
        not a Pub/Sub push of a Gmail notification   400
        otherwise                                    204 (acknowledged), after the scheduler was
                                                     poked for each account of that mailbox that
                                                     may sync; none (unknown address, unpaired):
                                                     204 as well, or Pub/Sub would retry for days

The answer comes at once: the sync runs later on the scheduler's pool, which coalesces pokes.
Each push is also recorded (`sync/gmail_push.GmailPushes.received`): it proves that the topic's
subscription reaches this endpoint, so for the next 30 min (`PUSHED_POLL_SECONDS`) an account of
that mailbox whose watch is live is polled only as a safety net, not every poll interval.

Why a token in the URL rather than our bearer token: a Pub/Sub push subscription can send no header
of ours, only the endpoint URL it was given (and, optionally, a Google-signed OIDC token). So the URL
carries a per-install secret: INBOXLINK_GOOGLE_PUBSUB_PUSH_TOKEN, or by default one derived from the
secret key (`SecretBox.derive`: nothing more to configure; rotating the key changes it). The
operator reads the whole URL from `GET /push/google` (operator token) and gives it to the
subscription. Keep it out of logs (it is registered for redaction; serve writes no access log).
A deployment may also configure the subscription with a service account and verify the OIDC JWT
Pub/Sub then sends (`Authorization: Bearer`, issuer accounts.google.com, audience and email as
configured) in front of this route; not done here, where the simulator cannot sign one. What a
forged push could do is small anyway: poke an incremental sync of a mailbox, no data goes out,
and keep an account with a live watch on the 30-minute safety-net poll.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from inboxlink.api.deps import RuntimeDep
from inboxlink.api.routes_oauth import _require_api_token
from inboxlink.auth.secrets import SecretBox, register_secret
from inboxlink.config import Settings
from inboxlink.errors import Forbidden, ValidationError

router = APIRouter(tags=["push"])
log = logging.getLogger(__name__)

_GOOGLE_PURPOSE = "push:google"
_registered: set[str] = set()


class PushTokenInvalid(Forbidden):
    code = "push_token_invalid"


class PushMalformed(ValidationError):
    code = "push_malformed"
    http_status = 400


def check_push_token(token: str | None, expected: str) -> None:
    """A push endpoint's ?token= against its secret (constant time); 403 when missing or wrong."""
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise PushTokenInvalid("missing or wrong push token")


def poke(request: Request, account_ids: list[str]) -> None:
    """Sync these accounts soon (the scheduler of serve; without one, as in some tests: nothing)."""
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        for account_id in account_ids:
            scheduler.trigger(account_id)


def push_secret(configured: SecretStr | None, box: SecretBox, purpose: str) -> str:
    """The secret of one push endpoint: the configured one, else derived from the secret key for
    `purpose`; registered for redaction the first time it is made."""
    token = configured.get_secret_value() if configured else box.derive(purpose)
    if token not in _registered:
        register_secret(token)
        _registered.add(token)
    return token


def google_push_token(settings: Settings, box: SecretBox) -> str:
    """The secret of this install's Google push endpoint (see the module docstring)."""
    return push_secret(settings.google_pubsub_push_token, box, _GOOGLE_PURPOSE)


def decode_gmail_notification(body: bytes) -> tuple[str, int]:
    """(emailAddress, historyId) of a Pub/Sub push envelope carrying a Gmail notification."""
    try:
        envelope = json.loads(body)
    except ValueError:
        raise PushMalformed("the body is not JSON") from None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, str) or not data:
        raise PushMalformed("not a Pub/Sub push: message.data is missing")
    try:
        # Pub/Sub sends standard base64; the URL-safe alphabet and missing padding are accepted too
        text = data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4)
        notification = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise PushMalformed("message.data is not base64-encoded JSON") from None
    if not isinstance(notification, dict):
        raise PushMalformed("message.data is not a Gmail notification")
    email, history = notification.get("emailAddress"), notification.get("historyId")
    # Gmail sends historyId as a JSON number; Google's guide shows a string: take both
    if isinstance(history, str) and history.isdigit():
        history = int(history)
    if (
        not isinstance(email, str)
        or "@" not in email
        or isinstance(history, bool)
        or not isinstance(history, int)
    ):
        raise PushMalformed("message.data lacks emailAddress or historyId")
    return email, history


ERROR_RESPONSE: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["code", "message"],
                    }
                },
                "required": ["error"],
            }
        }
    }
}
_ENVELOPE: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "a Pub/Sub push envelope; message.data is base64 of "
                    '{"emailAddress": ..., "historyId": ...}',
                    "properties": {
                        "message": {
                            "type": "object",
                            "properties": {
                                "data": {"type": "string"},
                                "messageId": {"type": "string"},
                                "publishTime": {"type": "string"},
                                "attributes": {"type": "object"},
                            },
                        },
                        "subscription": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/push/google",
    status_code=204,
    response_class=Response,
    openapi_extra=_ENVELOPE,
    responses={
        204: {"description": "acknowledged: the mailbox's accounts will sync (none known: nothing)"},
        400: {"description": "not a Pub/Sub push of a Gmail notification", **ERROR_RESPONSE},
        403: {"description": "missing or wrong token", **ERROR_RESPONSE},
    },
)
async def google_push(
    request: Request,
    rt: RuntimeDep,
    token: Annotated[
        str | None, Query(description="this install's push secret (GET /push/google)", max_length=200)
    ] = None,
) -> Response:
    """Gmail's Pub/Sub push: a watched mailbox changed; sync its accounts soon."""
    check_push_token(token, google_push_token(rt.settings, rt.box))
    email, history_id = decode_gmail_notification(await request.body())
    account_ids = await run_in_threadpool(rt.accounts.syncable_by_email, "gmail", email)
    rt.gmail_pushes.received(account_ids)  # the path works: polled as a safety net only (gmail_push)
    poke(request, account_ids)
    log.debug("Gmail push (history %d): %d account(s) poked", history_id, len(account_ids))
    return Response(status_code=204)


class PushEndpointOut(BaseModel):
    mode: str = Field(description="pubsub (a topic is configured) or polling")
    topic: str | None = Field(description="INBOXLINK_GOOGLE_PUBSUB_TOPIC")
    endpoint: str = Field(description="the push endpoint to give the Pub/Sub subscription (a secret)")


@router.get("/push/google", response_model=PushEndpointOut, dependencies=[Depends(_require_api_token)])
def google_push_endpoint(rt: RuntimeDep) -> PushEndpointOut:
    """For the operator (API token): the URL to configure as the topic's push subscription endpoint."""
    token = google_push_token(rt.settings, rt.box)
    topic = rt.settings.google_pubsub_topic
    return PushEndpointOut(
        mode="pubsub" if topic else "polling",
        topic=topic,
        endpoint=f"{rt.settings.public_url.rstrip('/')}/push/google?token={token}",
    )
