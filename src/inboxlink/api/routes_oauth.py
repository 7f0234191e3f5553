"""/oauth/google/start and /oauth/google/callback: the browser's side of pairing a Google mailbox.

`start` answers a redirect to Google's consent page. When `INBOXLINK_API_TOKEN` is set it needs the
token like the API does: a client calls it with `Authorization: Bearer …` and sends the user's
browser to the `Location` it gets back. `callback` needs no token: the sealed, single-use state is
what authenticates it (see `auth/oauth.py`). Errors are the API's JSON errors (`oauth_state_invalid`,
`access_denied`, `wrong_account`, `config_error` …).
"""

from __future__ import annotations

import hmac
import html
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from inboxlink.api.deps import RuntimeDep
from inboxlink.api.routes_accounts import AccountOut
from inboxlink.auth.scopes import catalog

router = APIRouter(tags=["oauth"])


def _require_api_token(request: Request, rt: RuntimeDep) -> None:
    token = rt.settings.api_token.get_secret_value() if rt.settings.api_token else None
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(
            status_code=401, detail="missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
        )


@router.get(
    "/oauth/google/start",
    status_code=302,
    response_class=RedirectResponse,
    dependencies=[Depends(_require_api_token)],
    responses={302: {"description": "to Google's consent page"}},
)
def google_start(
    rt: RuntimeDep,
    features: Annotated[
        str | None,
        Query(
            description="comma-separated feature ids (default: "
            + ", ".join(catalog().default_features)
            + "); known: "
            + ", ".join(catalog().features),
            max_length=1000,
        ),
    ] = None,
    account_id: Annotated[
        str | None, Query(description="re-pair this account, or enable more features on it", max_length=32)
    ] = None,
) -> RedirectResponse:
    """Pair a Google mailbox: redirects to the consent page asking only for the features' scopes."""
    url = rt.accounts.google_authorization_url(features, account_id=account_id)
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


@router.get("/oauth/google/callback", responses={200: {"description": "the paired account"}})
def google_callback(request: Request, rt: RuntimeDep) -> Response:
    """Where Google sends the browser back: verifies, then creates or re-pairs the account."""
    view, created = rt.accounts.google_finish(dict(request.query_params))
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.trigger(view.id)
    permissions = rt.accounts.permissions(view.id)
    missing = [f.id for f in permissions.features if f.enabled and not f.works]
    body = {
        "created": created,
        "account": AccountOut.of(view).model_dump(mode="json"),
        "features": view.config.get("features", []),
        "features_missing_a_scope": missing,
    }
    status = 201 if created else 200
    accept = request.headers.get("accept", "")
    if "text/html" in accept and "application/json" not in accept:
        return HTMLResponse(_page(view.email, view.id, created, missing), status_code=status)
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _page(email: str, account_id: str, created: bool, missing: list[str]) -> str:
    done = "paired" if created else "re-paired"
    acct = html.escape(account_id)
    warn = (
        "<p>Not granted on the consent page, so these features will not work: "
        f"{html.escape(', '.join(missing))}</p>"
        if missing
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>inboxlink</title></head><body>"
        f"<h1>{html.escape(email)} is {done}</h1>"
        f"<p>Account <code>{acct}</code> is syncing now. Follow it with "
        f"<code>inboxlink account {acct}</code> or "
        f"<a href='/api/v1/accounts/{acct}'>/api/v1/accounts/{acct}</a>; "
        f"what it may do: <a href='/api/v1/accounts/{acct}/permissions'>permissions</a>.</p>"
        f"{warn}</body></html>"
    )
