"""Google OAuth 2.0 / OpenID Connect: the pairing flow, and the token source Gmail adapters use.

Pairing is one browser round trip; nothing is stored before the mailbox's identity is verified::

    start(features, account?)                               GoogleOAuth.authorization_url
        state = a sealed flow {id, nonce, PKCE verifier, features, account, scopes, expiry}
        --302--> Google's consent page: the features' scopes + openid email profile,
                 access_type=offline, prompt=consent, include_granted_scopes=true, S256 challenge
    callback(code | error, state)                           GoogleOAuth.finish
        open the state: our key decrypts it, not expired (10 min), never opened   else OAuthStateInvalid
        error=access_denied                                                       -> ConsentDenied
        exchange the code with the PKCE verifier                                  -> TokenSet
        verify the id_token: RS256 signature by a JWKS key, iss, aud, azp, exp, nonce, at_hash,
        email_verified                                                            -> GoogleIdentity
    `AccountService` then creates the account or re-pairs the one bound in the state (same Google
    account required: wrong_account otherwise, nothing changed).

Token source (what an adapter calls before each request)::

    access token valid for more than `skew` seconds                  -> use it
    about to expire, or force_refresh (after a 401)                  -> refresh_token grant
        -> save(new tokens, previous) at once -> use it
        invalid_grant (revoked, password changed, unused 6 months)   -> AuthError: account -> auth_error
        network trouble, 5xx, 429                                    -> TransientError: back off
        invalid_client                                               -> ConfigError: the operator's client

Why httpx and joserfc, not authlib: the protocol steps are four form posts and a redirect, which
httpx says plainly; what must not be hand-written is the JWS/JWKS verification, and joserfc (by
authlib's author, which authlib's own `jose` module now defers to) does that, is typed for
mypy --strict and needs only `cryptography`. authlib's OAuth2Client would add an untyped layer
whose auto-refresh we would have to bypass anyway: the refresh margin, saving rotated tokens at once
and the mapping of `invalid_grant` to `AuthError` are ours.

The state carries the PKCE verifier and nonce encrypted under the credential key (`SecretBox`,
Fernet: authenticated encryption), so any replica can finish a flow another started. Single use is
enforced per process (`_seen`); a replay on another replica still fails at Google, which accepts an
authorization code once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inboxlink.auth.secrets import SecretBox, register_secret, unregister_secret
from inboxlink.config import Settings
from inboxlink.errors import (
    AuthError,
    ConfigError,
    ConsentDenied,
    InboxlinkError,
    OAuthFlowError,
    OAuthStateInvalid,
    ProviderError,
    RateLimited,
    TransientError,
)

if TYPE_CHECKING:
    import httpx
    from joserfc.jwk import KeySet

# httpx and joserfc are imported where they are used: together they were ~0.13 s of every CLI
# start (`python -X importtime -c "import inboxlink.cli"`), and an IMAP sync needs neither.

CALLBACK_PATH = "/oauth/google/callback"
STATE_TTL_SECONDS = 600
DISCOVERY_TTL_SECONDS = 3600
ID_TOKEN_LEEWAY_SECONDS = 120
REFRESH_SKEW_SECONDS = 300
_STATE_PURPOSE = "google-oauth-state"
_CLIENT_SETTINGS = "INBOXLINK_GOOGLE_CLIENT_ID and INBOXLINK_GOOGLE_CLIENT_SECRET"

Clock = Callable[[], float]


@dataclass(frozen=True)
class TokenSet:
    """What is stored (encrypted) for a Google account."""

    access_token: str
    refresh_token: str
    expires_at: float  # epoch seconds
    scopes: tuple[str, ...]

    def to_secret(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "scopes": list(self.scopes),
        }

    @classmethod
    def from_secret(cls, data: Mapping[str, Any]) -> TokenSet:
        return cls(
            access_token=str(data.get("access_token") or ""),
            refresh_token=str(data.get("refresh_token") or ""),
            expires_at=float(data.get("expires_at") or 0),
            scopes=tuple(str(s) for s in data.get("scopes") or ()),
        )


@dataclass(frozen=True)
class GoogleIdentity:
    sub: str
    email: str
    name: str | None


@dataclass(frozen=True)
class Flow:
    """A pairing flow between start and callback (travels sealed in `state`)."""

    id: str
    nonce: str
    verifier: str
    features: tuple[str, ...]
    account_id: str | None
    scopes: tuple[str, ...]  # what was asked for
    expires_at: float


@dataclass(frozen=True)
class Grant:
    """A finished flow: who consented, and the tokens."""

    flow: Flow
    identity: GoogleIdentity
    tokens: TokenSet


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def code_challenge(verifier: str) -> str:
    """PKCE S256 (RFC 7636 §4.2)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class GoogleOAuth:
    """Google's OAuth endpoints for one process: builds consent URLs, finishes flows, refreshes.

    Discovery and JWKS documents are cached (an unknown key id refetches the JWKS once: Google
    rotates its keys). Holds no connection: each call opens a short-lived httpx client."""

    def __init__(self, settings: Settings, box: SecretBox, *, clock: Clock = time.time) -> None:
        self.settings = settings
        self._box = box
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints: tuple[float, Endpoints] | None = None
        self._jwks: KeySet | None = None
        self._seen: dict[str, float] = {}  # flow id -> expiry: single-use states
        if settings.google_client_secret is not None:
            register_secret(settings.google_client_secret.get_secret_value())

    # -- configuration ---------------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        if not self.settings.google_client_id or self.settings.google_client_secret is None:
            raise ConfigError(
                "Google pairing is not configured: set INBOXLINK_GOOGLE_CLIENT_ID and "
                "INBOXLINK_GOOGLE_CLIENT_SECRET to the OAuth client of your Google Cloud project "
                f"(redirect URI {self.redirect_uri}), or try `inboxlink serve --demo`",
                setting=_CLIENT_SETTINGS,
            )
        return self.settings.google_client_id

    def _client_secret(self) -> str:
        secret = self.settings.google_client_secret
        return secret.get_secret_value() if secret is not None else ""

    @property
    def redirect_uri(self) -> str:
        return self.settings.public_url.rstrip("/") + CALLBACK_PATH

    def endpoints(self) -> Endpoints:
        with self._lock:
            cached = self._endpoints
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        url = self.settings.google_discovery_url
        doc = self._get_json(url, "Google's OpenID configuration")
        try:
            found = Endpoints(
                issuer=str(doc["issuer"]),
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
            )
        except KeyError as exc:
            raise ConfigError(
                f"{url} is not an OpenID configuration (no {exc.args[0]}): "
                "fix INBOXLINK_GOOGLE_DISCOVERY_URL",
                setting="INBOXLINK_GOOGLE_DISCOVERY_URL",
            ) from None
        with self._lock:
            self._endpoints = (self._clock() + DISCOVERY_TTL_SECONDS, found)
        return found

    # -- start -----------------------------------------------------------------------------------
    def authorization_url(
        self,
        scopes: Sequence[str],
        features: Sequence[str],
        account_id: str | None,
        *,
        login_hint: str | None,
    ) -> str:
        """The consent page URL for `scopes` (identity scopes included by the caller)."""
        client_id = self.client_id
        flow = Flow(
            id=secrets.token_urlsafe(16),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),  # 64 characters of [A-Za-z0-9_-]: RFC 7636 §4.1
            features=tuple(features),
            account_id=account_id,
            scopes=tuple(scopes),
            expires_at=self._clock() + STATE_TTL_SECONDS,
        )
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(scopes),
            "state": self._seal(flow),
            "nonce": flow.nonce,
            "code_challenge": code_challenge(flow.verifier),
            "code_challenge_method": "S256",
            "access_type": "offline",  # a refresh token: keep syncing without the user
            "prompt": "consent",  # ... every time, also when the user consented before
            "include_granted_scopes": "true",  # incremental consent: the token keeps earlier grants
        }
        if login_hint:
            params["login_hint"] = login_hint
        endpoint = self.endpoints().authorization_endpoint
        sep = "&" if urllib.parse.urlsplit(endpoint).query else "?"
        return endpoint + sep + urllib.parse.urlencode(params)

    def _seal(self, flow: Flow) -> str:
        return self._box.encrypt(
            {
                "p": _STATE_PURPOSE,
                "id": flow.id,
                "n": flow.nonce,
                "v": flow.verifier,
                "f": list(flow.features),
                "a": flow.account_id,
                "s": list(flow.scopes),
                "e": flow.expires_at,
            }
        )

    def open_state(self, state: str) -> Flow:
        """The flow sealed in `state`, once: forged, expired or reused states are refused."""
        again = "start pairing again"
        try:
            data = self._box.decrypt_json(state)
        except (InboxlinkError, TypeError):
            raise OAuthStateInvalid(f"the sign-in state is not one of ours; {again}") from None
        if data.get("p") != _STATE_PURPOSE:
            raise OAuthStateInvalid(f"the sign-in state is not one of ours; {again}")
        flow = Flow(
            id=str(data["id"]),
            nonce=str(data["n"]),
            verifier=str(data["v"]),
            features=tuple(str(f) for f in data["f"]),
            account_id=None if data.get("a") is None else str(data["a"]),
            scopes=tuple(str(s) for s in data["s"]),
            expires_at=float(data["e"]),
        )
        now = self._clock()
        if flow.expires_at < now:
            raise OAuthStateInvalid(f"the sign-in took more than {STATE_TTL_SECONDS // 60} minutes; {again}")
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v >= now}
            if flow.id in self._seen:
                raise OAuthStateInvalid(f"this sign-in was already completed; {again}")
            self._seen[flow.id] = flow.expires_at
        return flow

    # -- callback --------------------------------------------------------------------------------
    def finish(self, params: Mapping[str, str]) -> Grant:
        """Verify the callback's `params` (query of the redirect) and exchange the code."""
        flow = self.open_state(params.get("state") or "")
        if params.get("error"):
            error = params["error"]
            if error == "access_denied":
                raise ConsentDenied("you declined on Google's consent page: nothing was paired")
            raise OAuthFlowError(f"Google ended the sign-in with {error}; start pairing again", error=error)
        code = params.get("code")
        if not code:
            raise OAuthFlowError("the callback carries neither a code nor an error; start pairing again")
        body = self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": flow.verifier,
            },
            during="exchanging the authorization code",
        )
        tokens = self._token_set(body, previous_refresh=None, asked=flow.scopes)
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise OAuthFlowError("Google returned no id_token (was `openid` asked for?)")
        identity = self.verify_id_token(id_token, nonce=flow.nonce, access_token=tokens.access_token)
        return Grant(flow, identity, tokens)

    def verify_id_token(self, id_token: str, *, nonce: str, access_token: str | None) -> GoogleIdentity:
        """Identity from an id_token whose signature, issuer, audience, expiry and nonce check out."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        endpoints = self.endpoints()
        try:
            token = jwt.decode(id_token, self._keys(endpoints, fresh=False), algorithms=["RS256"])
        except (JoseError, ValueError):
            try:  # perhaps Google rotated its keys since we fetched them
                token = jwt.decode(id_token, self._keys(endpoints, fresh=True), algorithms=["RS256"])
            except (JoseError, ValueError) as exc:
                raise OAuthFlowError(
                    f"the id_token's signature does not verify with {endpoints.jwks_uri} "
                    f"({type(exc).__name__}); start pairing again"
                ) from None
        issuers = [endpoints.issuer]
        if endpoints.issuer == "https://accounts.google.com":
            issuers.append("accounts.google.com")  # Google documents both forms
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=ID_TOKEN_LEEWAY_SECONDS,
            iss={"essential": True, "values": issuers},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": nonce},
            email={"essential": True},
        )
        claims = token.claims
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise OAuthFlowError(f"the id_token was refused: {exc}; start pairing again") from None
        if claims.get("azp") not in (None, self.client_id):
            raise OAuthFlowError("the id_token was issued to another client (azp); start pairing again")
        if access_token and "at_hash" in claims:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            if claims["at_hash"] != _b64url(digest[: len(digest) // 2]):
                raise OAuthFlowError("the id_token does not match the access token (at_hash)")
        if claims.get("email_verified") not in (True, "true"):
            raise OAuthFlowError(
                f"Google has not verified the address {claims['email']}; it cannot be paired"
            )
        name = claims.get("name")
        return GoogleIdentity(
            sub=str(claims["sub"]), email=str(claims["email"]), name=str(name) if name else None
        )

    def _keys(self, endpoints: Endpoints, *, fresh: bool) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        with self._lock:
            cached = self._jwks
        if cached is not None and not fresh:
            return cached
        doc = self._get_json(endpoints.jwks_uri, "Google's signing keys (JWKS)")
        try:
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"{endpoints.jwks_uri} is not a JWK set ({type(exc).__name__})") from None
        with self._lock:
            self._jwks = keys
        return keys

    # -- refresh ---------------------------------------------------------------------------------
    def refresh(self, tokens: TokenSet) -> TokenSet:
        """New tokens from `tokens.refresh_token`; `AuthError` when Google refuses the grant."""
        body = self._token_request(
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
            during="refreshing the access token",
        )
        return self._token_set(body, previous_refresh=tokens.refresh_token, asked=tokens.scopes)

    def token_source(
        self,
        tokens: TokenSet,
        save: Callable[[TokenSet, TokenSet], None],
        *,
        skew: float = REFRESH_SKEW_SECONDS,
    ) -> GoogleTokenSource:
        return GoogleTokenSource(self, tokens, save, skew=skew, clock=self._clock)

    # -- wire ------------------------------------------------------------------------------------
    def _token_set(
        self, body: Mapping[str, Any], *, previous_refresh: str | None, asked: Sequence[str]
    ) -> TokenSet:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProviderError("Google's token endpoint answered without an access_token")
        refresh = body.get("refresh_token") or previous_refresh or ""
        scope = body.get("scope")
        scopes = str(scope).split() if scope else list(asked)  # RFC 6749 §5.1: omitted = as asked
        expires_in = float(body.get("expires_in") or 3600)
        register_secret(access)
        if refresh:
            register_secret(str(refresh))
        return TokenSet(access, str(refresh), self._clock() + expires_in, tuple(dict.fromkeys(scopes)))

    def _token_request(self, form: dict[str, str], *, during: str) -> dict[str, Any]:
        import httpx

        url = self.endpoints().token_endpoint
        form = {**form, "client_id": self.client_id, "client_secret": self._client_secret()}
        try:
            with httpx.Client(timeout=self.settings.connect_timeout_seconds) as client:
                response = client.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TransientError(
                f"cannot reach Google's token endpoint {_host(url)} while {during}: {type(exc).__name__}"
            ) from exc
        body = _json_object(response)
        if response.status_code == 200:
            return body
        if response.status_code == 429:
            raise RateLimited(
                f"Google's token endpoint is rate limiting ({during})",
                retry_after=_retry_after(response),
            )
        if response.status_code >= 500:
            raise TransientError(
                f"Google's token endpoint failed with HTTP {response.status_code} ({during})"
            )
        error = str(body.get("error") or f"HTTP {response.status_code}")
        description = str(body.get("error_description") or "").strip()
        said = f"{error}: {description}" if description else error
        if error in ("invalid_client", "unauthorized_client"):
            raise ConfigError(
                f"Google refused this service's OAuth client ({said}) while {during}: "
                f"check {_CLIENT_SETTINGS}",
                setting=_CLIENT_SETTINGS,
            )
        if error == "invalid_grant":
            if form["grant_type"] == "refresh_token":
                raise AuthError(
                    f"Google revoked inboxlink's access ({said}): the user removed it, changed the "
                    "password, or it went unused; pair the account again",
                    reason=error,
                )
            raise OAuthFlowError(f"Google refused the authorization code ({said}); start pairing again")
        raise ProviderError(f"Google's token endpoint refused the request ({said}) while {during}")

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        import httpx

        try:
            with httpx.Client(timeout=self.settings.connect_timeout_seconds) as client:
                response = client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TransientError(f"cannot fetch {what} from {_host(url)}: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"{what} at {url}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ProviderError(f"{what} at {url}: HTTP {response.status_code}")
        return _json_object(response)


class GoogleTokenSource:
    """`providers.base.TokenSource` for one Google account.

    Refreshes `skew` seconds before expiry (clocks drift; a request takes time), and once when
    asked with `force_refresh=True` (an adapter got a 401). Rotated tokens go to `save(new,
    previous)` before they are used, so a crash right after never loses a refresh token. Thread-safe:
    concurrent callers share one refresh."""

    def __init__(
        self,
        oauth: GoogleOAuth,
        tokens: TokenSet,
        save: Callable[[TokenSet, TokenSet], None],
        *,
        skew: float = REFRESH_SKEW_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        self._oauth = oauth
        self._tokens = tokens
        self._save = save
        self._skew = skew
        self._clock = clock
        self._lock = threading.Lock()
        self.refreshes = 0

    def access_token(self, *, force_refresh: bool = False) -> str:
        with self._lock:
            current = self._tokens
            if force_refresh or not current.access_token or current.expires_at - self._skew <= self._clock():
                if not current.refresh_token:
                    raise AuthError("no refresh token is stored for this account; pair it again")
                fresh = self._oauth.refresh(current)
                self._save(fresh, current)
                self._tokens = fresh
                self.refreshes += 1
                if fresh.access_token != current.access_token:
                    unregister_secret(current.access_token)
            return self._tokens.access_token

    @property
    def granted_scopes(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._tokens.scopes)

    @property
    def tokens(self) -> TokenSet:
        with self._lock:
            return self._tokens


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
