"""Random teams, mailboxes and mail against an oracle of who may see what, through the REST API.

Two mailboxes owned by two users with random sharing levels, a third user who owns none, people
records for some senders, and mail delivered to one mailbox, the other or both: as copies of one
message (same bytes), or as different messages that reuse one Message-ID. For every user and every
message row, the API must show exactly what these sentences allow:

- a message's level for a user: everything in their own mailbox; elsewhere, the mailbox's sharing
  level if the message is linked to a record, else nothing; a message with several rows (the same
  Message-ID in several mailboxes) is seen at the best level any row gives, and what is shown of it
  is read from that row;
- detail: 404 at no level; the subject from "subject" up; text, snippet and attachments only at
  "everything";
- search: a subject word finds the message from "subject" up, a body word only at "everything";
- a person's timeline lists the linked messages the user sees at any level, at that level.

Seeded, so a failure names its seed and replays exactly."""

from __future__ import annotations

import random
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import database_url

LEVELS = ["none", "metadata", "subject", "everything"]
SENDERS = ["kim@buyer.example", "lou@buyer.example", "max@other.example", "noa@other.example"]


@pytest.fixture
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """SQLite, or PostgreSQL for the seeds marked so (its search is another code path)."""
    url = database_url(request)
    settings = Settings(home=tmp_path / "home", allow_private_hosts=True, database_url=url)
    with TestClient(create_app(settings)) as c:
        yield c


def pair(c: TestClient, box: MailUser, owner: str, visibility: str) -> str:
    body = {
        "email": box.email,
        "username": box.email,
        "password": box.password,
        "imap_host": box.host,
        "imap_port": box.port,
        "security": "none",
        "visibility": visibility,
    }
    r = c.post("/api/v1/accounts", json=body, headers={"X-Inboxlink-User": owner})
    assert r.status_code == 201, r.text
    account: str = r.json()["id"]
    return account


@pytest.mark.parametrize(
    ("seed", "backend"),
    [(seed, "sqlite") for seed in range(10)]
    + [pytest.param(seed, "postgres", marks=pytest.mark.postgres) for seed in range(10, 14)],
)
def test_nobody_sees_more_than_the_rules_allow(
    seed: int, backend: str, client: TestClient, dovecot: Dovecot, mail_user: MailUser
) -> None:
    rng = random.Random(seed)
    c = client
    boxes = [mail_user, dovecot.add_user(f"b{seed}.{mail_user.email}", "box-b-password-1")]
    users = []
    for i, name in enumerate(["Ada", "Ben", "Cy"]):
        email = boxes[i].email if i < 2 else f"cy{seed}@inboxlink.test"
        r = c.post("/api/v1/users", json={"name": name, "email": email})
        assert r.status_code == 201, r.text
        users.append(r.json())
    sharing = [rng.choice(LEVELS[1:]) for _ in boxes]
    accounts = [pair(c, box, users[i]["id"], sharing[i]) for i, box in enumerate(boxes)]
    people = {
        s: c.post("/api/v1/records/person", json={"name": s, "emails": [s]}).json()["id"] for s in SENDERS[:2]
    }

    # mail: (box indexes, sender, subject word, body word, Message-ID)
    plan: list[tuple[list[int], str, str]] = []
    for n in range(12):
        sender = rng.choice(SENDERS)
        mid = f"v{seed}.{n}@model.example"
        where = rng.choice([[0], [1], [0, 1], [0, 1]])
        reuse = len(where) == 2 and rng.random() < 0.3  # two different messages, one Message-ID
        raws: list[bytes] = []
        for k, box in enumerate(where):
            m = EmailMessage()
            m["From"], m["To"] = sender, boxes[box].email
            m["Subject"] = f"about subj{seed}x{n}{'r' if reuse and k else ''}"
            m["Message-ID"] = f"<{mid}>"
            m.set_content(f"text body{seed}x{n}{'r' if reuse and k else ''}\n")
            raws.append(bytes(m) if reuse or not raws else raws[0])  # a copy: the same bytes
            dovecot.deliver_lmtp(boxes[box].email, raws[-1])
        plan.append((where, sender, mid))
    for account in accounts:
        assert c.post(f"/api/v1/accounts/{account}/sync").json()["status"] == "connected"

    # every message row, as the operator sees it
    rows: list[dict[str, Any]] = []
    for i, account in enumerate(accounts):
        for m in c.get(f"/api/v1/accounts/{account}/messages", params={"limit": 1000}).json()["messages"]:
            detail = c.get(f"/api/v1/messages/{m['id']}").json()
            rows.append({**m, "box": i, "linked": bool(detail["links"]), "text": detail["text"]})
    by_mid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_mid.setdefault(r["message_id"], []).append(r)

    def own_level(row: dict[str, Any], viewer: int) -> int:
        if row["box"] == viewer:
            return 3
        return LEVELS.index(sharing[row["box"]]) if row["linked"] else 0

    for v, user in enumerate(users):
        headers = {"Authorization": f"Bearer {user['token']}"}
        for row in rows:
            copies = by_mid[row["message_id"]]
            best = max(own_level(r, v) for r in copies)
            got = c.get(f"/api/v1/messages/{row['id']}", headers=headers)
            where = (
                f"seed {seed}, user {user['name']}, row {row['id']} ({row['message_id']}, box {row['box']})"
            )
            if best == 0:
                assert got.status_code == 404, where
                continue
            shown = got.json()
            assert shown["visibility"] == LEVELS[best], where
            granting = [r for r in copies if own_level(r, v) == best]
            assert shown["id"] in {r["id"] for r in granting}, f"{where}: read from a row that grants nothing"
            assert (shown["subject"] is not None) == (best >= 2), where
            assert ("text" in shown) == (best == 3), where
            if best == 3:
                assert shown["text"] == next(r["text"] for r in granting if r["id"] == shown["id"]), where
        # search: a subject word finds a row from "subject" up, a body word only at "everything";
        # only the rows that hold the word count (a reused Message-ID's other row holds another)
        for _where, _sender, mid in plan:
            n = mid.split(".")[1].split("@")[0]
            for term, field, need in ((f"subj{seed}x{n}", "subject", 2), (f"body{seed}x{n}", "text", 3)):
                holding = [r for r in by_mid[mid] if term in (r[field] or "").split()]
                expect = any(own_level(r, v) >= need for r in holding)
                hits = c.get("/api/v1/search", params={"q": term}, headers=headers).json()["results"]
                found = mid in {h["message_id"] for h in hits}
                assert found == expect, f"seed {seed}, user {user['name']}, {term} ({field}) of {mid}"
        # timelines
        for sender, person in people.items():
            entries = c.get(f"/api/v1/records/person/{person}/timeline", headers=headers).json()["entries"]
            seen = {e["message_id"]: e["visibility"] for e in entries}
            expected = {}
            for _where, s, mid in plan:
                if s != sender:
                    continue
                best = max(own_level(r, v) for r in by_mid[mid])
                if best:
                    expected[mid] = LEVELS[best]
            assert seen == expected, f"seed {seed}, user {user['name']}, timeline of {sender}"
