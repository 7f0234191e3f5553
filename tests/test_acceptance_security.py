"""Acceptance, black-box, security: what README.md and docs/architecture.md promise about who may do
what, which hosts users may name, what reaches an SMTP server or a browser, and where secrets may
never appear. Everything goes through the public REST API (TestClient, an in-process uvicorn, or a
real `inboxlink serve`), mail is put on the private Dovecot with imaplib APPEND, sends go to aiosmtpd.

Promises asserted, in the docs' words:
- access (architecture "Access"): the operator's token is the system; a user's token is that user;
  an account's owner sees all its mail, others only linked mail at the level the account shares,
  never unlinked mail; only the owner (or the operator) manages an account (others: the same 404 as
  for none); raw and attachments need `everything` (403 below it); users, settings, blocklist and
  webhooks are the operator's.
- network guard (README `INBOXLINK_ALLOW_PRIVATE_HOSTS`, architecture "Webhooks"): loopback/private
  addresses refused unless allowed, for mail hosts and webhook URLs, checked when saved and again
  before every attempt; a redirect is retried, never followed.
- downloads are always downloads (`Content-Disposition: attachment`, `nosniff`, a sandbox CSP);
  message HTML is sanitized (nh3).
- secrets (API tokens, passwords, webhook secrets) never in the data directory, logs or answers.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import serving
from tests.test_acceptance_api import assert_secret_nowhere, error_of, serve
from tests.test_acceptance_crm import OPERATOR, bearer, ok, put, received
from tests.test_api import body_for
from tests.test_send import Mailer, mailer  # noqa: F401 (mailer: a fixture, aiosmtpd on a free port)

OP = bearer(OPERATOR)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    """The API with INBOXLINK_API_TOKEN set and private hosts allowed (the private Dovecot is on
    loopback); requests carry no token unless they say."""
    settings = Settings(home=tmp_path / "home", allow_private_hosts=True, api_token=OPERATOR)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[TestClient]:
    """The API as shipped: INBOXLINK_ALLOW_PRIVATE_HOSTS unset (0), operator token set."""
    settings = Settings(home=tmp_path / "strict", allow_private_hosts=False, api_token=OPERATOR)
    with TestClient(create_app(settings), headers=OP) as c:
        yield c


def attached(subject: str, sender: str, to: str, msgid: str, *files: tuple[str, str, bytes]) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = "Mon, 03 Mar 2025 10:00:00 +0000"
    m["Message-ID"] = f"<{msgid}>"
    m.set_content("body text of " + subject + "\n")
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(m)


def refused(answer: httpx.Response) -> None:
    """An object of another user: the documented 404 (as for none) or 403, in the error shape, and
    nothing of the object in the answer."""
    assert answer.status_code in (403, 404), (answer.request.method, answer.request.url, answer.text)
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] in ("not_found", "forbidden"), body


# == 1. authorization across users =================================================================
@pytest.fixture
def world(
    api: TestClient,
    dovecot: Dovecot,
    mail_user: MailUser,
    mailer: tuple[Mailer, int],  # noqa: F811
) -> dict[str, Any]:
    """Alice (mailbox with SMTP, shared at `metadata`), Bob (own mailbox), records that link one of
    Alice's messages, one unlinked private message with an attachment, one ambiguous (review) one,
    an outbox draft of Alice's and a webhook of the operator's."""
    c = api
    _smtp, port = mailer
    bob_box = dovecot.add_user(f"bob.{mail_user.email}", "bob-password-1234")
    alice = ok(c.post("/api/v1/users", json={"name": "Alice", "email": mail_user.email}, headers=OP), 201)
    bob = ok(c.post("/api/v1/users", json={"name": "Bob", "email": bob_box.email}, headers=OP), 201)
    ok(
        c.post(
            "/api/v1/records/person", json={"name": "Client", "emails": ["client@buyer.example"]}, headers=OP
        ),
        201,
    )
    for name in ("Twin One", "Twin Two"):
        ok(
            c.post(
                "/api/v1/records/person", json={"name": name, "emails": ["shared@twins.example"]}, headers=OP
            ),
            201,
        )
    me = mail_user.email
    put(
        mail_user,
        attached("linked offer", "client@buyer.example", me, "linked@buyer.example",
                 ("offer.txt", "text/plain", b"L")),
        attached("private payroll", "hr@stranger.example", me, "private@stranger.example",
                 ("payroll.txt", "text/plain", b"SECRET SALARY")),
        attached("twin question", "shared@twins.example", me, "twin@twins.example"),
    )  # fmt: skip
    a_acc = ok(
        c.post(
            "/api/v1/accounts",
            json=body_for(mail_user, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none"),
            headers=bearer(alice["token"]),
        ),
        201,
    )
    b_acc = ok(c.post("/api/v1/accounts", json=body_for(bob_box), headers=bearer(bob["token"])), 201)
    aid = a_acc["id"]
    ok(c.patch(f"/api/v1/accounts/{aid}", json={"visibility": "metadata"}, headers=bearer(alice["token"])))
    assert ok(c.post(f"/api/v1/accounts/{aid}/sync", headers=bearer(alice["token"])))["status"] == "connected"
    listed = ok(c.get(f"/api/v1/accounts/{aid}/messages", headers=bearer(alice["token"])))["messages"]
    ids = {m["subject"]: m["id"] for m in listed}
    draft = ok(
        c.post(
            "/api/v1/outbox",
            json={"account_id": aid, "to": ["client@buyer.example"], "subject": "alice draft", "text": "x",
                  "draft": True},
            headers=bearer(alice["token"]),
        ),
        201,
    )  # fmt: skip
    review = ok(c.get("/api/v1/review", headers=OP))
    items = review["items"] if isinstance(review, dict) else review
    hook = ok(
        c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "event_types": ["*"]}, headers=OP),
        201,
    )
    return {
        "alice": alice,
        "bob": bob,
        "aid": aid,
        "bid": b_acc["id"],
        "ids": ids,
        "draft": draft,
        "review": items,
        "hook": hook,
        "bob_box": bob_box,
    }


def test_a_user_cannot_read_or_manage_another_users_account(api: TestClient, world: dict[str, Any]) -> None:
    c, aid = api, world["aid"]
    b = bearer(world["bob"]["token"])
    for method, path, body in [
        ("GET", "", None),
        ("PATCH", "", {"visibility": "everything"}),
        ("POST", "/sync", None),
        ("POST", "/repair", {"password": "anything-at-all"}),
        ("GET", "/transitions", None),
        ("GET", "/folders", None),
        ("GET", "/messages", None),
        ("GET", "/permissions", None),
        ("DELETE", "", None),
    ]:
        answer = c.request(method, f"/api/v1/accounts/{aid}{path}", json=body, headers=b)
        error_of(answer, 404, "not_found")  # "others get the same 404 as for none"
    assert [a["id"] for a in ok(c.get("/api/v1/accounts", headers=b))] == [world["bid"]]
    # re-pairing Alice's mailbox under Bob's token (same address) is refused, nothing changes
    alice_mail = ok(c.get(f"/api/v1/accounts/{aid}", headers=OP))
    stolen = c.post(
        "/api/v1/accounts",
        json={"email": alice_mail["email"].upper(), "username": "x", "password": "y",
              "imap_host": "127.0.0.1",
              "imap_port": 1, "security": "none"},
        headers=b,
    )  # fmt: skip
    error_of(stolen, 409, "conflict")
    after = ok(c.get(f"/api/v1/accounts/{aid}", headers=OP))
    assert after["owner_id"] == world["alice"]["id"] and after["status"] == "connected"
    assert after["visibility"] == "metadata"
    # the operator-only header does not turn a user's token into someone else
    as_alice = {**b, "X-Inboxlink-User": world["alice"]["id"]}
    error_of(c.get(f"/api/v1/accounts/{aid}", headers=as_alice), 404, "not_found")
    # no token, a wrong token: 401
    error_of(c.get(f"/api/v1/accounts/{aid}"), 401, "unauthorized")
    error_of(c.get(f"/api/v1/accounts/{aid}", headers=bearer("not-a-token")), 401, "unauthorized")


def test_a_user_sees_a_teammates_mail_only_as_shared_and_never_unlinked(
    api: TestClient, world: dict[str, Any]
) -> None:
    c, ids = api, world["ids"]
    b = bearer(world["bob"]["token"])
    # linked, shared at metadata: shown without subject/body; raw and attachments 403
    linked = ok(c.get(f"/api/v1/messages/{ids['linked offer']}", headers=b))
    assert linked["subject"] is None and not linked.get("text") and not linked.get("html"), linked
    error_of(c.get(f"/api/v1/messages/{ids['linked offer']}/raw", headers=b), 403, "forbidden")
    error_of(c.get(f"/api/v1/messages/{ids['linked offer']}/attachments/0", headers=b), 403, "forbidden")
    # unlinked: nothing, by id, raw or attachment
    for suffix in ("", "/raw", "/attachments/0"):
        answer = c.get(f"/api/v1/messages/{ids['private payroll']}{suffix}", headers=b)
        refused(answer)
        assert "payroll" not in answer.text and "SECRET" not in answer.text
    for q in ("payroll", "SALARY", "linked"):
        found = ok(c.get("/api/v1/search", params={"q": q}, headers=b))
        assert "payroll" not in str(found) and "linked offer" not in str(found), (q, found)
    # the review queue: Alice's ambiguous message is not Bob's to see or answer
    assert world["review"], "two people sharing an address must make a review item"
    item = world["review"][0]
    assert "twin question" not in str(ok(c.get("/api/v1/review", headers=b)))
    refused(c.post(f"/api/v1/review/{item['id']}", json={"record_id": None}, headers=b))
    assert any(i["id"] == item["id"] for i in _items(ok(c.get("/api/v1/review", headers=OP))))
    # the owner sees all of it
    a = bearer(world["alice"]["token"])
    assert ok(c.get(f"/api/v1/messages/{ids['private payroll']}", headers=a))["subject"] == "private payroll"
    assert (
        c.get(f"/api/v1/messages/{ids['private payroll']}/attachments/0", headers=a).content
        == b"SECRET SALARY"
    )


def _items(review: Any) -> list[dict[str, Any]]:
    return review["items"] if isinstance(review, dict) else review


def test_a_user_cannot_touch_another_users_outbox_or_send_from_their_mailbox(
    api: TestClient,
    world: dict[str, Any],
    mailer: tuple[Mailer, int],  # noqa: F811
) -> None:
    c, oid = api, world["draft"]["id"]
    smtp, _port = mailer
    b = bearer(world["bob"]["token"])
    body = {"account_id": world["aid"], "to": ["evil@bob.example"], "subject": "hijack", "text": "x"}
    for method, path, payload in [
        ("GET", "", None),
        ("PUT", "", body),
        ("POST", "/send", {}),
        ("DELETE", "", None),
    ]:
        refused(c.request(method, f"/api/v1/outbox/{oid}{path}", json=payload, headers=b))
    assert oid not in str(ok(c.get("/api/v1/outbox", headers=b)))
    # Bob writing from Alice's mailbox: refused, nothing sent
    refused(c.post("/api/v1/outbox", json=body, headers=b))
    refused(c.post("/api/v1/outbox", json={**body, "draft": True}, headers=b))
    assert smtp.received == []
    shown = ok(c.get(f"/api/v1/outbox/{oid}", headers=bearer(world["alice"]["token"])))
    assert shown["status"] == "draft" and shown["subject"] == "alice draft", shown


def test_users_cannot_escalate_nor_reach_operator_only_actions(
    api: TestClient, world: dict[str, Any]
) -> None:
    c, hook = api, world["hook"]
    for token in (world["bob"]["token"], world["alice"]["token"]):
        b = bearer(token)
        error_of(
            c.post("/api/v1/users", json={"name": "Mallory", "email": "m@x.example"}, headers=b),
            403,
            "forbidden",
        )
        error_of(c.get("/api/v1/users", headers=b), 403, "forbidden")
        error_of(
            c.patch("/api/v1/settings/linking", json={"exclude_internal": False}, headers=b), 403, "forbidden"
        )
        error_of(c.post("/api/v1/blocklist", json={"value": "buyer.example"}, headers=b), 403, "forbidden")
        error_of(c.get("/api/v1/webhooks", headers=b), 403, "forbidden")
        error_of(c.get(f"/api/v1/webhooks/{hook['id']}", headers=b), 403, "forbidden")
        error_of(
            c.patch(f"/api/v1/webhooks/{hook['id']}", json={"enabled": False}, headers=b), 403, "forbidden"
        )
        error_of(c.delete(f"/api/v1/webhooks/{hook['id']}", headers=b), 403, "forbidden")
        error_of(c.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=b), 403, "forbidden")
        error_of(c.post(f"/api/v1/webhooks/{hook['id']}/test", headers=b), 403, "forbidden")
        error_of(
            c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "event_types": ["*"]}, headers=b),
            403,
            "forbidden",
        )
    # the webhook secret was shown once; the operator's own reads never show it again
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    assert secret not in c.get("/api/v1/webhooks", headers=OP).text
    assert secret not in c.get(f"/api/v1/webhooks/{hook['id']}", headers=OP).text
    # nothing changed
    assert ok(c.get(f"/api/v1/webhooks/{hook['id']}", headers=OP))["enabled"] is True
    assert {u["name"] for u in ok(c.get("/api/v1/users", headers=OP))} == {"Alice", "Bob"}
    assert ok(c.get("/api/v1/blocklist", headers=OP)) in ([], {"entries": []}, {"items": []})
    # user tokens are not echoed by the user list
    listed = c.get("/api/v1/users", headers=OP).text
    assert world["alice"]["token"] not in listed and world["bob"]["token"] not in listed


# == 2. the network guard (INBOXLINK_ALLOW_PRIVATE_HOSTS=0) =========================================
PRIVATE_HOSTS = [
    "127.0.0.1",
    "127.1",
    "::1",
    "169.254.169.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "0.0.0.0",
    "::",
    "fd00::1",
    "fe80::1",
    "localhost",
    "LOCALHOST.",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
]


def refused_host(answer: httpx.Response) -> None:
    """Refused by the guard (host_refused), or not even taken as a host (invalid: numeric forms
    such as 2130706433 or 0177.0.0.1); both 422, both refuse."""
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] in ("host_refused", "invalid"), answer.text


def _url(host: str) -> str:
    return f"http://[{host}]:8025/hook" if ":" in host else f"http://{host}:8025/hook"


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_webhook_urls_to_private_addresses_are_refused(strict: TestClient, host: str) -> None:
    answer = strict.post("/api/v1/webhooks", json={"url": _url(host), "event_types": ["*"]})
    refused_host(answer)
    assert strict.get("/api/v1/webhooks").json() == []


def test_a_webhook_url_cannot_be_changed_to_a_private_address(strict: TestClient) -> None:
    # a public-looking address (TEST-NET-3 is documentation space; nothing is sent here)
    created = strict.post(
        "/api/v1/webhooks", json={"url": "http://93.184.215.14:8025/hook", "event_types": ["*"]}
    )
    hook = ok(created, 201)
    for host in ("127.0.0.1", "2130706433", "::ffff:127.0.0.1", "169.254.169.254"):
        refused_host(strict.patch(f"/api/v1/webhooks/{hook['id']}", json={"url": _url(host)}))
    assert ok(strict.get(f"/api/v1/webhooks/{hook['id']}"))["url"] == "http://93.184.215.14:8025/hook"


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_mail_hosts_at_private_addresses_are_refused_at_pairing(strict: TestClient, host: str) -> None:
    body = {"email": "ana@example.com", "username": "ana", "password": "pw-never-shown", "imap_port": 143,
            "security": "none"}  # fmt: skip
    refused_host(strict.post("/api/v1/accounts", json={**body, "imap_host": host}))
    smtp = {"smtp_host": host, "smtp_port": 25, "smtp_security": "none"}
    # SMTP host refused too, even when the IMAP host is a public-looking name (checked first or not)
    answer = strict.post("/api/v1/accounts", json={**body, "imap_host": host, **smtp})
    refused_host(answer)
    assert "pw-never-shown" not in answer.text
    assert strict.get("/api/v1/accounts").json() == []


def test_an_smtp_host_at_a_private_address_is_refused_beside_a_reachable_imap_host(
    tmp_path: Path, mail_user: MailUser
) -> None:
    """The SMTP host alone is private (its IMAP host a public-looking address that is not reached):
    refused by the guard, or the pairing fails on the IMAP side first; never a stored account."""
    settings = Settings(home=tmp_path / "h", allow_private_hosts=False, api_token=OPERATOR)
    with TestClient(create_app(settings), headers=OP) as c:
        body = body_for(mail_user, imap_host="93.184.215.14", smtp_host="0x7f000001", smtp_port=25)
        answer = c.post("/api/v1/accounts", json=body)
        assert answer.status_code in (422, 503), answer.text
        assert answer.json()["error"]["code"] in ("host_refused", "connect_error"), answer.text
        assert mail_user.password not in answer.text
        assert c.get("/api/v1/accounts").json() == []


class _Redirector(http.server.BaseHTTPRequestHandler):
    hits: list[str]
    location: str

    def do_POST(self) -> None:
        self.hits.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(307 if self.path.startswith("/go") else 204)
        if self.path.startswith("/go"):
            self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_redirect_is_not_followed(api: TestClient) -> None:
    """Architecture: redirects are retried, not followed (built with private hosts allowed: the only
    targets buildable here are on loopback). The second server must never be asked."""
    servers = []
    hits: dict[str, list[str]] = {"first": [], "second": []}
    for name in ("second", "first"):
        handler = type(name, (_Redirector,), {"hits": hits[name], "location": ""})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    second, first = servers
    first.RequestHandlerClass.location = f"http://127.0.0.1:{second.server_port}/internal"  # type: ignore[attr-defined]
    try:
        hook = ok(
            api.post(
                "/api/v1/webhooks",
                json={"url": f"http://127.0.0.1:{first.server_port}/go", "event_types": ["*"]},
                headers=OP,
            ),
            201,
        )
        delivery = ok(api.post(f"/api/v1/webhooks/{hook['id']}/test", headers=OP))
        assert hits["first"] == ["/go"], hits
        assert hits["second"] == [], "a redirect was followed"
        assert delivery["status"] == "pending", delivery
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


# == 3. injection ==================================================================================
@pytest.fixture
def lenient(tmp_path: Path) -> Iterator[TestClient]:
    """As `api`, but a server error is an answer (500), as a client sees it, not an exception."""
    settings = Settings(home=tmp_path / "lenient", allow_private_hosts=True, api_token=OPERATOR)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


CRLF_CASES = {
    "subject-crlf-bcc": {"subject": "Hello\r\nBcc: evil@attacker.example\r\nX-Injected: 1",
                         "to": ["jane@acme.example"]},
    "subject-lf": {"subject": "Hello\nX-Injected: 1", "to": ["jane@acme.example"]},
    "to-crlf-bcc": {"subject": "ok", "to": ["jane@acme.example\r\nBcc: evil@attacker.example"]},
    "cc-lf": {"subject": "ok", "to": ["jane@acme.example"], "cc": ["a@acme.example\nX-Injected: 1"]},
    "to-smtp-verb": {"subject": "ok", "to": ["jane@acme.example>\r\nRCPT TO:<evil@attacker.example"]},
    "reply-to-crlf": {"subject": "ok", "to": ["jane@acme.example"],
                      "reply_to_message": "<x@y>\r\nX-Injected: 1"},
}  # fmt: skip


_CASES = sorted(CRLF_CASES)


@pytest.mark.parametrize("case", _CASES)
def test_crlf_in_outbox_fields_injects_no_header(
    lenient: TestClient,
    mail_user: MailUser,
    mailer: tuple[Mailer, int],  # noqa: F811
    case: str,
) -> None:
    api = lenient
    smtp, port = mailer
    body = body_for(mail_user, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
    aid = ok(api.post("/api/v1/accounts", json=body, headers=OP), 201)["id"]
    answer = api.post(
        "/api/v1/outbox", json={"account_id": aid, "text": "hi", **CRLF_CASES[case]}, headers=OP
    )
    # refused as invalid (422), or sent with the text kept inside its field: never a 500
    assert answer.status_code in (201, 404, 422), (answer.status_code, answer.text)
    for item in ok(api.get("/api/v1/outbox", headers=OP)):
        # nothing reached the SMTP server: a message that was never sent is not `uncertain`
        assert not (item["status"] == "uncertain" and not smtp.received), item
    if answer.status_code == 201:
        assert answer.json()["status"] in ("sent", "queued", "failed"), answer.text
    for _sender, rcpts, raw in smtp.received:
        assert rcpts == ["jane@acme.example"] or set(rcpts) <= {"jane@acme.example", "a@acme.example"}, rcpts
        parsed = received(raw)
        assert parsed["X-Injected"] is None and parsed["Bcc"] is None, raw[:800]
        assert b"\nX-Injected" not in raw and b"\nBcc:" not in raw, raw[:800]
        assert b"evil@attacker.example" not in raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ") or (
            parsed["Subject"] and "evil@attacker.example" in parsed["Subject"]
        ), raw[:800]


HOSTILE_HTML = """<html><head>
<meta http-equiv="refresh" content="0;url=https://evil.example/">
<style>body { background: url(javascript:alert(1)); width: expression(alert(2)); }</style>
<base href="https://evil.example/">
</head><body>
<p>Visible text stays</p>
<script>alert('xss')</script>
<img src="x" onerror="alert(3)">
<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoNCk+">
<svg onload="alert(5)"><circle r="1"/></svg>
<a href="javascript:alert(6)">js link</a>
<a href=" JaVaScRiPt:alert(7)">js link 2</a>
<a href="data:text/html,&lt;script&gt;alert(8)&lt;/script&gt;">data link</a>
<a href="vbscript:msgbox(9)">vb link</a>
<iframe src="https://evil.example/frame"></iframe>
<object data="https://evil.example/x.swf"></object>
<form action="https://evil.example/phish"><input name="password"></form>
<div style="background:url(javascript:alert(10))">styled</div>
<math><mtext><table><mglyph><style><img src=x onerror=alert(11)></style></mglyph></table></mtext></math>
</body></html>"""


def test_message_html_is_sanitized_and_downloads_are_inert(tmp_path: Path, mail_user: MailUser) -> None:
    m = EmailMessage()
    m["From"] = "mallory@sender.example"
    m["To"] = mail_user.email
    m["Subject"] = "hostile"
    m["Message-ID"] = "<hostile-sec@sender.example>"
    m["Date"] = "Mon, 03 Mar 2025 10:00:00 +0000"
    m.set_content("plain\n")
    m.add_alternative(HOSTILE_HTML, subtype="html")
    m.add_attachment(b"<script>alert(1)</script>", maintype="text", subtype="html", filename="../../x.html")
    m.add_attachment(b"<svg onload=alert(1)>", maintype="image", subtype="svg+xml", filename="a.svg")
    raw = bytes(m)
    # a filename carrying CR LF (RFC 2231 percent-encoded, as a hostile mailer can write it)
    raw = raw.replace(b'filename="a.svg"', b"filename*=utf-8''a%0D%0AX-Injected%3A%201%0D%0A.svg")
    put(mail_user, raw)

    def settings_for(url: str) -> Settings:
        return Settings(home=tmp_path / "home", allow_private_hosts=True, api_token=OPERATOR, public_url=url)

    with serving(settings_for) as (url, _rt, _app), httpx.Client(base_url=url, headers=OP, timeout=30) as c:
        aid = ok(c.post("/api/v1/accounts", json=body_for(mail_user)), 201)["id"]
        assert ok(c.post(f"/api/v1/accounts/{aid}/sync"))["status"] == "connected"
        [msg] = ok(c.get(f"/api/v1/accounts/{aid}/messages"))["messages"]
        detail = ok(c.get(f"/api/v1/messages/{msg['id']}"))
        html = (detail["html"] or "").lower()
        assert "visible text stays" in html, html
        for bad in (
            "<script",
            "onerror",
            "onload",
            "javascript:",
            "vbscript:",
            "data:",
            "<meta",
            "http-equiv",
            "expression(",
            "<iframe",
            "<object",
            "<form",
            "<base",
            "<svg",
            "<style",
            "alert(",
        ):
            assert bad not in html, (bad, html)  # fmt: skip
        names = [a["filename"] for a in detail["attachments"]]
        assert len(names) == 2, detail["attachments"]
        for index in range(2):
            d = c.get(f"/api/v1/messages/{msg['id']}/attachments/{index}")
            assert d.status_code == 200, (index, d.status_code, d.text[:300])
            assert d.headers["content-disposition"].startswith("attachment;"), d.headers
            assert d.headers["x-content-type-options"] == "nosniff"
            assert d.headers["content-security-policy"] == "sandbox"
            assert "x-injected" not in d.headers, d.headers
            for value in d.headers.values():
                assert "\r" not in value and "\n" not in value, d.headers
            # the sender's name, without its path and its control characters
            assert (
                "/" not in d.headers["content-disposition"] and "%2F" not in d.headers["content-disposition"]
            )
            assert (
                "%0D" not in d.headers["content-disposition"]
                and "%0A" not in d.headers["content-disposition"]
            )
        assert (
            'filename="x.html"'
            in c.get(f"/api/v1/messages/{msg['id']}/attachments/0").headers["content-disposition"]
            or 'filename="x.html"'
            in c.get(f"/api/v1/messages/{msg['id']}/attachments/1").headers["content-disposition"]
        )
        r = c.get(f"/api/v1/messages/{msg['id']}/raw")
        assert r.status_code == 200 and r.headers["content-type"].startswith("message/rfc822")
        assert r.headers["content-disposition"].startswith("attachment;")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == "sandbox"


# == 4. secrets ====================================================================================
def test_tokens_passwords_and_webhook_secrets_are_nowhere(tmp_path: Path, mail_user: MailUser) -> None:
    with serve(tmp_path, INBOXLINK_API_TOKEN=OPERATOR, INBOXLINK_LOG_LEVEL="DEBUG") as served:
        c = served.client
        c.headers.update(OP)
        user = ok(c.post("/api/v1/users", json={"name": "Ana", "email": mail_user.email}), 201)
        token = user["token"]
        u = bearer(token)
        texts: list[str] = []
        aid = ok(c.post("/api/v1/accounts", json=body_for(mail_user), headers=u), 201)["id"]
        assert ok(c.post(f"/api/v1/accounts/{aid}/sync", headers=u))["status"] == "connected"
        hook = ok(c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "event_types": ["*"]}), 201)
        c.post(f"/api/v1/webhooks/{hook['id']}/test")
        # error answers that carry a secret in their request
        wrong = "Wrong-Pass-" + mail_user.password[::-1]
        for answer in (
            c.post("/api/v1/accounts", json=body_for(mail_user, password=wrong), headers=u),
            c.post(f"/api/v1/accounts/{aid}/repair", json={"password": wrong}, headers=u),
            c.post("/api/v1/accounts", json={**body_for(mail_user), "imap_port": "x"}, headers=u),
            c.post("/api/v1/accounts", json={**body_for(mail_user, password=wrong), "security": "bogus"}),
            c.get("/api/v1/accounts", headers=bearer(token + "x")),
            c.get(f"/api/v1/accounts/{aid}?token={token}", headers=bearer(OPERATOR + "x")),
            c.get("/api/v1/users", headers=u),
            c.post("/api/v1/webhooks", json={"url": f"http://u:{wrong}@127.0.0.1:9/h", "event_types": ["*"]}),
        ):
            assert answer.status_code >= 400, answer.text
            texts.append(answer.text)
        texts.append(c.get("/openapi.json").text)
        texts.append(c.get("/api/v1/accounts").text)
        texts.append(c.get(f"/api/v1/accounts/{aid}/transitions").text)
        texts.append(c.get("/api/v1/webhooks").text)
        c.delete(f"/api/v1/accounts/{aid}", headers=u)
        # sent to the mail server once, by us
        for secret in (mail_user.password, wrong, token, OPERATOR, hook["secret"]):
            assert_secret_nowhere(secret, served, *texts)
        assert "DEBUG" in served.logs() or served.logs(), "serve logged nothing at DEBUG"
