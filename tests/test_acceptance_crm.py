"""Acceptance, black-box: the CRM side as a CRM user or an embedding developer meets it. Records go
in through `/api/v1/records*` (and the CLI where the README shows it), mail is put on the private
Dovecot with imaplib APPEND as a mail client would, the real engine syncs it, and everything is
read back through the REST API only; sends go to a real SMTP server (aiosmtpd), whose envelope and
bytes are checked as a recipient would see them.

What is asserted comes from README.md ("Records, timelines and sending", "REST API") and
docs/architecture.md ("CRM: records, links, timelines", "Outbox", "Webhooks"), in their words:
the evidence strings (`jane@acme.example is the sender`, `bob@acme.example is at acme.example, a
domain of Acme`, `[T-1042] in the subject`, `in the thread of <…>`, `the only open deal of …`,
`sent from deal …`), newest first and one entry per Message-ID, the blocklist and internal mail
skipped entirely, settings that re-decide past mail, a send never repeated nor duplicated by the
sync of its Sent copy, and what a teammate sees at each sharing level.

The private Dovecot's users are at inboxlink.test: that is the team's own domain in every test.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import imap_session, server_state, serving
from tests.test_acceptance_cli import append
from tests.test_api import body_for
from tests.test_cli import env_for, run
from tests.test_crm_linking import Team, by_mid
from tests.test_send import Mailer, mailer  # noqa: F401 (mailer: a fixture, aiosmtpd on a free port)
from tests.test_webhooks import Receiver, receiver  # noqa: F401 (receiver: a fixture)

OWN = "inboxlink.test"  # the team's own domain: the private Dovecot's users live there
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# -- mail, as a mail client writes it -----------------------------------------------------------------
def letter(
    sender: str,
    to: str,
    subject: str,
    *,
    msgid: str,
    when: datetime | None = T0,
    cc: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    body: str = "Hello,\n\nsee below.\n\n-- \nSent from my phone\n",
) -> bytes:
    """One message with the headers a real client writes; `msgid` without brackets; `when=None`
    leaves the Date header out (the server's INTERNALDATE is then all there is)."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    if cc:
        m["Cc"] = cc
    m["Subject"] = subject
    if when is not None:
        m["Date"] = format_datetime(when)
    m["Message-ID"] = f"<{msgid}>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    if references:
        m["References"] = references
    m["User-Agent"] = "Mozilla/5.0 Thunderbird/128.5.0"
    m.set_content(body)
    return bytes(m)


def put(user: MailUser, *raws: bytes, folder: str = "INBOX", internal: datetime | None = None) -> None:
    """APPEND each message to `folder` (INTERNALDATE `internal` when given)."""
    imap = imap_session(user)
    try:
        for raw in raws:
            if internal is None:
                append(imap, folder, raw)
            else:
                from imaplib import Time2Internaldate

                typ, data = imap.append(
                    folder, None, Time2Internaldate(internal), raw.replace(b"\n", b"\r\n")
                )
                assert typ == "OK", data
    finally:
        imap.logout()


def expunge(user: MailUser, folder: str, msgid: str) -> None:
    imap = imap_session(user)
    try:
        imap.select(folder)
        _typ, found = imap.search(None, "HEADER", "Message-ID", msgid)
        [seq] = found[0].split()
        imap.store(seq.decode(), "+FLAGS", "\\Deleted")
        imap.expunge()
    finally:
        imap.logout()


# -- the service ---------------------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path / "home", allow_private_hosts=True))) as c:
        yield c


@pytest.fixture
def team(api: TestClient, dovecot: Dovecot) -> Team:
    return Team(api, dovecot)


@pytest.fixture
def smtp(mailer: tuple[Mailer, int]) -> tuple[Mailer, int]:  # noqa: F811
    """aiosmtpd on a free port (tests/test_send.py): what it received, and its port."""
    return mailer


@pytest.fixture
def hooks(receiver: Receiver) -> Receiver:  # noqa: F811
    """A webhook receiver that checks signatures (tests/test_webhooks.py)."""
    return receiver


def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def error(answer: httpx.Response, status: int, code: str) -> str:
    """The documented error shape; its message."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def reasons(entry: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(r["rule"], r["record"]["type"], r["evidence"]) for r in entry["reasons"]}


def pair_sending(c: TestClient | httpx.Client, user: MailUser, smtp_port: int) -> str:
    body = body_for(user, smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="none")
    account = ok(c.post("/api/v1/accounts", json=body), 201)
    assert account["capabilities"]["can_send"] is True, account["capabilities"]
    aid: str = account["id"]
    return aid


def received(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# == 1. records ========================================================================================
HOST_CRM = [
    {"type": "company", "external_id": "crm-c-1", "name": "Acme", "domains": ["Acme.Example"]},
    {"type": "company", "external_id": "crm-c-2", "name": "Globex", "domains": ["globex.example"]},
    {"type": "person", "external_id": "crm-p-1", "name": "Jane Roe", "company_id": "crm-c-1",
     "emails": ["Jane@Acme.Example", "j.roe@home.example"]},
    {"type": "person", "external_id": "crm-p-2", "name": "Hank Scorpio", "company_id": "crm-c-2",
     "emails": ["hank@globex.example"]},
    {"type": "deal", "external_id": "crm-d-1", "name": "Renewal", "token": "t-1042",
     "person_id": "crm-p-1", "company_id": "crm-c-1"},
    {"type": "deal", "external_id": "crm-d-2", "name": "Expansion", "token": "[GX-7]", "status": "closed",
     "person_id": "crm-p-2"},
]  # fmt: skip


def snapshot(c: TestClient) -> dict[str, Any]:
    """Everything a host CRM can read back: the records, every timeline, the review queue."""
    records = {kind: ok(c.get(f"/api/v1/records/{kind}")) for kind in ("person", "company", "deal")}
    timelines = {
        r["id"]: ok(c.get(f"/api/v1/records/{kind}/{r['id']}/timeline"))
        for kind, rows in records.items()
        for r in rows
    }
    return {"records": records, "timelines": timelines, "review": ok(c.get("/api/v1/review"))}


def test_bulk_import_is_idempotent_by_external_id(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    put(
        mail_user,
        letter("Jane Roe <jane@acme.example>", me, "Renewal terms", msgid="terms@acme.example"),
        letter("Hank <hank@globex.example>", me, "Re: [GX-7] rollout", msgid="gx@globex.example"),
    )
    team.sync(team.pair(mail_user))
    c = team.c
    first = ok(c.post("/api/v1/records:import", json={"records": HOST_CRM}))
    assert (first["created"], first["updated"], len(first["ids"])) == (6, 0, 6)
    acme, globex, jane, hank, renewal, expansion = first["ids"]

    # host ids resolved to ours; addresses, domains and tokens normalised; origin "import"
    assert ok(c.get(f"/api/v1/records/person/{jane}")) == {
        "id": jane, "type": "person", "name": "Jane Roe", "company_id": acme, "external_id": "crm-p-1",
        "emails": ["j.roe@home.example", "jane@acme.example"], "origin": "import", "data": None,
    }  # fmt: skip
    assert ok(c.get(f"/api/v1/records/company/{acme}"))["domains"] == ["acme.example"]
    deal = ok(c.get(f"/api/v1/records/deal/{renewal}"))
    assert (deal["token"], deal["status"], deal["person_id"], deal["company_id"]) == (
        "T-1042",
        "open",
        jane,
        acme,
    )
    assert ok(c.get(f"/api/v1/records/deal/{expansion}"))["token"] == "GX-7"
    assert ok(c.get(f"/api/v1/records/person/{hank}"))["company_id"] == globex

    # mail already synced links at once (the import re-links once)
    assert [e["rule"] for e in team.timeline("person", jane)] == ["participant"]
    assert (
        by_mid(team.timeline("deal", expansion))["gx@globex.example"]["evidence"] == "[GX-7] in the subject"
    )
    assert set(by_mid(team.timeline("deal", renewal))) == {"terms@acme.example"}  # the only open deal of Jane

    before = snapshot(c)
    again = ok(c.post("/api/v1/records:import", json={"records": HOST_CRM}))
    assert (again["created"], again["updated"], again["ids"]) == (0, 6, first["ids"])
    assert snapshot(c) == before, "importing the same records twice changed something"

    # an update by external id is an update: the record keeps its id and its mail follows it
    moved = [dict(HOST_CRM[2], emails=["jane@newjob.example"])]
    assert ok(c.post("/api/v1/records:import", json={"records": moved}))["ids"] == [jane]
    assert team.timeline("person", jane) == []
    assert len(ok(c.get("/api/v1/records/person"))) == 2

    # a batch with one bad item changes nothing (one transaction), and says which rule it broke
    bad = [{"type": "person", "external_id": "crm-p-9", "name": "Nine", "emails": ["nine@acme.example"]},
           {"type": "person", "name": "No Id", "emails": ["noid@acme.example"]}]  # fmt: skip
    assert "external_id" in error(c.post("/api/v1/records:import", json={"records": bad}), 422, "invalid")
    assert [p["external_id"] for p in ok(c.get("/api/v1/records/person"))] == ["crm-p-1", "crm-p-2"]
    clash = [{"type": "deal", "external_id": "crm-d-9", "name": "Copy", "token": "T-1042"}]
    assert "T-1042" in error(c.post("/api/v1/records:import", json={"records": clash}), 409, "conflict")


def test_bulk_import_resolves_host_ids_in_any_order(api: TestClient) -> None:
    reordered = list(reversed(HOST_CRM))  # deals, then people, then companies: as a host may export
    imported = ok(api.post("/api/v1/records:import", json={"records": reordered}))
    assert imported["created"] == 6
    deals = {d["external_id"]: d for d in ok(api.get("/api/v1/records/deal"))}
    people = {p["external_id"]: p["id"] for p in ok(api.get("/api/v1/records/person"))}
    assert deals["crm-d-1"]["person_id"] == people["crm-p-1"]


# == 2. linking ========================================================================================
def test_mail_links_to_its_people_companies_and_deals_saying_why(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    acme = team.record("company", name="Acme", domains=["acme.example"])
    free = team.record("company", name="Google itself", domains=["gmail.com"])
    jane = team.record("person", name="Jane Roe", emails=["jane@acme.example", "j.roe@home.example"],
                       company_id=acme)  # fmt: skip
    renewal = team.record("deal", name="Renewal", token="T-1042", person_id=jane)
    put(
        mail_user,
        letter("Jane Roe <jane@acme.example>", me, "Pricing", msgid="m1@acme.example"),
        letter("Bob <bob@eu.acme.example>", me, "Intro", msgid="m2@acme.example", cc="j.roe@home.example"),
        letter("someone@gmail.com", me, "Re: [T-1042] contract", msgid="m4@gmail.com"),
        letter("x@other.example", me, "about t-1042", msgid="m5@other.example"),
        letter(
            "y@other.example", me, "no token here", msgid="m6@other.example", body="Ticket T-1042 again.\n"
        ),
        letter("stranger@nowhere.example", me, "unrelated", msgid="m7@nowhere.example"),
    )
    put(mail_user, letter(me, "Jane Roe <jane@acme.example>", "Proposal", msgid="m3@inboxlink.test"),
        folder="Sent")  # fmt: skip
    team.sync(team.pair(mail_user))

    person = by_mid(team.timeline("person", jane))
    assert {m: (e["rule"], e["evidence"]) for m, e in person.items()} == {
        "m1@acme.example": ("participant", "jane@acme.example is the sender"),
        "m2@acme.example": ("participant", "j.roe@home.example is in Cc"),
        "m3@inboxlink.test": ("participant", "jane@acme.example is a recipient (To)"),
    }
    # the company: its domain (a subdomain counts), and its people's mail from any of their addresses
    company = by_mid(team.timeline("company", acme))
    assert set(company) == {"m1@acme.example", "m2@acme.example", "m3@inboxlink.test"}
    assert ("domain", "company", "bob@eu.acme.example is at acme.example, a domain of Acme") in reasons(
        company["m2@acme.example"]
    )
    assert ("domain", "company", "jane@acme.example is at acme.example, a domain of Acme") in reasons(
        company["m1@acme.example"]
    )
    assert team.timeline("company", free) == [], "a free-mail domain never links to a company"
    # the deal: its token (brackets optional, any case, subject or body) and the only open deal of Jane
    deal = by_mid(team.timeline("deal", renewal))
    assert {m: (e["rule"], e["evidence"]) for m, e in deal.items()} == {
        "m1@acme.example": ("deal_contact", "the only open deal of Jane Roe"),
        "m2@acme.example": ("deal_contact", "the only open deal of Jane Roe"),
        "m3@inboxlink.test": ("deal_contact", "the only open deal of Jane Roe"),
        "m4@gmail.com": ("token", "[T-1042] in the subject"),
        "m5@other.example": ("token", "t-1042 in the subject"),
        "m6@other.example": ("token", "T-1042 in the body"),
    }
    everywhere = {m for kind, rid in (("person", jane), ("company", acme), ("deal", renewal))
                  for m in by_mid(team.timeline(kind, rid))}  # fmt: skip
    assert "m7@nowhere.example" not in everywhere


def test_a_record_created_after_the_sync_picks_up_its_mail(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    put(
        mail_user,
        letter("ann@client.example", me, "first", msgid="a1@client.example"),
        letter("ann.other@client.example", me, "second [K-5]", msgid="a2@client.example"),
    )
    team.sync(team.pair(mail_user))
    ann = team.record("person", name="Ann", emails=["ann@client.example"])
    assert set(by_mid(team.timeline("person", ann))) == {"a1@client.example"}
    imported = ok(team.c.post("/api/v1/records:import", json={"records": [
        {"type": "company", "external_id": "c", "name": "Client", "domains": ["client.example"]},
        {"type": "deal", "external_id": "d", "name": "K", "token": "K-5"},
    ]}))["ids"]  # fmt: skip
    client_co, deal = imported
    assert set(by_mid(team.timeline("company", client_co))) == {"a1@client.example", "a2@client.example"}
    assert by_mid(team.timeline("deal", deal))["a2@client.example"]["evidence"] == "[K-5] in the subject"
    # an edit moves her mail with her addresses; a delete takes her timeline away
    ok(team.c.patch(f"/api/v1/records/person/{ann}", json={"emails": ["ann.other@client.example"]}))
    assert set(by_mid(team.timeline("person", ann))) == {"a2@client.example"}
    assert team.c.delete(f"/api/v1/records/person/{ann}").status_code == 204
    error(team.c.get(f"/api/v1/records/person/{ann}/timeline"), 404, "not_found")
    assert set(by_mid(team.timeline("company", client_co))) == {"a1@client.example", "a2@client.example"}


def test_replies_inherit_the_links_of_the_message_they_answer(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    corp = team.record("company", name="Corp", domains=["corp.example"])
    deal = team.record("deal", name="Big one", token="D-7")
    account = team.pair(mail_user)
    # a reply from a stranger arrives before the message it answers (which carries the deal's token)
    put(mail_user, letter("helper@else.example", me, "Re: order", msgid="early@else.example",
                          in_reply_to="<order@shop.example>", references="<order@shop.example>"))  # fmt: skip
    team.sync(account)
    assert team.timeline("deal", deal) == []
    put(mail_user, letter("buyer@shop.example", me, "[D-7] order", msgid="order@shop.example"))
    put(mail_user, letter("buyer@corp.example", me, "Kick-off", msgid="root@corp.example"))
    put(mail_user, letter(me, "someone@else.example", "Re: Kick-off", msgid="r1@inboxlink.test",
                          in_reply_to="<root@corp.example>", references="<root@corp.example>"),
        folder="Sent")  # fmt: skip
    put(mail_user, letter("someone@else.example", me, "Re: Re: Kick-off", msgid="r2@else.example",
                          in_reply_to="<r1@inboxlink.test>",
                          references="<root@corp.example> <r1@inboxlink.test>"))  # fmt: skip
    team.sync(account)
    on_deal = by_mid(team.timeline("deal", deal))
    assert {m: (e["rule"], e["evidence"]) for m, e in on_deal.items()} == {
        "order@shop.example": ("token", "[D-7] in the subject"),
        "early@else.example": ("thread", "in the thread of <order@shop.example>, which is on deal Big one"),
    }
    on_corp = by_mid(team.timeline("company", corp))
    assert set(on_corp) == {"root@corp.example", "r1@inboxlink.test", "r2@else.example"}
    assert (
        on_corp["root@corp.example"]["evidence"] == "buyer@corp.example is at corp.example, a domain of Corp"
    )
    assert on_corp["r1@inboxlink.test"]["evidence"] == (
        "in the thread of <root@corp.example>, which is on company Corp"
    )
    # two levels down: it names an ancestor it lists (In-Reply-To or References) that is on Corp
    assert on_corp["r2@else.example"]["rule"] == "thread" and on_corp["r2@else.example"]["evidence"] in {
        "in the thread of <root@corp.example>, which is on company Corp",
        "in the thread of <r1@inboxlink.test>, which is on company Corp"}  # fmt: skip
    # the parent loses its link: so do the replies below it
    ok(team.c.patch(f"/api/v1/records/company/{corp}", json={"domains": ["corp-new.example"]}))
    assert team.timeline("company", corp) == []


def test_internal_mail_and_the_blocklist_are_skipped_entirely(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    team.user("Mate", f"mate@{OWN}")
    intern = team.record("person", name="Intern", emails=[f"intern@{OWN}"])
    us = team.record("company", name="Us", domains=[OWN])
    kim = team.record("person", name="Kim", emails=["kim@buyer.example"])
    eve = team.record("person", name="Eve", emails=["eve@spy.example"])
    spy = team.record("company", name="Spy", domains=["spy.example"])
    put(
        mail_user,
        letter(f"Mate <mate@{OWN}>", me, "lunch?", msgid="i1@inboxlink.test"),
        letter(f"mate@{OWN}", me, "intro", msgid="i2@inboxlink.test", cc=f"intern@{OWN}"),
        letter(f"mate@{OWN}", me, "a client", msgid="i3@inboxlink.test", cc="kim@buyer.example"),
        letter("eve@spy.example", me, "hi", msgid="e1@spy.example"),
        letter("kim@buyer.example", me, "fwd", msgid="e2@buyer.example", cc="Eve <eve@spy.example>"),
    )
    account = team.pair(mail_user)
    team.sync(account)
    assert team.timeline("person", intern) == [] and team.timeline("company", us) == []
    assert (
        by_mid(team.timeline("person", kim))["i3@inboxlink.test"]["evidence"] == "kim@buyer.example is in Cc"
    )
    assert set(by_mid(team.timeline("person", kim))) == {"i3@inboxlink.test", "e2@buyer.example"}
    assert set(by_mid(team.timeline("company", spy))) == {"e1@spy.example", "e2@buyer.example"}

    # blocking an address purges every link of the mail it is on (Kim's too), and blocks new mail
    blocked = ok(team.c.post("/api/v1/blocklist", json={"value": "Eve@Spy.Example"}), 201)
    assert blocked == {"value": "eve@spy.example", "links_removed": 5}  # e1: Eve, Spy; e2: Kim, Eve, Spy
    assert team.timeline("person", eve) == [] and team.timeline("company", spy) == []
    assert set(by_mid(team.timeline("person", kim))) == {"i3@inboxlink.test"}
    # blocking a domain blocks its subdomains
    ok(team.c.post("/api/v1/blocklist", json={"value": "spy.example"}), 201)
    put(mail_user, letter("eve@spy.example", me, "again", msgid="e3@spy.example"),
        letter("agent@hq.spy.example", me, "hello", msgid="e4@hq.spy.example"))  # fmt: skip
    team.sync(account)
    assert team.timeline("company", spy) == [] and team.timeline("person", eve) == []
    assert ok(team.c.get("/api/v1/blocklist")) == ["eve@spy.example", "spy.example"]
    # unblocking re-links all of it
    for value in ("spy.example", "eve@spy.example"):
        assert team.c.delete(f"/api/v1/blocklist/{value}").status_code == 204
    error(team.c.delete("/api/v1/blocklist/spy.example"), 404, "not_found")
    assert set(by_mid(team.timeline("person", eve))) == {
        "e1@spy.example",
        "e2@buyer.example",
        "e3@spy.example",
    }
    assert set(by_mid(team.timeline("company", spy))) == {
        "e1@spy.example", "e2@buyer.example", "e3@spy.example", "e4@hq.spy.example"}  # fmt: skip
    assert set(by_mid(team.timeline("person", kim))) == {"i3@inboxlink.test", "e2@buyer.example"}

    # exclude_internal off: the colleague's mail links like any other; the own domain still never does
    settings = ok(team.c.patch("/api/v1/settings/linking", json={"exclude_internal": False}))
    assert settings["exclude_internal"] is False
    assert (
        by_mid(team.timeline("person", intern))["i2@inboxlink.test"]["evidence"] == f"intern@{OWN} is in Cc"
    )
    assert team.timeline("company", us) == []
    ok(team.c.patch("/api/v1/settings/linking", json={"exclude_internal": True}))
    assert team.timeline("person", intern) == []


def test_changing_the_linking_settings_decides_past_mail_again(team: Team, mail_user: MailUser) -> None:
    me = mail_user.email
    dana = team.record("person", name="Dana", emails=["dana@client.example"])
    deal = team.record("deal", name="Quote", token="Q-9", person_id=dana)
    put(mail_user, letter("Dana <dana@client.example>", me, "[Q-9] quote", msgid="q@client.example"),
        letter("Lead <lead@prospect.example>", me, "interested", msgid="lead@prospect.example"))  # fmt: skip
    account = team.pair(mail_user)
    team.sync(account)
    defaults = {"auto_link": ["person", "company", "deal"], "exclude_internal": True, "auto_create": "none"}
    assert ok(team.c.get("/api/v1/settings/linking")) == defaults
    assert [e["rule"] for e in team.timeline("deal", deal)] == ["token"]

    ok(team.c.patch("/api/v1/settings/linking", json={"auto_link": ["person", "company"]}))
    assert team.timeline("deal", deal) == [] and len(team.timeline("person", dana)) == 1
    ok(team.c.patch("/api/v1/settings/linking", json={"auto_link": ["deal"]}))
    assert team.timeline("person", dana) == [] and [e["rule"] for e in team.timeline("deal", deal)] == [
        "token"
    ]
    ok(team.c.patch("/api/v1/settings/linking", json={"auto_link": ["person", "company", "deal"]}))
    assert len(team.timeline("person", dana)) == 1
    # (request validation answers 422 in FastAPI's own shape: tests/test_acceptance_api.py has that finding)
    assert team.c.patch("/api/v1/settings/linking", json={"auto_create": "everyone"}).status_code == 422

    # auto-creation is for mail synced from now on: past mail creates nobody
    ok(team.c.patch("/api/v1/settings/linking", json={"auto_create": "sent_and_received"}))
    assert [p["name"] for p in ok(team.c.get("/api/v1/records/person"))] == ["Dana"]
    put(mail_user, letter("New Client <new@client2.example>", me, "question", msgid="new@client2.example"))
    team.sync(account)
    people = {p["name"]: p for p in ok(team.c.get("/api/v1/records/person"))}
    assert set(people) == {"Dana", "New Client"} and people["New Client"]["origin"] == "auto"
    [entry] = team.timeline("person", people["New Client"]["id"])
    assert entry["evidence"] == "new@client2.example is the sender (person created from this mail)"


# == 3. timelines ======================================================================================
def test_the_timeline_is_newest_first_paged_and_has_one_entry_per_message(
    team: Team, dovecot: Dovecot, mail_user: MailUser
) -> None:
    me = mail_user.email
    mate = dovecot.add_user(f"mate.{mail_user.email}", "mate-password-1234")
    lee = team.record("person", name="Lee", emails=["lee@north.example"])
    tokyo, new_york = timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))

    def from_lee(n: int, when: datetime | None) -> bytes:
        return letter("Lee <lee@north.example>", me, f"note {n}", msgid=f"t{n}@north.example", when=when)

    put(
        mail_user,
        from_lee(1, datetime(2026, 3, 2, 9, 0, tzinfo=tokyo)),  # 00:00Z
        from_lee(2, datetime(2026, 3, 1, 20, 0, tzinfo=new_york)),  # 01:00Z: later, on an earlier local day
        from_lee(3, datetime(2026, 3, 2, 2, 0, tzinfo=UTC)),
        from_lee(5, datetime(2026, 3, 3, 10, 0, tzinfo=UTC)),
        from_lee(6, datetime(2026, 3, 4, tzinfo=UTC)),
        from_lee(7, datetime(2026, 3, 4, tzinfo=UTC)),
    )
    put(mail_user, from_lee(4, None), internal=datetime(2026, 3, 5, tzinfo=UTC))  # no Date: INTERNALDATE
    put(mail_user, from_lee(5, datetime(2026, 3, 3, 10, 0, tzinfo=UTC)), folder="Archive")  # the same bytes
    put(mate, from_lee(5, datetime(2026, 3, 3, 10, 0, tzinfo=UTC)))  # and in a teammate's mailbox
    mine, theirs = team.pair(mail_user), team.pair(mate)
    team.sync(mine)
    team.sync(theirs)
    shown = ok(team.c.get(f"/api/v1/accounts/{mine}"))
    assert (shown["message_count"], shown["placement_count"]) == (7, 8)

    whole = ok(team.c.get(f"/api/v1/records/person/{lee}/timeline"))
    ids = [e["message_id"] for e in whole["entries"]]
    assert whole["total"] == 7 and len(set(ids)) == 7, ids
    assert ids[0] == "t4@north.example" and set(ids[1:3]) == {"t6@north.example", "t7@north.example"}
    assert ids[3:] == ["t5@north.example", "t3@north.example", "t2@north.example", "t1@north.example"]
    dates = {e["message_id"]: e["date"] for e in whole["entries"]}
    assert dates["t1@north.example"] == "2026-03-02T00:00:00+00:00"
    assert dates["t2@north.example"] == "2026-03-02T01:00:00+00:00"
    assert dates["t4@north.example"] == "2026-03-05T00:00:00+00:00"

    pages = [ok(team.c.get(f"/api/v1/records/person/{lee}/timeline", params={"limit": 3, "offset": o}))
             for o in (0, 3, 6, 9)]  # fmt: skip
    assert [p["total"] for p in pages] == [7] * 4 and [len(p["entries"]) for p in pages] == [3, 3, 1, 0]
    assert [e["message_id"] for p in pages for e in p["entries"]] == ids
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}):
        assert team.c.get(f"/api/v1/records/person/{lee}/timeline", params=bad).status_code == 422

    # copies come and go: the entry stays while any copy is left, and goes with the last one
    expunge(mail_user, "INBOX", "t5@north.example")
    expunge(mail_user, "Archive", "t5@north.example")
    expunge(mail_user, "INBOX", "t3@north.example")
    team.sync(mine)
    after = [e["message_id"] for e in team.timeline("person", lee)]
    assert after == [m for m in ids if m != "t3@north.example"]


# == 4. sending ========================================================================================
def test_a_send_from_a_record_goes_out_once_and_its_sent_copy_is_not_a_second_entry(
    team: Team, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    me, c = mail_user.email, team.c
    dana = team.record("person", name="Dana", emails=["dana@client.example"])
    deal = team.record("deal", name="Renewal", token="T-1042")
    account = pair_sending(c, mail_user, port)
    team.sync(account)
    item = ok(c.post("/api/v1/outbox", json={
        "account_id": account, "to": ["dana@client.example"], "cc": ["ops@client.example"],
        "bcc": ["audit@inboxlink.test"], "subject": "Angebot für Müller [T-1042]", "text": "Grüße,\nAna\n",
        "records": [{"type": "deal", "id": deal}],
    }), 201)  # fmt: skip
    assert item["status"] == "sent" and item["error"] is None and item["sent_at"]
    [(mail_from, rcpts, raw)] = server.received
    assert mail_from == me
    assert sorted(rcpts) == ["audit@inboxlink.test", "dana@client.example", "ops@client.example"]
    m = received(raw)
    assert (m["From"], m["To"], m["Cc"], m["Bcc"]) == (me, "dana@client.example", "ops@client.example", None)
    assert m["Subject"] == "Angebot für Müller [T-1042]" and b"audit@" not in raw
    assert m["Message-ID"] == f"<{item['message_id']}>" and m["Date"] is not None
    assert m["In-Reply-To"] is None and m["References"] is None
    body = m.get_body(("plain",))
    assert body is not None and "Grüße" in body.get_content()

    # on the record at once, saying why, and on Dana's timeline as a recipient
    [entry] = team.timeline("deal", deal)
    assert (entry["message_id"], entry["rule"], entry["evidence"]) == (
        item["message_id"],
        "sent",
        "sent from deal Renewal",
    )
    assert entry["subject"] == "Angebot für Müller [T-1042]"
    [to_dana] = team.timeline("person", dana)
    assert to_dana["evidence"] == "dana@client.example is a recipient (To)"
    # the copy is in Sent on the server; syncing it later downloads nothing and adds nothing
    assert item["message_id"] in server_state(mail_user)["Sent"]
    again = ok(c.post(f"/api/v1/accounts/{account}/sync"))
    assert again["status"] == "connected" and again["fetched"] == 0
    assert [e["message_id"] for e in team.timeline("deal", deal)] == [item["message_id"]]
    listed = ok(c.get(f"/api/v1/accounts/{account}/messages"))["messages"]
    [stored] = [x for x in listed if x["message_id"] == item["message_id"]]
    assert [p["folder"] for p in stored["placements"]] == ["Sent"]
    assert ok(c.get(f"/api/v1/accounts/{account}"))["message_count"] == len(listed) == 1
    assert [o["status"] for o in ok(c.get("/api/v1/outbox"))] == ["sent"]
    assert len(server.received) == 1


def test_a_reply_carries_its_threading_headers_and_joins_the_thread(
    team: Team, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    me, c = mail_user.email, team.c
    quote = team.record("deal", name="Quote", token="Q-7")
    put(mail_user, letter("Dana <dana@client.example>", me, "Re: Angebot", msgid="parent@client.example",
                          in_reply_to="<mid@inboxlink.test>",
                          references="<root@client.example> <mid@inboxlink.test>",
                          body="About Q-7: is the offer still valid?\n"))  # fmt: skip
    account = pair_sending(c, mail_user, port)
    team.sync(account)
    assert by_mid(team.timeline("deal", quote))["parent@client.example"]["evidence"] == "Q-7 in the body"

    item = ok(c.post("/api/v1/outbox", json={"account_id": account, "to": ["dana@client.example"],
                                             "text": "Yes, until Friday.",
                                             "reply_to_message": "parent@client.example"}), 201)  # fmt: skip
    assert item["status"] == "sent" and item["in_reply_to"] == "parent@client.example"
    [(_from, _rcpts, raw)] = server.received
    m = received(raw)
    assert m["Subject"] == "Re: Angebot"
    assert m["In-Reply-To"] == "<parent@client.example>"
    assert m["References"].split() == [
        "<root@client.example>",
        "<mid@inboxlink.test>",
        "<parent@client.example>",
    ]
    on_deal = by_mid(team.timeline("deal", quote))
    assert (on_deal[item["message_id"]]["rule"], on_deal[item["message_id"]]["evidence"]) == (
        "thread",
        "in the thread of <parent@client.example>, which is on deal Quote",
    )
    # Dana answers our reply: her answer joins the thread too
    put(mail_user, letter("dana@client.example", me, "Re: Angebot", msgid="answer@client.example",
                          in_reply_to=f"<{item['message_id']}>",
                          references=f"<parent@client.example> <{item['message_id']}>"))  # fmt: skip
    team.sync(account)
    assert by_mid(team.timeline("deal", quote))["answer@client.example"]["rule"] == "thread"

    # what a send needs, said as documented errors
    sends = [
        ({"to": ["dana@client.example"], "text": "x", "reply_to_message": "<never@seen.example>"}, 404,
         "not_found"),
        ({"to": ["dana@client.example"], "text": "x", "records": [{"type": "person", "id": quote}]}, 404,
         "not_found"),
        ({"text": "nobody to send to"}, 422, "invalid"),
        ({"to": ["dana@client.example"]}, 422, "invalid"),
        ({"to": ["not an address"], "text": "x"}, 422, "invalid"),
    ]  # fmt: skip
    for body, status, code in sends:
        error(c.post("/api/v1/outbox", json={"account_id": account, **body}), status, code)
    assert len(server.received) == 1


def test_a_refused_recipient_fails_the_message_sends_nothing_and_keeps_the_draft(
    team: Team, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    c = team.c
    account = pair_sending(c, mail_user, port)
    server.reject = {"nobody@client.example"}
    draft = {"account_id": account, "to": ["ok@client.example", "nobody@client.example"], "subject": "Hi",
             "text": "x"}  # fmt: skip
    item = ok(c.post("/api/v1/outbox", json=draft), 201)
    assert item["status"] == "failed" and item["error"]["code"] == "recipients_rejected"
    assert "nobody@client.example (550" in item["error"]["message"]
    assert "ok@client.example" not in item["error"]["message"]
    assert server.received == []
    kept = ok(c.get(f"/api/v1/outbox/{item['id']}"))
    assert kept["status"] == "failed" and kept["to"] == draft["to"] and kept["subject"] == "Hi"
    assert [o["id"] for o in ok(c.get("/api/v1/outbox", params={"status": "failed"}))] == [item["id"]]
    listed = ok(c.get(f"/api/v1/accounts/{account}/messages"))["messages"]
    assert item["message_id"] not in {m["message_id"] for m in listed}, "a failed send is no mail"
    # fixed and sent again: once, to the one left, with the same Message-ID
    ok(c.put(f"/api/v1/outbox/{item['id']}", json={**draft, "to": ["ok@client.example"]}))
    sent = ok(c.post(f"/api/v1/outbox/{item['id']}/send", json={}))
    assert sent["status"] == "sent" and sent["error"] is None
    [(_from, rcpts, raw)] = server.received
    assert rcpts == ["ok@client.example"] and received(raw)["Message-ID"] == f"<{item['message_id']}>"
    error(c.post(f"/api/v1/outbox/{item['id']}/send", json={}), 422, "invalid")  # sent is final
    assert len(server.received) == 1


def test_a_temporary_recipient_refusal_is_retried_later(
    team: Team, mail_user: MailUser, smtp: tuple[Mailer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, port = smtp
    account = pair_sending(team.c, mail_user, port)

    async def greylist(_server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        return "451 4.7.1 greylisted, please try again later"

    monkeypatch.setattr(server, "handle_RCPT", greylist)
    item = ok(team.c.post("/api/v1/outbox", json={"account_id": account, "to": ["x@client.example"],
                                                  "text": "hello"}), 201)  # fmt: skip
    assert server.received == []
    assert item["status"] == "queued", item
    assert item["send_at"] is not None and item["send_at"] > datetime.now(UTC).isoformat()


def test_a_send_later_time_without_a_time_zone_is_refused(team: Team, mail_user: MailUser) -> None:
    account = team.pair(mail_user)
    naive = {
        "account_id": account,
        "to": ["x@client.example"],
        "text": "later",
        "send_at": "2099-01-01T09:00:00",
    }
    answer = team.c.post("/api/v1/outbox", json=naive)
    error(answer, 422, "invalid")


@contextmanager
def server_time_zone(tz: str) -> Iterator[None]:
    """Run with the process's local time zone set to `tz` (POSIX TZ), as a server configured so."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def send_later_on_serve(tmp_path: Path, mail_user: MailUser, smtp: Mailer, port: int) -> dict[str, Any]:
    """`serve` (scheduler and task consumer) running; a send-later queued through the CLI for the
    next whole second plus 3 s, from a deal created through the CLI. Returns what happened."""
    home = tmp_path / "home"
    settings = lambda url: Settings(home=home, allow_private_hosts=True, public_url=url)  # noqa: E731
    env = env_for(home)
    with serving(settings) as (url, _rt, _app), httpx.Client(base_url=url, timeout=30) as c:
        account = pair_sending(c, mail_user, port)
        deal = json.loads(run(["records", "add", "deal", "--name", "Later", "--token", "L-1", "--json"],
                              env).stdout)["id"]  # fmt: skip
        due = datetime.fromtimestamp(math.ceil(time.time()) + 3, UTC)
        queued = json.loads(run(["send", account, "--to", "x@client.example", "--subject", "[L-1] later",
                                 "--text", "Later", "--send-at", due.isoformat(), "--record", f"deal:{deal}",
                                 "--json"], env).stdout)  # fmt: skip
        assert queued["status"] == "queued" and queued["send_at"] == due.isoformat()
        early = len(smtp.received) if datetime.now(UTC) < due else None
        status = queued
        while datetime.now(UTC) < due + timedelta(seconds=4) and status["status"] in ("queued", "sending"):
            time.sleep(0.1)
            status = ok(c.get(f"/api/v1/outbox/{queued['id']}"))
        return {"early": early, "status": status, "due": due, "deal": deal, "env": env}


def test_a_send_later_goes_out_at_its_time(
    tmp_path: Path, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    with server_time_zone("UTC0"):
        got = send_later_on_serve(tmp_path, mail_user, server, port)
    assert got["early"] in (0, None), "sent before its time"  # None: the CLI took longer than 3 s
    status, due = got["status"], got["due"]
    assert status["status"] == "sent", status
    assert due <= datetime.fromisoformat(status["sent_at"]) < due + timedelta(seconds=4)
    [(_from, rcpts, raw)] = server.received
    assert rcpts == ["x@client.example"] and received(raw)["Message-ID"] == f"<{status['message_id']}>"
    [entry] = json.loads(run(["timeline", "deal", got["deal"], "--json"], got["env"]).stdout)
    assert (entry["message_id"], entry["rule"], entry["evidence"]) == (
        status["message_id"],
        "sent",
        "sent from deal Later",
    )


def test_a_send_later_goes_out_at_its_time_on_a_server_east_of_utc(
    tmp_path: Path, mail_user: MailUser, smtp: tuple[Mailer, int]
) -> None:
    server, port = smtp
    with server_time_zone("JST-9"):
        got = send_later_on_serve(tmp_path, mail_user, server, port)
    assert got["early"] in (0, None)
    assert got["status"]["status"] == "sent", got["status"]


# == 5. visibility =====================================================================================
OPERATOR = "operator-token-for-acceptance"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[TestClient]:
    """The API with INBOXLINK_API_TOKEN set; requests carry the operator's token unless they say
    otherwise."""
    settings = Settings(home=tmp_path / "home", allow_private_hosts=True, api_token=OPERATOR)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {OPERATOR}"}) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def two_users(c: TestClient, dovecot: Dovecot, alice_box: MailUser) -> tuple[dict[str, Any], ...]:
    """Alice and Bob, each with their own token and their own mailbox paired with it."""
    bob_box = dovecot.add_user(f"bob.{alice_box.email}", "bob-password-1234")
    alice = ok(c.post("/api/v1/users", json={"name": "Alice", "email": alice_box.email}), 201)
    bob = ok(c.post("/api/v1/users", json={"name": "Bob", "email": bob_box.email}), 201)
    assert alice["token"] and bob["token"] and alice["token"] != bob["token"]
    for user, box in ((alice, alice_box), (bob, bob_box)):
        user["box"] = box
        user["account"] = ok(
            c.post("/api/v1/accounts", json=body_for(box), headers=bearer(user["token"])), 201
        )
        assert user["account"]["owner_id"] == user["id"] and user["account"]["visibility"] == "everything"
    return alice, bob


def test_users_see_their_own_mail_and_teammates_linked_mail_at_the_level_shared(
    guarded: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    c = guarded
    client = ok(c.post("/api/v1/records/person", json={"name": "Client", "emails": ["client@buyer.example"]}),
                201)["id"]  # fmt: skip
    alice, bob = two_users(c, dovecot, mail_user)
    a, b = bearer(alice["token"]), bearer(bob["token"])
    both = f"{alice['box'].email}, {bob['box'].email}"
    her = alice["box"].email
    put(alice["box"],
        letter("Client <client@buyer.example>", her, "Quarterly numbers", msgid="q@buyer.example",
               body="The figure is 42 zebras.\n"),
        letter("Friend <friend@else.example>", her, "Private", msgid="p@else.example",
               body="dinner on Friday?\n"),
        letter("client@buyer.example", both, "For both of you", msgid="both@buyer.example"))  # fmt: skip
    put(bob["box"], letter("client@buyer.example", both, "For both of you", msgid="both@buyer.example"))
    for user in (alice, bob):
        ok(c.post(f"/api/v1/accounts/{user['account']['id']}/sync", headers=bearer(user["token"])))
    listed = ok(c.get(f"/api/v1/accounts/{alice['account']['id']}/messages", headers=a))["messages"]
    rows = {m["message_id"]: m["id"] for m in listed}
    quarterly, private = rows["q@buyer.example"], rows["p@else.example"]

    # who may call what
    assert c.get("/api/v1/accounts", headers={"Authorization": ""}).status_code == 401
    assert c.get("/api/v1/accounts", headers=bearer("ilu_not-a-token")).status_code == 401
    error(
        c.post("/api/v1/users", json={"name": "Eve", "email": "eve@x.example"}, headers=b), 403, "forbidden"
    )
    error(c.patch("/api/v1/settings/linking", json={"exclude_internal": False}, headers=b), 403, "forbidden")
    assert [x["id"] for x in ok(c.get("/api/v1/accounts", headers=b))] == [bob["account"]["id"]]
    alice_acc = alice["account"]["id"]
    for answer in (c.get(f"/api/v1/accounts/{alice_acc}", headers=b),
                   c.get(f"/api/v1/accounts/{alice_acc}/messages", headers=b),
                   c.post(f"/api/v1/accounts/{alice_acc}/sync", headers=b),
                   c.patch(f"/api/v1/accounts/{alice_acc}", json={"visibility": "metadata"}, headers=b),
                   c.post("/api/v1/outbox", headers=b,
                          json={"account_id": alice_acc, "to": ["x@y.example"], "text": "x"})):  # fmt: skip
        error(answer, 404, "not_found")
    # Alice's unlinked mail is hers alone: not for Bob, in no form
    assert "dinner" in ok(c.get(f"/api/v1/messages/{private}", headers=a))["text"]
    error(c.get(f"/api/v1/messages/{private}", headers=b), 404, "not_found")
    error(c.get(f"/api/v1/messages/{private}/raw", headers=b), 404, "not_found")
    for q in ("dinner", "Private", "friend@else.example"):
        assert ok(c.get("/api/v1/search", params={"q": q}, headers=b))["results"] == []
    assert [r["id"] for r in ok(c.get("/api/v1/search", params={"q": "dinner"}, headers=a))["results"]] == [
        private
    ]

    def seen_by_bob() -> dict[str, dict[str, Any]]:
        entries = ok(c.get(f"/api/v1/records/person/{client}/timeline", headers=b))["entries"]
        return by_mid(entries)

    # the message both hold is one entry, at the best level: Bob's own copy
    assert set(seen_by_bob()) == {"q@buyer.example", "both@buyer.example"}
    assert seen_by_bob()["both@buyer.example"]["visibility"] == "everything"

    ok(c.patch(f"/api/v1/accounts/{alice_acc}", json={"visibility": "metadata"}, headers=a))
    entry = seen_by_bob()["q@buyer.example"]
    assert entry["visibility"] == "metadata" and entry["date"] == "2026-03-02T09:00:00+00:00"
    assert entry["from"] == {"email": "client@buyer.example", "name": "Client"}
    assert (entry["subject"], entry["snippet"], entry["has_attachments"]) == (None, None, None)
    detail = ok(c.get(f"/api/v1/messages/{quarterly}", headers=b))
    assert detail["subject"] is None and "text" not in detail and "html" not in detail
    error(c.get(f"/api/v1/messages/{quarterly}/raw", headers=b), 403, "forbidden")
    assert ok(c.get("/api/v1/search", params={"q": "Quarterly"}, headers=b))["results"] == []
    assert ok(c.get("/api/v1/search", params={"q": "zebras"}, headers=b))["results"] == []

    ok(c.patch(f"/api/v1/accounts/{alice_acc}", json={"visibility": "subject"}, headers=a))
    entry = seen_by_bob()["q@buyer.example"]
    assert (entry["visibility"], entry["subject"], entry["snippet"]) == ("subject", "Quarterly numbers", None)
    assert "text" not in ok(c.get(f"/api/v1/messages/{quarterly}", headers=b))
    error(c.get(f"/api/v1/messages/{quarterly}/raw", headers=b), 403, "forbidden")
    found = ok(c.get("/api/v1/search", params={"q": "Quarterly"}, headers=b))["results"]
    assert [r["id"] for r in found] == [quarterly]
    assert ok(c.get("/api/v1/search", params={"q": "zebras"}, headers=b))["results"] == []

    ok(c.patch(f"/api/v1/accounts/{alice_acc}", json={"visibility": "everything"}, headers=a))
    entry = seen_by_bob()["q@buyer.example"]
    assert entry["visibility"] == "everything" and "42 zebras" in entry["snippet"]
    assert "42 zebras" in ok(c.get(f"/api/v1/messages/{quarterly}", headers=b))["text"]
    raw = c.get(f"/api/v1/messages/{quarterly}/raw", headers=b)
    assert raw.status_code == 200 and b"42 zebras" in raw.content
    assert raw.headers["content-disposition"].startswith("attachment")
    # the operator may act as a user, and then sees what that user sees
    as_bob = ok(c.get(f"/api/v1/records/person/{client}/timeline", headers={"X-Inboxlink-User": bob["id"]}))
    assert {e["message_id"] for e in as_bob["entries"]} == set(seen_by_bob())


def test_a_reply_never_reveals_a_subject_hidden_from_its_author(
    guarded: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    c = guarded
    ok(c.post("/api/v1/records/person", json={"name": "Client", "emails": ["client@buyer.example"]}), 201)
    alice, bob = two_users(c, dovecot, mail_user)
    put(alice["box"], letter("client@buyer.example", alice["box"].email, "Secret merger plans",
                             msgid="secret@buyer.example"))  # fmt: skip
    a, b = bearer(alice["token"]), bearer(bob["token"])
    ok(c.post(f"/api/v1/accounts/{alice['account']['id']}/sync", headers=a))
    ok(c.patch(f"/api/v1/accounts/{alice['account']['id']}", json={"visibility": "metadata"}, headers=a))
    [entry] = ok(c.get("/api/v1/search", params={"q": "client@buyer.example"}, headers=b))["results"]
    assert entry["message_id"] == "secret@buyer.example" and entry["subject"] is None
    answer = c.post("/api/v1/outbox", headers=b, json={"account_id": bob["account"]["id"], "draft": True,
                                                       "reply_to_message": entry["message_id"]})  # fmt: skip
    assert "Secret merger" not in answer.text, answer.text


# == webhooks: what a host CRM hears of links ==========================================================
def test_importing_unchanged_records_again_announces_no_new_links(
    tmp_path: Path, mail_user: MailUser, hooks: Receiver
) -> None:
    me = mail_user.email
    put(mail_user, letter("Jane Roe <jane@acme.example>", me, "[T-1042] terms", msgid="terms@acme.example"))
    settings = lambda url: Settings(home=tmp_path / "home", allow_private_hosts=True, public_url=url)  # noqa: E731
    with serving(settings) as (url, _rt, _app), httpx.Client(base_url=url, timeout=30) as c:
        hook = ok(c.post("/api/v1/webhooks", json={"url": hooks.url, "event_types": ["message.linked"]}), 201)
        hooks.secret = hook["secret"]
        account = ok(c.post("/api/v1/accounts", json=body_for(mail_user)), 201)["id"]
        deadline = time.monotonic() + 20
        while ok(c.get(f"/api/v1/accounts/{account}"))["message_count"] < 1:
            assert time.monotonic() < deadline, "the first sync did not come"
            time.sleep(0.05)
        batch = {"records": HOST_CRM[:1] + HOST_CRM[2:3] + HOST_CRM[4:5]}  # Acme, Jane, Renewal
        assert ok(c.post("/api/v1/records:import", json=batch))["created"] == 3
        first = hooks.wait_for(3)
        assert all(r.verified for r in first)
        linked = {(r.json["data"]["record"]["type"], r.json["data"]["rule"]) for r in first}
        assert linked == {("company", "domain"), ("person", "participant"), ("deal", "token")}
        assert ok(c.post("/api/v1/records:import", json=batch))["created"] == 0
        time.sleep(4)  # the delivery loop runs on each commit and every 2 s
        assert len(hooks.received) == 3, [r.json["data"] for r in hooks.received[3:]]
