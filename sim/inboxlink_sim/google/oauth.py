"""Google's OAuth 2.0 authorization server and OpenID Connect provider, simulated.

Endpoints (Google's paths): ``/.well-known/openid-configuration``; ``/o/oauth2/v2/auth`` (GET shows
the consent page, POST with ``decision`` decides directly); ``/o/oauth2/v2/consent`` (the consent
form's target); ``/token`` (also ``/oauth2/v4/token``); ``/revoke`` (also ``/o/oauth2/revoke``);
``/v1/userinfo`` (also ``/oauth2/v3/userinfo``); ``/tokeninfo`` (also ``/oauth2/v3/tokeninfo``);
``/oauth2/v3/certs`` (JWKS) and ``/oauth2/v1/certs`` (``{kid: PEM certificate}``).

Simulated faithfully:

* authorization code flow with PKCE (``S256`` and ``plain``), single-use codes valid 10 minutes,
  exact ``redirect_uri`` match at the token endpoint (``redirect_uri_mismatch``), client
  authentication by ``client_secret_post`` or HTTP Basic (``invalid_client``, 401);
* unknown client / unregistered redirect URI / unknown scope are shown as an error *page* (400/401)
  and never redirected, as Google does; ``deny`` redirects with ``error=access_denied``;
  ``prompt=none`` without a prior grant redirects with ``error=consent_required``;
* ``email``/``profile`` are normalised to ``https://www.googleapis.com/auth/userinfo.email`` /
  ``.profile`` in the granted ``scope``, like Google's token responses;
* incremental consent: grants accumulate per (user, client); ``include_granted_scopes=true`` makes
  the new tokens carry every scope granted so far;
* a refresh token is returned only with ``access_type=offline``, and -- Google's well-known gotcha --
  only when the user has no valid refresh token for the client yet or ``prompt=consent`` was
  given; refresh tokens do not rotate; refresh may narrow ``scope`` (``invalid_scope`` otherwise);
* ``id_token``: RS256 JWT (iss = the simulator's base URL, aud/azp = client id, sub, email,
  email_verified, name, given_name, family_name, picture, nonce, at_hash, iat, exp), its key
  published with a ``kid`` in the JWKS;
* revoking any token of a grant revokes the whole grant (all its access and refresh tokens);
  a password change revokes the user's refresh tokens (access tokens live until they expire);
* errors as Google words them: ``invalid_grant`` ``Bad Request`` (reused/unknown code),
  ``Invalid code verifier.``/``Missing code verifier.``, ``Token has been expired or revoked.``.

Not simulated: sign-in, sessions and cookies, the account chooser beyond a ``user`` select,
implicit/hybrid flows, device flow, service accounts and domain-wide delegation (JWT bearer
grant), ``hd``, verified app / unverified-app warnings, token binding, Cross-Account Protection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import secrets
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .errors import OAuthError
from .gmail import bearer_token, valid_access_token
from .scopes import AUTH, SCOPE_DESCRIPTIONS
from .signing import at_hash
from .state import (
    AccessToken,
    AuthCode,
    Client,
    PendingAuth,
    RefreshToken,
    SimState,
    TokenFault,
    User,
)

CODE_TTL = 600
PENDING_TTL = 1800
SCOPE_ALIASES = {"email": AUTH + "userinfo.email", "profile": AUTH + "userinfo.profile"}
CLAIMS = [
    *("aud", "email", "email_verified", "exp", "family_name", "given_name", "iat"),
    *("iss", "name", "nonce", "picture", "sub", "at_hash", "azp"),
]
NO_STORE = {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate", "Pragma": "no-cache"}


def issuer(state: SimState, request: Request) -> str:
    return state.base_url or f"{request.url.scheme}://{request.url.netloc}"


def normalize_scopes(text: str) -> list[str]:
    return list(dict.fromkeys(SCOPE_ALIASES.get(s, s) for s in text.split()))


def _sim(request: Request) -> SimState:
    state: SimState = request.app.state.sim
    return state


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return dict(urllib.parse.parse_qsl(body, keep_blank_values=True))


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _oauth_error(err: OAuthError) -> JSONResponse:
    return _json(err.body(), err.status, NO_STORE)


# --- discovery and keys --------------------------------------------------------------------


async def openid_configuration(request: Request) -> Response:
    state = _sim(request)
    base = issuer(state, request)
    return _json(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/v1/userinfo",
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": f"{base}/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": [
                "openid",
                "email",
                "profile",
                *sorted(k for k in SCOPE_DESCRIPTIONS if "/" in k),
            ],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": CLAIMS,
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }
    )


async def certs_v3(request: Request) -> Response:
    return _json({"keys": [_sim(request).signing_key.jwk()]})


async def certs_v1(request: Request) -> Response:
    key = _sim(request).signing_key
    return _json({key.kid: key.certificate_pem()})


# --- authorization endpoint ----------------------------------------------------------------


def _error_page(status: int, error: str, description: str) -> HTMLResponse:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Error</title></head><body>"
        "<h1>Access blocked: this app's request is invalid</h1>"
        f"<p id='error'>Error {status}: {html.escape(error)}</p>"
        f"<p id='error_description'>{html.escape(description)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status)


def _redirect(uri: str, params: dict[str, str]) -> RedirectResponse:
    sep = "&" if urllib.parse.urlsplit(uri).query else "?"
    return RedirectResponse(uri + sep + urllib.parse.urlencode(params), status_code=302)


class _PageError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.response = _error_page(status, error, description)


def _validate_auth_request(state: SimState, params: dict[str, str]) -> tuple[Client, list[str]]:
    client = state.clients.get(params.get("client_id", ""))
    if client is None:
        raise _PageError(401, "invalid_client", "The OAuth client was not found.")
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri:
        raise _PageError(400, "invalid_request", "Missing required parameter: redirect_uri")
    if client.redirect_uris is not None and redirect_uri not in client.redirect_uris:
        raise _PageError(
            400,
            "redirect_uri_mismatch",
            f"You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. "
            f"redirect_uri={redirect_uri}",
        )
    if not params.get("scope", "").strip():
        raise _PageError(400, "invalid_request", "Missing required parameter: scope")
    scopes = normalize_scopes(params["scope"])
    invalid = [s for s in scopes if s not in SCOPE_DESCRIPTIONS]
    if invalid:
        raise _PageError(400, "invalid_scope", f"Some requested scopes were invalid. {{invalid={invalid}}}")
    if params.get("access_type", "online") not in ("online", "offline"):
        raise _PageError(400, "invalid_request", f"Invalid access_type: {params['access_type']}")
    method = params.get("code_challenge_method")
    if method is not None and method not in ("plain", "S256"):
        raise _PageError(400, "invalid_request", f"Invalid code_challenge_method value: {method}")
    if method is not None and not params.get("code_challenge"):
        raise _PageError(400, "invalid_request", "Missing required parameter: code_challenge")
    if not state.users:
        raise _PageError(400, "invalid_request", "The simulator has no users: seed one first")
    return client, scopes


def _pick_user(state: SimState, params: dict[str, str]) -> User:
    for key in ("user", "login_hint"):
        if params.get(key) and state.user(params[key]):
            found = state.user(params[key])
            assert found is not None
            return found
    return next(iter(state.users.values()))


def _valid_refresh_exists(state: SimState, user: str, client_id: str) -> bool:
    return any(
        not rt.revoked and rt.user.lower() == user.lower() and rt.client_id == client_id
        for rt in state.refresh_tokens.values()
    )


def _approve(state: SimState, params: dict[str, str], scopes: list[str], user: User) -> RedirectResponse:
    client_id = params["client_id"]
    key = (user.email.lower(), client_id)
    previous = state.grants.get(key, set())
    granted = list(scopes)
    if params.get("include_granted_scopes", "").lower() == "true":
        granted += [s for s in sorted(previous) if s not in granted]
    state.grants[key] = previous | set(scopes)
    offline = params.get("access_type") == "offline"
    prompts = params.get("prompt", "").split()
    code = AuthCode(
        code="4/0Asim" + secrets.token_urlsafe(40),
        client_id=client_id,
        redirect_uri=params["redirect_uri"],
        user=user.email,
        scopes=granted,
        nonce=params.get("nonce"),
        code_challenge=params.get("code_challenge"),
        code_challenge_method=params.get("code_challenge_method")
        or ("plain" if params.get("code_challenge") else None),
        offline=offline,
        issue_refresh=offline
        and ("consent" in prompts or not _valid_refresh_exists(state, user.email, client_id)),
        expires_at=state.now() + CODE_TTL,
    )
    state.codes[code.code] = code
    out = {}
    if "state" in params:
        out["state"] = params["state"]
    out.update({"code": code.code, "scope": " ".join(granted), "authuser": "0", "prompt": "consent"})
    return _redirect(params["redirect_uri"], out)


def _deny(params: dict[str, str]) -> RedirectResponse:
    out = {"error": "access_denied"}
    if "state" in params:
        out["state"] = params["state"]
    return _redirect(params["redirect_uri"], out)


def _consent_page(state: SimState, client: Client, pending: PendingAuth, user: User) -> HTMLResponse:
    previous = state.grants.get((user.email.lower(), client.client_id), set())
    items = "\n".join(
        f'<li class="scope" data-scope="{html.escape(s)}"><code>{html.escape(s)}</code> &mdash; '
        f"{html.escape(SCOPE_DESCRIPTIONS[s])}{' (already granted)' if s in previous else ''}</li>"
        for s in pending.scopes
    )
    options = "".join(
        f'<option value="{html.escape(u.email)}"{" selected" if u.email == user.email else ""}>'
        f"{html.escape(u.name)} &lt;{html.escape(u.email)}&gt;</option>"
        for u in state.users.values()
    )
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in - Google Accounts (inboxlink simulator)</title></head>
<body>
<h1>{html.escape(client.name)} wants to access your Google Account</h1>
<form id="consent" method="post" action="/o/oauth2/v2/consent">
<input type="hidden" name="request_id" value="{html.escape(pending.id)}">
<p><label>Account <select name="user">{options}</select></label></p>
<p>This will allow {html.escape(client.name)} to:</p>
<ul id="scopes">
{items}
</ul>
<button type="submit" name="decision" value="deny">Cancel</button>
<button type="submit" name="decision" value="allow">Allow</button>
</form>
</body></html>"""
    return HTMLResponse(body)


