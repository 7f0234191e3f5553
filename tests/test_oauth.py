"""Google OAuth pairing and permissions, through the HTTP API, against the Google simulator.

The simulator (a real HTTP server in a thread) is Google: consent page, PKCE, RS256 id_tokens with
a JWKS, refresh, revocation. The browser is played by hand: fetch the consent page, post the form.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from inboxlink.api.app import create_app
from inboxlink.auth.oauth import Flow, GoogleOAuth, TokenSet, code_challenge
from inboxlink.auth.scopes import ScopeCatalog, catalog
from inboxlink.auth.secrets import load_secret_box
from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.errors import AuthError, OAuthFlowError, OAuthStateInvalid, TransientError
from inboxlink.runtime import Runtime
from inboxlink.store.schema import account_transitions, accounts
from inboxlink.sync.state import transition
from inboxlink_sim.google import GoogleSim
from inboxlink_sim.google.signing import SigningKey

AUTH = "https://www.googleapis.com/auth/"
ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
def sim() -> Iterator[GoogleSim]:
    with GoogleSim(seed=3) as server:
        server.add_user(ALICE, "Alice Liddell", messages=3, seed=1)
        server.add_user(BOB, "Bob Builder")
        yield server


def settings_for(sim: GoogleSim, home: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "public_url": "http://testserver",
        "google_client_id": sim.client_id,
        "google_client_secret": sim.client_secret,
        "google_discovery_url": sim.base_url + "/.well-known/openid-configuration",
        "google_api_base": sim.base_url,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def settings(sim: GoogleSim, tmp_path: Path) -> Settings:
    return settings_for(sim, tmp_path / "home")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def start(client: TestClient, **params: str) -> tuple[str, dict[str, str]]:
    response = client.get("/oauth/google/start", params=params, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    return location, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def consent(location: str, decision: str = "allow", user: str | None = None) -> str:
    """Play the browser on the simulator's consent page; returns the callback URL it redirects to."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        page = browser.get(location)
        assert page.status_code == 200, page.text
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert request_id, page.text
        form = {"request_id": request_id.group(1), "decision": decision}
        if user:
            form["user"] = user
        answer = browser.post(urllib.parse.urljoin(location, "/o/oauth2/v2/consent"), data=form)
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]


def callback(client: TestClient, url: str) -> httpx.Response:
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://testserver/oauth/google/callback"
    return client.get(f"{parts.path}?{parts.query}")


def pair(client: TestClient, features: str = "read_mail", user: str = ALICE, **params: str) -> dict[str, Any]:
    location, _ = start(client, features=features, **params)
    response = callback(client, consent(location, user=user))
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def stored_secret(settings: Settings, account_id: str) -> dict[str, Any]:
    rt = Runtime.open(settings)
    try:
        with rt.db.engine.connect() as conn:
            token = conn.execute(select(accounts.c.secret).where(accounts.c.id == account_id)).scalar_one()
        return rt.box.decrypt_json(token)
    finally:
        rt.close()


def database_bytes(settings: Settings) -> bytes:
    """The SQLite file and its write-ahead log: a row may still be only in the latter."""
    home = settings.resolved_home
    return b"".join(p.read_bytes() for p in (home / "inboxlink.db", home / "inboxlink.db-wal") if p.exists())


# -- start ------------------------------------------------------------------------------------------


def test_start_without_a_client_names_the_settings(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(home=tmp_path / "home"))) as c:
        response = c.get("/oauth/google/start?features=read_mail", follow_redirects=False)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "config_error"
    assert "INBOXLINK_GOOGLE_CLIENT_ID" in error["message"]
    assert "INBOXLINK_GOOGLE_CLIENT_SECRET" in error["message"]


def test_start_redirects_to_consent_with_pkce_state_nonce_and_only_the_features_scopes(
    client: TestClient, sim: GoogleSim
) -> None:
    location, q = start(client, features="read_mail,send_mail")
    assert location.startswith(sim.base_url + "/o/oauth2/v2/auth?")
    assert q["scope"].split() == ["openid", "email", "profile", AUTH + "gmail.readonly", AUTH + "gmail.send"]
    assert q["response_type"] == "code" and q["client_id"] == sim.client_id
    assert q["redirect_uri"] == "http://testserver/oauth/google/callback"
    assert q["code_challenge_method"] == "S256" and re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])
    assert len(q["nonce"]) >= 32 and len(q["state"]) > 100
    assert (q["access_type"], q["prompt"], q["include_granted_scopes"]) == ("offline", "consent", "true")
    # a fresh state, nonce and verifier every time
    _, again = start(client, features="read_mail,send_mail")
    assert {again["state"], again["nonce"], again["code_challenge"]}.isdisjoint(
        {q["state"], q["nonce"], q["code_challenge"]}
    )
    # the narrower scope goes when a broader one is asked for: metadata beside readonly
    _, q2 = start(client, features="metadata_only,read_mail")
    assert q2["scope"].split()[3:] == [AUTH + "gmail.readonly"]
    _, q3 = start(client)
    assert q3["scope"].split()[3:] == [AUTH + "gmail.readonly"]  # the default feature set


