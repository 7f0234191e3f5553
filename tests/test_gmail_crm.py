"""The CRM over a Gmail account (paired through the real OAuth flow against the simulator): its mail
links to records with the same rules as IMAP mail, and the outbox sends through the Gmail API,
threaded, linked at once, never twice."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink_sim.google import GoogleSim
from tests.support import make_message
from tests.test_oauth import ALICE, pair, settings_for


@pytest.fixture
def sim() -> Iterator[GoogleSim]:
    with GoogleSim(seed=5) as server:
        server.add_user(ALICE, "Alice Liddell")
        yield server


@pytest.fixture
def client(sim: GoogleSim, tmp_path: Path) -> Iterator[TestClient]:
    settings: Settings = settings_for(sim, tmp_path / "home")
    with TestClient(create_app(settings)) as c:
        yield c


def test_gmail_mail_links_and_sends_through_the_outbox(client: TestClient, sim: GoogleSim) -> None:
    sim.insert_raw(ALICE, make_message(1, sender="Jo <jo@partner.example>", to=ALICE, subject="[P-7] plan",
                                       msgid="<p1@partner.example>"))  # fmt: skip
    account = pair(client, features="read_mail,send_mail")["account"]["id"]
    assert client.post(f"/api/v1/accounts/{account}/sync").json()["status"] == "connected"
    jo = client.post("/api/v1/records/person", json={"name": "Jo", "emails": ["jo@partner.example"]}).json()[
        "id"
    ]
    deal = client.post("/api/v1/records/deal", json={"name": "Plan", "token": "P-7", "person_id": jo}).json()[
        "id"
    ]
    entries = client.get(f"/api/v1/records/deal/{deal}/timeline").json()["entries"]
    assert [(e["message_id"], e["rule"], e["evidence"]) for e in entries] == [
        ("p1@partner.example", "token", "[P-7] in the subject")
    ]
    sent = client.post(
        "/api/v1/outbox",
        json={"account_id": account, "to": ["jo@partner.example"], "text": "Agreed.",
              "reply_to_message": "p1@partner.example", "records": [{"type": "deal", "id": deal}]},
    ).json()  # fmt: skip
    assert sent["status"] == "sent", sent
    [record] = [r for r in sim.outbox if r.user == ALICE]
    m = message_from_bytes(record.raw)
    assert m["Message-ID"] == f"<{sent['message_id']}>" and m["In-Reply-To"] == "<p1@partner.example>"
    assert m["Subject"] == "Re: [P-7] plan" and record.recipients == ["jo@partner.example"]
    rules = {
        e["message_id"]: e["rule"]
        for e in client.get(f"/api/v1/records/deal/{deal}/timeline").json()["entries"]
    }
    assert rules == {"p1@partner.example": "token", sent["message_id"]: "sent"}
    # the next sync sees Gmail's SENT copy as the message already stored: one entry, nothing doubled
    assert client.post(f"/api/v1/accounts/{account}/sync").json()["status"] == "connected"
    again = client.get(f"/api/v1/records/deal/{deal}/timeline").json()
    assert again["total"] == 2
    # sending again never re-sends the same row
    assert client.post(f"/api/v1/outbox/{sent['id']}/send", json={}).status_code == 422
    assert len([r for r in sim.outbox if r.user == ALICE]) == 1
