"""Dovecot's delivery hook: `PUT /push/dovecot` takes the push_notification plugin's OX driver.

Why a second push path beside the IMAP watchers (`sync/push.py`): Dovecot 2.3 holds every IDLE and
NOTIFY notification for NOTIFY_DELAY_MSECS = 500 ms (compiled in), so no IMAP client learns of new
mail sooner. The push_notification plugin runs in the delivering process instead (LMTP, or
dovecot-lda) and its "ox" driver sends an HTTP request the moment the delivery is committed.
Operators who run their own Dovecot point that driver here.

    LMTP delivers to INBOX -> OX driver -> PUT /push/dovecot?token=T[&host=H]
                                           {"user": "ana@example.com", "event": "messageNew", ...}
        wrong or missing token                     403
        not such a notification (JSON, user, event) 400
        otherwise                                  204, after the scheduler was poked for each IMAP
                                                   account that may sync and logs in as `user` (or
                                                   has it as address; only on IMAP host H when the
                                                   URL says so); none: 204 as well (unknown user)

What the driver does, verified against Dovecot 2.3.19 here (`tests/test_push_dovecot.py` and
probes with a bare HTTP listener), matching Dovecot's documentation of the OX driver:

- Configuration: ``mail_plugins = $mail_plugins notify push_notification`` in ``protocol lmtp``
  (and ``protocol lda`` for dovecot-lda), ``mail_attribute_dict`` set (e.g.
  ``file:%h/dovecot-attributes``), and ``plugin { push_notification_driver = ox:url=URL }``.
  Options follow the URL, space-separated: ``timeout_msecs=N`` (default 2000; a timed-out request
  is sent once more), ``user_from_metadata``, ``cache_lifetime``. Plugin settings are %-expanded:
  a % in the URL must be written %%, or the LMTP process fails to start (our tokens have none).
- Per user, a registration: the private server attribute
  ``/private/vendor/vendor.dovecot/http-notify`` holding tab-separated ``key=value`` pairs with a
  ``user`` key, set with ``doveadm mailbox metadata set -u USER -s "" KEY user=USER`` (``-A`` for
  every user) or by an IMAP client with ``SETMETADATA "" (KEY "user=USER")`` (needs
  ``imap_metadata = yes``; the driver itself needs only the dict). Unregistered users: no request.
  A value without ``user=``: no request, "No user provided in config" in Dovecot's log.
  Without mail_attribute_dict, doveadm says "Mailbox attributes not enabled".
- The request: ``PUT``, ``Content-Type: application/json; charset=utf-8``, to the URL as written:
  the query string is kept (``?token=`` works, %-escapes included); ``http://login:pass@host/``
  becomes ``Authorization: Basic``. The body is one object:
  ``{"user", "event": "messageNew", "folder": "INBOX", "imap-uidvalidity", "imap-uid", "from",
  "subject", "snippet", "unseen"}``; ``user`` is Dovecot's user name (as its userdb spells it,
  e.g. lowercased by ``username_format=%Lu``), not the registered value, unless
  ``user_from_metadata`` is given; ``from`` and ``subject`` are the raw (MIME-encoded) headers,
  ``snippet`` the start of the body, ``unseen`` the INBOX's unseen count.
- Coverage: MessageNew only, in INBOX only: LMTP and dovecot-lda deliveries to INBOX are sent;
  dovecot-lda into another folder, IMAP APPEND (also with the plugin in imap), COPY and
  ``doveadm save`` are not. Flag changes, expunges and Sent are left to the IMAP watchers. Hence
  a request here does not count as push for the scheduler (unlike Gmail's, `sync/gmail_push.py`):
  an account only the hook tells of is still polled every poll interval.
- Timing: the request goes out synchronously inside the delivery, after the mail is committed and
  before LMTP answers the MTA (it arrived ~0.5 ms before `deliver_lmtp` returned; an endpoint
  that takes 1.5 s makes the delivery take 1.5 s). A refused connection costs the delivery
  nothing and loses only the notification; an error status (403, 500) is logged by Dovecot,
  not retried. Hence this route answers at once and the sync runs later on the scheduler's pool.

Why a token in the URL: the driver sends no header of ours besides optional Basic userinfo, and it
keeps the query string; so the same scheme as the Google receiver: INBOXLINK_DOVECOT_PUSH_TOKEN, or
one derived from the secret key (`SecretBox.derive`; rotating the key changes it), registered for
redaction. The operator reads the URL and the dovecot.conf lines from `GET /push/dovecot` (operator
token). A forged request can only cause an incremental sync of an account.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool

from inboxlink.api.deps import RuntimeDep
from inboxlink.api.routes_oauth import _require_api_token
from inboxlink.api.routes_push import ERROR_RESPONSE, PushMalformed, check_push_token, poke, push_secret
from inboxlink.auth.secrets import SecretBox
from inboxlink.config import Settings

router = APIRouter(tags=["push"])
log = logging.getLogger(__name__)

_DOVECOT_PURPOSE = "push:dovecot"
REGISTRATION_KEY = "/private/vendor/vendor.dovecot/http-notify"


def dovecot_push_token(settings: Settings, box: SecretBox) -> str:
    """The secret of this install's Dovecot push endpoint (see the module docstring)."""
    return push_secret(settings.dovecot_push_token, box, _DOVECOT_PURPOSE)