async def authorize(request: Request) -> Response:
    state = _sim(request)
    params = dict(request.query_params)
    if request.method == "POST":
        params.update(await _form(request))
    with state.lock:
        try:
            client, scopes = _validate_auth_request(state, params)
        except _PageError as exc:
            return exc.response
        if params.get("response_type") != "code":
            return _redirect(
                params["redirect_uri"], {"error": "unsupported_response_type", **_state_of(params)}
            )
        user = _pick_user(state, params)
        decision = params.get("decision")
        if decision == "allow":
            return _approve(state, params, scopes, user)
        if decision == "deny":
            return _deny(params)
        if "none" in params.get("prompt", "").split():
            granted = state.grants.get((user.email.lower(), client.client_id), set())
            if set(scopes) <= granted:
                return _approve(state, params, scopes, user)
            return _redirect(params["redirect_uri"], {"error": "consent_required", **_state_of(params)})
        pending = PendingAuth(secrets.token_urlsafe(16), params, scopes, state.now() + PENDING_TTL)
        state.pending_auth[pending.id] = pending
        return _consent_page(state, client, pending, user)


def _state_of(params: dict[str, str]) -> dict[str, str]:
    return {"state": params["state"]} if "state" in params else {}


async def consent(request: Request) -> Response:
    state = _sim(request)
    form = await _form(request)
    with state.lock:
        pending = state.pending_auth.pop(form.get("request_id", ""), None)
        if pending is None or pending.expires_at < state.now():
            return _error_page(400, "invalid_request", "Unknown or expired consent request.")
        params = dict(pending.params)
        if form.get("user"):
            params["user"] = form["user"]
        user = _pick_user(state, params)
        if form.get("decision") == "allow":
            return _approve(state, params, pending.scopes, user)
        return _deny(params)


