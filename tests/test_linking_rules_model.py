"""The linking rules that need settings, people's answers or the team, against an oracle.

A random world: one paired mailbox, three teammates (users), people, companies and deals created,
changed and deleted through `RecordService`, mail received and sent (some of it automated or list
mail, some between teammates, some replies) written into a real Dovecot and synced by the engine,
and between the syncs: blocklist entries added and removed, linking settings changed, review
questions answered or dismissed. After every phase the links (record and rule), the open review
questions and the people created from mail must be what these sentences say, whatever came first:

- skipped: mail with a participant (other than the mailbox's own address) that is blocked, by
  address or by domain (a subdomain too), links nowhere and asks nothing; blocking purges the links
  it had, the user's answers (manual links) included, and its replies lose what they inherited from
  it; unblocking decides its mail again (an answered question is asked again);
- skipped too, while `exclude_internal` is on: mail whose participants are all the team's own (the
  mailbox, the users, or anyone at a domain of theirs other than a free-mail domain); only a link a
  user chose in the review queue stays on it;
- participant: an address of the message (From, To, Cc, Reply-To) held by one person links that
  person; held by several, a "person" question offering them (not a guess); the team's addresses
  link no one;
- domain: the company holding the nearest level of an address's domain; several companies holding
  it, a "company" question; never free-mail domains nor the team's own;
- token: a deal's token as a word of the subject or body;
- thread: a reply inherits every link of the stored messages it names (In-Reply-To, References);
- deal_contact: a message on no deal gets the open deal of the people it is linked to, when there is
  exactly one; more than one, a "deal" question offering all of them;
- only the record types in `auto_link` link by participant, domain, token or deal_contact; a
  settings change decides all past mail again (the links must not depend on which unrelated record
  was edited since);
- manual: the candidate chosen in the review queue, kept by every re-link, passed down to replies
  and counted by deal_contact (a chosen person brings their only open deal); an answered or
  dismissed question is not asked again, unless the record chosen is deleted (then it is asked
  again if the mail is still ambiguous);
- auto-creation: when mail is synced for the first time, a person is created for each address
  without one that the policy names: `sent` the recipients (To, Cc) of mail a teammate sent;
  `sent_and_received` also the From, Reply-To, To and Cc of received mail; never from automated or
  list mail (List-Id, List-Unsubscribe, Precedence bulk/list/junk, Auto-Submitted other than "no",
  a no-reply sender), never the team's own addresses, never with person linking off. A created
  person is a record like any other: mail stored before it links to it at once. Re-deciding past
  mail never creates anyone (a deleted contact stays deleted).

Seeded, so a failure names its seed and replays exactly."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from inboxlink.api.app import create_app
from inboxlink.crm.records import RecordInput
from inboxlink.runtime import Runtime
from inboxlink.store.schema import links, messages, records, review_items
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import backend_runtime, pair

DOMAINS = ["acme.example", "mail.acme.example", "globex.example", "initech.example"]
FREEMAIL = "gmail.com"
TEAM_DOMAIN = "teamhq.example"  # a teammate's: the team's own domain
TOKENS = ["T-1001", "T-1002", "T-1003", "DEAL-7", "Q-42"]
AUTOMATED_SENDERS = ["noreply@acme.example", "notifications@globex.example"]
AUTOMATED_HEADERS = [
    ("List-Id", "<news.acme.example>"),
    ("List-Unsubscribe", "<mailto:leave@acme.example>"),
    ("Precedence", "bulk"),
    ("Precedence", "list"),
    ("Auto-Submitted", "auto-replied"),
]
HARMLESS_HEADERS = [("Auto-Submitted", "no"), ("Precedence", "first-class")]
NO_REPLY = re.compile(r"^(noreply|notifications)@")
ROLES = ("from", "reply_to", "to", "cc")
KINDS = ("person", "company", "deal")

Link = tuple[str, str, str]  # (Message-ID, record id, rule)
Question = tuple[str, str, frozenset[str]]  # (Message-ID, kind, candidates)


class Mail:
    def __init__(
        self,
        mid: str,
        roles: list[tuple[str, str]],
        text: str,
        refs: list[str],
        automated: bool,
        folder: str,
        raw: bytes,
    ) -> None:
        self.mid = mid
        self.roles = roles  # (role, address)
        self.text = text
        self.refs = refs
        self.automated = automated
        self.folder = folder
        self.raw = raw

    @property
    def addresses(self) -> set[str]:
        return {a for _r, a in self.roles}


@pytest.fixture
def rt(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    yield from backend_runtime(tmp_path, request)


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1]


def levels(domain: str) -> list[str]:
    """mail.acme.example -> [mail.acme.example, acme.example, example]"""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


class World:
    def __init__(self, seed: int, rt: Runtime, api: TestClient, dovecot: Dovecot, user: MailUser) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.rt = rt
        self.api = api
        self.dovecot = dovecot
        self.me = user.email
        own = domain_of(self.me)
        self.mates = [f"mate@{own}", f"boss@{TEAM_DOMAIN}", f"founder@{FREEMAIL}"]
        self.team = {self.me, *self.mates}
        self.own_domains = {own, TEAM_DOMAIN}
        self.strangers_at_home = [f"intern@{own}", f"ops@{TEAM_DOMAIN}"]
        self.externals = [f"{n}@{d}" for n in ("ana", "bo", "cy") for d in [*DOMAINS, FREEMAIL]]
        # the records as the oracle knows them
        self.people: dict[str, set[str]] = {}
        self.companies: dict[str, set[str]] = {}
        self.deals: dict[str, tuple[str, str | None, str]] = {}  # token, person, status
        self.blocked: set[str] = set()
        self.auto_link = set(KINDS)
        self.exclude_internal = True
        self.auto_create = "none"
        self.manual: dict[str, set[str]] = {}  # Message-ID -> records chosen in the review queue
        self.answered: set[tuple[str, str]] = set()  # (Message-ID, kind) resolved or dismissed
        self.chosen: dict[tuple[str, str], str | None] = {}  # answered question -> its answer
        self.planned: dict[str, Mail] = {}
        for n in range(26):
            m = self._plan(n)
            self.planned[m.mid] = m
        self.order = list(self.planned)
        self.rng.shuffle(self.order)
        self.delivered: list[str] = []
        self.synced = 0  # how many of `delivered` the engine has seen

    # -- mail --------------------------------------------------------------------------------------
    def _plan(self, n: int) -> Mail:
        rng = self.rng
        shape = rng.choices(["received", "sent", "internal"], weights=[6, 3, 2])[0]
        headers: list[tuple[str, str]] = []
        cc: list[str] = []
        reply_to: str | None = None
        if shape == "received":
            sender = rng.choice(self.externals) if rng.random() < 0.85 else rng.choice(AUTOMATED_SENDERS)
            to = [self.me]
            cc = rng.sample(self.externals + self.strangers_at_home + self.mates, rng.randint(0, 2))
            if rng.random() < 0.15:
                reply_to = rng.choice(self.externals)
            folder = "INBOX"
        elif shape == "sent":
            sender = self.me
            to = rng.sample(self.externals, rng.randint(1, 2))
            cc = rng.sample(self.externals + self.strangers_at_home + self.mates, rng.randint(0, 1))
            folder = "Sent"
        else:
            sender = rng.choice([self.me, *self.mates])
            to = [rng.choice([a for a in self.team if a != sender])]
            cc = rng.sample(self.strangers_at_home + self.mates, rng.randint(0, 1))
            folder = "Sent" if sender == self.me else "INBOX"
        if rng.random() < 0.25:
            headers.append(rng.choice(AUTOMATED_HEADERS))
        elif rng.random() < 0.1:
            headers.append(rng.choice(HARMLESS_HEADERS))
        words = ["about", "the", "order"]
        if rng.random() < 0.4:
            token = rng.choice(TOKENS)
            form = rng.choice(["[{}]", "{}", "re {}:", "{}0"])  # "{}0": another token
            words.insert(rng.randrange(len(words) + 1), form.format(token))
        subject = " ".join(words[:2]) if rng.random() < 0.5 else " ".join(words)
        body = " ".join(words) + "\n"
        refs: list[str] = []
        if self.planned and rng.random() < 0.3:
            parent = rng.choice(list(self.planned))
            refs = [*self.planned[parent].refs, parent]
            if rng.random() < 0.3:
                refs = [parent]
        mid = f"rm{n}.{rng.randrange(10**9)}@model.example"
        m = EmailMessage()
        m["From"] = sender
        m["To"] = ", ".join(to)
        if cc:
            m["Cc"] = ", ".join(cc)
        if reply_to:
            m["Reply-To"] = reply_to
        m["Subject"] = subject
        m["Date"] = format_datetime(datetime(2026, 5, 1, tzinfo=UTC) + timedelta(minutes=n))
        m["Message-ID"] = f"<{mid}>"
        if refs:
            m["In-Reply-To"] = f"<{refs[-1]}>"
            m["References"] = " ".join(f"<{r}>" for r in refs)
        for name, value in headers:
            m[name] = value
        m.set_content(body)
        roles = [("from", sender), *(("to", a) for a in to), *(("cc", a) for a in cc)]
        if reply_to:
            roles.append(("reply_to", reply_to))
        automated = any(h in AUTOMATED_HEADERS for h in headers) or bool(NO_REPLY.match(sender))
        return Mail(mid, roles, f"{subject}\n{body}", refs, automated, folder, bytes(m))

    def deliver(self, count: int) -> None:
        for mid in self.order[len(self.delivered) : len(self.delivered) + count]:
            m = self.planned[mid]
            self.dovecot.write_messages(self.me, m.folder, [m.raw])
            self.delivered.append(mid)

    def sync(self, account: str) -> None:
        """Sync, then adopt the people created from mail (checked against `created`)."""
        fresh = self.delivered[self.synced :]
        self.synced = len(self.delivered)
        wanted = self.created_by(fresh)
        assert self.rt.engine.sync(account).status == "connected"
        with self.rt.db.engine.connect() as conn:
            auto = {r.id for r in conn.execute(select(records.c.id).where(records.c.origin == "auto"))}
        new = sorted(auto - set(self.people))
        got: dict[str, str] = {}
        for rid in new:
            [email] = self.rt.records.get(rid).emails
            got[email] = rid
        assert set(got) == wanted, (
            f"seed {self.seed}: people created from mail {sorted(got)}, expected {sorted(wanted)}"
        )
        for email in sorted(got):
            self.people[got[email]] = {email}

    # -- the oracle's reading of the rules -----------------------------------------------------------
    def is_blocked(self, address: str) -> bool:
        return address in self.blocked or any(d in self.blocked for d in levels(domain_of(address)))

    def skipped(self, m: Mail) -> str | None:
        if any(self.is_blocked(a) for a in m.addresses if a != self.me):
            return "blocked"
        if self.exclude_internal and all(self.is_team(a) for a in m.addresses):
            return "internal"
        return None

    def is_team(self, address: str) -> bool:
        return address in self.team or domain_of(address) in self.own_domains

    def created_by(self, fresh: list[str]) -> set[str]:
        """The addresses the policy names in mail synced for the first time, that no person has."""
        if self.auto_create == "none" or "person" not in self.auto_link:
            return set()
        held = {a for emails in self.people.values() for a in emails}
        out: set[str] = set()
        for mid in fresh:
            m = self.planned[mid]
            if self.skipped(m) or m.automated:
                continue
            sent = m.roles[0][1] in self.team
            if sent:
                names = {a for role, a in m.roles if role in ("to", "cc")}
            elif self.auto_create == "sent_and_received":
                names = m.addresses
            else:
                continue
            out |= {a for a in names if not self.is_team(a) and not NO_REPLY.match(a) and a not in held}
        return out

    def direct(self, m: Mail) -> tuple[dict[str, str], dict[str, list[frozenset[str]]]]:
        """record -> rule for participant, domain and token; kind -> the candidate sets asked."""
        out: dict[str, str] = {}
        asked: dict[str, list[frozenset[str]]] = {}
        if "person" in self.auto_link:
            for a in m.addresses - self.team:
                holders = frozenset(p for p, emails in self.people.items() if a in emails)
                if len(holders) == 1:
                    out[next(iter(holders))] = "participant"
                elif holders:
                    asked.setdefault("person", []).append(holders)
        if "company" in self.auto_link:
            for a in m.addresses - self.team:
                domain = domain_of(a)
                if domain == FREEMAIL or domain in self.own_domains:
                    continue
                for level in levels(domain):
                    holders = frozenset(c for c, ds in self.companies.items() if level in ds)
                    if len(holders) == 1:
                        out[next(iter(holders))] = "domain"
                    elif holders:
                        asked.setdefault("company", []).append(holders)
                    if holders:
                        break
        if "deal" in self.auto_link:
            words = m.text.replace("[", " ").replace("]", " ").replace(":", " ").split()
            for did, (token, _person, _status) in self.deals.items():
                if token in words:
                    out[did] = "token"
        return out, asked

    def expected(self) -> tuple[set[Link], dict[tuple[str, str], list[frozenset[str]]]]:
        """Links, and the open questions as (Message-ID, kind) -> the candidate sets allowed (one
        question per message and kind: for an address or domain, that of any ambiguous one)."""
        here = set(self.delivered)
        on: dict[str, set[str]] = {}
        out: set[Link] = set()
        questions: dict[tuple[str, str], list[frozenset[str]]] = {}
        for mid, m in self.planned.items():
            if mid not in here:
                continue
            manual = self.manual.get(mid, set())
            reason = self.skipped(m)
            if reason == "blocked":
                on[mid] = set()
                continue
            if reason == "internal":
                on[mid] = set(manual)
                out.update((mid, r, "manual") for r in manual)
                continue
            direct, asked = self.direct(m)
            inherited = {r for ref in m.refs if ref in on for r in on[ref]}
            linked = set(direct) | inherited | manual
            rule = {r: "thread" for r in inherited} | direct | {r: "manual" for r in manual}
            if "deal" in self.auto_link and not linked & set(self.deals):
                open_deals = {
                    d
                    for d, (_t, person, status) in self.deals.items()
                    if status == "open" and person in linked
                }
                if len(open_deals) == 1:
                    rule[next(iter(open_deals))] = "deal_contact"
                elif open_deals:
                    asked["deal"] = [frozenset(open_deals)]
            on[mid] = set(rule)
            out.update((mid, r, why) for r, why in rule.items())
            for kind, sets in asked.items():
                if (mid, kind) not in self.answered:
                    questions[(mid, kind)] = sets
        return out, questions

    def actual(self) -> tuple[set[Link], dict[tuple[str, str], frozenset[str]]]:
        with self.rt.db.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.message_id, links.c.record_id, links.c.rule).join(
                    messages, messages.c.id == links.c.message_id
                )
            ).all()
            items = conn.execute(
                select(messages.c.message_id, review_items.c.kind, review_items.c.candidates)
                .join(messages, messages.c.id == review_items.c.message_id)
                .where(review_items.c.status == "open")
            ).all()
        return (
            {(r.message_id, r.record_id, r.rule) for r in rows},
            {(r.message_id, r.kind): frozenset(r.candidates) for r in items},
        )

    def check(self, phase: int, log: list[str]) -> None:
        want_links, want_questions = self.expected()
        got_links, got_questions = self.actual()
        missing, extra = sorted(want_links - got_links), sorted(got_links - want_links)
        where = f"seed {self.seed}, phase {phase} (after {log})"
        assert not missing and not extra, f"{where}: links missing {missing}, extra {extra}"
        assert set(got_questions) == set(want_questions), (
            f"{where}: open questions {sorted(got_questions)}, expected {sorted(want_questions)}"
        )
        for key, candidates in got_questions.items():
            assert candidates in want_questions[key], (
                f"{where}: question {key} offers {sorted(candidates)}, expected one of {want_questions[key]}"
            )

    # -- the world changes -----------------------------------------------------------------------
    def change_records(self, count: int, log: list[str]) -> None:
        rng = self.rng
        for _ in range(count):
            kind = rng.choice(["person", "person", "company", "deal", "deal", "update", "delete"])
            if kind == "person":
                held = sorted({a for s in self.people.values() for a in s})
                pool = self.externals + self.strangers_at_home + [self.mates[0]]
                emails = set(rng.sample(pool, rng.randint(1, 2)))
                if held and rng.random() < 0.3:
                    emails.add(rng.choice(held))  # an address two people share
                rid = self.rt.records.create("person", RecordInput(name="P", emails=sorted(emails))).id
                self.people[rid] = emails
                log.append(f"person {rid} {sorted(emails)}")
            elif kind == "company":
                claimed = sorted({d for s in self.companies.values() for d in s})
                if claimed and rng.random() < 0.3:
                    domain = rng.choice(claimed)  # a domain two companies claim
                else:
                    domain = rng.choice([*DOMAINS, FREEMAIL, TEAM_DOMAIN])
                rid = self.rt.records.create("company", RecordInput(name="C", domains=[domain])).id
                self.companies[rid] = {domain}
                log.append(f"company {rid} {domain}")
            elif kind == "deal":
                free = [t for t in TOKENS if t not in {t for t, _p, _s in self.deals.values()}]
                if not free:
                    continue
                token = rng.choice(free)
                person = rng.choice(list(self.people)) if self.people and rng.random() < 0.8 else None
                status = "open" if rng.random() < 0.8 else "closed"
                rid = self.rt.records.create(
                    "deal", RecordInput(name="D", token=token, person_id=person, status=status)
                ).id
                self.deals[rid] = (token, person, status)
                log.append(f"deal {rid} {token} of {person} {status}")
            elif kind == "update":
                self._update(log)
            else:
                pool = [*self.people, *self.companies, *self.deals]
                if not pool:
                    continue
                rid = rng.choice(pool)
                self.rt.records.delete(rid)
                self.people.pop(rid, None)
                self.companies.pop(rid, None)
                self.deals.pop(rid, None)
                self.deals = {d: (t, None if p == rid else p, s) for d, (t, p, s) in self.deals.items()}
                for chosen in self.manual.values():
                    chosen.discard(rid)
                for key in [k for k, c in self.chosen.items() if c == rid]:
                    del self.chosen[key]  # the question it answered may be asked again
                    self.answered.discard(key)
                log.append(f"delete {rid}")

    def _update(self, log: list[str]) -> None:
        rng = self.rng
        what = rng.choice(["person", "company", "deal"])
        if what == "person" and self.people:
            pid = rng.choice(list(self.people))
            pool = self.externals + self.strangers_at_home
            emails = {rng.choice(sorted(self.people[pid]))} | {rng.choice(pool)}
            self.rt.records.update(pid, RecordInput(emails=sorted(emails)))
            self.people[pid] = emails
            log.append(f"update person {pid} {sorted(emails)}")
        elif what == "company" and self.companies:
            cid = rng.choice(list(self.companies))
            domains = {rng.choice([*DOMAINS, FREEMAIL])}
            self.rt.records.update(cid, RecordInput(domains=sorted(domains)))
            self.companies[cid] = domains
            log.append(f"update company {cid} {sorted(domains)}")
        elif what == "deal" and self.deals:
            did = rng.choice(list(self.deals))
            token, person, status = self.deals[did]
            if self.people and rng.random() < 0.5:
                person = rng.choice(list(self.people))
            else:
                status = "closed" if status == "open" else "open"
            self.rt.records.update(did, RecordInput(person_id=person, status=status))
            self.deals[did] = (token, person, status)
            log.append(f"update deal {did} of {person} {status}")

    def change_blocklist(self, log: list[str]) -> None:
        rng = self.rng
        if self.blocked and rng.random() < 0.5:
            value = rng.choice(sorted(self.blocked))
            assert self.api.delete(f"/api/v1/blocklist/{value}").status_code == 204
            self.blocked.discard(value)
            log.append(f"unblock {value}")
            return
        value = rng.choice([*self.externals, *DOMAINS, FREEMAIL, AUTOMATED_SENDERS[0]])
        assert self.api.post("/api/v1/blocklist", json={"value": value}).status_code == 201
        self.blocked.add(value)
        for mid in self.delivered:
            m = self.planned[mid]
            if any(self.is_blocked(a) for a in m.addresses if a != self.me):
                self.manual.pop(mid, None)
                self.answered = {(x, k) for x, k in self.answered if x != mid}
                self.chosen = {(x, k): c for (x, k), c in self.chosen.items() if x != mid}
        log.append(f"block {value}")

    def change_settings(self, log: list[str]) -> None:
        rng = self.rng
        auto_link = sorted(k for k in KINDS if rng.random() < 0.75)
        exclude_internal = rng.random() < 0.7
        auto_create = rng.choice(["none", "sent", "sent_and_received"])
        body = {"auto_link": auto_link, "exclude_internal": exclude_internal, "auto_create": auto_create}
        assert self.api.patch("/api/v1/settings/linking", json=body).status_code == 200
        self.auto_link, self.exclude_internal, self.auto_create = (
            set(auto_link),
            exclude_internal,
            auto_create,
        )
        log.append(f"settings {body}")

    def answer(self, log: list[str]) -> None:
        queue: list[dict[str, Any]] = self.api.get("/api/v1/review", params={"limit": 500}).json()
        if not queue:
            return
        item = self.rng.choice(queue)
        order = [*self.people, *self.companies, *self.deals]  # ids are random: creation order
        candidates = sorted(item["candidates"], key=lambda r: order.index(r) if r in order else -1)
        choice = self.rng.choice([*candidates, None])
        r = self.api.post(f"/api/v1/review/{item['id']}", json={"record_id": choice})
        assert r.status_code == 200, r.text
        with self.rt.db.engine.connect() as conn:
            mid = conn.execute(select(messages.c.message_id).where(messages.c.id == item["message"])).scalar()
        assert isinstance(mid, str)
        self.answered.add((mid, item["kind"]))
        self.chosen[(mid, item["kind"])] = choice
        if choice is not None:
            self.manual.setdefault(mid, set()).add(choice)
        log.append(f"answer {mid} {item['kind']} with {choice}")


def add_teammates(api: TestClient, world: World) -> None:
    for n, email in enumerate(world.mates):
        assert api.post("/api/v1/users", json={"name": f"Mate {n}", "email": email}).status_code == 201


@pytest.mark.parametrize(
    ("seed", "backend"),
    [(seed, "sqlite") for seed in range(int(os.environ.get("LINKING_RULES_SEEDS", "20")))]
    + [pytest.param(seed, "postgres", marks=pytest.mark.postgres) for seed in range(1000, 1004)],
)
def test_settings_blocklist_review_and_auto_creation_follow_the_rules(
    seed: int, backend: str, rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as api:
        world = World(seed, rt, api, dovecot, mail_user)
        add_teammates(api, world)
        account = pair(rt, mail_user)
        for phase in range(7):
            log: list[str] = []
            steps = ["records", "mail", "blocklist", "settings", "answer"]
            world.rng.shuffle(steps)
            for step in steps:
                if step == "records":
                    world.change_records(world.rng.randint(1, 3), log)
                elif step == "mail":
                    world.deliver(world.rng.randint(1, 6))
                    world.sync(account)
                    log.append(f"synced {len(world.delivered)}")
                elif step == "blocklist" and world.rng.random() < 0.35:
                    world.change_blocklist(log)
                elif step == "settings" and world.rng.random() < 0.3:
                    world.change_settings(log)
                elif step == "answer" and world.rng.random() < 0.5:
                    world.answer(log)
            world.check(phase, log)
