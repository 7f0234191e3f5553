"""The REST API over HTTP (FastAPI's test client): pair, list, show, sync, transitions, unpair,
errors as structured JSON, the optional bearer token, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import make_message


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allow_private_hosts=True)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def body_for(user: MailUser, **kw: object) -> dict[str, object]:
    return {
        "email": user.email,
        "username": user.email,
        "password": user.password,
        "imap_host": user.host,
        "imap_port": user.port,
        "security": "none",
        **kw,
    }


def test_account_lifecycle(client: TestClient, dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.write_messages(mail_user.email, "INBOX", [make_message(i) for i in range(4)])
    created = client.post("/api/v1/accounts", json=body_for(mail_user))
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["status"] == "pending" and "password" not in created.text
    assert mail_user.password not in created.text
    synced = client.post(f"/api/v1/accounts/{account['id']}/sync").json()
    assert synced["status"] == "connected" and synced["messages"] == 4
    shown = client.get(f"/api/v1/accounts/{account['id']}").json()
    assert shown["status_reason"] == "Connected" and shown["message_count"] == 4
    assert [a["id"] for a in client.get("/api/v1/accounts").json()] == [account["id"]]
    folders = client.get(f"/api/v1/accounts/{account['id']}/folders").json()
    assert {"INBOX", "Sent"} <= {f["key"] for f in folders}
    dovecot.set_password(mail_user.email, "changed-password")
    assert client.post(f"/api/v1/accounts/{account['id']}/sync").json()["status"] == "auth_error"
    repaired = client.post(f"/api/v1/accounts/{account['id']}/repair", json={"password": "changed-password"})
    assert repaired.status_code == 200 and repaired.json()["status"] == "pending"
    assert client.post(f"/api/v1/accounts/{account['id']}/sync").json()["fetched"] == 0
    history = client.get(f"/api/v1/accounts/{account['id']}/transitions").json()
    assert [h["to_status"] for h in history] == [
        "pending",
        "syncing",
        "connected",
        "syncing",
        "auth_error",
        "pending",
        "syncing",
        "connected",
    ]
    gone = client.delete(f"/api/v1/accounts/{account['id']}").json()
    assert gone["status"] == "disconnected" and gone["message_count"] == 4
    assert client.post(f"/api/v1/accounts/{account['id']}/sync").json()["status"] == "disconnected"


def test_errors_are_structured(client: TestClient, mail_user: MailUser) -> None:
    wrong = client.post("/api/v1/accounts", json=body_for(mail_user, password="nope"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "auth_error" and "nope" not in wrong.text
    down = client.post("/api/v1/accounts", json=body_for(mail_user, imap_port=1))
    assert down.status_code == 503 and down.json()["error"]["code"] == "connect_error"
    missing = client.get("/api/v1/accounts/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    invalid = client.post("/api/v1/accounts", json=body_for(mail_user, imap_port=0))
    assert invalid.status_code == 422


def test_refused_host(tmp_path: Path, mail_user: MailUser) -> None:
    with TestClient(create_app(Settings(home=tmp_path / "h", allow_private_hosts=False))) as c:
        r = c.post("/api/v1/accounts", json=body_for(mail_user))
    assert r.status_code == 422 and r.json()["error"]["code"] == "host_refused"


def test_api_token(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", api_token="s3cret-token")
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/v1/accounts").status_code == 401
        assert c.get("/api/v1/accounts", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/accounts", headers={"Authorization": "Bearer s3cret-token"}).json() == []


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/api/v1/accounts",
        "/api/v1/accounts/{account_id}",
        "/api/v1/accounts/{account_id}/sync",
        "/api/v1/accounts/{account_id}/transitions",
    } <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_account_messages_pages_through_the_mailbox(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    def mid(i: int) -> str:
        return f"m{i}@pages.example"

    dovecot.write_messages(mail_user.email, "INBOX", [make_message(i, msgid=f"<{mid(i)}>") for i in range(7)])
    dovecot.write_messages(
        mail_user.email, "Sent", [make_message(i, msgid=f"<{mid(i)}>") for i in range(7, 10)]
    )
    dovecot.doveadm("flags", "add", "-u", mail_user.email, "\\Seen", "mailbox", "INBOX", "uid", "2")
    account = client.post("/api/v1/accounts", json=body_for(mail_user)).json()["id"]
    assert client.post(f"/api/v1/accounts/{account}/sync").json()["messages"] == 10
    seen: list[dict[str, object]] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        page = client.get(f"/api/v1/accounts/{account}/messages", params={"after": after, "limit": 3})
        assert page.status_code == 200, page.text
        seen.extend(page.json()["messages"])
        after = page.json()["next_after"]
        pages += 1
    assert pages == 4 and len({m["id"] for m in seen}) == 10, "keyset pages: each row once"
    by_mid = {m["message_id"]: m for m in seen}
    assert set(by_mid) == {mid(i) for i in range(10)}
    second = by_mid[mid(1)]
    assert second["placements"] == [{"folder": "INBOX", "remote_key": "2", "flags": ["\\Seen"]}]
    assert second["from"]["email"] and second["subject"] and second["date"]
    sent = client.get(f"/api/v1/accounts/{account}/messages", params={"folder": "Sent"}).json()
    assert {m["message_id"] for m in sent["messages"]} == {mid(i) for i in range(7, 10)}
    assert sent["next_after"] is None
    missing = client.get(f"/api/v1/accounts/{account}/messages", params={"folder": "Nope"})
    assert missing.status_code == 404
    assert client.get(f"/api/v1/accounts/{account}/messages", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/accounts/no-such/messages").status_code == 404


def test_a_headers_only_message_has_no_raw_to_download(
    client: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    dovecot.write_messages(mail_user.email, "INBOX", [make_message(1, msgid="<ho@pages.example>")])
    account = client.post("/api/v1/accounts", json=body_for(mail_user, headers_only=True)).json()["id"]
    assert client.post(f"/api/v1/accounts/{account}/sync").json()["messages"] == 1
    row = client.get(f"/api/v1/accounts/{account}/messages").json()["messages"][0]
    assert row["headers_only"] is True
    for path in ("raw", "attachments/0"):
        answer = client.get(f"/api/v1/messages/{row['id']}/{path}")
        assert answer.status_code == 409 and "only the headers" in answer.json()["error"]["message"]
