"""Random records and mail, linked in random order, against an oracle of the direct rules.

Mail is delivered into a real Dovecot and synced by the engine; people, companies and deals are
created, changed and deleted before and after the mail they concern, through `RecordService`. After
every phase the links with rule participant, domain or token must be exactly what these sentences
say, whichever came first (no ambiguity is generated: addresses, domains and tokens each belong to
at most one record):

- a person is linked to every message one of their addresses takes part in (From, To, Cc);
- a company to every message with a participant at one of its domains or a subdomain of one
  (the nearest: a subdomain that is another company's belongs to that one), except the team's own
  domain (the mailbox's) and free-mail domains;
- a deal to every message whose subject or body carries its token, as a word of its own.

Seeded, so a failure names its seed and replays exactly."""

from __future__ import annotations

import random
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from inboxlink.crm.records import RecordInput
from inboxlink.runtime import Runtime
from inboxlink.store.schema import links, messages
from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import backend_runtime, pair

DOMAINS = ["acme.example", "globex.example", "initech.example", "umbrella.example", "mail.acme.example"]
FREEMAIL = "gmail.com"
TOKENS = ["T-1001", "T-1002", "DEAL-7", "Q-42"]

Link = tuple[str, str, str]  # (Message-ID, record id, rule)


@pytest.fixture
def rt(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """SQLite, or PostgreSQL for the seeds marked so (re-linking's queries differ)."""
    yield from backend_runtime(tmp_path, request)


class World:
    def __init__(self, seed: int, rt: Runtime, dovecot: Dovecot, user: MailUser) -> None:
        self.rng = random.Random(seed)
        self.rt = rt
        self.dovecot = dovecot
        self.user = user
        self.own_domain = user.email.rsplit("@", 1)[1]
        # people's addresses: at companies' domains, at a free-mail domain, and at unknown domains
        self.addresses = [
            f"{name}@{domain}"
            for name in ("ana", "bo", "cy", "di")
            for domain in [*DOMAINS, FREEMAIL, "nowhere.example"]
        ]
        self.people: dict[str, set[str]] = {}
        self.companies: dict[str, set[str]] = {}
        self.deals: dict[str, str] = {}
        # The mail of the whole run, planned first, delivered in a random order: a reply may arrive
        # before the message it answers. Message-ID -> (participants, subject + body, its thread's
        # earlier Message-IDs as References lists them); `order` is the delivery order.
        self.planned: dict[str, tuple[set[str], str, list[str]]] = {}
        self.raws: dict[str, bytes] = {}
        for n in range(40):
            mid, parts, text, raw_refs = self._plan(n)
            self.planned[mid] = (parts, text, raw_refs)
        self.order = list(self.planned)
        self.rng.shuffle(self.order)
        self.delivered: list[str] = []

    def _plan(self, n: int) -> tuple[str, set[str], str, list[str]]:
        sender = self.rng.choice(self.addresses)
        cc = self.rng.sample(self.addresses, self.rng.randint(0, 2))
        words = ["about", "the", "order"]
        if self.rng.random() < 0.5:
            token = self.rng.choice(TOKENS)
            shape = self.rng.choice(["[{}]", "{}", "re {}:", "{}0"])  # "{}0": another token
            words.insert(self.rng.randrange(len(words) + 1), shape.format(token))
        subject = " ".join(words[:2]) if self.rng.random() < 0.5 else " ".join(words)
        body = " ".join(words) + "\n"
        refs: list[str] = []
        if self.planned and self.rng.random() < 0.4:  # a reply to an earlier message of the plan
            parent = self.rng.choice(list(self.planned))
            refs = [*self.planned[parent][2], parent]
            if self.rng.random() < 0.3:
                refs = [parent]  # some clients list only the parent
        m = EmailMessage()
        m["From"] = sender
        m["To"] = self.user.email
        if cc:
            m["Cc"] = ", ".join(cc)
        m["Subject"] = subject
        mid = f"lm{n}.{self.rng.randrange(10**9)}@model.example"
        m["Message-ID"] = f"<{mid}>"
        if refs:
            m["In-Reply-To"] = f"<{refs[-1]}>"
            m["References"] = " ".join(f"<{r}>" for r in refs)
        m.set_content(body)
        self.raws[mid] = bytes(m)
        return mid, {sender, *cc, self.user.email}, f"{subject}\n{body}", refs

    # -- the world changes ---------------------------------------------------------------------
    def deliver(self, count: int) -> None:
        for mid in self.order[len(self.delivered) : len(self.delivered) + count]:
            self.dovecot.deliver_lmtp(self.user.email, self.raws[mid])
            self.delivered.append(mid)

    def _free(self, pool: list[str], taken: set[str]) -> list[str]:
        return [x for x in pool if x not in taken]

    def change_records(self, count: int) -> None:
        for _ in range(count):
            kind = self.rng.choice(["person", "person", "company", "deal", "update", "delete"])
            if kind == "person":
                free = self._free(self.addresses, {a for s in self.people.values() for a in s})
                if free:
                    emails = set(self.rng.sample(free, min(len(free), self.rng.randint(1, 2))))
                    rec = self.rt.records.create("person", RecordInput(name="P", emails=sorted(emails)))
                    self.people[rec.id] = emails
            elif kind == "company":
                free = self._free([*DOMAINS, FREEMAIL], {d for s in self.companies.values() for d in s})
                if free:
                    domain = self.rng.choice(free)
                    rec = self.rt.records.create("company", RecordInput(name="C", domains=[domain]))
                    self.companies[rec.id] = {domain}
            elif kind == "deal":
                free = self._free(TOKENS, set(self.deals.values()))
                if free:
                    token = self.rng.choice(free)
                    self.deals[self.rt.records.create("deal", RecordInput(name="D", token=token)).id] = token
            elif kind == "update" and self.people:
                pid = self.rng.choice(list(self.people))  # insertion order: ids are random
                free = self._free(self.addresses, {a for s in self.people.values() for a in s})
                emails = {self.rng.choice(sorted(self.people[pid]))} | (
                    {self.rng.choice(free)} if free else set()
                )
                self.rt.records.update(pid, RecordInput(emails=sorted(emails)))
                self.people[pid] = emails
            elif kind == "delete":
                pool = [("p", r) for r in self.people] + [("c", r) for r in self.companies]
                pool += [("d", r) for r in self.deals]
                if pool:
                    which, rid = self.rng.choice(pool)
                    self.rt.records.delete(rid)
                    {"p": self.people, "c": self.companies, "d": self.deals}[which].pop(rid)

    # -- what must hold --------------------------------------------------------------------------
    def direct(self, mid: str) -> dict[str, str]:
        """record -> rule, for the rules that read the message itself."""
        participants, text, _refs = self.planned[mid]
        out: dict[str, str] = {}
        for pid, emails in self.people.items():
            if emails & participants:
                out[pid] = "participant"
        owner = {d: cid for cid, domains in self.companies.items() for d in domains}
        for address in participants:
            domain = address.rsplit("@", 1)[1]
            if domain in (self.own_domain, FREEMAIL):
                continue
            # the company of the nearest domain that has one: mail.acme.example's own company, if
            # there is one, else acme.example's
            labels = domain.split(".")
            nearest = next((d for i in range(len(labels)) if (d := ".".join(labels[i:])) in owner), None)
            if nearest is not None:
                out[owner[nearest]] = "domain"
        words = text.replace("[", " ").replace("]", " ").replace(":", " ").split()
        for did, token in self.deals.items():
            if token in words:
                out[did] = "token"
        return out

    def expected(self) -> set[Link]:
        """Direct links, plus "thread" for every record a delivered message this one answers (In-Reply-To
        or References) is on, by whatever rule: planned order has parents first."""
        here = set(self.delivered)
        on: dict[str, set[str]] = {}
        out: set[Link] = set()
        for mid in self.planned:
            if mid not in here:
                continue
            direct = self.direct(mid)
            inherited = {r for ref in self.planned[mid][2] if ref in here for r in on[ref]}
            on[mid] = set(direct) | inherited
            out.update((mid, record, rule) for record, rule in direct.items())
            out.update((mid, record, "thread") for record in inherited - set(direct))
        return out

    def actual(self) -> set[Link]:
        with self.rt.db.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.message_id, links.c.record_id, links.c.rule)
                .join(messages, messages.c.id == links.c.message_id)
                .where(links.c.rule.in_(["participant", "domain", "token", "thread"]))
            ).all()
        return {(r.message_id, r.record_id, r.rule) for r in rows}


@pytest.mark.parametrize(
    ("seed", "backend"),
    [(seed, "sqlite") for seed in range(40)]
    + [pytest.param(seed, "postgres", marks=pytest.mark.postgres) for seed in range(40, 48)],
)
def test_links_equal_the_rules_whatever_came_first(
    seed: int, backend: str, rt: Runtime, dovecot: Dovecot, mail_user: MailUser
) -> None:
    world = World(seed, rt, dovecot, mail_user)
    account = pair(rt, mail_user)
    for phase in range(8):
        if world.rng.random() < 0.5:
            world.change_records(world.rng.randint(1, 4))
            world.deliver(world.rng.randint(0, 8))
        else:
            world.deliver(world.rng.randint(0, 8))
            world.change_records(world.rng.randint(1, 4))
        assert rt.engine.sync(account).status == "connected"
        expected, actual = world.expected(), world.actual()
        missing, extra = sorted(expected - actual), sorted(actual - expected)
        assert not missing and not extra, f"seed {seed}, phase {phase}: missing {missing}, extra {extra}"
