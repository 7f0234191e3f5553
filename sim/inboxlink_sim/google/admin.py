"""The JSON admin API under ``/_sim`` (no auth: the simulator listens on loopback only).

Routes (``{email}`` is a simulated user; bodies are JSON objects):

* ``GET /_sim/state`` -- users, historyIds, watches, clients, pending faults.
* ``POST /_sim/users`` ``{email, name?, messages?, seed?, generator?}`` -- add (and seed) a user.
* ``POST /_sim/users/{email}/messages`` ``{raw, labelIds?, internalDate?, threadId?, record?}`` or
  ``{generate: n, seed?, generator?}`` (generated seeding writes no history).
* ``POST /_sim/users/{email}/deliver`` ``{raw?, from?, subject?, body?, labelIds?, inReplyTo?}`` --
  incoming mail now: history + push.
* ``POST /_sim/users/{email}/tokens`` ``{scopes: [...], clientId?, offline?}`` -- mint tokens, no consent.
* ``POST /_sim/users/{email}/expire-history`` -- drop history: older startHistoryIds 404.
* ``POST /_sim/users/{email}/change-password`` -- revoke the user's refresh tokens.
* ``POST /_sim/users/{email}/expire-access-tokens`` -- the user's access tokens expire now.
* ``POST /_sim/faults`` ``{count, status, reason?, retryAfter?, message?, methods?, user?}``;
  ``DELETE /_sim/faults`` clears all faults.
* ``POST /_sim/token-faults`` ``{error?, description?, count?, status?, grantType?, user?}``.
* ``POST /_sim/clock`` ``{advance: seconds}`` -- move the simulated clock.
* ``PUT /_sim/push-endpoint`` ``{url, topic?}`` -- where Pub/Sub pushes go (topic ``*``: all).
* ``POST /_sim/clients`` ``{clientId, clientSecret?, redirectUris?}`` -- register an OAuth client.
* ``GET /_sim/push-log``, ``/_sim/outbox``, ``/_sim/calls`` -- what was pushed, sent, called.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import control, mime
from .oauth import issue_tokens, normalize_scopes
from .state import DEFAULT_CLIENT_ID, SimState


class _AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _endpoint(
    fn: Callable[[SimState, Request, dict[str, Any]], Any],
) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        state: SimState = request.app.state.sim
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise _AdminError(400, "expected a JSON object")
            email = request.path_params.get("email")
            if email is not None and state.user(email) is None:
                raise _AdminError(404, f"no simulated user {email}")
            result = fn(state, request, body)
        except _AdminError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=400)
        return JSONResponse(result if result is not None else {})

    return handler


def _state(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    return control.summary(state)


def _add_user(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    user = control.seed_user(
        state,
        str(body["email"]),
        body.get("name"),
        int(body.get("messages", 0)),
        int(body.get("seed", 0)),
        str(body.get("generator", "sim")),
    )
    return {"email": user.email, "name": user.name, "sub": user.sub}


def _messages(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    email = request.path_params["email"]
    if "generate" in body:
        n, seed = int(body["generate"]), int(body.get("seed", 0))
        return {"ids": control.seed_messages(state, email, n, seed, str(body.get("generator", "sim")))}
    raw = mime.decode_bytes_field(str(body["raw"]))
    msg_id = control.insert_raw(
        state,
        email,
        raw,
        body.get("labelIds", control.DEFAULT_INCOMING_LABELS),
        internal_date=int(body["internalDate"]) if "internalDate" in body else None,
        thread_id=body.get("threadId"),
        record=bool(body.get("record", True)),
    )
    return {"id": msg_id}


def _deliver(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for key, arg in (
        ("from", "sender"),
        ("subject", "subject"),
        ("body", "body"),
        ("inReplyTo", "in_reply_to"),
    ):
        if key in body:
            kwargs[arg] = str(body[key])
    if "labelIds" in body:
        kwargs["label_ids"] = [str(x) for x in body["labelIds"]]
    raw = mime.decode_bytes_field(str(body["raw"])) if body.get("raw") else None
    return {"id": control.deliver(state, request.path_params["email"], raw, **kwargs)}


def _tokens(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    user = state.user(request.path_params["email"])
    assert user is not None
    client_id = str(body.get("clientId", DEFAULT_CLIENT_ID))
    if client_id not in state.clients:
        raise _AdminError(404, f"no client {client_id}")
    scopes = normalize_scopes(" ".join(body.get("scopes", [])))
    with state.lock:
        key = (user.email.lower(), client_id)
        state.grants[key] = state.grants.get(key, set()) | set(scopes)
        return issue_tokens(
            state, user, client_id, scopes, refresh=bool(body.get("offline", True)), base_url=state.base_url
        )


def _expire_history(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    control.expire_history(state, request.path_params["email"])


def _change_password(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    return {"revoked": control.change_password(state, request.path_params["email"])}


def _expire_access(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    return {"expired": control.expire_access_tokens(state, request.path_params["email"])}


def _faults(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    if request.method == "DELETE":
        control.clear_faults(state)
        return None
    control.add_fault(
        state,
        int(body.get("count", 1)),
        int(body.get("status", 429)),
        body.get("reason"),
        retry_after=int(body["retryAfter"]) if body.get("retryAfter") is not None else None,
        message=body.get("message"),
        methods=body.get("methods"),
        user=body.get("user"),
    )
    return None


def _token_faults(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    control.add_token_fault(
        state,
        str(body.get("error", "invalid_grant")),
        str(body.get("description", "Token has been expired or revoked.")),
        count=int(body.get("count", 1)),
        status=int(body.get("status", 400)),
        grant_type=body.get("grantType", "refresh_token"),
        user=body.get("user"),
    )


def _clock(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    state.advance_clock(float(body.get("advance", 0)))
    return {"now": state.now()}


def _push_endpoint(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    control.set_push_endpoint(state, body.get("url"), str(body.get("topic", "*")))


def _clients(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    client = state.add_client(str(body["clientId"]), body.get("clientSecret"), body.get("redirectUris"))
    return {"clientId": client.client_id}


def _push_log(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    with state.lock:
        return [
            {"url": r.url, "payload": r.payload, "status": r.status, "error": r.error, "attempts": r.attempts}
            for r in state.push_log
        ]


def _outbox(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    with state.lock:
        return [
            {"user": r.user, "id": r.message_id, "recipients": r.recipients, "raw": mime.b64url_padded(r.raw)}
            for r in state.outbox
        ]


def _calls(state: SimState, request: Request, body: dict[str, Any]) -> Any:
    with state.lock:
        return [
            {"method": c.method, "user": c.user, "status": c.status, "batch": c.batch} for c in state.calls
        ]


def routes() -> list[Route]:
    u = "/_sim/users/{email}"
    return [
        Route("/_sim/state", _endpoint(_state), methods=["GET"]),
        Route("/_sim/users", _endpoint(_add_user), methods=["POST"]),
        Route(u + "/messages", _endpoint(_messages), methods=["POST"]),
        Route(u + "/deliver", _endpoint(_deliver), methods=["POST"]),
        Route(u + "/tokens", _endpoint(_tokens), methods=["POST"]),
        Route(u + "/expire-history", _endpoint(_expire_history), methods=["POST"]),
        Route(u + "/change-password", _endpoint(_change_password), methods=["POST"]),
        Route(u + "/expire-access-tokens", _endpoint(_expire_access), methods=["POST"]),
        Route("/_sim/faults", _endpoint(_faults), methods=["POST", "DELETE"]),
        Route("/_sim/token-faults", _endpoint(_token_faults), methods=["POST"]),
        Route("/_sim/clock", _endpoint(_clock), methods=["POST"]),
        Route("/_sim/push-endpoint", _endpoint(_push_endpoint), methods=["PUT", "POST"]),
        Route("/_sim/clients", _endpoint(_clients), methods=["POST"]),
        Route("/_sim/push-log", _endpoint(_push_log), methods=["GET"]),
        Route("/_sim/outbox", _endpoint(_outbox), methods=["GET"]),
        Route("/_sim/calls", _endpoint(_calls), methods=["GET"]),
    ]