@pytest.mark.parametrize(
    ("features", "word"), [("read_mail,teleport", "teleport"), ("shared_mailboxes", "not available")]
)
def test_start_refuses_unknown_or_unavailable_features(client: TestClient, features: str, word: str) -> None:
    response = client.get("/oauth/google/start", params={"features": features}, follow_redirects=False)
    assert response.status_code == 422 and word in response.json()["error"]["message"]


def test_start_needs_the_api_token_when_one_is_set_and_callback_does_not(
    sim: GoogleSim, tmp_path: Path
) -> None:
    settings = settings_for(sim, tmp_path / "home", api_token="t0ken-for-the-api")
    with TestClient(create_app(settings)) as c:
        assert c.get("/oauth/google/start", follow_redirects=False).status_code == 401
        response = c.get(
            "/oauth/google/start",
            params={"features": "read_mail"},
            headers={"Authorization": "Bearer t0ken-for-the-api"},
            follow_redirects=False,
        )
        assert response.status_code == 302
        done = callback(c, consent(response.headers["location"], user=ALICE))
        assert done.status_code == 201, done.text


# -- callback ---------------------------------------------------------------------------------------


def test_pairing_creates_a_pending_gmail_account_with_encrypted_tokens(
    client: TestClient, settings: Settings, sim: GoogleSim
) -> None:
    body = pair(client, "read_mail,send_mail")
    account = body["account"]
    assert body["created"] is True and body["features_missing_a_scope"] == []
    assert (account["provider"], account["email"], account["status"]) == ("gmail", ALICE, "pending")
    assert account["config"]["features"] == ["read_mail", "send_mail"]
    assert account["config"]["google_sub"] == sim.state.user(ALICE).sub  # type: ignore[union-attr]
    assert account["sync_mode"] == "full" and account["capabilities"]["can_send"] is True

    secret = stored_secret(settings, account["id"])
    assert set(secret) == {"access_token", "refresh_token", "expires_at", "scopes"}
    assert set(secret["scopes"]) == {
        "openid",
        AUTH + "userinfo.email",
        AUTH + "userinfo.profile",
        AUTH + "gmail.readonly",
        AUTH + "gmail.send",
    }
    assert time.time() + 3000 < secret["expires_at"] < time.time() + 3700
    with sim.state.lock:  # the simulator knows these tokens as alice's
        assert sim.state.access_tokens[secret["access_token"]].user == ALICE
        assert sim.state.refresh_tokens[secret["refresh_token"]].user == ALICE
    database = database_bytes(settings)
    assert account["id"].encode() in database  # the row is there to be searched
    for plain in (secret["access_token"], secret["refresh_token"]):
        assert plain.encode() not in database
    assert secret["access_token"] not in json.dumps(client.get("/api/v1/accounts").json())

    listed = client.get("/api/v1/accounts").json()
    assert [(a["id"], a["provider"]) for a in listed] == [(account["id"], "gmail")]


def test_permissions_say_what_each_scope_powers_and_what_is_missing(client: TestClient) -> None:
    account = pair(client, "read_mail,send_mail")["account"]
    response = client.get(f"/api/v1/accounts/{account['id']}/permissions")
    assert response.status_code == 200, response.text
    perms = response.json()
    assert perms["provider"] == "google" and perms["checked"]
    scopes = {s["scope"]: s for s in perms["scopes"]}
    assert scopes[AUTH + "gmail.readonly"]["powers"] == ["read_mail", "metadata_only"]
    assert "read your mail" in scopes[AUTH + "gmail.readonly"]["description"]
    assert scopes[AUTH + "gmail.send"]["powers"] == ["send_mail"]
    assert scopes["openid"]["powers"] == ["sign_in"]
    features = {f["id"]: f for f in perms["features"]}
    assert features["read_mail"]["works"] is True
    assert features["read_mail"]["enabled"] and features["send_mail"]["enabled"]
    assert features["calendar"] == {
        "id": "calendar",
        "title": "Read calendars",
        "description": features["calendar"]["description"],
        "enabled": False,
        "works": False,
        "missing_scopes": [AUTH + "calendar.readonly"],
    }
    assert features["drafts"]["missing_scopes"] == [AUTH + "gmail.compose"]
    assert "shared_mailboxes" not in features  # not offered with Google