class DovecotNotification(BaseModel):
    """What the OX driver sends (other drivers may add fields; they are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user: str = Field(min_length=1, max_length=1000, description="Dovecot's user name of the mailbox")
    event: str = Field(min_length=1, max_length=64, description="messageNew (the only event sent)")
    folder: str | None = Field(default=None, max_length=1000, description="INBOX")
    imap_uidvalidity: int | None = Field(default=None, ge=0, alias="imap-uidvalidity")
    imap_uid: int | None = Field(default=None, ge=0, alias="imap-uid")
    from_: str | None = Field(default=None, alias="from", description="the From header, MIME-encoded")
    subject: str | None = Field(default=None, description="the Subject header, MIME-encoded")
    snippet: str | None = Field(default=None, description="the start of the body")
    unseen: int | None = Field(default=None, ge=0, description="unseen messages in the folder")


def decode_dovecot_notification(body: bytes) -> DovecotNotification:
    try:
        return DovecotNotification.model_validate_json(body)
    except PydanticValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise PushMalformed("not a Dovecot push notification") from None
        where = ".".join(str(part) for part in errors[0]["loc"]) or "body"
        raise PushMalformed(f"not a Dovecot push notification: {where}: {errors[0]['msg']}") from None


_NOTIFICATION: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": DovecotNotification.model_json_schema(by_alias=True)}},
    }
}


@router.put(
    "/push/dovecot",
    status_code=204,
    response_class=Response,
    openapi_extra=_NOTIFICATION,
    responses={
        204: {"description": "taken: the user's accounts will sync (none known: nothing)"},
        400: {"description": "not a push notification of Dovecot's OX driver", **ERROR_RESPONSE},
        403: {"description": "missing or wrong token", **ERROR_RESPONSE},
    },
)
async def dovecot_push(
    request: Request,
    rt: RuntimeDep,
    token: Annotated[
        str | None, Query(description="this install's push secret (GET /push/dovecot)", max_length=200)
    ] = None,
    host: Annotated[
        str | None,
        Query(
            description="only accounts on this IMAP host (as paired): several servers, one inboxlink",
            max_length=255,
        ),
    ] = None,
) -> Response:
    """Dovecot delivered new mail to a user's INBOX: sync the IMAP accounts of that user soon."""
    check_push_token(token, dovecot_push_token(rt.settings, rt.box))
    notification = decode_dovecot_notification(await request.body())
    account_ids = await run_in_threadpool(rt.accounts.syncable_imap_by_login, notification.user, host)
    poke(request, account_ids)
    log.debug(
        "Dovecot push (%s, uid %s): %d account(s) poked",
        notification.event,
        notification.imap_uid,
        len(account_ids),
    )
    return Response(status_code=204)


class DovecotPushEndpointOut(BaseModel):
    endpoint: str = Field(description="the URL for push_notification_driver = ox:url=... (a secret)")
    dovecot_conf: str = Field(
        description="lines to add to dovecot.conf (the URL's % doubled, as Dovecot needs)"
    )
    register_all: str = Field(description="the command that registers every user for notifications")
    register_user: str = Field(description="the same for one user (USER), e.g. one paired later")


@router.get(
    "/push/dovecot", response_model=DovecotPushEndpointOut, dependencies=[Depends(_require_api_token)]
)
def dovecot_push_endpoint(
    rt: RuntimeDep,
    host: Annotated[
        str | None,
        Query(
            description="scope the URL to accounts on this IMAP host (as the accounts were paired)",
            max_length=255,
        ),
    ] = None,
) -> DovecotPushEndpointOut:
    """For the operator (API token): the URL and dovecot.conf lines of Dovecot's delivery hook."""
    query = {"token": dovecot_push_token(rt.settings, rt.box)}
    if host:
        query["host"] = host
    endpoint = f"{rt.settings.public_url.rstrip('/')}/push/dovecot?{urllib.parse.urlencode(query)}"
    conf = (
        "# inboxlink: tell inboxlink of each delivery to an INBOX at once (GET /push/dovecot)\n"
        "# where per-user registrations live (keep yours if mail_attribute_dict is set already)\n"
        "mail_attribute_dict = file:%h/dovecot-attributes\n"
        "protocol lmtp {\n  mail_plugins = $mail_plugins notify push_notification\n}\n"
        "protocol lda {\n  mail_plugins = $mail_plugins notify push_notification\n}\n"
        "# lets inboxlink register each mailbox itself (INBOXLINK_DOVECOT_PUSH_REGISTER=true)\n"
        "protocol imap {\n  imap_metadata = yes\n}\n"
        "plugin {\n"
        f"  push_notification_driver = ox:url={endpoint.replace('%', '%%')} timeout_msecs=1000\n"
        "}\n"
    )
    register = "doveadm mailbox metadata set {who} -s '' " + REGISTRATION_KEY + " user={user}"
    return DovecotPushEndpointOut(
        endpoint=endpoint,
        dovecot_conf=conf,
        register_all=register.format(who="-A", user="inboxlink"),
        register_user=register.format(who="-u USER", user="USER"),
    )
