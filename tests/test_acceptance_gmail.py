"""Acceptance of Gmail pairing, sync, push and header-only mode, written black-box from the README
(Gmail pairing, settings) and docs/architecture.md ("Gmail", "Google OAuth and permissions").

The product runs as `serve` does (tests.support.serving: API, scheduler, task consumer on a real
uvicorn server), with its Google settings pointed at the in-process simulator and a Pub/Sub topic
set; the poll interval is huge, so only pairing, pushes and `POST /api/v1/accounts/{id}/sync` start
a sync. The browser is played with httpx (tests.test_google_pairing.consent). The user's own Gmail
client (labels, archive, trash, delete, star, read) is played through the simulator's Gmail API with
tokens the simulator mints (`GoogleSim.issue_tokens`); faults, history expiry and revoked grants are
the simulator's test hooks. Our side is read back only through the REST API.
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from inboxlink.config import Settings
from inboxlink_sim.google import DEFAULT_CLIENT_ID, GoogleSim
from tests.gmail_support import running_sim
from tests.support import make_message, serving
from tests.test_gmail_push import TOPIC, eventually, push_settings
from tests.test_google_pairing import consent

AUTH = "https://www.googleapis.com/auth/"
IDENTITY = {"openid", "email", "profile"}
SYSTEM_FOLDERS = {"INBOX", "SENT", "DRAFT"}
FLAG_OF = {"STARRED": "\\Flagged", "IMPORTANT": "$Important"}
_users = itertools.count(1)

# folders and flags per Message-ID: {message_id: (folders, flags)}
View = dict[str, tuple[frozenset[str], frozenset[str]]]


@dataclass
class Env:
    url: str
    sim: GoogleSim

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def account(self, account_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.get(f"/api/v1/accounts/{account_id}")
        return data

    def sync(self, account_id: str) -> dict[str, Any]:
        self.settle(account_id)
        response = httpx.post(f"{self.url}/api/v1/accounts/{account_id}/sync", timeout=120)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def settle(self, account_id: str) -> None:
        """Let a sync that serve's scheduler started (pairing, push) end first."""
        eventually(
            lambda: self.account(account_id)["status"] not in ("pending", "syncing"), "the running sync ended"
        )

    def messages(self, account_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get(f"/api/v1/accounts/{account_id}/messages", after=after, limit=1000)
            out.extend(page["messages"])
            if page["next_after"] is None:
                return out
            after = page["next_after"]

    def local(self, account_id: str) -> View:
        """Our copy: per Message-ID, the folders (keys: Gmail label ids) and the flags."""
        view: View = {}
        for m in self.messages(account_id):
            assert m["message_id"] not in view, f"{m['message_id']} stored twice"
            folders = frozenset(p["folder"] for p in m["placements"])
            flag_sets = {frozenset(p["flags"]) for p in m["placements"]}
            assert len(flag_sets) <= 1, f"flags differ between the placements of {m['message_id']}"
            view[m["message_id"]] = (folders, next(iter(flag_sets), frozenset()))
        return view


def truth(sim: GoogleSim, email: str) -> View:
    """The simulator's mailbox, mapped as documented: INBOX, SENT, DRAFT and user labels are folders,
    TRASH and SPAM hide the others, no folder label -> ARCHIVE; UNREAD/STARRED/IMPORTANT are flags."""
    with sim.state.lock:
        box = sim.mailbox(email)
        user_labels = {label.id for label in box.labels.values() if label.type == "user"}
        view: View = {}
        for msg in box.messages.values():
            labels = set(msg.label_ids)
            if "TRASH" in labels:
                folders = {"TRASH"}
            elif "SPAM" in labels:
                folders = {"SPAM"}
            else:
                folders = labels & (SYSTEM_FOLDERS | user_labels) or {"ARCHIVE"}
            flags = {FLAG_OF[x] for x in labels if x in FLAG_OF} | (
                set() if "UNREAD" in labels else {"\\Seen"}
            )
            assert msg.parsed.message_id, "every simulated message has a Message-ID"
            view[msg.parsed.message_id.strip("<>")] = (frozenset(folders), frozenset(flags))
        return view


class Gmail:
    """The user's own Gmail client, through the simulator's Gmail API."""

    def __init__(self, sim: GoogleSim, email: str) -> None:
        token = sim.issue_tokens(email, ["https://mail.google.com/"])["access_token"]
        self.http = httpx.Client(
            base_url=f"{sim.base_url}/gmail/v1/users/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def __enter__(self) -> Gmail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code in (200, 204), response.text
        return response.json() if response.content else None

    def ids(self, query: str = "", *, spam_trash: bool = False) -> list[str]:
        params = {"maxResults": "500", "includeSpamTrash": str(spam_trash).lower()}
        if query:
            params["labelIds"] = query
        data = self.http.get("/messages", params=params).json()
        return [m["id"] for m in data.get("messages", [])]

    def modify(self, msg_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> None:
        self.call(
            "POST", f"/messages/{msg_id}/modify", {"addLabelIds": list(add), "removeLabelIds": list(remove)}
        )

    def label(self, name: str) -> str:
        for label in self.call("GET", "/labels")["labels"]:
            if label["name"] == name:
                return str(label["id"])
        return str(self.call("POST", "/labels", {"name": name})["id"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("acceptance-gmail") / "home"
    with running_sim() as sim:

        def settings_for(url: str) -> Settings:
            return push_settings(sim, home, url)

        with serving(settings_for) as (url, _rt, _app):
            endpoint = httpx.get(f"{url}/push/google", timeout=10).json()
            assert endpoint["mode"] == "pubsub" and endpoint["topic"] == TOPIC, endpoint
            sim.set_push_endpoint(endpoint["endpoint"], TOPIC)
            yield Env(url, sim)
        assert sim.schema_violations == []


def new_user(env: Env, messages: int, seed: int = 7) -> str:
    email = f"acc{next(_users)}@gmail.test"
    env.sim.add_user(email, messages=messages, seed=seed)
    return email


def start(env: Env, features: str, account_id: str | None = None) -> tuple[str, dict[str, str]]:
    params = {"features": features} | ({"account_id": account_id} if account_id else {})
    response = httpx.get(f"{env.url}/oauth/google/start", params=params, timeout=10)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{env.sim.base_url}/o/oauth2/v2/auth?"), location
    return location, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def pair(env: Env, email: str, features: str = "read_mail", account_id: str | None = None) -> httpx.Response:
    location, _query = start(env, features, account_id)
    callback, _listed = consent(location, email, "allow")
    assert callback.startswith(f"{env.url}/oauth/google/callback?"), callback
    return httpx.get(callback, timeout=30)


def paired(env: Env, email: str, features: str = "read_mail") -> str:
    response = pair(env, email, features)
    assert response.status_code == 201, response.text
    account_id: str = response.json()["account"]["id"]
    env.settle(account_id)
    return account_id


def _gets(env: Env, email: str) -> int:
    """messages.get calls the simulator answered for this mailbox (batch parts included)."""
    return sum(c.method == "gmail.users.messages.get" and c.user == email for c in env.sim.calls)


def accounts(env: Env) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = env.get("/api/v1/accounts")
    return listed


# --- 1. pairing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "scopes"),
    [
        ("read_mail", {"gmail.readonly"}),
        ("read_mail,send_mail", {"gmail.readonly", "gmail.send"}),
        ("metadata_only", {"gmail.metadata"}),
        ("send_mail", {"gmail.send"}),
        ("read_mail,modify_mail", {"gmail.modify"}),  # gmail.modify covers gmail.readonly
        ("read_mail,metadata_only", {"gmail.readonly"}),  # metadata beside readonly would refuse `q`
        ("drafts,labels", {"gmail.compose", "gmail.labels"}),
        ("calendar", {"calendar.readonly"}),
    ],
)
def test_consent_asks_only_the_least_privilege_scopes_of_the_features(
    env: Env, features: str, scopes: set[str]
) -> None:
    _location, query = start(env, features)
    assert set(query["scope"].split()) == IDENTITY | {AUTH + s for s in scopes}, query["scope"]
    assert len(query["scope"].split()) == len(IDENTITY | scopes)
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["include_granted_scopes"] == "true"
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    assert query["state"] and query["nonce"] and query["client_id"] == DEFAULT_CLIENT_ID
    assert query["redirect_uri"] == f"{env.url}/oauth/google/callback"


def test_refusing_consent_pairs_nothing(env: Env) -> None:
    email = new_user(env, 2)
    before = accounts(env)
    location, _ = start(env, "read_mail")
    callback, _ = consent(location, email, "deny")
    response = httpx.get(callback, timeout=30)
    assert response.status_code == 403 and response.json()["error"]["code"] == "access_denied", response.text
    assert accounts(env) == before


def test_an_invalid_state_is_refused_and_pairs_nothing(env: Env) -> None:
    email = new_user(env, 2)
    before = accounts(env)
    location, _ = start(env, "read_mail")
    callback, _ = consent(location, email, "allow")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))
    state = query["state"]
    tampered = state[:-6] + ("AAAAAA" if not state.endswith("AAAAAA") else "BBBBBB")
    for bad in ({**query, "state": tampered}, {**query, "state": "not-a-state"}, {"code": query["code"]}):
        response = httpx.get(f"{env.url}/oauth/google/callback", params=bad, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "oauth_state_invalid", response.text
    assert accounts(env) == before


def test_a_reused_callback_is_refused_and_changes_nothing(env: Env) -> None:
    email = new_user(env, 2)
    location, _ = start(env, "read_mail")
    callback, _ = consent(location, email, "allow")
    first = httpx.get(callback, timeout=30)
    assert first.status_code == 201, first.text
    account_id = first.json()["account"]["id"]
    env.settle(account_id)
    before = accounts(env)
    again = httpx.get(callback, timeout=30)
    assert again.status_code == 400 and again.json()["error"]["code"] == "oauth_state_invalid", again.text
    assert accounts(env) == before


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_refused_refresh_token_is_auth_error_with_data_kept_and_repairing_resumes(
    env: Env, how: str
) -> None:
    email = new_user(env, 8)
    account_id = paired(env, email)
    assert env.account(account_id)["message_count"] == 8
    if how == "revoked":
        env.sim.change_password(email)  # Google revokes the user's refresh tokens
    else:
        env.sim.fail_next_refresh("invalid_grant", "Token has been expired or revoked.", user=email)
    env.sim.expire_access_tokens(email)
    failed = env.sync(account_id)
    assert failed["status"] == "auth_error", failed
    account = env.account(account_id)
    assert account["status"] == "auth_error"
    assert account["status_reason"] and "invalid_grant" in account["status_reason"], account
    assert account["message_count"] == 8, "the mail is kept"
    assert len(env.messages(account_id)) == 8

    # after auth_error the grant is gone: re-pairing asks for all the scopes again
    _location, query = start(env, "read_mail", account_id)
    assert set(query["scope"].split()) == IDENTITY | {AUTH + "gmail.readonly"}
    env.sim.deliver(email, make_message(900, subject="while away", to=email))
    gets = _gets(env, email)
    again = pair(env, email, "read_mail", account_id)
    assert again.status_code == 200 and again.json()["created"] is False, again.text
    assert again.json()["account"]["id"] == account_id
    env.settle(account_id)
    assert env.account(account_id)["status"] == "connected"
    assert env.local(account_id) == truth(env.sim, email)
    # the sync after re-pairing resumed from its cursor: one get, for the one new message
    assert _gets(env, email) - gets == 1, "re-pairing downloaded the mailbox again"
    report = env.sync(account_id)
    assert (report["status"], report["fetched"], report["messages"]) == ("connected", 0, 9), report


# --- 2. sync -----------------------------------------------------------------------------------


@pytest.fixture
def quiet(env: Env) -> Iterator[None]:
    """Pub/Sub delivers nothing meanwhile: only the test's own syncs run, so their reports count
    exactly what each downloaded."""
    env.sim.set_push_endpoint(None, TOPIC)
    try:
        yield
    finally:
        env.sim.set_push_endpoint(env.get("/push/google")["endpoint"], TOPIC)


@pytest.fixture(scope="module")
def synced(env: Env) -> tuple[str, str]:
    email = new_user(env, 40, seed=11)
    return email, paired(env, email, "read_mail")


def test_first_sync_mirrors_the_mailbox_and_a_second_adds_nothing(
    env: Env, quiet: None, synced: tuple[str, str]
) -> None:
    email, account_id = synced
    expected = truth(env.sim, email)
    account = env.account(account_id)
    assert account["status"] == "connected"
    assert account["message_count"] == len(expected) == 40
    local = env.local(account_id)
    assert set(local) == set(expected), "the Message-IDs are the mailbox's"
    assert local == expected, "labels are folders and flags as documented"
    folders = {f["key"]: f["name"] for f in env.get(f"/api/v1/accounts/{account_id}/folders")}
    used = set().union(*(f for f, _ in expected.values()))
    assert used <= set(folders), used - set(folders)
    with env.sim.state.lock:
        labels = {lb.id: lb.name for lb in env.sim.mailbox(email).labels.values() if lb.type == "user"}
    assert {k: folders[k] for k in labels} == labels, "a user label is a folder of its name"
    assert {"INBOX", "SENT", "ARCHIVE", "TRASH", "SPAM"} <= set(folders)
    assert account["placement_count"] == sum(len(f) for f, _ in expected.values())
    report = env.sync(account_id)
    assert (report["status"], report["messages"], report["fetched"]) == ("connected", 40, 0), report
    assert env.local(account_id) == expected


def test_incremental_changes_converge(env: Env, quiet: None, synced: tuple[str, str]) -> None:
    email, account_id = synced
    with Gmail(env.sim, email) as gmail:
        _incremental(env, gmail, email, account_id)


def _incremental(env: Env, gmail: Gmail, email: str, account_id: str) -> None:
    inbox = gmail.ids("INBOX")
    assert len(inbox) >= 8, inbox
    clients = gmail.label("Acceptance/Clients")
    gmail.modify(inbox[0], add=[clients])  # a user label: a second folder
    gmail.modify(inbox[1], remove=["INBOX"])  # archive: a move to ARCHIVE
    gmail.call("POST", f"/messages/{inbox[2]}/trash")  # trash hides the other labels
    gmail.call("DELETE", f"/messages/{inbox[3]}")  # deleted for good
    gmail.modify(inbox[4], add=["STARRED"])
    gmail.modify(inbox[5], add=["UNREAD"])
    gmail.modify(inbox[6], remove=["UNREAD"])
    gmail.modify(inbox[7], add=["SPAM"], remove=["INBOX"])
    env.sim.deliver(email, make_message(910, subject="incremental new", to=email))
    report = env.sync(account_id)
    assert (report["status"], report["fetched"]) == ("connected", 1), report
    expected = truth(env.sim, email)
    assert env.local(account_id) == expected
    assert env.account(account_id)["message_count"] == len(expected) == 40

    # and back: the label removed, the archived message in the inbox again, untrashed
    gmail.modify(inbox[0], remove=[clients])
    gmail.modify(inbox[1], add=["INBOX"])
    gmail.call("POST", f"/messages/{inbox[2]}/untrash")
    report = env.sync(account_id)
    assert (report["status"], report["fetched"]) == ("connected", 0), report
    assert env.local(account_id) == truth(env.sim, email)


def test_expired_history_triggers_a_full_pass_that_downloads_only_what_is_new(
    env: Env, quiet: None, synced: tuple[str, str]
) -> None:
    email, account_id = synced
    with Gmail(env.sim, email) as gmail:
        _expire(env, gmail, email, account_id)


def _expire(env: Env, gmail: Gmail, email: str, account_id: str) -> None:
    inbox = gmail.ids("INBOX")
    gmail.call("DELETE", f"/messages/{inbox[0]}")
    gmail.modify(inbox[1], remove=["INBOX"])
    gmail.modify(inbox[2], add=[gmail.label("Acceptance/Expired")])
    env.sim.deliver(email, make_message(920, subject="after expiry", to=email))
    env.sim.expire_history(email)
    report = env.sync(account_id)
    assert (report["status"], report["fetched"]) == ("connected", 1), report
    expected = truth(env.sim, email)
    assert env.local(account_id) == expected
    assert env.account(account_id)["message_count"] == len(expected)
    report = env.sync(account_id)
    assert (report["fetched"], report["messages"]) == (0, len(expected)), report


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_server_errors_are_waited_out(
    env: Env, quiet: None, synced: tuple[str, str], status: int
) -> None:
    email, account_id = synced
    env.sim.deliver(email, make_message(930 + status, subject=f"after a {status}", to=email))
    env.sim.fail_next(2, status, retry_after=1 if status == 429 else None, user=email)
    report = env.sync(account_id)
    assert (report["status"], report["fetched"]) == ("connected", 1), report
    assert env.local(account_id) == truth(env.sim, email)
    assert any(c.status == status for c in env.sim.calls), "the fault was served"


# --- 3. push -----------------------------------------------------------------------------------


def _token(env: Env) -> str:
    endpoint = env.get("/push/google")["endpoint"]
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(endpoint).query))["token"]


def _envelope(email: str, history_id: int) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}