# --- token endpoint ------------------------------------------------------------------------


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    auth = request.headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip()).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        cid, _, secret = decoded.partition(":")
        return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
    return form.get("client_id"), form.get("client_secret")


def _take_token_fault(state: SimState, grant_type: str, user: str | None) -> TokenFault | None:
    for fault in state.token_faults:
        if fault.count <= 0:
            continue
        if fault.grant_type and fault.grant_type != grant_type:
            continue
        if fault.user and (user or "").lower() != fault.user.lower():
            continue
        fault.count -= 1
        state.token_faults = [f for f in state.token_faults if f.count > 0]
        return fault
    return None


def issue_tokens(
    state: SimState,
    user: User,
    client_id: str,
    scopes: list[str],
    *,
    refresh: bool,
    nonce: str | None = None,
    base_url: str = "",
    refresh_token: str | None = None,
) -> dict[str, Any]:
    """Mint an access token (+ refresh token, + ID token when ``openid``) and the token response."""
    access = AccessToken(
        token="ya29.a0Sim" + secrets.token_urlsafe(48),
        user=user.email,
        client_id=client_id,
        scopes=list(scopes),
        expires_at=state.now() + state.access_token_ttl,
        refresh_token=refresh_token,
    )
    out: dict[str, Any] = {"access_token": access.token, "expires_in": max(state.access_token_ttl - 1, 0)}
    if refresh:
        rt = RefreshToken("1//0gSim" + secrets.token_urlsafe(64), user.email, client_id, list(scopes))
        state.refresh_tokens[rt.token] = rt
        access.refresh_token = rt.token
        out["refresh_token"] = rt.token
    state.access_tokens[access.token] = access
    out["scope"] = " ".join(scopes)
    out["token_type"] = "Bearer"
    if "openid" in scopes:
        now = int(state.now())
        claims: dict[str, Any] = {
            "iss": state.base_url or base_url,
            "azp": client_id,
            "aud": client_id,
            "sub": user.sub,
        }
        if AUTH + "userinfo.email" in scopes:
            claims["email"] = user.email
            claims["email_verified"] = True
        claims["at_hash"] = at_hash(access.token)
        if nonce:
            claims["nonce"] = nonce
        if AUTH + "userinfo.profile" in scopes:
            given, _, family = user.name.partition(" ")
            claims.update({"name": user.name, "picture": user.picture, "given_name": given})
            if family:
                claims["family_name"] = family
        claims.update({"iat": now, "exp": now + 3600})
        out["id_token"] = state.signing_key.sign_jwt(claims)
    return out


