"""Linking, timelines, visibility, the review queue and search, through the REST API, with mail
delivered into a real Dovecot and synced by the real engine. Every link must say why it exists."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import imap_session

_n = 0


def mail(
    sender: str,
    to: str,
    subject: str,
    *,
    body: str = "Hello.\n",
    cc: str | None = None,
    msgid: str | None = None,
    reply_to_msgid: str | None = None,
    minutes: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    global _n
    _n += 1
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    if cc:
        m["Cc"] = cc
    m["Subject"] = subject
    m["Date"] = format_datetime(datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=minutes or _n))
    mid = msgid or f"m{_n}.{id(m)}@mail.example"
    m["Message-ID"] = f"<{mid}>"
    if reply_to_msgid:
        m["In-Reply-To"] = f"<{reply_to_msgid}>"
        m["References"] = f"<{reply_to_msgid}>"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    return bytes(m), mid


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """Every test runs on the embedded SQLite and on PostgreSQL (search uses FTS5 on one, the
    database's own full-text search on the other)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    settings = Settings(home=tmp_path / "home", allow_private_hosts=True, database_url=url)
    with TestClient(create_app(settings)) as c:
        yield c


class Team:
    """A CRM team on one inboxlink: users, their paired mailboxes, records."""

    def __init__(self, client: TestClient, dovecot: Dovecot) -> None:
        self.c = client
        self.dovecot = dovecot

    def user(self, name: str, email: str) -> dict[str, str]:
        r = self.c.post("/api/v1/users", json={"name": name, "email": email})
        assert r.status_code == 201, r.text
        out: dict[str, str] = r.json()
        return out

    def pair(self, mu: MailUser, *, as_user: str | None = None, visibility: str | None = None) -> str:
        body: dict[str, Any] = {
            "email": mu.email,
            "username": mu.email,
            "password": mu.password,
            "imap_host": mu.host,
            "imap_port": mu.port,
            "security": "none",
        }
        if visibility:
            body["visibility"] = visibility
        headers = {"X-Inboxlink-User": as_user} if as_user else {}
        r = self.c.post("/api/v1/accounts", json=body, headers=headers)
        assert r.status_code == 201, r.text
        aid: str = r.json()["id"]
        return aid

    def sync(self, account: str) -> None:
        r = self.c.post(f"/api/v1/accounts/{account}/sync")
        assert r.json()["status"] == "connected", r.text

    def record(self, kind: str, **body: Any) -> str:
        r = self.c.post(f"/api/v1/records/{kind}", json=body)
        assert r.status_code == 201, r.text
        rid: str = r.json()["id"]
        return rid

    def timeline(self, kind: str, rid: str, *, as_token: str | None = None) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {as_token}"} if as_token else {}
        r = self.c.get(f"/api/v1/records/{kind}/{rid}/timeline", headers=headers)
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries


@pytest.fixture
def team(client: TestClient, dovecot: Dovecot) -> Team:
    return Team(client, dovecot)


def by_mid(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["message_id"]: e for e in entries}


def test_participant_domain_and_token_rules_explain_themselves(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    jane = team.record("person", name="Jane Roe", emails=["jane@acme.example", "j.roe@home.example"])
    acme = team.record("company", name="Acme", domains=["acme.example"])
    gmail_co = team.record("company", name="Google itself", domains=["gmail.com"])
    deal = team.record("deal", name="Renewal", token="T-1042")
    raw1, m1 = mail("Jane Roe <jane@acme.example>", me, "Pricing")
    raw2, m2 = mail("bob@acme.example", me, "Intro", cc="j.roe@home.example")
    raw3, m3 = mail("someone@gmail.com", me, "Re: [T-1042] contract")
    raw4, m4 = mail("x@other.example", me, "no subject token", body="About ticket t-1042, see attached.\n")
    raw5, m5 = mail("stranger@nowhere.example", me, "unrelated")
    for raw in (raw1, raw2, raw3, raw4, raw5):
        dovecot.deliver_lmtp(me, raw)
    account = team.pair(mail_user)
    team.sync(account)

    jt = by_mid(team.timeline("person", jane))
    assert set(jt) == {m1, m2}
    assert jt[m1]["rule"] == "participant" and jt[m1]["evidence"] == "jane@acme.example is the sender"
    assert jt[m2]["evidence"] == "j.roe@home.example is in Cc"

    at = by_mid(team.timeline("company", acme))
    assert set(at) == {m1, m2}  # the domain rule; m1 also through Jane? she has no company: domain only
    assert at[m2]["rule"] == "domain" and "bob@acme.example is at acme.example" in at[m2]["evidence"]
    assert team.timeline("company", gmail_co) == []  # a free-mail domain never links to a company

    dt = by_mid(team.timeline("deal", deal))
    assert set(dt) == {m3, m4}
    assert dt[m3]["rule"] == "token" and dt[m3]["evidence"] == "[T-1042] in the subject"
    assert dt[m4]["evidence"] == "t-1042 in the body"
    # newest first
    dates = [e["date"] for e in team.timeline("deal", deal)]
    assert dates == sorted(dates, reverse=True)
    assert m5 not in {e["message_id"] for kind, rid in (("person", jane), ("company", acme), ("deal", deal))
                      for e in team.timeline(kind, rid)}  # fmt: skip


def test_records_added_later_relink_past_mail_and_changes_unlink(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    raw1, m1 = mail("ann@client.example", me, "first")
    raw2, m2 = mail("ann.other@client.example", me, "second")
    dovecot.deliver_lmtp(me, raw1)
    dovecot.deliver_lmtp(me, raw2)
    team.sync(team.pair(mail_user))
    ann = team.record("person", name="Ann", emails=["ann@client.example"])
    assert set(by_mid(team.timeline("person", ann))) == {m1}  # her history appears at once
    team.c.patch(f"/api/v1/records/person/{ann}", json={"emails": ["ann.other@client.example"]})
    assert set(by_mid(team.timeline("person", ann))) == {m2}  # and follows her addresses
    co = team.record("company", name="Client", domains=["client.example"])
    assert set(by_mid(team.timeline("company", co))) == {m1, m2}
    team.c.delete(f"/api/v1/records/company/{co}")
    assert team.c.get(f"/api/v1/records/company/{co}/timeline").status_code == 404


def test_removing_a_record_hands_its_mail_to_the_next_in_line(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """A subdomain's company goes: the parent domain's company takes its mail. One of two companies
    claiming a domain (a review question) goes, or drops the domain: the other one takes the mail,
    and the question goes."""
    me = mail_user.email
    raw1, m1 = mail("ops@eu.parent.example", me, "from the subsidiary")
    raw2, m2 = mail("sales@twin.example", me, "from a shared domain")
    for raw in (raw1, raw2):
        dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    parent = team.record("company", name="Parent", domains=["parent.example"])
    sub = team.record("company", name="Parent EU", domains=["eu.parent.example"])
    assert (
        set(by_mid(team.timeline("company", sub))) == {m1} and by_mid(team.timeline("company", parent)) == {}
    )
    assert team.c.delete(f"/api/v1/records/company/{sub}").status_code == 204
    taken = by_mid(team.timeline("company", parent))
    assert set(taken) == {m1} and taken[m1]["rule"] == "domain"
    one = team.record("company", name="Twin One", domains=["twin.example"])
    two = team.record("company", name="Twin Two", domains=["twin.example"])
    queue = team.c.get("/api/v1/review").json()
    assert [sorted(q["candidates"]) for q in queue] == [sorted([one, two])]
    assert team.c.delete(f"/api/v1/records/company/{one}").status_code == 204
    assert set(by_mid(team.timeline("company", two))) == {m2} and team.c.get("/api/v1/review").json() == []
    three = team.record("company", name="Twin Three", domains=["twin.example"])
    assert len(team.c.get("/api/v1/review").json()) == 1 and by_mid(team.timeline("company", two)) == {}
    team.c.patch(f"/api/v1/records/company/{two}", json={"domains": ["other-twin.example"]})
    assert set(by_mid(team.timeline("company", three))) == {m2} and team.c.get("/api/v1/review").json() == []


def test_thread_links_follow_references_and_changes_of_the_parent(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """A reply naming its ancestor only in References (its own parent never arrived) inherits the
    ancestor's links when the ancestor arrives later; and when the ancestor loses a link, so does
    the reply."""
    me = mail_user.email
    root, root_id = mail("buyer@corp.example", me, "Kick-off")
    missing_parent_id = "never-arrives@corp.example"
    reply, reply_id = mail("someone@else.example", me, "Re: Kick-off")
    threading = f"In-Reply-To: <{missing_parent_id}>\r\nReferences: <{root_id}> <{missing_parent_id}>\r\n"
    reply = reply.replace(b"Subject:", threading.encode() + b"Subject:", 1)
    corp = team.record("company", name="Corp", domains=["corp.example"])
    account = team.pair(mail_user)
    dovecot.deliver_lmtp(me, reply)
    team.sync(account)
    assert reply_id not in by_mid(team.timeline("company", corp))
    dovecot.deliver_lmtp(me, root)
    team.sync(account)
    got = by_mid(team.timeline("company", corp))
    assert got[root_id]["rule"] == "domain" and got[reply_id]["rule"] == "thread"
    team.c.patch(f"/api/v1/records/company/{corp}", json={"domains": ["corp-new.example"]})
    assert by_mid(team.timeline("company", corp)) == {}, "the root lost its link, and so did its reply"


def test_replies_inherit_the_thread_links_in_either_order(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    deal = team.record("deal", name="Big one", token="D-7")
    root, root_id = mail("buyer@corp.example", me, "[D-7] order")
    reply, reply_id = mail(me, "buyer@corp.example", "Re: order", reply_to_msgid=root_id)
    # the reply to a reply, stored BEFORE its parent: linking must pass links down later
    late_child, late_child_id = mail("buyer@corp.example", me, "Re: Re: order", msgid="late@x.example",
                                     reply_to_msgid=reply_id)  # fmt: skip
    dovecot.deliver_lmtp(me, late_child)
    account = team.pair(mail_user)
    team.sync(account)
    dovecot.deliver_lmtp(me, root)
    dovecot.write_messages(me, "Sent", [reply])
    team.sync(account)
    dt = by_mid(team.timeline("deal", deal))
    assert set(dt) == {root_id, reply_id, late_child_id}
    assert dt[root_id]["rule"] == "token"
    assert dt[reply_id]["rule"] == "thread" and f"<{root_id}>" in dt[reply_id]["evidence"]
    assert dt[late_child_id]["rule"] == "thread" and f"<{reply_id}>" in dt[late_child_id]["evidence"]


def test_several_open_deals_go_to_review_not_a_guess(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    pat = team.record("person", name="Pat", emails=["pat@shop.example"])
    only = team.record("person", name="Lee", emails=["lee@shop.example"])
    d1 = team.record("deal", name="One", token="S-1", person_id=pat)
    d2 = team.record("deal", name="Two", token="S-2", person_id=pat)
    d3 = team.record("deal", name="Lee's", token="S-3", person_id=only)
    raw1, m1 = mail("pat@shop.example", me, "question")
    raw2, m2 = mail("lee@shop.example", me, "hello")
    raw3, m3 = mail("pat@shop.example", me, "about S-2")
    for raw in (raw1, raw2, raw3):
        dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    lee_deal = by_mid(team.timeline("deal", d3))
    assert lee_deal[m2]["rule"] == "deal_contact" and lee_deal[m2]["evidence"] == "the only open deal of Lee"
    assert m1 not in by_mid(team.timeline("deal", d1)) and m1 not in by_mid(team.timeline("deal", d2))
    assert by_mid(team.timeline("deal", d2))[m3]["rule"] == "token"  # a token settles it: no question
    queue = team.c.get("/api/v1/review").json()
    assert (
        len(queue) == 1 and queue[0]["kind"] == "deal" and sorted(queue[0]["candidates"]) == sorted([d1, d2])
    )
    assert "Pat has 2 open deals" in queue[0]["reason"]
    wrong = team.c.post(f"/api/v1/review/{queue[0]['id']}", json={"record_id": d3})
    assert wrong.status_code == 422
    ok = team.c.post(f"/api/v1/review/{queue[0]['id']}", json={"record_id": d1})
    assert ok.json()["status"] == "resolved"
    assert by_mid(team.timeline("deal", d1))[m1]["rule"] == "manual"
    assert team.c.get("/api/v1/review").json() == []
    # closing the other deals makes the choice unambiguous for new mail; the manual link stays
    team.c.patch(f"/api/v1/records/deal/{d2}", json={"status": "closed"})
    assert by_mid(team.timeline("deal", d1))[m1]["rule"] == "manual"


def test_blocklist_internal_mail_and_settings(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    me = mail_user.email
    colleague = team.user("Colleague", "boss@inboxlink.test")
    assert colleague["token"]
    eve = team.record("person", name="Eve", emails=["eve@spy.example"])
    co = team.record("company", name="Spy", domains=["spy.example"])
    internal = team.record("company", name="Us", domains=["inboxlink.test"])
    raw1, m1 = mail("eve@spy.example", me, "hi")
    raw2, _m2 = mail("boss@inboxlink.test", me, "lunch?")
    raw3, m3 = mail("boss@inboxlink.test", me, "fwd", cc="eve@spy.example")
    for raw in (raw1, raw2, raw3):
        dovecot.deliver_lmtp(me, raw)
    account = team.pair(mail_user)
    team.sync(account)
    assert set(by_mid(team.timeline("person", eve))) == {m1, m3}
    assert team.timeline("company", internal) == []  # the team's own domain links to no company
    blocked = team.c.post("/api/v1/blocklist", json={"value": "spy.example"})
    assert blocked.status_code == 201 and blocked.json()["links_removed"] >= 3
    assert team.timeline("person", eve) == [] and team.timeline("company", co) == []
    raw4, _m4 = mail("eve@spy.example", me, "again")
    dovecot.deliver_lmtp(me, raw4)
    team.sync(account)
    assert team.timeline("person", eve) == []  # new mail is blocked too
    assert team.c.delete("/api/v1/blocklist/spy.example").status_code == 204
    assert len(team.timeline("person", eve)) == 3
    team.c.patch("/api/v1/settings/linking", json={"auto_link": ["company", "deal"]})
    team.c.patch(f"/api/v1/records/person/{eve}", json={"name": "Eve S."})  # re-link with the new settings
    assert team.timeline("person", eve) == []
    assert len(team.timeline("company", co)) == 3


def test_auto_create_contacts_skips_automated_mail(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    me = mail_user.email
    team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent"})
    account = team.pair(mail_user)
    sent, _ = mail(me, "New Client <new@client.example>", "proposal")
    received, _ = mail("stranger@else.example", me, "hello")
    dovecot.write_messages(me, "Sent", [sent])
    dovecot.deliver_lmtp(me, received)
    team.sync(account)
    people = team.c.get("/api/v1/records/person").json()
    assert [(p["name"], p["emails"], p["origin"]) for p in people] == [
        ("New Client", ["new@client.example"], "auto")
    ]
    tl = team.timeline("person", people[0]["id"])
    assert tl[0]["rule"] == "participant" and "person created from this mail" in tl[0]["evidence"]

    team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent_and_received"})
    for raw in (
        mail("news@list.example", me, "weekly", headers={"List-Id": "<weekly.list.example>"})[0],
        mail("noreply@shop.example", me, "your order")[0],
        mail("robot@auto.example", me, "out of office", headers={"Auto-Submitted": "auto-replied"})[0],
        mail("Real Person <real@person.example>", me, "question")[0],
    ):
        dovecot.deliver_lmtp(me, raw)
    team.sync(account)
    emails = {e for p in team.c.get("/api/v1/records/person").json() for e in p["emails"]}
    assert emails == {"new@client.example", "real@person.example"}


def test_visibility_between_users_and_one_entry_per_message(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    alice_box = mail_user
    bob_box = dovecot.add_user(f"bob.{mail_user.email}", "bob-password-123")
    alice = team.user("Alice", alice_box.email)
    bob = team.user("Bob", bob_box.email)
    carol = team.user("Carol", "carol@inboxlink.test")
    client_p = team.record("person", name="Client", emails=["client@buyer.example"])
    shared, shared_id = mail("client@buyer.example", f"{alice_box.email}, {bob_box.email}", "Both of you",
                             body="The secret price is 42.\n")  # fmt: skip
    alice_only, alice_only_id = mail(
        "client@buyer.example", alice_box.email, "Alice only", body="zebra words\n"
    )
    private, private_id = mail("friend@else.example", alice_box.email, "Private", body="unlinked secret\n")
    for raw in (shared, alice_only, private):
        dovecot.deliver_lmtp(alice_box.email, raw)
    dovecot.deliver_lmtp(bob_box.email, shared)
    a_acc = team.pair(alice_box, as_user=alice["id"], visibility="metadata")
    b_acc = team.pair(bob_box, as_user=bob["id"], visibility="subject")
    team.sync(a_acc)
    team.sync(b_acc)

    # the system and the owners see everything; one entry for the message both mailboxes hold
    system = by_mid(team.timeline("person", client_p))
    assert set(system) == {shared_id, alice_only_id}
    as_alice = by_mid(team.timeline("person", client_p, as_token=alice["token"]))
    assert as_alice[alice_only_id]["subject"] == "Alice only" and as_alice[alice_only_id]["snippet"]
    assert as_alice[shared_id]["visibility"] == "everything"
    # Bob sees his own copy fully, Alice's other mail only as metadata (her account's setting)
    as_bob = by_mid(team.timeline("person", client_p, as_token=bob["token"]))
    assert as_bob[shared_id]["subject"] == "Both of you" and "42" in as_bob[shared_id]["snippet"]
    assert as_bob[alice_only_id]["visibility"] == "metadata"
    assert as_bob[alice_only_id]["subject"] is None and as_bob[alice_only_id]["snippet"] is None
    # Carol owns nothing: Bob's copy grants her the subject, Alice's only metadata
    as_carol = by_mid(team.timeline("person", client_p, as_token=carol["token"]))
    assert as_carol[shared_id]["visibility"] == "subject" and as_carol[shared_id]["snippet"] is None
    assert as_carol[alice_only_id]["subject"] is None

    def get(path: str, token: str) -> Any:
        return team.c.get(path, headers={"Authorization": f"Bearer {token}"})

    # message detail and search go through the same door
    alice_only_row = as_bob[alice_only_id]["id"]
    detail = get(f"/api/v1/messages/{alice_only_row}", bob["token"]).json()
    assert detail["subject"] is None and "text" not in detail
    private_rows = [r["id"] for r in team.c.get("/api/v1/search", params={"q": "unlinked"}).json()["results"]]
    assert private_rows  # the system finds it
    assert get(f"/api/v1/messages/{private_rows[0]}", bob["token"]).status_code == 404
    assert get("/api/v1/search?q=unlinked", bob["token"]).json()["results"] == []
    assert get("/api/v1/search?q=zebra", bob["token"]).json()["results"] == []  # body: metadata only
    assert get("/api/v1/search?q=zebra", alice["token"]).json()["results"][0]["message_id"] == alice_only_id
    assert get("/api/v1/search?q=Both", carol["token"]).json()["results"][0]["subject"] == "Both of you"
    assert get("/api/v1/search?q=secret", carol["token"]).json()["results"] == []  # Bob's body is not shared
    # accounts: each user sees only their own
    assert [a["id"] for a in get("/api/v1/accounts", bob["token"]).json()] == [b_acc]
    assert get(f"/api/v1/accounts/{a_acc}", bob["token"]).status_code == 404
    # an account's message listing is its owner's (and the operator's) alone
    assert get(f"/api/v1/accounts/{a_acc}/messages", bob["token"]).status_code == 404
    assert get(f"/api/v1/accounts/{a_acc}/messages", carol["token"]).status_code == 404
    own = get(f"/api/v1/accounts/{a_acc}/messages", alice["token"]).json()["messages"]
    assert {m["message_id"] for m in own} == {shared_id, alice_only_id, private_id}
    assert get("/api/v1/users", bob["token"]).status_code == 403
    # the blocklist purges links team-wide: like the linking settings, the operator's to change
    as_bob = {"Authorization": f"Bearer {bob['token']}"}
    for refused in (
        team.c.post("/api/v1/blocklist", json={"value": "buyer.example"}, headers=as_bob),
        team.c.delete("/api/v1/blocklist/buyer.example", headers=as_bob),
        team.c.patch("/api/v1/settings/linking", json={"exclude_internal": False}, headers=as_bob),
    ):
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden", refused.text
    assert get("/api/v1/blocklist", bob["token"]).json() == []
    takeover = team.c.post(
        "/api/v1/accounts",
        json={"email": alice_box.email, "username": alice_box.email, "password": alice_box.password,
              "imap_host": alice_box.host, "imap_port": alice_box.port, "security": "none"},
        headers={"Authorization": f"Bearer {bob['token']}"},
    )  # fmt: skip
    assert takeover.status_code == 409 and takeover.json()["error"]["code"] == "conflict"
    assert private_id not in {
        e["message_id"] for e in team.timeline("person", client_p, as_token=bob["token"])
    }


def test_bulk_import_is_idempotent_by_external_id(team: Team) -> None:
    batch = {
        "records": [
            {"type": "company", "name": "Acme", "domains": ["acme.example"], "external_id": "c-1"},
            {
                "type": "person",
                "name": "Jo",
                "emails": ["jo@acme.example"],
                "external_id": "p-1",
                "company_id": "c-1",
            },
            {"type": "deal", "name": "Deal", "token": "A-1", "external_id": "d-1", "person_id": "p-1"},
        ]
    }
    first = team.c.post("/api/v1/records:import", json=batch).json()
    again = team.c.post("/api/v1/records:import", json=batch).json()
    assert (first["created"], first["updated"]) == (3, 0)
    assert (again["created"], again["updated"]) == (0, 3) and again["ids"] == first["ids"]
    person = team.c.get(f"/api/v1/records/person/{first['ids'][1]}").json()
    assert person["company_id"] == first["ids"][0]
    deal = team.c.get(f"/api/v1/records/deal/{first['ids'][2]}").json()
    assert deal["person_id"] == first["ids"][1] and deal["token"] == "A-1"
    clash = team.c.post("/api/v1/records/deal", json={"name": "x", "token": "a-1"})
    assert clash.status_code == 409


def test_message_detail_is_sanitized_and_folds_quotes(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    person = team.record("person", name="Hal", emails=["hal@html.example"])
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "hal@html.example", me, "formatted"
    m["Message-ID"] = "<html1@html.example>"
    m.set_content("New words.\n\nOn Mon, 2 Mar 2026 at 10:00, Me <me@x.example> wrote:\n> the old text\n")
    m.add_alternative('<p onclick="steal()">New <b>words</b></p><script>alert(1)</script>', subtype="html")
    dovecot.deliver_lmtp(me, bytes(m))
    team.sync(team.pair(mail_user))
    [entry] = team.timeline("person", person)
    detail = team.c.get(f"/api/v1/messages/{entry['id']}").json()
    assert detail["text"].strip() == "New words."
    assert "the old text" in detail["quoted_text"]
    assert (
        "<b>words</b>" in detail["html"]
        and "script" not in detail["html"]
        and "onclick" not in detail["html"]
    )
    assert detail["links"] == [
        {"record_id": person, "rule": "participant", "evidence": "hal@html.example is the sender"}
    ]
    assert (
        team.c.get(f"/api/v1/messages/{entry['id']}").json()["html"] == detail["html"]
    )  # cached, same answer


def test_spam_links_nowhere_and_creates_no_contact(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    me = mail_user.email
    team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent_and_received"})
    co = team.record("company", name="Spammy", domains=["spam.example"])
    dovecot.create_folder(me, "Junk")
    spam, _ = mail("Winner <win@spam.example>", me, "You won")
    ham, ham_id = mail("Real <real@spam.example>", me, "Real question")
    dovecot.write_messages(me, "Junk", [spam])
    dovecot.deliver_lmtp(me, ham)
    team.sync(team.pair(mail_user))
    assert set(by_mid(team.timeline("company", co))) == {ham_id}
    assert {e for p in team.c.get("/api/v1/records/person").json() for e in p["emails"]} == {
        "real@spam.example"
    }


def test_search_index_trails_ingest_in_the_background(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    for i in range(3):
        dovecot.deliver_lmtp(mail_user.email, mail("a@b.example", mail_user.email, f"kiwi {i}")[0])
    team.sync(team.pair(mail_user))
    rt = team.c.app.state.runtime  # type: ignore[attr-defined]
    sqlite = rt.db.is_sqlite
    assert rt.index_search() == (3 if sqlite else 0)  # the minute task's work; PostgreSQL indexes itself
    assert rt.index_search() == 0
    assert len(team.c.get("/api/v1/search", params={"q": "kiwi"}).json()["results"]) == 3
    dovecot.deliver_lmtp(mail_user.email, mail("a@b.example", mail_user.email, "kiwi late")[0])
    team.sync(team.c.get("/api/v1/accounts").json()[0]["id"])
    assert len(team.c.get("/api/v1/search", params={"q": "kiwi"}).json()["results"]) == 4  # caught up first


def test_bulk_import_links_past_mail_in_one_pass(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    """More than a handful of domains and tokens take the single-pass re-link path."""
    me = mail_user.email
    expected: dict[str, str] = {}
    for i in range(12):
        raw, mid = mail(f"buyer@sub.co{i}.example", me, f"order [K-{i}]" if i % 2 else "order",
                        body=f"see K-{i}\n" if i % 2 == 0 else "thanks\n")  # fmt: skip
        dovecot.deliver_lmtp(me, raw)
        expected[f"co{i}"] = mid
    team.sync(team.pair(mail_user))
    batch = [{"type": "company", "name": f"Co {i}", "domains": [f"co{i}.example"], "external_id": f"c{i}"}
             for i in range(12)]  # fmt: skip
    batch += [
        {"type": "deal", "name": f"K {i}", "token": f"K-{i}", "external_id": f"k{i}"} for i in range(12)
    ]
    ids = team.c.post("/api/v1/records:import", json={"records": batch}).json()["ids"]
    for i in range(12):
        company = by_mid(team.timeline("company", ids[i]))
        assert set(company) == {expected[f"co{i}"]}
        assert f"is at co{i}.example" in company[expected[f"co{i}"]]["evidence"]
        deal = by_mid(team.timeline("deal", ids[12 + i]))
        assert set(deal) == {expected[f"co{i}"]}
        where = "subject" if i % 2 else "body"
        assert deal[expected[f"co{i}"]]["evidence"].endswith(f"in the {where}")


def test_raw_and_attachment_downloads_follow_visibility(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    alice_box = mail_user
    bob_box = dovecot.add_user(f"bob2.{mail_user.email}", "bob-password-123")
    alice = team.user("Alice", alice_box.email)
    bob = team.user("Bob", bob_box.email)
    team.record("person", name="Vendor", emails=["vendor@sell.example"])
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "vendor@sell.example", alice_box.email, "Quote attached"
    m["Message-ID"] = "<quote-1@sell.example>"
    m.set_content("Please find the quote attached.\n")
    m.add_attachment(pdf, maintype="application", subtype="pdf", filename="Angebot für Q3.pdf")
    dovecot.deliver_lmtp(alice_box.email, bytes(m))
    a_acc = team.pair(alice_box, as_user=alice["id"], visibility="metadata")
    team.pair(bob_box, as_user=bob["id"])
    team.sync(a_acc)
    row = team.c.get(f"/api/v1/accounts/{a_acc}/messages").json()["messages"][0]["id"]

    def get(path: str, token: str | None = None) -> Any:
        return team.c.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})

    detail = get(f"/api/v1/messages/{row}", alice["token"]).json()
    assert detail["attachments"][0]["filename"] == "Angebot für Q3.pdf"
    got = get(f"/api/v1/messages/{row}/attachments/0", alice["token"])
    assert got.status_code == 200 and got.content == pdf
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''Angebot%20f%C3%BCr%20Q3.pdf" in got.headers["content-disposition"]
    assert got.headers["x-content-type-options"] == "nosniff"
    raw = get(f"/api/v1/messages/{row}/raw", alice["token"])
    assert raw.status_code == 200 and raw.headers["content-type"] == "message/rfc822"
    assert b"Subject: Quote attached" in raw.content and b"Message-ID: <quote-1@sell.example>" in raw.content
    assert get(f"/api/v1/messages/{row}/attachments/1", alice["token"]).status_code == 404
    # Bob sees this mailbox's linked mail as metadata only: no bytes
    assert get(f"/api/v1/messages/{row}", bob["token"]).json()["subject"] is None
    for path in (f"/api/v1/messages/{row}/raw", f"/api/v1/messages/{row}/attachments/0"):
        refused = get(path, bob["token"])
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert get("/api/v1/messages/999999/raw", alice["token"]).status_code == 404


def test_a_shared_copy_never_opens_another_message_with_its_message_id(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Two different messages with one Message-ID: Bob's, linked and shared, and Alice's, private.
    A teammate opening Alice's row gets Bob's copy (the one that grants access), never Alice's."""
    alice_box = mail_user
    bob_box = dovecot.add_user(f"bob3.{mail_user.email}", "bob-password-123")
    alice = team.user("Alice", alice_box.email)
    bob = team.user("Bob", bob_box.email)
    carol = team.user("Carol", "carol3@inboxlink.test")
    team.record("person", name="Client", emails=["client@buyer.example"])
    shared, mid = mail(
        "client@buyer.example", bob_box.email, "Shared", body="shared words\n", msgid="same@x.example"
    )
    private, _ = mail(
        "friend@else.example", alice_box.email, "Private", body="private words\n", msgid="same@x.example"
    )
    dovecot.deliver_lmtp(bob_box.email, shared)
    dovecot.deliver_lmtp(alice_box.email, private)
    a_acc = team.pair(alice_box, as_user=alice["id"])
    b_acc = team.pair(bob_box, as_user=bob["id"])
    team.sync(a_acc)
    team.sync(b_acc)
    alice_row = team.c.get(f"/api/v1/accounts/{a_acc}/messages").json()["messages"][0]["id"]
    bob_row = team.c.get(f"/api/v1/accounts/{b_acc}/messages").json()["messages"][0]["id"]
    headers = {"Authorization": f"Bearer {carol['token']}"}
    seen = team.c.get(f"/api/v1/messages/{alice_row}", headers=headers).json()
    assert seen["id"] == bob_row and seen["message_id"] == mid
    assert "shared words" in seen["text"] and "private" not in str(seen).lower()
    raw = team.c.get(f"/api/v1/messages/{alice_row}/raw", headers=headers)
    assert raw.status_code == 200 and b"shared words" in raw.content and b"private words" not in raw.content
    own = team.c.get(f"/api/v1/messages/{alice_row}", headers={"Authorization": f"Bearer {alice['token']}"})
    assert own.json()["id"] == alice_row and "private words" in own.json()["text"], "the owner sees her own"


def test_a_settings_change_decides_past_mail_again(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    """Which record types link, and whether internal mail is skipped, apply to the mail already
    stored at once (not only once something re-links it)."""
    me = mail_user.email
    team.user("Mate", "mate@inboxlink.test")
    kim = team.record("person", name="Kim", emails=["kim@buyer.example"])
    intern = team.record("person", name="Intern", emails=["intern@inboxlink.test"])
    raw1, m1 = mail("kim@buyer.example", me, "hello")
    raw2, m2 = mail("mate@inboxlink.test", me, "lunch", cc="intern@inboxlink.test")
    for raw in (raw1, raw2):
        dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    assert set(by_mid(team.timeline("person", kim))) == {m1} and team.timeline("person", intern) == []
    team.c.patch("/api/v1/settings/linking", json={"auto_link": ["company", "deal"]})
    assert team.timeline("person", kim) == []
    team.c.patch("/api/v1/settings/linking", json={"auto_link": ["person"], "exclude_internal": False})
    assert set(by_mid(team.timeline("person", kim))) == {m1}
    assert set(by_mid(team.timeline("person", intern))) == {m2}


def test_people_created_from_mail_link_all_their_mail_and_stay_deleted(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """A person created from sent mail is a record like any other: the mail stored before (and the
    rest of the same sync) links to them. Deleting them re-decides that mail without creating them
    again. A colleague at the team's domain is never created as a contact."""
    me = mail_user.email
    account = team.pair(mail_user)
    earlier, earlier_id = mail("New Client <new@client.example>", me, "a question")
    dovecot.deliver_lmtp(me, earlier)
    team.sync(account)
    assert team.c.get("/api/v1/records/person").json() == []  # policy none
    team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent"})
    sent1, sent1_id = mail(me, "new@client.example", "proposal", cc="colleague@inboxlink.test")
    sent2, sent2_id = mail(me, "new@client.example", "proposal, again")
    dovecot.write_messages(me, "Sent", [sent1, sent2])
    team.sync(account)
    [person] = team.c.get("/api/v1/records/person").json()
    assert person["emails"] == ["new@client.example"] and person["origin"] == "auto"
    assert set(by_mid(team.timeline("person", person["id"]))) == {earlier_id, sent1_id, sent2_id}
    assert team.c.delete(f"/api/v1/records/person/{person['id']}").status_code == 204
    assert team.c.get("/api/v1/records/person").json() == []


def test_blocking_a_parent_takes_its_links_from_the_replies(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    corp = team.record("company", name="Corp", domains=["corp.example"])
    root, root_id = mail("buyer@corp.example", me, "Kick-off")
    reply, reply_id = mail(me, "someone@else.example", "Re: Kick-off", reply_to_msgid=root_id)
    dovecot.deliver_lmtp(me, root)
    dovecot.write_messages(me, "Sent", [reply])
    team.sync(team.pair(mail_user))
    assert set(by_mid(team.timeline("company", corp))) == {root_id, reply_id}
    assert team.c.post("/api/v1/blocklist", json={"value": "buyer@corp.example"}).status_code == 201
    assert team.timeline("company", corp) == [], "the reply inherited its link from blocked mail"
    assert team.c.delete("/api/v1/blocklist/buyer@corp.example").status_code == 204
    assert set(by_mid(team.timeline("company", corp))) == {root_id, reply_id}


def test_choosing_a_person_in_the_review_queue_brings_their_only_open_deal(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    pat = team.record("person", name="Pat", emails=["desk@shop.example"])
    team.record("person", name="Sam", emails=["desk@shop.example"])
    deal = team.record("deal", name="Pat's", token="P-1", person_id=pat)
    raw, mid = mail("desk@shop.example", me, "question")
    dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    [item] = team.c.get("/api/v1/review").json()
    assert item["kind"] == "person"
    assert team.c.post(f"/api/v1/review/{item['id']}", json={"record_id": pat}).status_code == 200
    got = by_mid(team.timeline("deal", deal))
    assert set(got) == {mid} and got[mid]["rule"] == "deal_contact"


def test_a_reply_synced_with_its_parent_stays_on_the_parents_deal(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """The parent is on Pat's only open deal (deal_contact). Its reply, from Lee who has a deal of
    his own, inherits the parent's deal, whether it is synced with the parent or after it, rather
    than asking which of the two deals it is about."""
    me = mail_user.email
    pat = team.record("person", name="Pat", emails=["pat@shop.example"])
    lee = team.record("person", name="Lee", emails=["lee@shop.example"])
    pats = team.record("deal", name="Pat's", token="S-1", person_id=pat)
    team.record("deal", name="Lee's", token="S-2", person_id=lee)
    root, root_id = mail("pat@shop.example", me, "order")
    reply, reply_id = mail("lee@shop.example", me, "Re: order", reply_to_msgid=root_id)
    dovecot.deliver_lmtp(me, reply)
    dovecot.deliver_lmtp(me, root)
    team.sync(team.pair(mail_user))
    got = by_mid(team.timeline("deal", pats))
    assert got[root_id]["rule"] == "deal_contact" and got[reply_id]["rule"] == "thread"
    assert team.c.get("/api/v1/review").json() == []


def test_a_reply_synced_before_its_parent_decides_its_deal_when_the_parent_arrives(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """A reply from a stranger is stored first and links nowhere. When its parent arrives from Pat,
    the reply inherits Pat and, like any message with Pat on it, gets Pat's deal: a question when
    Pat has two open deals; when Sol has one, the parent's deal_contact link, as a thread link."""
    me = mail_user.email
    account = team.pair(mail_user)
    pat = team.record("person", name="Pat", emails=["pat@shop.example"])
    first = team.record("deal", name="First", token="P-1", person_id=pat)
    second = team.record("deal", name="Second", token="P-2", person_id=pat)
    root, root_id = mail("pat@shop.example", me, "order")
    reply, reply_id = mail("stranger@elsewhere.example", me, "Re: order", reply_to_msgid=root_id)
    dovecot.deliver_lmtp(me, reply)
    team.sync(account)
    assert team.c.get("/api/v1/review").json() == []
    dovecot.deliver_lmtp(me, root)
    team.sync(account)
    queue = team.c.get("/api/v1/review").json()
    assert [(q["kind"], sorted(q["candidates"])) for q in queue] == [("deal", sorted([first, second]))] * 2
    listed = team.c.get(f"/api/v1/accounts/{account}/messages").json()["messages"]
    ids = {m["id"]: m["message_id"] for m in listed}
    assert sorted(ids[q["message"]] for q in queue) == sorted([root_id, reply_id])

    solo = team.record("person", name="Sol", emails=["sol@solo.example"])
    sols = team.record("deal", name="Sol's", token="S-9", person_id=solo)
    root2, root2_id = mail("sol@solo.example", me, "quote")
    reply2, reply2_id = mail("other@elsewhere.example", me, "Re: quote", reply_to_msgid=root2_id)
    dovecot.deliver_lmtp(me, reply2)
    team.sync(account)
    dovecot.deliver_lmtp(me, root2)
    team.sync(account)
    got = by_mid(team.timeline("deal", sols))
    assert got[root2_id]["rule"] == "deal_contact" and got[reply2_id]["rule"] == "thread"


def test_a_guessed_deal_gives_way_to_the_deal_its_parent_arrives_with(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Lee's reply is stored first and gets Lee's only open deal (deal_contact). Its parent then
    arrives carrying that same deal's token: the reply is on the deal through its thread, which
    decides before a contact's deals do, and the reply below it follows."""
    me = mail_user.email
    account = team.pair(mail_user)
    lee = team.record("person", name="Lee", emails=["lee@shop.example"])
    lees = team.record("deal", name="Lee's", token="L-7", person_id=lee)
    root, root_id = mail("buyer@market.example", me, "[L-7] order")
    reply, reply_id = mail("lee@shop.example", me, "Re: order", reply_to_msgid=root_id)
    below, below_id = mail("buyer@market.example", me, "Re: Re: order", reply_to_msgid=reply_id)
    for raw in (reply, below):
        dovecot.deliver_lmtp(me, raw)
    team.sync(account)
    got = by_mid(team.timeline("deal", lees))
    assert got[reply_id]["rule"] == "deal_contact" and got[below_id]["rule"] == "thread"
    dovecot.deliver_lmtp(me, root)
    team.sync(account)
    got = by_mid(team.timeline("deal", lees))
    assert {m: e["rule"] for m, e in got.items()} == {
        root_id: "token",
        reply_id: "thread",
        below_id: "thread",
    }


def test_blocking_a_domain_purges_that_domain_only(team: Team, dovecot: Dovecot, mail_user: MailUser) -> None:
    """ "_" and "%" are LIKE wildcards: blocking a_b.example must leave mail from axb.example (and its
    chosen links) alone, and purge a_b.example and its subdomains."""
    me = mail_user.email
    ax = team.record("person", name="Ax", emails=["ann@axb.example"])
    ab = team.record("person", name="Ab", emails=["bob@a_b.example", "bo@mail.a_b.example"])
    raws = [mail("ann@axb.example", me, "one"), mail("bob@a_b.example", me, "two")]
    raws.append(mail("bo@mail.a_b.example", me, "three"))
    for raw, _mid in raws:
        dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    assert team.c.post("/api/v1/blocklist", json={"value": "a_b.example"}).json()["links_removed"] == 2
    assert set(by_mid(team.timeline("person", ax))) == {raws[0][1]} and team.timeline("person", ab) == []


def test_a_record_giving_up_a_domain_leaves_its_mail_to_the_other_claimant(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Two companies claim twin.example; the question about Kim's mail is dismissed (neither). Once
    one of them gives the domain up (an edit, or a host CRM's import), the mail is the other's:
    what a record held before a change is decided again too, not only what it holds after."""
    me = mail_user.email
    one = team.record("company", name="Twin One", domains=["twin.example"], external_id="c-1")
    two = team.record("company", name="Twin Two", domains=["twin.example"], external_id="c-2")
    raw, mid = mail("kim@twin.example", me, "hello")
    dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    [question] = team.c.get("/api/v1/review").json()
    assert team.c.post(f"/api/v1/review/{question['id']}", json={"record_id": None}).status_code == 200
    assert team.timeline("company", one) == [] and team.timeline("company", two) == []
    team.c.patch(f"/api/v1/records/company/{two}", json={"domains": ["elsewhere.example"]})
    assert by_mid(team.timeline("company", one))[mid]["rule"] == "domain"

    def import_two(domain: str) -> None:
        batch = [{"type": "company", "external_id": "c-2", "name": "Twin Two", "domains": [domain]}]
        assert team.c.post("/api/v1/records:import", json={"records": batch}).status_code == 200

    import_two("twin.example")  # claimed twice again: the dismissed question is not asked again
    assert team.timeline("company", one) == [] and team.c.get("/api/v1/review").json() == []
    import_two("elsewhere.example")
    assert set(by_mid(team.timeline("company", one))) == {mid} and team.timeline("company", two) == []


def test_mail_fetched_again_does_not_bring_back_a_deleted_contact(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Contacts are created from mail synced for the first time. A message stored again (its body
    fetched after a headers-only sync; a copy found in another folder) is not new mail: a contact
    deleted since stays deleted."""
    me = mail_user.email
    account = team.pair(mail_user)
    rt = team.c.app.state.runtime  # type: ignore[attr-defined]
    team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent_and_received"})
    raw, mid = mail("Fresh Lead <lead@prospect.example>", me, "interested")
    dovecot.deliver_lmtp(me, raw)
    assert rt.engine.sync(account, headers_only=True).status == "connected"
    [person] = team.c.get("/api/v1/records/person").json()
    assert team.c.delete(f"/api/v1/records/person/{person['id']}").status_code == 204
    imap = imap_session(mail_user)
    try:
        imap.create("Archive")
        imap.select("INBOX")
        assert imap.copy("1", "Archive")[0] == "OK"
    finally:
        imap.logout()
    team.sync(account)  # bodies now, and the copy
    listed = team.c.get(f"/api/v1/accounts/{account}/messages").json()["messages"]
    [got] = [m for m in listed if m["message_id"] == mid]
    assert not got["headers_only"] and sorted(p["folder"] for p in got["placements"]) == ["Archive", "INBOX"]
    assert team.c.get("/api/v1/records/person").json() == []


def test_deleting_the_chosen_record_asks_the_question_again(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Three people share desk@; the queue's answer was Pat. Pat deleted, the mail is ambiguous
    again between Sam and Kim, so the question comes back (with them); Sam deleted too, Kim alone
    holds the address and takes the mail."""
    me = mail_user.email
    pat, sam, kim = (
        team.record("person", name=n, emails=["desk@shop.example"]) for n in ("Pat", "Sam", "Kim")
    )
    raw, mid = mail("desk@shop.example", me, "question")
    dovecot.deliver_lmtp(me, raw)
    team.sync(team.pair(mail_user))
    [item] = team.c.get("/api/v1/review").json()
    assert team.c.post(f"/api/v1/review/{item['id']}", json={"record_id": pat}).status_code == 200
    assert team.c.get("/api/v1/review").json() == []
    assert team.c.delete(f"/api/v1/records/person/{pat}").status_code == 204
    [again] = team.c.get("/api/v1/review").json()
    assert again["kind"] == "person" and sorted(again["candidates"]) == sorted([sam, kim])
    assert team.c.delete(f"/api/v1/records/person/{sam}").status_code == 204
    assert team.c.get("/api/v1/review").json() == []
    assert by_mid(team.timeline("person", kim))[mid]["rule"] == "participant"