def test_a_push_syncs_the_account_soon_after(env: Env) -> None:
    email = new_user(env, 3)
    account_id = paired(env, email)
    push = env.account(account_id)["capabilities"]["push"]
    assert push["mode"] == "pubsub" and push["topic"] == TOPIC and push["expires_at"], push
    pushes = len(env.sim.push_log)
    env.sim.deliver(email, make_message(940, subject="pushed to us", to=email))
    delivered = env.sim.wait_for_pushes(pushes + 1)[pushes:]
    assert delivered and all(r.status == 204 for r in delivered), [(r.status, r.error) for r in delivered]
    assert all(r.url and "token=" in r.url and r.url.startswith(f"{env.url}/push/google") for r in delivered)
    eventually(lambda: env.account(account_id)["message_count"] == 4, "the pushed mail was synced", limit=15)
    env.settle(account_id)
    assert env.local(account_id) == truth(env.sim, email)


def test_push_token_and_unknown_addresses(env: Env) -> None:
    token = _token(env)
    post = f"{env.url}/push/google"
    unknown = _envelope("nobody.at.all@gmail.test", 7)
    assert httpx.post(post, params={"token": token}, json=unknown, timeout=10).status_code == 204
    for params in ({"token": token + "x"}, {"token": "wrong"}, {}):
        refused = httpx.post(post, params=params, json=unknown, timeout=10)
        assert refused.status_code == 403, (params, refused.text)
        assert refused.json()["error"]["code"] == "push_token_invalid"


