"""Checks of the Google simulator (inboxlink_sim.google) against Google's own contract.

* Every JSON body the simulator returns while these tests run is validated against the Gmail
  discovery document shipped in google-api-python-client (``validate_responses=True``; the
  fixture fails a test that produced a violation), and the raw-HTTP tests validate explicitly.
* The official client (``build_from_document`` + google-auth credentials obtained through the
  simulator's consent page with PKCE) drives list/get/send/modify/history/batch/drafts/uploads.
* OAuth, scopes, faults and push are checked over plain HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import google.oauth2.credentials
import google.oauth2.id_token
import google_auth_httplib2
import httpx
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleAuthRequest
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload, build_http

from inboxlink_sim.google import GoogleSim, discovery_for, load_gmail_discovery, validate
from inboxlink_sim.google.discovery import all_methods, validate_method_response
from inboxlink_sim.google.scopes import METHOD_RESPONSE_SCHEMA, METHOD_SCOPES

AUTH = "https://www.googleapis.com/auth/"
READONLY = AUTH + "gmail.readonly"
MODIFY = AUTH + "gmail.modify"
METADATA = AUTH + "gmail.metadata"
SEND = AUTH + "gmail.send"
MAIL = "https://mail.google.com/"
ALICE = "alice@example.com"
BOB = "bob@example.com"
REDIRECT = "http://127.0.0.1:8799/oauth/callback"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_gmail_discovery()


@pytest.fixture
def sim() -> Iterator[GoogleSim]:
    s = GoogleSim(seed=7, validate_responses=True, push_max_attempts=3)
    s.start()
    try:
        s.add_user(ALICE, "Alice Liddell", messages=40, seed=3)
        s.add_user(BOB, "Bob Martin")
        yield s
        assert s.schema_violations == []
    finally:
        s.stop()


@pytest.fixture
def client(sim: GoogleSim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, follow_redirects=False, timeout=10) as c:
        yield c


# --- helpers -------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def auth_params(sim: GoogleSim, scopes: list[str], challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "client_id": sim.client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": "st-" + secrets.token_hex(4),
        "nonce": "nonce-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
        "login_hint": ALICE,
    }
    params.update(extra)
    return params


def consent(
    client: httpx.Client, params: dict[str, str], decision: str = "allow"
) -> tuple[str, httpx.Response]:
    """Drive the consent page like a browser would; returns (page html, redirect response)."""
    page = client.get("/o/oauth2/v2/auth", params=params)
    assert page.status_code == 200, page.text
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    assert action is not None
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    selected = re.search(r'<option value="([^"]+)" selected>', page.text)
    assert selected is not None
    fields.update({"user": selected.group(1), "decision": decision})
    return page.text, client.post(action.group(1), data=fields)


def redirect_query(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def exchange(
    client: httpx.Client, sim: GoogleSim, code: str, verifier: str | None, **extra: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": sim.client_id,
        "client_secret": sim.client_secret or "",
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    data.update(extra)
    return client.post("/token", data=data)


def login(client: httpx.Client, sim: GoogleSim, scopes: list[str], **extra: str) -> dict[str, Any]:
    verifier, challenge = pkce()
    params = auth_params(sim, scopes, challenge, **extra)
    _, resp = consent(client, params)
    query = redirect_query(resp)
    assert query["state"] == params["state"]
    tok = exchange(client, sim, query["code"], verifier)
    assert tok.status_code == 200, tok.text
    body: dict[str, Any] = tok.json()
    body["_nonce"] = params["nonce"]
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_raw(sender: str, to: str, subject: str, body: str = "hello\n", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def gmail_error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) >= {"code", "message", "errors", "status"}
    assert body["code"] == resp.status_code
    return body


class Service:
    """The official client, authorised with google-auth credentials, closed on exit."""

    def __init__(self, sim: GoogleSim, tokens: dict[str, Any], scopes: list[str]) -> None:
        self.creds = google.oauth2.credentials.Credentials(
            token=tokens["access_token"],
            refresh_token=tokens.get("refresh_token"),
            token_uri=sim.token_uri,
            client_id=sim.client_id,
            client_secret=sim.client_secret,
            scopes=scopes,
        )
        # build_http(): httplib2 minus 308-as-redirect, which resumable uploads need (as the client does)
        self.http = google_auth_httplib2.AuthorizedHttp(self.creds, http=build_http())
        self.gmail = build_from_document(
            sim.discovery_document(), http=self.http, client_options={"api_endpoint": sim.base_url}
        )

    def close(self) -> None:
        self.gmail.close()
        self.http.close()


# --- (a) discovery document as the source of truth ----------------------------------------


def test_scope_table_is_the_discovery_documents(doc: dict[str, Any]) -> None:
    methods = all_methods(doc)
    for method_id, scopes in METHOD_SCOPES.items():
        assert scopes == frozenset(methods[method_id]["scopes"]), method_id
        assert METHOD_RESPONSE_SCHEMA[method_id] == methods[method_id].get("response", {}).get("$ref")


def test_validator_reports_unknown_fields_and_wrong_types(doc: dict[str, Any]) -> None:
    good = {"id": "a", "threadId": "a", "historyId": "12", "internalDate": "1700000000000", "sizeEstimate": 3}
    assert validate(doc, "Message", good) == []
    bad = {**good, "historyId": 12, "bogus": True, "payload": {"body": {"size": "3", "data": "!!"}}}
    problems = validate(doc, "Message", bad)
    assert any("historyId" in p for p in problems)
    assert any("bogus" in p for p in problems)
    assert any("size" in p for p in problems)
    assert any("data" in p and "base64" in p for p in problems)
    assert validate(doc, "Label", {"id": "x", "type": "neither"}) != []
    assert validate_method_response(doc, "gmail.users.messages.delete", None) == []


def test_raw_http_responses_validate(sim: GoogleSim, client: httpx.Client, doc: dict[str, Any]) -> None:
    tokens = sim.issue_tokens(ALICE, [MAIL])
    h = bearer(tokens["access_token"])
    checks: list[tuple[str, str, dict[str, Any]]] = []

    def call(method_id: str, verb: str, path: str, **kw: Any) -> dict[str, Any]:
        r = client.request(verb, "/gmail/v1/users/me" + path, headers=h, **kw)
        assert r.status_code in (200, 204), (method_id, r.text)
        body: dict[str, Any] = r.json() if r.content else {}
        assert validate_method_response(doc, method_id, body or None) == [], method_id
        checks.append((method_id, verb, body))
        return body

    profile = call("gmail.users.getProfile", "GET", "/profile")
    listing = call("gmail.users.messages.list", "GET", "/messages", params={"maxResults": 7})
    assert len(listing["messages"]) == 7 and "nextPageToken" in listing
    for fmt in ("minimal", "metadata", "full", "raw"):
        call(
            "gmail.users.messages.get",
            "GET",
            f"/messages/{listing['messages'][0]['id']}",
            params={"format": fmt},
        )
    call("gmail.users.labels.list", "GET", "/labels")
    label = call("gmail.users.labels.create", "POST", "/labels", json={"name": "Projects/Alpha"})
    call("gmail.users.labels.get", "GET", f"/labels/{label['id']}")
    call("gmail.users.labels.patch", "PATCH", f"/labels/{label['id']}", json={"name": "Projects/Beta"})
    call("gmail.users.threads.list", "GET", "/threads", params={"maxResults": 3})
    thread = call("gmail.users.threads.list", "GET", "/threads")["threads"][0]
    call("gmail.users.threads.get", "GET", f"/threads/{thread['id']}", params={"format": "metadata"})
    sent = call(
        "gmail.users.messages.send",
        "POST",
        "/messages/send",
        json={"raw": b64url(make_raw(ALICE, BOB, "hi"))},
    )
    call(
        "gmail.users.messages.modify",
        "POST",
        f"/messages/{sent['id']}/modify",
        json={"addLabelIds": ["STARRED"]},
    )
    call("gmail.users.messages.trash", "POST", f"/messages/{sent['id']}/trash")
    call("gmail.users.messages.untrash", "POST", f"/messages/{sent['id']}/untrash")
    inserted = call(
        "gmail.users.messages.insert", "POST", "/messages", json={"raw": b64url(make_raw(BOB, ALICE, "ins"))}
    )
    call(
        "gmail.users.messages.import",
        "POST",
        "/messages/import",
        json={"raw": b64url(make_raw(BOB, ALICE, "imp"))},
    )
    call(
        "gmail.users.messages.batchModify",
        "POST",
        "/messages/batchModify",
        json={"ids": [inserted["id"]], "addLabelIds": ["UNREAD"]},
    )
    call("gmail.users.history.list", "GET", "/history", params={"startHistoryId": profile["historyId"]})
    call("gmail.users.watch", "POST", "/watch", json={"topicName": "projects/p/topics/t"})
    call("gmail.users.stop", "POST", "/stop")
    call("gmail.users.settings.sendAs.list", "GET", "/settings/sendAs")
    call("gmail.users.messages.delete", "DELETE", f"/messages/{inserted['id']}")
    call("gmail.users.labels.delete", "DELETE", f"/labels/{label['id']}")
    assert len(checks) >= 20


# --- (b) the official client ---------------------------------------------------------------


def test_official_client_end_to_end(sim: GoogleSim, client: httpx.Client, doc: dict[str, Any]) -> None:
    scopes = ["openid", "email", "profile", MODIFY]
    tokens = login(client, sim, scopes)
    svc = Service(sim, tokens, tokens["scope"].split())
    users = svc.gmail.users()
    try:
        profile = users.getProfile(userId="me").execute()
        assert profile["emailAddress"] == ALICE and profile["messagesTotal"] == 40
        start_history = profile["historyId"]

        # list, paging with list_next
        ids: list[str] = []
        request = users.messages().list(userId="me", maxResults=15)
        while request is not None:
            page = request.execute()
            assert validate(doc, "ListMessagesResponse", page) == []
            ids += [m["id"] for m in page.get("messages", [])]
            request = users.messages().list_next(request, page)
        listed_all = users.messages().list(userId="me", includeSpamTrash=True, maxResults=500).execute()
        assert len(ids) == len(set(ids)) <= len(listed_all["messages"]) == 40

        # get in every format
        for fmt in ("minimal", "metadata", "full", "raw"):
            msg = users.messages().get(userId="me", id=ids[0], format=fmt).execute()
            assert validate(doc, "Message", msg) == []
            assert ("payload" in msg) == (fmt in ("full", "metadata"))
            assert ("raw" in msg) == (fmt == "raw")
        meta = (
            users.messages()
            .get(userId="me", id=ids[0], format="metadata", metadataHeaders=["Subject"])
            .execute()
        )
        assert [h["name"] for h in meta["payload"]["headers"]] == ["Subject"]
        raw = base64.urlsafe_b64decode(
            users.messages().get(userId="me", id=ids[0], format="raw").execute()["raw"]
        )
        assert sim.mailbox(ALICE).messages[ids[0]].raw == raw

        # attachments: find a full payload with an attachmentId
        with_attachment = (
            users.messages().list(userId="me", q="has:attachment").execute()["messages"][0]["id"]
        )
        full = users.messages().get(userId="me", id=with_attachment).execute()
        parts = [full["payload"]]
        att_part = None
        while parts:
            part = parts.pop()
            parts += part.get("parts", [])
            if part["body"].get("attachmentId"):
                att_part = part
        assert att_part is not None
        att = (
            users.messages()
            .attachments()
            .get(userId="me", messageId=with_attachment, id=att_part["body"]["attachmentId"])
            .execute()
        )
        assert att["size"] == att_part["body"]["size"] == len(base64.urlsafe_b64decode(att["data"]))

        # send, then reply in the same thread; Bob (a simulated user) receives both
        first = (
            users.messages().send(userId="me", body={"raw": b64url(make_raw(ALICE, BOB, "Plans"))}).execute()
        )
        assert first["labelIds"] == ["SENT"]
        first_mid = sim.mailbox(ALICE).messages[first["id"]].parsed.message_id
        reply_raw = make_raw(ALICE, BOB, "Re: Plans", In_Reply_To=first_mid, References=first_mid)
        reply = (
            users.messages()
            .send(userId="me", body={"raw": b64url(reply_raw), "threadId": first["threadId"]})
            .execute()
        )
        assert reply["threadId"] == first["threadId"]
        bob_box = sim.mailbox(BOB)
        assert len(bob_box.messages) == 2 and len(bob_box.threads) == 1
        assert [r.recipients for r in sim.outbox] == [[BOB], [BOB]]

        # a ~300 KB message through a resumable media upload in two chunks
        big = make_raw(ALICE, BOB, "Big one", "x" * 300_000)
        media = MediaIoBaseUpload(
            io.BytesIO(big), mimetype="message/rfc822", chunksize=256 * 1024, resumable=True
        )
        uploaded = users.messages().send(userId="me", body={}, media_body=media).execute()
        assert sim.mailbox(ALICE).messages[uploaded["id"]].parsed.subject == "Big one"
        simple = MediaIoBaseUpload(io.BytesIO(make_raw(BOB, ALICE, "Imported")), mimetype="message/rfc822")
        imported = (
            users.messages().import_(userId="me", body={"labelIds": ["INBOX"]}, media_body=simple).execute()
        )
        assert imported["labelIds"] == ["INBOX"]

        # modify, batchModify, trash/untrash, threads
        label = users.labels().create(userId="me", body={"name": "CRM/Synced"}).execute()
        unread = users.messages().list(userId="me", labelIds=["UNREAD"]).execute()["messages"][0]["id"]
        modified = (
            users.messages()
            .modify(userId="me", id=unread, body={"addLabelIds": [label["id"]], "removeLabelIds": ["UNREAD"]})
            .execute()
        )
        assert label["id"] in modified["labelIds"] and "UNREAD" not in modified["labelIds"]
        assert users.labels().get(userId="me", id=label["id"]).execute()["messagesTotal"] == 1
        users.messages().batchModify(
            userId="me", body={"ids": ids[1:4], "addLabelIds": ["IMPORTANT"]}
        ).execute()
        trashed = users.messages().trash(userId="me", id=ids[4]).execute()
        assert "TRASH" in trashed["labelIds"] and "INBOX" not in trashed["labelIds"]
        users.messages().untrash(userId="me", id=ids[4]).execute()
        thread = users.threads().get(userId="me", id=first["threadId"]).execute()
        assert [m["id"] for m in thread["messages"]] == [first["id"], reply["id"]]

        # drafts
        draft = (
            users.drafts()
            .create(userId="me", body={"message": {"raw": b64url(make_raw(ALICE, BOB, "Draft"))}})
            .execute()
        )
        assert draft["message"]["labelIds"] == ["DRAFT"]
        updated = (
            users.drafts()
            .update(
                userId="me",
                id=draft["id"],
                body={"message": {"raw": b64url(make_raw(ALICE, BOB, "Draft v2"))}},
            )
            .execute()
        )
        assert updated["id"] == draft["id"] and updated["message"]["id"] != draft["message"]["id"]
        assert [d["id"] for d in users.drafts().list(userId="me").execute()["drafts"]] == [draft["id"]]
        got = users.drafts().get(userId="me", id=draft["id"], format="full").execute()
        assert validate(doc, "Draft", got) == []
        sent_draft = users.drafts().send(userId="me", body={"id": draft["id"]}).execute()
        assert sent_draft["labelIds"] == ["SENT"]
        assert users.drafts().list(userId="me").execute() == {"resultSizeEstimate": 0}

        # history since the profile's historyId reflects all of the above
        history: list[dict[str, Any]] = []
        request = users.history().list(userId="me", startHistoryId=start_history, maxResults=5)
        while request is not None:
            page = request.execute()
            assert validate(doc, "ListHistoryResponse", page) == []
            history += page.get("history", [])
            request = users.history().list_next(request, page)
        added = {h["messagesAdded"][0]["message"]["id"] for h in history if "messagesAdded" in h}
        assert {first["id"], reply["id"], uploaded["id"], imported["id"], sent_draft["id"]} <= added
        assert any(h.get("labelsAdded", [{}])[0].get("labelIds") == [label["id"]] for h in history)
        assert any(h.get("labelsRemoved", [{}])[0].get("labelIds") == ["UNREAD"] for h in history)
        assert any("messagesDeleted" in h for h in history)  # the replaced draft message
        ids_seen = [int(h["id"]) for h in history]
        assert ids_seen == sorted(ids_seen) and len(set(ids_seen)) == len(ids_seen)
        only_added = (
            users.history()
            .list(userId="me", startHistoryId=start_history, historyTypes="messageAdded")
            .execute()
        )
        assert all(set(h) == {"id", "messages", "messagesAdded"} for h in only_added["history"])

        # a batch of 25 gets
        results: dict[str, Any] = {}

        def collect(request_id: str, response: Any, exception: Exception | None) -> None:
            results[request_id] = exception or response

        batch = svc.gmail.new_batch_http_request(callback=collect)
        for mid in ids[:25]:
            batch.add(users.messages().get(userId="me", id=mid, format="metadata"), request_id=mid)
        batch.execute()
        assert sorted(results) == sorted(ids[:25])
        assert all(isinstance(r, dict) and r["id"] == k for k, r in results.items())
        assert sum(1 for c in sim.calls if c.batch) == 25

        # a stale historyId is a 404
        sim.expire_history(ALICE)
        with pytest.raises(HttpError) as stale:
            users.history().list(userId="me", startHistoryId=start_history).execute()
        assert stale.value.resp.status == 404
        fresh = users.getProfile(userId="me").execute()["historyId"]
        assert users.history().list(userId="me", startHistoryId=fresh).execute() == {"historyId": fresh}

        # the access token expires: the 401 makes google-auth refresh against the simulator's /token
        old_token = svc.creds.token
        sim.expire_access_tokens(ALICE)
        assert users.getProfile(userId="me").execute()["emailAddress"] == ALICE
        assert svc.creds.token != old_token
        assert [c.status for c in sim.calls[-2:]] == [401, 200]
    finally:
        svc.close()


# --- (c) OAuth -----------------------------------------------------------------------------


def test_discovery_document_and_consent_page(sim: GoogleSim, client: httpx.Client) -> None:
    conf = client.get("/.well-known/openid-configuration").json()
    assert conf["issuer"] == sim.base_url
    for key in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
        "jwks_uri",
    ):
        assert conf[key].startswith(sim.base_url)
    assert "S256" in conf["code_challenge_methods_supported"]
    assert conf["id_token_signing_alg_values_supported"] == ["RS256"]
    assert READONLY in conf["scopes_supported"] and "openid" in conf["scopes_supported"]

    scopes = ["openid", "email", READONLY, SEND]
    params = auth_params(sim, scopes, pkce()[1])
    page, resp = consent(client, params, decision="deny")
    for scope in ("openid", AUTH + "userinfo.email", READONLY, SEND):
        assert f'data-scope="{scope}"' in page
    assert "View your email messages and settings" in page and "Send email on your behalf" in page
    assert redirect_query(resp) == {"error": "access_denied", "state": params["state"]}

    # the form may also be posted straight back to the authorization endpoint
    direct = client.post("/o/oauth2/v2/auth", data={**params, "decision": "allow"})
    assert set(redirect_query(direct)) == {"state", "code", "scope", "authuser", "prompt"}

    # errors Google shows as a page, never redirected
    bad_client = client.get("/o/oauth2/v2/auth", params={**params, "client_id": "nope"})
    assert bad_client.status_code == 401 and "invalid_client" in bad_client.text
    bad_scope = client.get("/o/oauth2/v2/auth", params={**params, "scope": "openid gmail.everything"})
    assert bad_scope.status_code == 400 and "invalid_scope" in bad_scope.text


def test_code_exchange_rules(sim: GoogleSim, client: httpx.Client) -> None:
    verifier, challenge = pkce()
    params = auth_params(sim, [READONLY], challenge)

    def fresh_code() -> str:
        _, resp = consent(client, params)
        return redirect_query(resp)["code"]

    # PKCE
    r = exchange(client, sim, fresh_code(), "wrong-verifier-" + "x" * 40)
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid code verifier.",
    }
    r = exchange(client, sim, fresh_code(), None)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # redirect_uri must match
    r = exchange(client, sim, fresh_code(), verifier, redirect_uri="http://127.0.0.1:1/elsewhere")
    assert r.status_code == 400 and r.json()["error"] == "redirect_uri_mismatch"
    # wrong client secret, HTTP Basic auth
    code = fresh_code()
    r = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=(sim.client_id, "wrong"),
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    # success with HTTP Basic, then the code is spent
    r = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=(sim.client_id, sim.client_secret or ""),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["scope"] == READONLY
    assert "refresh_token" in body and "id_token" not in body
    reuse = exchange(client, sim, code, verifier)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    r = client.post(
        "/token", data={"grant_type": "password", "client_id": sim.client_id, "client_secret": "x"}
    )
    assert r.status_code == 401
    r = client.post(
        "/token",
        data={"grant_type": "password", "client_id": sim.client_id, "client_secret": sim.client_secret},
    )
    assert r.json()["error"] == "unsupported_grant_type"


def _verify_with_jwks(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    head_b64, payload_b64, sig_b64 = token.split(".")

    def dec(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    header = json.loads(dec(head_b64))
    assert header["alg"] == "RS256"
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = rsa.RSAPublicNumbers(
        int.from_bytes(dec(jwk["e"]), "big"), int.from_bytes(dec(jwk["n"]), "big")
    ).public_key()
    public.verify(dec(sig_b64), f"{head_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    claims: dict[str, Any] = json.loads(dec(payload_b64))
    return claims


def test_id_token_userinfo_and_tokeninfo(sim: GoogleSim, client: httpx.Client) -> None:
    tokens = login(client, sim, ["openid", "email", "profile", READONLY])
    assert tokens["scope"].split() == ["openid", AUTH + "userinfo.email", AUTH + "userinfo.profile", READONLY]
    claims = _verify_with_jwks(tokens["id_token"], client.get("/oauth2/v3/certs").json())
    alice = sim.state.user(ALICE)
    assert alice is not None
    assert claims["iss"] == sim.base_url and claims["aud"] == sim.client_id and claims["sub"] == alice.sub
    assert claims["email"] == ALICE and claims["email_verified"] is True and claims["name"] == "Alice Liddell"
    assert claims["nonce"] == tokens["_nonce"] and claims["exp"] > claims["iat"]
    # google-auth verifies it too, from the PEM certificates endpoint
    with requests.Session() as session:
        verified = google.oauth2.id_token.verify_token(
            tokens["id_token"],
            GoogleAuthRequest(session),
            audience=sim.client_id,
            certs_url=sim.base_url + "/oauth2/v1/certs",
        )
    assert verified["email"] == ALICE

    info = client.get("/v1/userinfo", headers=bearer(tokens["access_token"])).json()
    assert info == {
        "sub": alice.sub,
        "name": "Alice Liddell",
        "given_name": "Alice",
        "family_name": "Liddell",
        "picture": alice.picture,
        "email": ALICE,
        "email_verified": True,
    }
    assert client.get("/v1/userinfo", headers=bearer("nope")).status_code == 401
    tinfo = client.get("/tokeninfo", params={"access_token": tokens["access_token"]}).json()
    assert tinfo["aud"] == sim.client_id and tinfo["email"] == ALICE and READONLY in tinfo["scope"].split()


def test_refresh_invalid_grant_fault_revoke_and_password_change(sim: GoogleSim, client: httpx.Client) -> None:
    tokens = login(client, sim, [READONLY])
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    }
    r = client.post("/token", data=refresh)
    assert r.status_code == 200 and r.json()["scope"] == READONLY and "refresh_token" not in r.json()
    new_access = r.json()["access_token"]
    assert client.get("/gmail/v1/users/me/profile", headers=bearer(new_access)).status_code == 200

    # injected invalid_grant, once; google-auth surfaces it as RefreshError
    sim.fail_next_refresh()
    creds = google.oauth2.credentials.Credentials(
        None,
        refresh_token=tokens["refresh_token"],
        token_uri=sim.token_uri,
        client_id=sim.client_id,
        client_secret=sim.client_secret,
    )
    with requests.Session() as session, pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(GoogleAuthRequest(session))
    assert client.post("/token", data=refresh).status_code == 200

    # revoking the access token revokes the grant: refresh now fails
    assert client.post("/revoke", params={"token": new_access}).status_code == 200
    assert client.get("/gmail/v1/users/me/profile", headers=bearer(new_access)).status_code == 401
    r = client.post("/token", data=refresh)
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    assert client.post("/revoke", params={"token": new_access}).json()["error"] == "invalid_token"

    # a password change revokes refresh tokens; the access token lives on until it expires
    tokens = login(client, sim, [READONLY])
    assert sim.change_password(ALICE) == 1
    refresh["refresh_token"] = tokens["refresh_token"]
    assert client.post("/token", data=refresh).json()["error"] == "invalid_grant"
    assert client.get("/gmail/v1/users/me/profile", headers=bearer(tokens["access_token"])).status_code == 200


def test_incremental_consent_and_refresh_token_only_once(sim: GoogleSim, client: httpx.Client) -> None:
    first = login(client, sim, ["openid", READONLY], prompt="select_account")
    assert "refresh_token" in first
    second = login(client, sim, [SEND], include_granted_scopes="true", prompt="select_account")
    assert set(second["scope"].split()) == {"openid", READONLY, SEND}
    assert "refresh_token" not in second  # Google: a refresh token only on first consent...
    third = login(client, sim, [SEND], include_granted_scopes="true")  # ...or with prompt=consent
    assert "refresh_token" in third
    narrow = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": third["refresh_token"],
            "scope": SEND,
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
        },
    ).json()
    assert narrow["scope"] == SEND
    # prompt=none with everything already granted skips the page
    _, challenge = pkce()
    r = client.get("/o/oauth2/v2/auth", params=auth_params(sim, [READONLY], challenge, prompt="none"))
    assert "code" in redirect_query(r)
    r = client.get("/o/oauth2/v2/auth", params=auth_params(sim, [MAIL], challenge, prompt="none"))
    assert redirect_query(r)["error"] == "consent_required"


def test_auth_and_scope_enforcement(sim: GoogleSim, client: httpx.Client) -> None:
    r = client.get("/gmail/v1/users/me/profile")
    assert r.status_code == 401 and gmail_error(r)["errors"][0]["reason"] == "required"
    r = client.get("/gmail/v1/users/me/profile", headers=bearer("ya29.bogus"))
    err = gmail_error(r)
    assert (
        r.status_code == 401
        and err["status"] == "UNAUTHENTICATED"
        and err["errors"][0]["reason"] == "authError"
    )
    assert "invalid_token" in r.headers["www-authenticate"]

    meta = bearer(sim.issue_tokens(ALICE, [METADATA])["access_token"])
    mid = client.get("/gmail/v1/users/me/messages", headers=meta).json()["messages"][0]["id"]
    for fmt in ("full", "raw", None):
        params = {"format": fmt} if fmt else {}
        r = client.get(f"/gmail/v1/users/me/messages/{mid}", headers=meta, params=params)
        assert r.status_code == 403, fmt
        assert gmail_error(r)["message"] == f"Metadata scope doesn't allow format {(fmt or 'full').upper()}"
    assert (
        client.get(
            f"/gmail/v1/users/me/messages/{mid}", headers=meta, params={"format": "metadata"}
        ).status_code
        == 200
    )
    r = client.get("/gmail/v1/users/me/messages", headers=meta, params={"q": "in:inbox"})
    assert r.status_code == 403 and "'q'" in gmail_error(r)["message"]
    assert (
        client.get("/gmail/v1/users/me/history", headers=meta, params={"startHistoryId": "1"}).status_code
        == 404
    )

    readonly = bearer(sim.issue_tokens(ALICE, [READONLY])["access_token"])
    r = client.post(
        "/gmail/v1/users/me/messages/send", headers=readonly, json={"raw": b64url(make_raw(ALICE, BOB, "x"))}
    )
    err = gmail_error(r)
    assert r.status_code == 403 and err["errors"][0]["reason"] == "insufficientPermissions"
    assert (
        client.post(f"/gmail/v1/users/me/messages/{mid}/modify", headers=readonly, json={}).status_code == 403
    )
    assert (
        client.delete(
            f"/gmail/v1/users/me/messages/{mid}",
            headers=bearer(sim.issue_tokens(ALICE, [MODIFY])["access_token"]),
        ).status_code
        == 403
    )
    send_only = bearer(sim.issue_tokens(ALICE, [SEND])["access_token"])
    assert client.get("/gmail/v1/users/me/messages", headers=send_only).status_code == 403
    r = client.post(
        "/gmail/v1/users/me/messages/send", headers=send_only, json={"raw": b64url(make_raw(ALICE, BOB, "x"))}
    )
    assert r.status_code == 200
    r = client.get(f"/gmail/v1/users/{BOB}/profile", headers=readonly)
    assert r.status_code == 403 and gmail_error(r)["message"] == f"Delegation denied for {ALICE}"
    assert client.get(f"/gmail/v1/users/{ALICE}/profile", headers=readonly).status_code == 200
    assert client.get("/gmail/v1/users/me/messages/ffff", headers=readonly).status_code == 404
    r = client.get("/gmail/v1/users/me/messages/not-an-id", headers=readonly)
    assert r.status_code == 400 and gmail_error(r)["message"] == "Invalid id value"


# --- Gmail semantics -----------------------------------------------------------------------


def test_history_labels_threads_and_search(sim: GoogleSim, client: httpx.Client) -> None:
    h = bearer(sim.issue_tokens(ALICE, [MAIL])["access_token"])
    start = client.get("/gmail/v1/users/me/profile", headers=h).json()["historyId"]
    new_id = sim.deliver(ALICE, subject="Quarterly numbers", body="See the zebrafish numbers.\n")
    parent = sim.mailbox(ALICE).messages[new_id].parsed.message_id
    reply_id = sim.deliver(ALICE, subject="Re: Quarterly numbers", in_reply_to=parent)
    assert sim.mailbox(ALICE).messages[reply_id].thread_id == new_id
    unrelated = sim.deliver(ALICE, subject="Different subject", in_reply_to=parent)
    assert sim.mailbox(ALICE).messages[unrelated].thread_id == unrelated

    label = client.post("/gmail/v1/users/me/labels", headers=h, json={"name": "Clients/ACME"}).json()
    assert (
        client.post("/gmail/v1/users/me/labels", headers=h, json={"name": "clients/acme"}).status_code == 409
    )
    assert client.post("/gmail/v1/users/me/labels", headers=h, json={"name": "INBOX"}).status_code == 400
    assert client.delete("/gmail/v1/users/me/labels/INBOX", headers=h).status_code == 400
    bad = client.post(
        f"/gmail/v1/users/me/messages/{new_id}/modify", headers=h, json={"addLabelIds": ["Label_999"]}
    )
    assert bad.status_code == 400 and gmail_error(bad)["message"] == "Invalid label: Label_999"
    client.post(
        f"/gmail/v1/users/me/messages/{new_id}/modify",
        headers=h,
        json={"addLabelIds": [label["id"]], "removeLabelIds": ["UNREAD"]},
    )
    client.delete(f"/gmail/v1/users/me/messages/{unrelated}", headers=h)

    hist = client.get("/gmail/v1/users/me/history", headers=h, params={"startHistoryId": start}).json()
    kinds = [next(k for k in r if k not in ("id", "messages")) for r in hist["history"]]
    assert kinds == ["messagesAdded"] * 3 + ["labelsAdded", "messagesDeleted"]
    both = hist["history"][3]
    assert both["labelsAdded"][0]["labelIds"] == [label["id"]] and both["labelsRemoved"][0]["labelIds"] == [
        "UNREAD"
    ]
    assert int(hist["historyId"]) == max(int(r["id"]) for r in hist["history"])
    by_label = client.get(
        "/gmail/v1/users/me/history", headers=h, params={"startHistoryId": start, "labelId": label["id"]}
    ).json()
    assert [r["id"] for r in by_label["history"]] == [both["id"]]
    assert (
        client.get("/gmail/v1/users/me/history", headers=h, params={"startHistoryId": "x"}).status_code == 400
    )

    got = client.get(f"/gmail/v1/users/me/labels/{label['id']}", headers=h).json()
    assert got["messagesTotal"] == 1 and got["threadsTotal"] == 1 and got["messagesUnread"] == 0

    def search(q: str) -> set[str]:
        body = client.get("/gmail/v1/users/me/messages", headers=h, params={"q": q, "maxResults": 500}).json()
        return {m["id"] for m in body.get("messages", [])}

    assert search("label:clients-acme") == {new_id}
    assert search('subject:"quarterly numbers"') == {new_id, reply_id}
    assert search("zebrafish") == {new_id}
    assert search("zebrafish -in:inbox") == set()
    assert new_id in search("after:2020/01/01 is:read")
    assert search("before:2000/01/01") == set()
    client.post(f"/gmail/v1/users/me/messages/{reply_id}/trash", headers=h)
    spam_or_trash = {
        m.id for m in sim.mailbox(ALICE).messages.values() if {"SPAM", "TRASH"} & set(m.label_ids)
    }
    listed = {
        m["id"]
        for m in client.get("/gmail/v1/users/me/messages", headers=h, params={"maxResults": 500}).json()[
            "messages"
        ]
    }
    assert spam_or_trash and not spam_or_trash & listed
    assert spam_or_trash <= search("in:anywhere")
    # fields= partial responses
    partial = client.get(
        "/gmail/v1/users/me/messages", headers=h, params={"fields": "messages(id),resultSizeEstimate"}
    ).json()
    assert set(partial) == {"messages", "resultSizeEstimate"} and set(partial["messages"][0]) == {"id"}


# --- (d) faults and push -------------------------------------------------------------------


def test_rate_limit_and_server_faults(sim: GoogleSim, client: httpx.Client) -> None:
    h = bearer(sim.issue_tokens(ALICE, [READONLY])["access_token"])
    sim.fail_next(2, status=429, retry_after=7)
    for _ in range(2):
        r = client.get("/gmail/v1/users/me/profile", headers=h)
        err = gmail_error(r)
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert err["status"] == "RESOURCE_EXHAUSTED" and err["errors"][0]["reason"] == "rateLimitExceeded"
        assert err["errors"][0]["domain"] == "usageLimits"
    assert client.get("/gmail/v1/users/me/profile", headers=h).status_code == 200

    sim.fail_next(1, status=403)
    sim.fail_next(1, status=403, reason="rateLimitExceeded")
    r1, r2 = (client.get("/gmail/v1/users/me/labels", headers=h) for _ in range(2))
    assert (r1.status_code, gmail_error(r1)["errors"][0]["reason"]) == (403, "userRateLimitExceeded")
    assert (r2.status_code, gmail_error(r2)["errors"][0]["reason"]) == (403, "rateLimitExceeded")

    sim.fail_next(1, status=500)
    sim.fail_next(1, status=503)
    statuses = [client.get("/gmail/v1/users/me/profile", headers=h).status_code for _ in range(3)]
    assert statuses == [500, 503, 200]

    # per-method targeting and batch parts counting one each (through the admin API)
    assert (
        client.post(
            "/_sim/faults", json={"count": 2, "status": 429, "methods": ["gmail.users.messages.get"]}
        ).status_code
        == 200
    )
    assert client.get("/gmail/v1/users/me/profile", headers=h).status_code == 200
    tokens = sim.issue_tokens(ALICE, [READONLY])
    svc = Service(sim, tokens, [READONLY])
    try:
        ids = [
            m["id"]
            for m in svc.gmail.users().messages().list(userId="me", maxResults=5).execute()["messages"]
        ]
        outcome: dict[str, int] = {}

        def cb(request_id: str, response: Any, exc: HttpError | None) -> None:
            outcome[request_id] = exc.resp.status if exc else 200

        batch = svc.gmail.new_batch_http_request(callback=cb)
        for mid in ids:
            batch.add(svc.gmail.users().messages().get(userId="me", id=mid), request_id=mid)
        batch.execute()
        assert sorted(outcome.values()) == [200, 200, 200, 429, 429]
    finally:
        svc.close()


class _PushReceiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    event: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        type(self).event.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_watch_push_notification(sim: GoogleSim, client: httpx.Client) -> None:
    handler = type("Receiver", (_PushReceiver,), {"received": [], "event": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sim.set_push_endpoint(f"http://127.0.0.1:{server.server_address[1]}/push")
        h = bearer(sim.issue_tokens(ALICE, [READONLY])["access_token"])
        watch = client.post(
            "/gmail/v1/users/me/watch",
            headers=h,
            json={"topicName": "projects/crm/topics/gmail", "labelIds": ["INBOX"]},
        ).json()
        assert int(watch["expiration"]) > time.time() * 1000
        bad = client.post("/gmail/v1/users/me/watch", headers=h, json={"topicName": "gmail"})
        assert bad.status_code == 400

        sim.deliver(ALICE, subject="ping", label_ids=["SPAM"])  # filtered out by labelIds=INBOX
        new_id = sim.deliver(ALICE, subject="ping")
        assert handler.event.wait(5)
        sim.wait_for_pushes(1)
        (push,) = handler.received
        assert push["subscription"] == "projects/crm/subscriptions/inboxlink-sim-push"
        data = json.loads(base64.b64decode(push["message"]["data"]))
        assert data == {"emailAddress": ALICE, "historyId": int(sim.mailbox(ALICE).history_id)}
        assert push["message"]["messageId"] and push["message"]["publishTime"].endswith("Z")
        hist = client.get(
            "/gmail/v1/users/me/history", headers=h, params={"startHistoryId": int(watch["historyId"])}
        ).json()
        assert new_id in {r["messagesAdded"][0]["message"]["id"] for r in hist["history"]}

        client.post("/gmail/v1/users/me/stop", headers=h)
        sim.deliver(ALICE, subject="after stop")
        assert len(sim.push_log) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_admin_api(sim: GoogleSim, client: httpx.Client) -> None:
    r = client.post("/_sim/users", json={"email": "carol@example.com", "messages": 5, "seed": 2})
    assert r.status_code == 200
    tokens = client.post("/_sim/users/carol@example.com/tokens", json={"scopes": [READONLY]}).json()
    h = bearer(tokens["access_token"])
    assert client.get("/gmail/v1/users/me/profile", headers=h).json()["messagesTotal"] == 5
    delivered = client.post("/_sim/users/carol@example.com/deliver", json={"subject": "via admin"}).json()
    assert client.get(f"/gmail/v1/users/me/messages/{delivered['id']}", headers=h).status_code == 200
    client.post("/_sim/users/carol@example.com/expire-history")
    assert (
        client.get("/gmail/v1/users/me/history", headers=h, params={"startHistoryId": "1"}).status_code == 404
    )
    state = client.get("/_sim/state").json()
    assert {u["email"] for u in state["users"]} == {ALICE, BOB, "carol@example.com"}
    assert client.post("/_sim/users/nobody@example.com/deliver", json={}).status_code == 404
    assert [c["method"] for c in client.get("/_sim/calls").json()][-1] == "gmail.users.history.list"


def test_cli_serves() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inboxlink_sim",
            "google",
            "--port",
            str(port),
            "--user",
            ALICE,
            "--messages",
            "3",
            "--seed",
            "1",
            "--client-id",
            "cli-client",
            "--client-secret",
            "cli-secret",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        with httpx.Client(base_url=base, timeout=2) as c:
            while True:
                try:
                    conf = c.get("/.well-known/openid-configuration").json()
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, "simulator did not start"
                    time.sleep(0.05)
            assert conf["issuer"] == base
            tokens = c.post(
                f"/_sim/users/{ALICE}/tokens", json={"scopes": [READONLY], "clientId": "cli-client"}
            )
            profile = c.get(
                "/gmail/v1/users/me/profile", headers=bearer(tokens.json()["access_token"])
            ).json()
            assert profile["messagesTotal"] == 3
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_discovery_document_is_rerooted(sim: GoogleSim, client: httpx.Client) -> None:
    served = client.get("/discovery/v1/apis/gmail/v1/rest").json()
    assert served["rootUrl"] == sim.base_url + "/" == discovery_for(sim.base_url)["rootUrl"]
