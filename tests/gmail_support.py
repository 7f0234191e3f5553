"""Gmail test support: the Google simulator, and a real `TokenSource` that gets its tokens through
the simulator's OAuth endpoints the way a browser and our callback would (authorization request,
consent form POSTed with decision=allow, code exchange with PKCE, refresh on demand).

It is deliberately small and separate from `inboxlink.auth.oauth` (the product's token source):
the provider tests need tokens, not the product's storage of them."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from inboxlink.errors import AuthError, TransientError
from inboxlink.providers.base import TokenSource
from inboxlink.providers.gmail.client import QuotaBudget
from inboxlink.providers.gmail.provider import GmailConfig, GmailProvider
from inboxlink_sim.google import GoogleSim

AUTH = "https://www.googleapis.com/auth/"
READ_WRITE_SCOPES = (
    "openid",
    "email",
    AUTH + "gmail.modify",
    AUTH + "gmail.send",
    AUTH + "gmail.compose",
    AUTH + "gmail.labels",
)
METADATA_SCOPES = ("openid", "email", AUTH + "gmail.metadata")
REDIRECT_URI = "http://127.0.0.1:8025/oauth/google/callback"


@contextmanager
def running_sim(*, validate: bool = True) -> Iterator[GoogleSim]:
    """An in-process simulator; `validate` checks every response against the discovery document."""
    with GoogleSim(validate_responses=validate) as sim:
        yield sim


class SimTokenSource:
    """OAuth 2.0 authorization-code + PKCE against the simulator; refreshes before expiry and when
    asked (`force_refresh=True`). `invalid_grant` becomes `AuthError` (without the token in it)."""

    def __init__(self, sim: GoogleSim, *, refresh_token: str, scopes: Sequence[str]) -> None:
        self.sim = sim
        self._refresh_token = refresh_token
        self._access: str | None = None
        self._expires_at = 0.0
        self._scopes = frozenset(scopes)
        self._lock = threading.Lock()
        self.refreshes = 0

    @classmethod
    def authorize(cls, sim: GoogleSim, email: str, scopes: Sequence[str]) -> SimTokenSource:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        state = secrets.token_urlsafe(12)
        with httpx.Client(base_url=sim.base_url, timeout=10) as http:
            page = http.get(
                "/o/oauth2/v2/auth",
                params={
                    "client_id": sim.client_id,
                    "redirect_uri": REDIRECT_URI,
                    "response_type": "code",
                    "scope": " ".join(scopes),
                    "state": state,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "access_type": "offline",
                    "prompt": "consent",
                    "login_hint": email,
                },
            )
            page.raise_for_status()
            found = re.search(r'name="request_id" value="([^"]+)"', page.text)
            assert found, "the consent page has no request id"
            decision = http.post(
                "/o/oauth2/v2/consent",
                data={"request_id": found.group(1), "user": email, "decision": "allow"},
            )
            assert decision.status_code == 302, decision.text
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(decision.headers["location"]).query))
            assert query.get("state") == state and "code" in query, query
            tokens = http.post(
                "/token",
                data={
                    "grant_type": "authorization_code",
                    "code": query["code"],
                    "redirect_uri": REDIRECT_URI,
                    "code_verifier": verifier,
                    "client_id": sim.client_id,
                    "client_secret": sim.client_secret or "",
                },
            )
            tokens.raise_for_status()
            data = tokens.json()
        source = cls(sim, refresh_token=data["refresh_token"], scopes=str(data["scope"]).split())
        source._access = data["access_token"]
        source._expires_at = time.monotonic() + float(data["expires_in"])
        return source

    @property
    def granted_scopes(self) -> frozenset[str]:
        return self._scopes

    def access_token(self, *, force_refresh: bool = False) -> str:
        with self._lock:
            # refresh a minute early: a token about to expire may expire in flight
            if force_refresh or self._access is None or time.monotonic() > self._expires_at - 60:
                self._refresh()
            assert self._access is not None
            return self._access

    def _refresh(self) -> None:
        self.refreshes += 1
        try:
            resp = httpx.post(
                self.sim.token_uri,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self._refresh_token,
                    "client_id": self.sim.client_id,
                    "client_secret": self.sim.client_secret or "",
                },
                timeout=10,
            )
        except httpx.TransportError as exc:
            raise TransientError(f"cannot reach the token endpoint: {type(exc).__name__}") from exc
        if resp.status_code == 400 and resp.json().get("error") == "invalid_grant":
            raise AuthError("Google refused the refresh token (invalid_grant): pair the account again")
        if resp.status_code >= 400:
            raise TransientError(f"token endpoint answered {resp.status_code}")
        data = resp.json()
        self._access = data["access_token"]
        self._expires_at = time.monotonic() + float(data["expires_in"])
        if data.get("scope"):
            self._scopes = frozenset(str(data["scope"]).split())


class StaticTokenSource:
    """A token source for a server that cannot be reached (nothing to refresh against)."""

    def __init__(self, token: str, scopes: Sequence[str] = READ_WRITE_SCOPES) -> None:
        self.token = token
        self._scopes = frozenset(scopes)

    @property
    def granted_scopes(self) -> frozenset[str]:
        return self._scopes

    def access_token(self, *, force_refresh: bool = False) -> str:
        return self.token


@dataclass
class GmailAccount:
    """A simulated user with consented tokens, and providers for it."""

    sim: GoogleSim
    email: str
    tokens: SimTokenSource

    @classmethod
    def create(
        cls, sim: GoogleSim, *, messages: int = 0, seed: int = 0, scopes: Sequence[str] = READ_WRITE_SCOPES
    ) -> GmailAccount:
        email = f"user.{secrets.token_hex(4)}@gmail.test"
        sim.add_user(email, messages=messages, seed=seed)
        return cls(sim, email, SimTokenSource.authorize(sim, email, scopes))

    def provider(
        self, *, tokens: TokenSource | None = None, budget: QuotaBudget | None = None
    ) -> GmailProvider:
        return GmailProvider(
            GmailConfig(email=self.email, api_base=self.sim.base_url),
            tokens or self.tokens,
            budget=budget or QuotaBudget(units_per_second=1e6, burst=1e6),
            timeout=10,
        )