def _verify_pkce(code: AuthCode, verifier: str | None) -> None:
    if code.code_challenge is None:
        return
    if not verifier:
        raise OAuthError("invalid_grant", "Missing code verifier.")
    if code.code_challenge_method == "S256":
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    else:
        computed = verifier
    if not secrets.compare_digest(computed, code.code_challenge):
        raise OAuthError("invalid_grant", "Invalid code verifier.")


async def token(request: Request) -> Response:
    state = _sim(request)
    form = await _form(request)
    with state.lock:
        try:
            return _json(_token(state, request, form), 200, NO_STORE)
        except OAuthError as err:
            return _oauth_error(err)


def _token(state: SimState, request: Request, form: dict[str, str]) -> dict[str, Any]:
    client_id, secret = _client_credentials(request, form)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "Missing required parameter: grant_type")
    client = state.clients.get(client_id or "")
    if client is None:
        raise OAuthError("invalid_client", "The OAuth client was not found.", 401)
    if client.client_secret is not None and secret != client.client_secret:
        raise OAuthError("invalid_client", "Unauthorized", 401)
    base = issuer(state, request)
    if grant_type == "authorization_code":
        code = state.codes.get(form.get("code", ""))
        fault = _take_token_fault(state, grant_type, code.user if code else None)
        if fault:
            raise OAuthError(fault.error, fault.description, fault.status)
        if not form.get("code"):
            raise OAuthError("invalid_request", "Missing required parameter: code")
        if code is None:
            raise OAuthError("invalid_grant", "Malformed auth code.")
        if code.used or code.expires_at < state.now() or code.client_id != client.client_id:
            code.used = True
            raise OAuthError("invalid_grant", "Bad Request")
        if form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("redirect_uri_mismatch", "Bad Request")
        _verify_pkce(code, form.get("code_verifier"))
        code.used = True
        user = state.user(code.user)
        if user is None:
            raise OAuthError("invalid_grant", "Account has been deleted")
        return issue_tokens(
            state,
            user,
            client.client_id,
            code.scopes,
            refresh=code.issue_refresh,
            nonce=code.nonce,
            base_url=base,
        )
    if grant_type == "refresh_token":
        rt = state.refresh_tokens.get(form.get("refresh_token", ""))
        fault = _take_token_fault(state, grant_type, rt.user if rt else None)
        if fault:
            raise OAuthError(fault.error, fault.description, fault.status)
        if not form.get("refresh_token"):
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        if rt is None or rt.revoked:
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        if rt.client_id != client.client_id:
            raise OAuthError("unauthorized_client", "Unauthorized")
        user = state.user(rt.user)
        if user is None:
            raise OAuthError("invalid_grant", "Token has been expired or revoked.")
        scopes = rt.scopes
        if form.get("scope"):
            wanted = normalize_scopes(form["scope"])
            if not set(wanted) <= set(rt.scopes):
                raise OAuthError("invalid_scope", "Bad Request")
            scopes = wanted
        return issue_tokens(
            state, user, client.client_id, scopes, refresh=False, base_url=base, refresh_token=rt.token
        )
    raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")