def test_a_manual_push_with_the_documented_token_syncs_the_account(env: Env) -> None:
    email = new_user(env, 2)
    account_id = paired(env, email)
    env.sim.set_push_endpoint(None, TOPIC)  # Pub/Sub silent: only our POST tells inboxlink
    try:
        env.sim.deliver(email, make_message(950, subject="told by hand", to=email))
        with Gmail(env.sim, email) as gmail:
            history_id = int(gmail.call("GET", "/profile")["historyId"])
        posted = httpx.post(
            f"{env.url}/push/google",
            params={"token": _token(env)},
            json=_envelope(email, history_id),
            timeout=10,
        )
        assert posted.status_code == 204, posted.text
        eventually(lambda: env.account(account_id)["message_count"] == 3, "the account synced", limit=15)
    finally:
        env.sim.set_push_endpoint(env.get("/push/google")["endpoint"], TOPIC)


# --- 4. headers-only ---------------------------------------------------------------------------


def test_headers_only_never_fetches_bodies_and_switching_to_full_fetches_each_once(
    env: Env, quiet: None
) -> None:
    email = new_user(env, 12, seed=5)
    account_id = paired(env, email, "metadata_only")
    assert env.account(account_id)["status"] == "connected"
    stored = env.messages(account_id)
    assert len(stored) == 12 and all(m["headers_only"] for m in stored), stored
    assert env.local(account_id) == truth(env.sim, email)
    refused = [c for c in env.sim.calls if c.user == email and c.status == 403]
    assert refused == [], "a body was asked for with gmail.metadata"
    report = env.sync(account_id)
    assert report["fetched"] == 0 and report["status"] == "connected", report

    # the user grants read_mail: only the missing scope is asked, then each body is fetched once
    _loc, query = start(env, "read_mail", account_id)
    assert AUTH + "gmail.readonly" in query["scope"].split()
    assert AUTH + "gmail.metadata" not in query["scope"].split()
    gets = _gets(env, email)
    again = pair(env, email, "read_mail", account_id)
    assert again.status_code == 200, again.text
    env.settle(account_id)
    report = env.sync(account_id)
    stored = env.messages(account_id)
    assert all(not m["headers_only"] for m in stored), [m["message_id"] for m in stored if m["headers_only"]]
    assert len(stored) == 12
    assert env.local(account_id) == truth(env.sim, email)
    report = env.sync(account_id)
    assert report["fetched"] == 0, report
    assert _gets(env, email) - gets == 12, "each body is fetched once"
    raw = httpx.get(f"{env.url}/api/v1/messages/{stored[0]['id']}/raw", timeout=10)
    assert raw.status_code == 200, raw.text
    with env.sim.state.lock:
        original = [
            m.raw
            for m in env.sim.mailbox(email).messages.values()
            if (m.parsed.message_id or "").strip("<>") == stored[0]["message_id"]
        ]
    assert [raw.content] == original, "the stored message is Gmail's, body included"