def test_reduced_feature_set_asks_for_and_gets_only_its_scopes(
    client: TestClient, settings: Settings
) -> None:
    location, q = start(client, features="metadata_only")
    assert q["scope"].split() == ["openid", "email", "profile", AUTH + "gmail.metadata"]
    response = callback(client, consent(location, user=ALICE))
    account = response.json()["account"]
    assert account["sync_mode"] == "headers" and account["capabilities"]["can_send"] is False
    assert AUTH + "gmail.readonly" not in stored_secret(settings, account["id"])["scopes"]
    features = {
        f["id"]: f for f in client.get(f"/api/v1/accounts/{account['id']}/permissions").json()["features"]
    }
    assert features["metadata_only"]["works"] and not features["read_mail"]["works"]


def test_denying_consent_creates_nothing(client: TestClient) -> None:
    location, _ = start(client, features="read_mail")
    response = callback(client, consent(location, decision="deny"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "access_denied"
    assert client.get("/api/v1/accounts").json() == []


def test_state_is_single_use_and_cannot_be_forged(client: TestClient, sim: GoogleSim, tmp_path: Path) -> None:
    location, _ = start(client, features="read_mail")
    url = consent(location, user=ALICE)
    assert callback(client, url).status_code == 201
    replay = callback(client, url)
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "oauth_state_invalid"
    assert "already" in replay.json()["error"]["message"]

    location, _ = start(client, features="read_mail")
    url = consent(location, user=ALICE)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    tail = "AAAAAA" if query["state"][-6:] != "AAAAAA" else "BBBBBB"
    response = client.get("/oauth/google/callback", params=query | {"state": query["state"][:-6] + tail})
    assert response.status_code == 400 and response.json()["error"]["code"] == "oauth_state_invalid"
    # a well-formed state sealed by another installation (another key) is refused too
    other = settings_for(sim, tmp_path / "other")
    foreign = GoogleOAuth(other, load_secret_box(other))._seal(_flow())
    response = client.get("/oauth/google/callback", params=query | {"state": foreign})
    assert response.status_code == 400 and response.json()["error"]["code"] == "oauth_state_invalid"
    assert len(client.get("/api/v1/accounts").json()) == 1


def _flow(expires_at: float | None = None) -> Flow:
    return Flow("id", "nonce", "v" * 64, ("read_mail",), None, ("openid",), expires_at or time.time() + 600)


def test_expired_state_is_refused(settings: Settings) -> None:
    now = [1_900_000_000.0]
    oauth = GoogleOAuth(settings, load_secret_box(settings), clock=lambda: now[0])
    sealed = oauth._seal(_flow(now[0] + 600))
    now[0] += 601
    with pytest.raises(OAuthStateInvalid, match="more than 10 minutes"):
        oauth.open_state(sealed)


def test_repairing_with_another_google_account_is_refused_and_changes_nothing(
    client: TestClient, settings: Settings
) -> None:
    account = pair(client, "read_mail")["account"]
    rt = Runtime.open(settings)
    try:
        with rt.db.engine.connect() as conn:
            before = conn.execute(select(accounts).where(accounts.c.id == account["id"])).one()
            history = conn.execute(select(account_transitions)).all()
    finally:
        rt.close()
    location, q = start(client, account_id=account["id"])
    assert q["login_hint"] == ALICE
    response = callback(client, consent(location, user=BOB))
    assert response.status_code == 409 and response.json()["error"]["code"] == "wrong_account"
    assert BOB in response.json()["error"]["message"]
    rt = Runtime.open(settings)
    try:
        with rt.db.engine.connect() as conn:
            assert conn.execute(select(accounts).where(accounts.c.id == account["id"])).one() == before
            assert conn.execute(select(account_transitions)).all() == history
    finally:
        rt.close()
    assert len(client.get("/api/v1/accounts").json()) == 1


def test_enabling_a_feature_later_asks_only_for_the_missing_scope(
    client: TestClient, settings: Settings, sim: GoogleSim
) -> None:
    account = pair(client, "read_mail")["account"]
    before = stored_secret(settings, account["id"])
    location, q = start(client, account_id=account["id"], features="calendar,read_mail")
    assert q["scope"].split() == ["openid", "email", "profile", AUTH + "calendar.readonly"]
    assert q["include_granted_scopes"] == "true"
    response = callback(client, consent(location, user=ALICE))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] is False and body["account"]["id"] == account["id"]
    assert body["account"]["config"]["features"] == ["read_mail", "calendar"]
    assert body["account"]["status_reason"] == "re-paired (enabled calendar)"
    after = stored_secret(settings, account["id"])
    assert {AUTH + "gmail.readonly", AUTH + "calendar.readonly"} <= set(after["scopes"])
    assert after["refresh_token"] != before["refresh_token"]
    perms = client.get(f"/api/v1/accounts/{account['id']}/permissions").json()
    assert all(f["works"] for f in perms["features"] if f["enabled"])


def test_repairing_after_the_grant_is_gone_asks_for_every_scope_again(
    client: TestClient, settings: Settings, sim: GoogleSim
) -> None:
    account = pair(client, "read_mail,labels")["account"]
    rt = Runtime.open(settings)
    try:
        with rt.db.engine.begin() as conn:
            transition(conn, account["id"], AccountStatus.AUTH_ERROR, "revoked")
    finally:
        rt.close()
    _, q = start(client, account_id=account["id"])
    assert q["scope"].split()[3:] == [AUTH + "gmail.readonly", AUTH + "gmail.labels"]


# -- id_token ---------------------------------------------------------------------------------------


def _claims(sim: GoogleSim, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    user = sim.state.user(ALICE)
    assert user is not None
    claims: dict[str, Any] = {
        "iss": sim.base_url,
        "aud": sim.client_id,
        "azp": sim.client_id,
        "sub": user.sub,
        "email": ALICE,
        "email_verified": True,
        "nonce": "the-nonce",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"nonce": "another-nonce"}, "Invalid claim: 'nonce'"),
        ({"nonce": None}, "Missing claim: 'nonce'"),
        ({"aud": "someone-else.apps.googleusercontent.com"}, "Invalid claim: 'aud'"),
        ({"azp": "someone-else.apps.googleusercontent.com"}, "another client (azp)"),
        ({"iss": "https://accounts.example.com"}, "Invalid claim: 'iss'"),
        ({"exp": int(time.time()) - 600}, "token is expired"),
        ({"email_verified": False}, "has not verified"),
        ({"email": None}, "Missing claim: 'email'"),
    ],
)
def test_id_token_claims_are_checked(
    settings: Settings, sim: GoogleSim, override: dict[str, Any], why: str
) -> None:
    oauth = GoogleOAuth(settings, load_secret_box(settings))
    good = sim.state.signing_key.sign_jwt(_claims(sim))
    assert oauth.verify_id_token(good, nonce="the-nonce", access_token=None).email == ALICE
    bad = sim.state.signing_key.sign_jwt(_claims(sim, **override))
    with pytest.raises(OAuthFlowError) as info:
        oauth.verify_id_token(bad, nonce="the-nonce", access_token=None)
    assert why in info.value.message