# --- revoke, userinfo, tokeninfo -----------------------------------------------------------


def revoke_grant(state: SimState, user: str, client_id: str) -> None:
    for at in state.access_tokens.values():
        if at.user.lower() == user.lower() and at.client_id == client_id:
            at.revoked = True
    for rt in state.refresh_tokens.values():
        if rt.user.lower() == user.lower() and rt.client_id == client_id:
            rt.revoked = True
    state.grants.pop((user.lower(), client_id), None)


async def revoke(request: Request) -> Response:
    state = _sim(request)
    form = await _form(request)
    value = request.query_params.get("token") or form.get("token", "")
    with state.lock:
        found: AccessToken | RefreshToken | None = state.access_tokens.get(value) or state.refresh_tokens.get(
            value
        )
        if (
            found is None
            or found.revoked
            or (isinstance(found, AccessToken) and found.expires_at <= state.now())
        ):
            return _oauth_error(OAuthError("invalid_token", "Token expired or revoked"))
        revoke_grant(state, found.user, found.client_id)
    return Response(b"", status_code=200, media_type="application/json; charset=utf-8")


async def userinfo(request: Request) -> Response:
    state = _sim(request)
    with state.lock:
        at = valid_access_token(
            state, bearer_token(dict(request.headers), list(request.query_params.multi_items()))
        )
        if at is None:
            return _json(
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                401,
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        user = state.users[at.user.lower()]
        out: dict[str, Any] = {"sub": user.sub}
        if AUTH + "userinfo.profile" in at.scopes:
            given, _, family = user.name.partition(" ")
            out.update({"name": user.name, "given_name": given, "picture": user.picture})
            if family:
                out["family_name"] = family
        if AUTH + "userinfo.email" in at.scopes:
            out.update({"email": user.email, "email_verified": True})
        return _json(out)


async def tokeninfo(request: Request) -> Response:
    state = _sim(request)
    params = dict(request.query_params)
    if request.method == "POST":
        params.update(await _form(request))
    with state.lock:
        if "access_token" in params:
            at = valid_access_token(state, params["access_token"])
            if at is not None:
                user = state.users[at.user.lower()]
                out = {
                    "azp": at.client_id,
                    "aud": at.client_id,
                    "sub": user.sub,
                    "scope": " ".join(at.scopes),
                    "exp": str(int(at.expires_at)),
                    "expires_in": str(max(int(at.expires_at - state.now()), 0)),
                    "access_type": "offline" if at.refresh_token else "online",
                }
                if AUTH + "userinfo.email" in at.scopes:
                    out.update({"email": user.email, "email_verified": "true"})
                return _json(out)
        elif "id_token" in params:
            claims = _decode_own_jwt(state, params["id_token"])
            if claims is not None:
                return _json({k: v if isinstance(v, str) else json.dumps(v) for k, v in claims.items()})
    return _oauth_error(OAuthError("invalid_token", "Invalid Value"))


def _decode_own_jwt(state: SimState, token: str) -> dict[str, Any] | None:
    claims = state.signing_key.verify_jwt(token)
    if claims is None or claims.get("exp", 0) < state.now():
        return None
    return claims