def test_id_token_signed_by_another_key_is_refused(settings: Settings, sim: GoogleSim) -> None:
    oauth = GoogleOAuth(settings, load_secret_box(settings))
    impostor = SigningKey()
    impostor.kid = sim.state.signing_key.kid  # claims to be Google's key
    with pytest.raises(OAuthFlowError, match="signature"):
        oauth.verify_id_token(impostor.sign_jwt(_claims(sim)), nonce="the-nonce", access_token=None)
    header, payload, _sig = sim.state.signing_key.sign_jwt(_claims(sim)).split(".")
    with pytest.raises(OAuthFlowError, match="signature"):  # alg=none
        oauth.verify_id_token(f"{header}.{payload}.", nonce="the-nonce", access_token=None)
    token = sim.state.signing_key.sign_jwt(_claims(sim, at_hash="AAAAAAAAAAAAAAAAAAAAAA"))
    with pytest.raises(OAuthFlowError, match="at_hash"):
        oauth.verify_id_token(token, nonce="the-nonce", access_token="ya29.some-other-token")


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # RFC 7636 Appendix B
    assert (
        code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


# -- token source -----------------------------------------------------------------------------------


def _tokens(sim: GoogleSim, email: str = ALICE, *, expires_in: float = 3600) -> TokenSet:
    issued = sim.issue_tokens(email, [AUTH + "gmail.readonly"])
    return TokenSet(
        issued["access_token"],
        issued["refresh_token"],
        time.time() + expires_in,
        tuple(issued["scope"].split()),
    )


def _profile(sim: GoogleSim, access_token: str) -> int:
    response = httpx.get(
        f"{sim.base_url}/gmail/v1/users/me/profile", headers={"Authorization": f"Bearer {access_token}"}
    )
    return response.status_code


def test_token_source_refreshes_before_expiry_and_saves_at_once(settings: Settings, sim: GoogleSim) -> None:
    oauth = GoogleOAuth(settings, load_secret_box(settings))
    saved: list[tuple[TokenSet, TokenSet]] = []
    fresh = _tokens(sim, expires_in=3600)
    source = oauth.token_source(fresh, lambda new, old: saved.append((new, old)), skew=300)
    assert source.access_token() == fresh.access_token and saved == []  # valid long enough: no refresh

    closing = _tokens(sim, expires_in=200)  # within the 300 s margin: refreshed before use
    source = oauth.token_source(closing, lambda new, old: saved.append((new, old)), skew=300)
    token = source.access_token()
    assert token != closing.access_token and len(saved) == 1
    new, old = saved[0]
    assert old == closing and new.access_token == token and new.refresh_token == closing.refresh_token
    assert new.expires_at > time.time() + 3000 and AUTH + "gmail.readonly" in source.granted_scopes
    assert _profile(sim, token) == 200
    assert source.access_token() == token and len(saved) == 1  # now fresh: reused
    assert source.access_token(force_refresh=True) != token and len(saved) == 2  # after a 401


def test_token_source_turns_invalid_grant_into_auth_error(settings: Settings, sim: GoogleSim) -> None:
    oauth = GoogleOAuth(settings, load_secret_box(settings))
    sim.add_user("carol@example.com")
    source = oauth.token_source(_tokens(sim, "carol@example.com", expires_in=0), lambda new, old: None)
    assert sim.change_password("carol@example.com") == 1
    with pytest.raises(AuthError) as info:
        source.access_token()
    assert info.value.fields["reason"] == "invalid_grant"
    assert "pair the account again" in info.value.message and "expired or revoked" in info.value.message

    sim.fail_next_refresh(status=503, error="backend_error", description="try later")
    with pytest.raises(TransientError):
        oauth.token_source(_tokens(sim, expires_in=0), lambda new, old: None).access_token()


def test_accounts_token_source_writes_rotated_tokens_unless_re_paired_meanwhile(
    client: TestClient, settings: Settings
) -> None:
    account = pair(client, "read_mail")["account"]
    rt = Runtime.open(settings)
    try:
        stored = TokenSet.from_secret(stored_secret(settings, account["id"]))
        source = rt.accounts.google_token_source(account["id"], stored)
        token = source.access_token(force_refresh=True)
        assert stored_secret(settings, account["id"])["access_token"] == token != stored.access_token

        stale = rt.accounts.google_token_source(account["id"], stored)  # opened before a re-pair
        pair(client, "read_mail")  # the same mailbox again: a new grant replaces the stored one
        repaired = stored_secret(settings, account["id"])
        assert repaired["refresh_token"] != stored.refresh_token
        stale.access_token(force_refresh=True)
        assert stored_secret(settings, account["id"]) == repaired  # the newer grant wins
    finally:
        rt.close()


# -- the scopes table -------------------------------------------------------------------------------


def _discovery_method_scopes() -> dict[str, set[str]]:
    """scope -> ids of the methods that accept it, from the discovery documents Google ships
    inside google-api-python-client (written by Google, not by us)."""
    import googleapiclient

    folder = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
    methods: dict[str, set[str]] = {}

    def walk(resource: dict[str, Any]) -> None:
        for child in resource.get("resources", {}).values():
            walk(child)
        for method in resource.get("methods", {}).values():
            for scope in method.get("scopes", []):
                methods.setdefault(scope, set()).add(method["id"])

    for name in ("gmail.v1.json", "calendar.v3.json", "people.v1.json"):
        walk(json.loads((folder / name).read_text()))
    return methods


def test_every_google_scope_and_implication_matches_googles_discovery_documents() -> None:
    methods = _discovery_method_scopes()
    data = json.loads((Path(__import__("inboxlink").__file__).parent / "data" / "scopes.json").read_text())
    cat = catalog()
    prefix = data["google_prefix"]

    def full(s: str) -> str:
        return s if "/" in s or ":" in s else prefix + s

    for feature in cat.features.values():
        for scope in feature.scopes["google"] or ():
            assert scope in methods, f"{feature.id}: {scope} is not a scope of Gmail, Calendar or People"
    for scope, broader in data["implied_by"]["google"].items():
        for other in broader:
            assert methods[full(scope)] <= methods[full(other)], f"{other} does not cover {scope}"


def test_catalog_rules_least_set_and_missing() -> None:
    cat = catalog()
    assert cat.scopes_for("google", ["drafts", "send_mail", "read_mail"]) == [
        AUTH + "gmail.compose",
        AUTH + "gmail.readonly",
    ]
    assert cat.missing("google", ["read_mail", "labels"], [AUTH + "gmail.modify"]) == []
    assert cat.missing("google", ["calendar", "free_busy"], []) == [AUTH + "calendar.readonly"]
    assert cat.scopes_for("graph", ["drafts", "read_mail"]) == ["Mail.ReadWrite", "Mail.Send"]
    assert cat.covers("google", ["email"], AUTH + "userinfo.email")
    tiny = ScopeCatalog(
        {
            "google_prefix": "https://x/",
            "identity": {"google": ["openid"], "graph": ["openid"]},
            "default_features": ["a"],
            "features": {"a": {"title": "A", "description": "a", "google": ["s"], "graph": None}},
        }
    )
    assert tiny.scopes_for("google", ["a"]) == ["https://x/s"]
    with pytest.raises(ValueError, match="unknown features"):
        ScopeCatalog(
            {
                **{"google_prefix": "", "identity": {"google": [], "graph": []}},
                "default_features": ["z"],
                "features": {},
            }
        )


def test_the_sqlite_file_never_holds_tokens_in_plaintext_even_after_refresh(
    client: TestClient, settings: Settings
) -> None:
    account = pair(client, "read_mail")["account"]
    rt = Runtime.open(settings)
    try:
        source = rt.accounts.google_token_source(
            account["id"], TokenSet.from_secret(stored_secret(settings, account["id"]))
        )
        token = source.access_token(force_refresh=True)
    finally:
        rt.close()
    db = sqlite3.connect(settings.resolved_home / "inboxlink.db")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    database = database_bytes(settings)
    assert account["id"].encode() in database and token.encode() not in database


# -- sync through the Gmail adapter -----------------------------------------------------------------


def test_paired_account_syncs_then_a_password_change_means_auth_error_and_re_pairing_resumes(
    client: TestClient, settings: Settings, sim: GoogleSim
) -> None:
    account = pair(client, "read_mail")["account"]
    synced = client.post(f"/api/v1/accounts/{account['id']}/sync").json()
    assert (synced["status"], synced["messages"]) == ("connected", 3), synced

    sim.change_password(ALICE)  # Google revokes the refresh tokens (Gmail scopes granted) ...
    sim.expire_access_tokens(ALICE)  # ... and the access token runs out: the next sync must refresh
    failed = client.post(f"/api/v1/accounts/{account['id']}/sync").json()
    assert failed["status"] == "auth_error", failed
    shown = client.get(f"/api/v1/accounts/{account['id']}").json()
    assert "invalid_grant" in shown["status_reason"] and "pair the account again" in shown["status_reason"]
    assert shown["message_count"] == 3  # data kept

    location, q = start(client, account_id=account["id"])
    assert q["scope"].split()[3:] == [AUTH + "gmail.readonly"]  # the grant is gone: ask for all again
    assert callback(client, consent(location, user=ALICE)).status_code == 200
    sim.deliver(ALICE, subject="after the re-pair")
    resumed = client.post(f"/api/v1/accounts/{account['id']}/sync").json()
    assert (resumed["status"], resumed["messages"], resumed["fetched"]) == ("connected", 4, 1), resumed


def test_revoked_grant_means_auth_error_even_with_an_unexpired_access_token(
    client: TestClient, sim: GoogleSim
) -> None:
    account = pair(client, "read_mail")["account"]
    assert client.post(f"/api/v1/accounts/{account['id']}/sync").json()["status"] == "connected"
    with sim.state.lock:
        refresh = next(t.token for t in sim.state.refresh_tokens.values() if t.user == ALICE)
    assert httpx.post(f"{sim.base_url}/revoke", data={"token": refresh}).status_code == 200
    failed = client.post(f"/api/v1/accounts/{account['id']}/sync").json()  # 401 -> refresh -> invalid_grant
    assert failed["status"] == "auth_error", failed
