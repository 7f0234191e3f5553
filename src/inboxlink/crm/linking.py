"""Linking: which records a message belongs on, and why. Every link stores its rule and evidence.

Rules, applied to a set of messages (new mail from a sync, or past mail when records change):

    junk      every copy of the message is in a junk/spam folder        -> no link at all
    blocked   a participant (or its domain) is on the blocklist  -> no link at all
    internal  every participant is the team's own (settings.exclude_internal) -> no link at all
    participant  address -> the person who has it                 "jane@acme.com is the sender"
    domain       address domain -> the company that has it, never a free-mail domain nor the
                 team's own domains                               "jane@acme.com is at acme.com"
    token        a deal's token ("[T-1042]") in subject or body   "[T-1042] in the subject"
    thread       a reply inherits the links of the message it answers (In-Reply-To / References /
                 the provider's thread id), both ways: a parent linked later passes its links down
    deal_contact the only open deal of a linked person            "the only open deal of Jane Doe"
    manual       chosen by a user in the review queue (never removed by re-linking)
    sent         sent from that record through the outbox (never removed by re-linking)

Ambiguity is not guessed: an address two people share, a domain two companies claim, a person with
several open deals -> a `review_items` row with the candidates; a user picks one (rule manual).

Contact auto-creation (settings.auto_create): none / sent (recipients of the team's sent mail) /
sent_and_received (also senders of received mail); never from automated or list mail (List-Id,
List-Unsubscribe, Precedence bulk/list/junk, Auto-Submitted, no-reply senders), the team's own
addresses and domains, or blocked ones; only when mail is synced, never when past mail is decided
again. A person created from mail re-links the mail stored before, like any new record.

Order of work for a set S (`link_messages`): people created from S -> direct links (participant,
domain, token) -> per generation of S in thread order (parents first): thread links from parents,
then deal_contact / deal review -> thread links passed down to replies outside S. Re-linking
(`relink_records`, settings and blocklist changes, review answers) first removes the automatic
links and open review items of every message that might change, then runs the same steps: one code
path decides, whether the mail or the record came first.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, update

from inboxlink.crm import settings as crm_settings
from inboxlink.outbound import events
from inboxlink.store.db import LIKE_ESCAPE, like_literal
from inboxlink.store.schema import (
    accounts,
    blocklist,
    folders,
    links,
    message_addresses,
    messages,
    placements,
    record_keys,
    records,
    review_items,
    users,
)
from inboxlink.store.schema import (
    crm_settings as crm_settings_table,
)
from inboxlink.sync.state import now

_ROLE_WORDS = {
    "from": "the sender",
    "to": "a recipient (To)",
    "cc": "in Cc",
    "bcc": "in Bcc",
    "reply_to": "the Reply-To address",
}
_ROLE_ORDER = {"from": 0, "to": 1, "cc": 2, "bcc": 3, "reply_to": 4}
_TOKEN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z][A-Za-z0-9]{0,15}-\d{1,12})(?![0-9])")
_NO_REPLY = re.compile(
    r"^(no-?reply|do-?not-?reply|donotreply|noreply-[^@]*|mailer-daemon|postmaster|bounces?|notifications?)"
    r"([+.\-_][^@]*)?@",
    re.IGNORECASE,
)
_MAX_THREAD_ROUNDS = 8
_FEW = 8  # re-linking this many domains/tokens scans per value; more (a bulk import) scans once
# Links a person made (chose in the review queue, sent from a record): re-linking never removes them.
USER_RULES = ("manual", "sent")
_IN = 500  # ids per IN (...) list


@dataclass
class MessageFacts:
    """What linking reads of one stored message."""

    id: int  # messages.id
    account_id: str
    message_id: str | None
    subject: str | None
    text: str | None
    addresses: list[tuple[str, str, str | None]]  # (role, email lower-cased, display name)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    thread_id: str | None = None
    headers: Mapping[str, str] | None = None
    headers_json: str | None = None  # read only when needed (auto-creation), to keep the sync path lean

    def header(self, name: str) -> str:
        if self.headers is None:
            self.headers = json.loads(self.headers_json) if self.headers_json else {}
        value = self.headers.get(name)
        return value if isinstance(value, str) else ""


@dataclass
class Index:
    """Everything linking needs to know about records, the team and the settings, loaded once and
    reused until something changes (`index_version`)."""

    version: int
    settings: crm_settings.LinkSettings
    people_by_email: dict[str, list[str]]
    companies_by_domain: dict[str, list[str]]
    deal_by_token: dict[str, str]
    open_deals_by_person: dict[str, list[str]]
    names: dict[str, str]
    types: dict[str, str]
    team: frozenset[str]  # the team's own addresses (paired accounts, users)
    own_domains: frozenset[str]
    freemail: frozenset[str]
    blocked: frozenset[str]
    account_email: dict[str, str]

    @property
    def idle(self) -> bool:
        """Nothing could link: no records and no auto-creation."""
        return not self.types and self.settings.auto_create == "none"

    def is_blocked(self, email: str) -> bool:
        if not self.blocked:
            return False
        if email in self.blocked:
            return True
        domain = email.rpartition("@")[2]
        while domain:
            if domain in self.blocked:
                return True
            domain = domain.partition(".")[2]
        return False


# Where the operator may add free-mail domains (set by `Runtime.open`).
OPERATOR_HOME: Path | None = None

_cache_lock = threading.Lock()
_cache: dict[str, Index] = {}


def _version(conn: Connection) -> int:
    value = conn.execute(
        select(crm_settings_table.c.value).where(crm_settings_table.c.key == "index_version")
    ).scalar()
    return int(value or 0)


def bump(conn: Connection) -> None:
    """Say that records, settings, the blocklist or the team changed: every process reloads its index."""
    version = _version(conn) + 1
    conn.execute(delete(crm_settings_table).where(crm_settings_table.c.key == "index_version"))
    conn.execute(crm_settings_table.insert().values(key="index_version", value=version, updated_at=now()))


def load_index(conn: Connection) -> Index:
    version = _version(conn)
    key = str(conn.engine.url)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached.version == version:
        return cached
    s = crm_settings.load(conn)
    people: dict[str, list[str]] = defaultdict(list)
    companies: dict[str, list[str]] = defaultdict(list)
    for k in conn.execute(select(record_keys.c.record_id, record_keys.c.kind, record_keys.c.value)):
        (people if k.kind == "email" else companies)[k.value].append(k.record_id)
    names: dict[str, str] = {}
    types: dict[str, str] = {}
    tokens: dict[str, str] = {}
    open_deals: dict[str, list[str]] = defaultdict(list)
    for r in conn.execute(
        select(
            records.c.id,
            records.c.type,
            records.c.name,
            records.c.token,
            records.c.status,
            records.c.person_id,
        )
    ):
        names[r.id] = r.name
        types[r.id] = r.type
        if r.type == "deal":
            if r.token:
                tokens[r.token.upper()] = r.id
            if r.status == "open" and r.person_id:
                open_deals[r.person_id].append(r.id)
    account_email = {r.id: r.email.lower() for r in conn.execute(select(accounts.c.id, accounts.c.email))}
    team = set(account_email.values()) | {r.email.lower() for r in conn.execute(select(users.c.email))}
    freemail = crm_settings.freemail_domains(OPERATOR_HOME)
    own = frozenset(e.rpartition("@")[2] for e in team) - freemail
    index = Index(
        version=version,
        settings=s,
        people_by_email=dict(people),
        companies_by_domain=dict(companies),
        deal_by_token=tokens,
        open_deals_by_person=dict(open_deals),
        names=names,
        types=types,
        team=frozenset(team),
        own_domains=own,
        freemail=freemail,
        blocked=frozenset(r.value for r in conn.execute(select(blocklist.c.value))),
        account_email=account_email,
    )
    with _cache_lock:
        _cache[key] = index
    return index


# -- the decision ---------------------------------------------------------------------------------


@dataclass
class _Outcome:
    links: dict[tuple[int, str], tuple[str, str]] = field(
        default_factory=dict
    )  # (msg, record) -> rule, evidence
    reviews: dict[tuple[int, str], tuple[list[str], str]] = field(default_factory=dict)
    created: dict[str, tuple[str, int, str]] = field(
        default_factory=dict
    )  # email -> (name, msg id, evidence)

    def link(self, message: int, record: str, rule: str, evidence: str) -> None:
        self.links.setdefault((message, record), (rule, evidence))


def _is_automated(f: MessageFacts) -> bool:
    if f.header("list-id") or f.header("list-unsubscribe"):
        return True
    if f.header("precedence").strip().lower() in ("bulk", "list", "junk"):
        return True
    auto = f.header("auto-submitted").strip().lower()
    if auto and auto != "no":
        return True
    return any(role == "from" and _NO_REPLY.match(email) for role, email, _n in f.addresses)


def _skip_reason(f: MessageFacts, ix: Index) -> str | None:
    others = [email for _r, email, _n in f.addresses]
    if any(ix.is_blocked(e) for e in others if e != ix.account_email.get(f.account_id)):
        return "blocked"
    if (
        ix.settings.exclude_internal
        and others
        and all(e in ix.team or e.rpartition("@")[2] in ix.own_domains for e in others)
    ):
        return "internal"
    return None


def _direct(f: MessageFacts, ix: Index, out: _Outcome, *, create: bool = False) -> None:
    auto = ix.settings.auto_link
    own = ix.account_email.get(f.account_id, "")
    seen: set[str] = set()
    for role, email, name in sorted(f.addresses, key=lambda a: _ROLE_ORDER.get(a[0], 9)):
        if email in seen or email in ix.team or email == own:
            continue
        seen.add(email)
        where = _ROLE_WORDS.get(role, role)
        people = ix.people_by_email.get(email, [])
        if "person" in auto:
            if len(people) == 1:
                out.link(f.id, people[0], "participant", f"{email} is {where}")
            elif len(people) > 1:
                out.reviews.setdefault(
                    (f.id, "person"), (sorted(people), f"{email} belongs to {len(people)} people")
                )
            elif create and _may_create(f, ix, role, email):
                out.created.setdefault(
                    email,
                    (
                        name or email.partition("@")[0],
                        f.id,
                        f"{email} is {where} (person created from this mail)",
                    ),
                )
        domain = email.rpartition("@")[2]
        if "company" in auto and domain not in ix.freemail and domain not in ix.own_domains:
            companies = _companies_for(domain, ix)
            if len(companies) == 1:
                cid, matched = companies[0]
                out.link(
                    f.id, cid, "domain", f"{email} is at {matched}, a domain of {ix.names.get(cid, cid)}"
                )
            elif len(companies) > 1:
                out.reviews.setdefault(
                    (f.id, "company"),
                    (sorted(c for c, _d in companies), f"{domain} belongs to {len(companies)} companies"),
                )
    if "deal" in auto and ix.deal_by_token:
        for where, text in (("subject", f.subject), ("body", f.text)):
            if not text:
                continue
            for m in _TOKEN_CANDIDATE.finditer(text):
                deal = ix.deal_by_token.get(m.group(1).upper())
                if deal:
                    bracketed = text[max(0, m.start() - 1) : m.end() + 1]
                    shown = bracketed if bracketed.startswith("[") and bracketed.endswith("]") else m.group(1)
                    out.link(f.id, deal, "token", f"{shown} in the {where}")


def _companies_for(domain: str, ix: Index) -> list[tuple[str, str]]:
    """Companies owning `domain` or a parent of it (mail.acme.com -> acme.com), nearest first."""
    d = domain
    while d and "." in d:
        found = ix.companies_by_domain.get(d)
        if found:
            return [(c, d) for c in found]
        d = d.partition(".")[2]
    return []


def _may_create(f: MessageFacts, ix: Index, role: str, email: str) -> bool:
    policy = ix.settings.auto_create
    if policy == "none" or ix.is_blocked(email) or _NO_REPLY.match(email):
        return False
    if email.rpartition("@")[2] in ix.own_domains:
        return False  # a colleague who is not a user yet is no contact
    if _is_automated(f):
        return False
    own = ix.account_email.get(f.account_id, "")
    sent = any(r == "from" and (e == own or e in ix.team) for r, e, _n in f.addresses)
    if sent:
        return role in ("to", "cc", "bcc")
    return policy == "sent_and_received" and role in ("from", "reply_to", "cc", "to")


# -- writing ----------------------------------------------------------------------------------------


# conn.info key: message id -> records it was linked to before `recompute` dropped its links
_HELD_KEY = "inboxlink.linking.held"


def insert_links(conn: Connection, rows: Iterable[tuple[int, str, str, str]]) -> int:
    """Insert links, keeping any that exist (the first reason found stays); returns how many are
    new. Each new link is a `message.linked` event when a webhook listens for it."""
    batch = list(rows)
    if not batch:
        return 0
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    at = now()
    stamp: Any = at.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else at
    announce = events.is_subscribed(conn, events.MESSAGE_LINKED)
    before = _existing_links(conn, sorted({m for m, _r, _rule, _ev in batch})) if announce else {}
    held: dict[int, set[str]] = conn.info.get(_HELD_KEY, {})  # what `recompute` dropped to decide again
    result = conn.exec_driver_sql(
        "INSERT INTO links (message_id, record_id, rule, evidence, created_at) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT (message_id, record_id) DO NOTHING",
        [(m, r, rule, ev, stamp) for m, r, rule, ev in batch],
    )
    if announce:
        _announce(
            conn, [x for x in batch if x[1] not in before.get(x[0], {}) and x[1] not in held.get(x[0], ())]
        )
    return max(int(result.rowcount or 0), 0)


def _announce(conn: Connection, new: list[tuple[int, str, str, str]]) -> None:
    fresh = list({(m, r): (m, r, rule, ev) for m, r, rule, ev in reversed(new)}.values())
    if not fresh:
        return
    ids = sorted({m for m, *_ in fresh})
    info = {
        r.id: r
        for r in conn.execute(
            select(messages.c.id, messages.c.account_id, messages.c.message_id).where(messages.c.id.in_(ids))
        )
    }
    kinds: dict[str, str] = {
        k.id: k.type
        for k in conn.execute(
            select(records.c.id, records.c.type).where(records.c.id.in_(sorted({r for _m, r, *_ in fresh})))
        )
    }
    events.emit_many(
        conn,
        events.MESSAGE_LINKED,
        (
            {
                "account_id": info[m].account_id,
                "id": m,
                "message_id": info[m].message_id,
                "record": {"type": kinds.get(r), "id": r},
                "rule": rule,
                "evidence": evidence,
            }
            for m, r, rule, evidence in fresh
            if m in info
        ),
    )


def _existing_links(conn: Connection, message_ids: Sequence[int]) -> dict[int, dict[str, str]]:
    found: dict[int, dict[str, str]] = defaultdict(dict)
    for chunk in _chunks(message_ids):
        for r in conn.execute(
            select(links.c.message_id, links.c.record_id, links.c.rule).where(links.c.message_id.in_(chunk))
        ):
            found[r.message_id][r.record_id] = r.rule
    return found


def _chunks(items: Sequence[Any], n: int = _IN) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _create_people(conn: Connection, out: _Outcome) -> dict[str, str]:
    """The people `out.created` names, as records (origin auto): email -> record id."""
    import uuid

    made: dict[str, str] = {}
    at = now()
    for email, (name, _message, _evidence) in out.created.items():
        rid = uuid.uuid4().hex[:16]
        conn.execute(
            records.insert().values(
                id=rid,
                type="person",
                name=name[:500],
                origin="auto",
                status="open",
                created_at=at,
                updated_at=at,
            )
        )
        conn.execute(record_keys.insert().values(record_id=rid, kind="email", value=email))
        made[email] = rid
    bump(conn)
    return made


def _write_reviews(conn: Connection, out: _Outcome) -> None:
    if not out.reviews:
        return
    at = now()
    for (message, kind), (candidates, reason) in out.reviews.items():
        current = conn.execute(
            select(review_items.c.id, review_items.c.status).where(
                review_items.c.message_id == message, review_items.c.kind == kind
            )
        ).one_or_none()
        if current is None:
            conn.execute(
                review_items.insert().values(
                    message_id=message,
                    kind=kind,
                    candidates=candidates,
                    reason=reason,
                    status="open",
                    created_at=at,
                )
            )
        elif current.status == "open":
            conn.execute(
                update(review_items)
                .where(review_items.c.id == current.id)
                .values(candidates=candidates, reason=reason)
            )


# -- thread links -----------------------------------------------------------------------------------


def _thread_parents(
    conn: Connection, facts: Sequence[MessageFacts]
) -> dict[int, list[tuple[int, str | None]]]:
    """message id -> [(parent message row id, parent RFC Message-ID)] among stored messages."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for f in facts:
        for ref in {f.in_reply_to, *f.references} - {None, ""}:
            assert ref is not None
            wanted[ref].append(f.id)
    by_thread: dict[tuple[str, str], list[int]] = defaultdict(list)
    for f in facts:
        if f.thread_id:
            by_thread[(f.account_id, f.thread_id)].append(f.id)
    parents: dict[int, list[tuple[int, str | None]]] = defaultdict(list)
    keys = list(wanted)
    for chunk in _chunks(keys):
        for r in conn.execute(
            select(messages.c.id, messages.c.message_id).where(
                messages.c.message_id.in_(chunk), messages.c.deleted_at.is_(None)
            )
        ):
            for child in wanted[r.message_id]:
                if child != r.id:
                    parents[child].append((r.id, r.message_id))
    for (account, thread), children in by_thread.items():
        for r in conn.execute(
            select(messages.c.id, messages.c.message_id).where(
                messages.c.account_id == account,
                messages.c.thread_id == thread,
                messages.c.deleted_at.is_(None),
            )
        ):
            for child in children:
                if child != r.id:
                    parents[child].append((r.id, r.message_id))
    return parents


def _inherit(
    conn: Connection,
    facts: Sequence[MessageFacts],
    ix: Index,
    parents: Mapping[int, list[tuple[int, str | None]]] | None = None,
) -> int:
    """Thread links for `facts` from their parents' links (of any rule); returns how many were added."""
    if parents is None:
        parents = _thread_parents(conn, facts)
    else:
        wanted = {f.id for f in facts}
        parents = {c: ps for c, ps in parents.items() if c in wanted}
    if not parents:
        return 0
    parent_ids = sorted({p for ps in parents.values() for p, _mid in ps})
    parent_links = _existing_links(conn, parent_ids)
    rows: list[tuple[int, str, str, str]] = []
    for child, ps in parents.items():
        for pid, pmid in ps:
            for record in parent_links.get(pid, {}):
                rows.append(
                    (child, record, "thread", f"in the thread of <{pmid}>, which is on {_label(ix, record)}")
                )
    return insert_links(conn, rows)


def _label(ix: Index, record: str) -> str:
    return f"{ix.types.get(record, 'record')} {ix.names.get(record, record)}"


def _deal_contacts(conn: Connection, facts: Sequence[MessageFacts], ix: Index) -> None:
    if "deal" not in ix.settings.auto_link or not ix.open_deals_by_person:
        return
    current = _existing_links(conn, [f.id for f in facts])
    rows: list[tuple[int, str, str, str]] = []
    out = _Outcome()
    for f in facts:
        linked = current.get(f.id, {})
        if any(ix.types.get(r) == "deal" for r in linked):
            continue  # a token or the thread already said which deal
        deals: dict[str, str] = {}
        for record in linked:
            for deal in ix.open_deals_by_person.get(record, []):
                deals.setdefault(deal, record)
        if len(deals) == 1:
            deal, person = next(iter(deals.items()))
            rows.append((f.id, deal, "deal_contact", f"the only open deal of {ix.names.get(person, person)}"))
        elif len(deals) > 1:
            people = sorted({ix.names.get(p, p) for p in deals.values()})
            out.reviews[(f.id, "deal")] = (
                sorted(deals),
                f"{', '.join(people)} {'has' if len(people) == 1 else 'have'} {len(deals)} open deals",
            )
    insert_links(conn, rows)
    _write_reviews(conn, out)


def _children(conn: Connection, frontier: Sequence[MessageFacts]) -> set[int]:
    """Stored messages that answer one of these: In-Reply-To one of them, or naming one in
    References (found through their thread's root, the first of References), or in the same
    provider thread."""
    mids = [f.message_id for f in frontier if f.message_id]
    threads = {(f.account_id, f.thread_id) for f in frontier if f.thread_id}
    child_ids: set[int] = set()
    for chunk in _chunks(mids):
        child_ids.update(
            r.id for r in conn.execute(select(messages.c.id).where(messages.c.in_reply_to.in_(chunk)))
        )
    wanted = set(mids)
    roots = sorted(wanted | {f.references[0] for f in frontier if f.references})
    for chunk in _chunks(roots):
        child_ids.update(
            r.id
            for r in conn.execute(
                select(messages.c.id, messages.c.references).where(messages.c.thread_root.in_(chunk))
            )
            if wanted.intersection(r.references or ())
        )
    for account, thread in threads:
        child_ids.update(
            r.id
            for r in conn.execute(
                select(messages.c.id).where(messages.c.account_id == account, messages.c.thread_id == thread)
            )
        )
    return child_ids


def _pass_down(conn: Connection, facts: Sequence[MessageFacts], ix: Index) -> None:
    """Replies stored before their parent gained links inherit them now (and their replies...).
    Messages of `facts` are not spared: one may answer a reply outside them that gains links only
    here (both stored in one batch, the reply between them stored earlier). Ends when a round adds
    no link (inheriting is idempotent).

    A reply's deal is decided after what it inherits (as in `link_messages`): one that gains people
    and has no deal gets its deal_contact link or question now; one whose deal was a guess (a
    deal_contact link or an open "which deal" question) while its thread now says more is decided
    again whole, with the replies below it, which inherited the guess."""
    frontier = [f for f in facts if f.message_id or f.thread_id]
    redo: set[int] = set()
    for _ in range(_MAX_THREAD_ROUNDS):
        child_ids = _children(conn, frontier) - {f.id for f in frontier}
        if not child_ids:
            break
        children = [c for c in load_facts(conn, sorted(child_ids)) if _skip_reason(c, ix) is None]
        before = _existing_links(conn, [c.id for c in children])
        guessed = _guessed_deals(conn, children, before) if "deal" in ix.settings.auto_link else set()
        redo |= _deal_from_thread(conn, [c for c in children if c.id in guessed], ix)
        if not _inherit(conn, children, ix):
            break
        after = _existing_links(conn, [c.id for c in children])
        gained = {c.id for c in children if after.get(c.id, {}).keys() - before.get(c.id, {}).keys()}
        redo |= gained & guessed
        _deal_contacts(conn, [c for c in children if c.id in gained - guessed], ix)
        frontier = children
    if redo:
        recompute(conn, redo)


def _guessed_deals(
    conn: Connection, facts: Sequence[MessageFacts], own: Mapping[int, Mapping[str, str]]
) -> set[int]:
    """Those of `facts` whose deal is a guess: a deal_contact link (`own`: their links), or an open
    "which deal" question."""
    ids = [f.id for f in facts]
    guessed = {i for i in ids if "deal_contact" in own.get(i, {}).values()}
    for chunk in _chunks(ids):
        guessed.update(
            conn.execute(
                select(review_items.c.message_id).where(
                    review_items.c.message_id.in_(chunk),
                    review_items.c.kind == "deal",
                    review_items.c.status == "open",
                )
            ).scalars()
        )
    return guessed


def _deal_from_thread(conn: Connection, facts: Sequence[MessageFacts], ix: Index) -> set[int]:
    """Those of `facts` with a parent on a deal (a reply inherits it, even when it is the deal it
    guessed, and then under the rule thread)."""
    if not facts:
        return set()
    parents = _thread_parents(conn, facts)
    theirs = _existing_links(conn, sorted({p for ps in parents.values() for p, _mid in ps}))
    return {
        child
        for child, ps in parents.items()
        if any(ix.types.get(r) == "deal" for p, _mid in ps for r in theirs.get(p, {}))
    }


# -- entry points -----------------------------------------------------------------------------------


def link_messages(
    conn: Connection, facts: Sequence[MessageFacts], *, create: bool | AbstractSet[int] = True
) -> None:
    """Link messages just stored (or whose links were just cleared). Inside the caller's transaction,
    so a message and its links commit together. `create`: people may be created from this mail
    (auto_create), or from these messages of it; re-deciding past mail passes False, and a sync
    the ids of the messages it stored for the first time (not a copy found in another folder), so
    that a contact someone deleted stays deleted."""
    if not facts:
        return
    ix = load_index(conn)
    if ix.idle and not _any_links(conn):
        return
    junk = _junk_only(conn, [f.id for f in facts])
    live = [f for f in facts if f.id not in junk and _skip_reason(f, ix) is None]
    created: dict[tuple[int, str], str] = {}  # (message, new person) -> evidence
    earlier: set[int] = set()
    if create and ix.settings.auto_create != "none" and "person" in ix.settings.auto_link:
        wanted = _Outcome()
        for f in live if create is True else [f for f in live if f.id in create]:
            _direct(f, ix, wanted, create=True)
        if wanted.created:
            made = _create_people(conn, wanted)
            created = {(m, made[e]): ev for e, (_name, m, ev) in wanted.created.items()}
            ix = load_index(conn)
            # a record created later re-links past mail: a person created from mail too
            earlier = affected_by(conn, sorted(made.values())) - {f.id for f in facts}
    out = _Outcome()
    for f in live:
        _direct(f, ix, out)
    for key, evidence in created.items():
        out.links[key] = ("participant", evidence)
    insert_links(conn, ((m, r, rule, ev) for (m, r), (rule, ev) in out.links.items()))
    _write_reviews(conn, out)
    parents = _thread_parents(conn, live)
    for layer in _generations(live, parents):
        for _ in range(_MAX_THREAD_ROUNDS):
            if not _inherit(conn, layer, ix, parents):
                break
        _deal_contacts(conn, layer, ix)
    # (also among `facts`: the deal_contact links just made reach their replies only here)
    linked = _existing_links(conn, [f.id for f in live])
    _pass_down(conn, [f for f in live if linked.get(f.id)], ix)
    if earlier:
        recompute(conn, earlier)


def _generations(
    facts: Sequence[MessageFacts], parents: Mapping[int, list[tuple[int, str | None]]]
) -> list[list[MessageFacts]]:
    """`facts` in thread order: messages whose parents among them are all in earlier generations,
    so a reply inherits its parent's final links (its deal_contact link too) whatever order they
    were stored in. Messages that are each other's parents (one provider thread) share the last."""
    remaining = {f.id: f for f in facts}
    out: list[list[MessageFacts]] = []
    while remaining:
        layer = [f for f in remaining.values() if not any(p in remaining for p, _m in parents.get(f.id, ()))]
        if not layer:
            out.append(list(remaining.values()))
            break
        out.append(layer)
        for f in layer:
            del remaining[f.id]
    return out


def _junk_only(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Messages whose every placement is in a junk/spam folder: spam links nowhere and creates no
    contact. (A message with no placement yet, e.g. a sent copy, is not junk.)"""
    roles: dict[int, set[str]] = defaultdict(set)
    for chunk in _chunks(list(ids)):
        for r in conn.execute(
            select(placements.c.message_id, folders.c.role)
            .join(folders, folders.c.id == placements.c.folder_id)
            .where(placements.c.message_id.in_(chunk))
        ):
            roles[r.message_id].add(r.role)
    return {m for m, rs in roles.items() if rs == {"junk"}}


def _any_links(conn: Connection) -> bool:
    return conn.execute(select(links.c.id).limit(1)).first() is not None


def load_facts(conn: Connection, ids: Sequence[int]) -> list[MessageFacts]:
    facts: dict[int, MessageFacts] = {}
    for chunk in _chunks(list(ids)):
        for r in conn.execute(
            select(
                messages.c.id,
                messages.c.account_id,
                messages.c.message_id,
                messages.c.subject,
                messages.c.text_body,
                messages.c.in_reply_to,
                messages.c.references,
                messages.c.thread_id,
                messages.c.headers,
            ).where(messages.c.id.in_(chunk), messages.c.deleted_at.is_(None))
        ):
            facts[r.id] = MessageFacts(
                id=r.id,
                account_id=r.account_id,
                message_id=r.message_id,
                subject=r.subject,
                text=r.text_body,
                addresses=[],
                in_reply_to=r.in_reply_to,
                references=list(r.references or []),
                thread_id=r.thread_id,
                headers=r.headers if isinstance(r.headers, dict) else json.loads(r.headers or "{}"),
            )
        for a in conn.execute(
            select(
                message_addresses.c.message_id,
                message_addresses.c.role,
                message_addresses.c.email,
                message_addresses.c.name,
            ).where(message_addresses.c.message_id.in_(chunk))
        ):
            if a.message_id in facts:
                facts[a.message_id].addresses.append((a.role, a.email, a.name))
    return [facts[i] for i in ids if i in facts]


def _thread_facts(conn: Connection, ids: Sequence[int]) -> list[MessageFacts]:
    """Only what `_children` reads of these messages (no addresses, texts nor headers)."""
    out: list[MessageFacts] = []
    for chunk in _chunks(list(ids)):
        out.extend(
            MessageFacts(
                id=r.id,
                account_id=r.account_id,
                message_id=r.message_id,
                subject=None,
                text=None,
                addresses=[],
                references=list(r.references or []),
                thread_id=r.thread_id,
            )
            for r in conn.execute(
                select(
                    messages.c.id,
                    messages.c.account_id,
                    messages.c.message_id,
                    messages.c.references,
                    messages.c.thread_id,
                ).where(messages.c.id.in_(chunk), messages.c.deleted_at.is_(None))
            )
        )
    return out


def recompute(conn: Connection, message_ids: Iterable[int]) -> None:
    """Drop the automatic links and open review items of these messages, and of the replies below
    them (their thread links came from these: a parent that loses a link must take it from its
    replies too), and decide again."""
    wanted = set(message_ids)
    if not wanted:
        return
    frontier = _thread_facts(conn, sorted(wanted))
    for _ in range(_MAX_THREAD_ROUNDS):
        below = _children(conn, frontier) - wanted
        if not below:
            break
        wanted |= below
        frontier = _thread_facts(conn, sorted(below))
    ids = sorted(wanted)
    # The links dropped here and decided again are not news: `insert_links` announces only pairs
    # (message, record) that none of these messages had before (a re-import of unchanged records
    # announced every link it re-decided, with new event ids).
    outer: dict[int, set[str]] | None = conn.info.get(_HELD_KEY)
    held = {m: set(rs) for m, rs in (outer or {}).items()}
    if events.is_subscribed(conn, events.MESSAGE_LINKED):
        for m, rs in _existing_links(conn, ids).items():
            held.setdefault(m, set()).update(rs)
    for chunk in _chunks(ids):
        conn.execute(delete(links).where(links.c.message_id.in_(chunk), links.c.rule.not_in(USER_RULES)))
        conn.execute(
            delete(review_items).where(review_items.c.message_id.in_(chunk), review_items.c.status == "open")
        )
    conn.info[_HELD_KEY] = held
    try:
        link_messages(conn, load_facts(conn, ids), create=False)
    finally:
        if outer is None:
            conn.info.pop(_HELD_KEY, None)
        else:
            conn.info[_HELD_KEY] = outer


def affected_by(conn: Connection, record_ids: Sequence[str]) -> set[int]:
    """Messages whose links could change when these records change or go: those linked to them now
    (and to the people of their deals), those with an open review question offering one of them,
    and those that mention their addresses, domains or tokens. Call before deleting a record."""
    found: set[int] = set()
    wanted = set(record_ids)
    found.update(
        r.message_id
        for r in conn.execute(
            select(review_items.c.message_id, review_items.c.candidates).where(
                review_items.c.status == "open"
            )
        )
        if wanted & set(r.candidates or [])
    )
    person_ids = set(record_ids)
    rows = conn.execute(
        select(records.c.id, records.c.type, records.c.token, records.c.person_id).where(
            records.c.id.in_(record_ids)
        )
    ).all()
    for r in rows:
        if r.type == "deal" and r.person_id:
            person_ids.add(r.person_id)
    for chunk in _chunks(sorted(set(record_ids) | person_ids)):
        found.update(
            x.message_id for x in conn.execute(select(links.c.message_id).where(links.c.record_id.in_(chunk)))
        )
    keys = conn.execute(
        select(record_keys.c.kind, record_keys.c.value).where(record_keys.c.record_id.in_(sorted(person_ids)))
    ).all()
    emails = [k.value for k in keys if k.kind == "email"]
    for chunk in _chunks(emails):
        found.update(
            x.message_id
            for x in conn.execute(
                select(message_addresses.c.message_id).where(message_addresses.c.email.in_(chunk))
            )
        )
    domains = {k.value for k in keys if k.kind == "domain"}
    if len(domains) <= _FEW:
        for domain in sorted(domains):
            found.update(
                x.message_id
                for x in conn.execute(
                    select(message_addresses.c.message_id).where(
                        or_(
                            message_addresses.c.email.like(f"%@{domain}"),
                            message_addresses.c.email.like(f"%.{domain}"),
                        )
                    )
                )
            )
    else:  # a bulk import: one pass over the addresses instead of a scan per domain
        for x in conn.execute(select(message_addresses.c.message_id, message_addresses.c.email)):
            d = x.email.rpartition("@")[2]
            while d:
                if d in domains:
                    found.add(x.message_id)
                    break
                d = d.partition(".")[2]
    tokens = {r.token.upper() for r in rows if r.type == "deal" and r.token}
    if len(tokens) <= _FEW:
        for token in sorted(tokens):
            pattern = f"%{token}%"
            found.update(
                x.id
                for x in conn.execute(
                    select(messages.c.id).where(
                        or_(messages.c.subject.ilike(pattern), messages.c.text_body.ilike(pattern))
                    )
                )
            )
    else:  # one pass over subjects and bodies, matching every token at once
        for msg in conn.execute(select(messages.c.id, messages.c.subject, messages.c.text_body)):
            for text in (msg.subject, msg.text_body):
                if text and any(m.group(1).upper() in tokens for m in _TOKEN_CANDIDATE.finditer(text)):
                    found.add(msg.id)
                    break
    return found


def relink_records(conn: Connection, record_ids: Sequence[str], before: Iterable[int] = ()) -> None:
    """Records were created or changed: decide again for every message they could concern, now and
    (`before`: what `affected_by` said before a change) before; an address, domain or token a
    record no longer holds may leave its mail to another record, or to no one."""
    bump(conn)
    recompute(conn, affected_by(conn, record_ids) | set(before))


def forget_record(conn: Connection, record_id: str, affected: Iterable[int]) -> None:
    """A record was deleted; `affected` is what `affected_by` said before. Its links went with its
    row (the foreign key cascades, thread links included); the open review questions that offered
    it go too, and its mail is decided again: a subdomain's company gone, the parent domain's
    company takes its mail; one of two companies claiming a domain gone, the other one does."""
    bump(conn)
    stale = [
        r.id
        for r in conn.execute(
            select(review_items.c.id, review_items.c.candidates).where(review_items.c.status == "open")
        )
        if record_id in (r.candidates or [])
    ]
    # an answer that chose it goes too: the question is asked again if the mail is still ambiguous
    stale += conn.execute(
        select(review_items.c.id).where(
            review_items.c.status == "resolved", review_items.c.resolved_record_id == record_id
        )
    ).scalars()
    if stale:
        conn.execute(delete(review_items).where(review_items.c.id.in_(stale)))
    recompute(conn, affected)


def settings_changed(
    conn: Connection, before: crm_settings.LinkSettings, after: crm_settings.LinkSettings
) -> None:
    """The linking settings were saved as `after` (`before` is what they were). Which record types
    link and whether internal mail is skipped decide again for all past mail, so that its links never
    depend on which records were edited since; the auto-creation policy applies to mail synced from
    now on."""
    bump(conn)
    if set(before.auto_link) == set(after.auto_link) and before.exclude_internal == after.exclude_internal:
        return
    recompute(
        conn, [r.id for r in conn.execute(select(messages.c.id).where(messages.c.deleted_at.is_(None)))]
    )


def purge_blocked(conn: Connection, value: str) -> int:
    """Remove every link and review item of mail involving a newly blocked address or domain (the
    links people chose too), and decide its replies again: what they inherited from it goes."""
    bump(conn)
    ids = _involving(conn, value)
    removed = 0
    for chunk in _chunks(ids):
        removed += conn.execute(delete(links).where(links.c.message_id.in_(chunk))).rowcount or 0
        conn.execute(delete(review_items).where(review_items.c.message_id.in_(chunk)))
    recompute(conn, ids)
    return removed


def _involving(conn: Connection, value: str) -> list[int]:
    if "@" in value:
        cond = message_addresses.c.email == value
    else:
        literal = like_literal(value)  # blocking "a_b.example" must not purge mail of axb.example
        cond = or_(
            message_addresses.c.email.like(f"%@{literal}", escape=LIKE_ESCAPE),
            message_addresses.c.email.like(f"%.{literal}", escape=LIKE_ESCAPE),
        )
    return sorted({r.message_id for r in conn.execute(select(message_addresses.c.message_id).where(cond))})


def relink_blocked(conn: Connection, value: str) -> None:
    """An address or domain left the blocklist: its mail links again."""
    bump(conn)
    recompute(conn, _involving(conn, value))


def resolve_review(conn: Connection, item_id: int, record_id: str | None, user: str | None) -> dict[str, Any]:
    """A user answered a review question: link the chosen record (rule manual) or dismiss it."""
    from inboxlink.errors import NotFound, ValidationError

    item = conn.execute(select(review_items).where(review_items.c.id == item_id)).one_or_none()
    if item is None:
        raise NotFound(f"no review item {item_id}")
    if item.status != "open":
        raise ValidationError(f"review item {item_id} is already {item.status}")
    at = now()
    if record_id is None:
        conn.execute(
            update(review_items)
            .where(review_items.c.id == item_id)
            .values(status="dismissed", resolved_at=at)
        )
        return {"status": "dismissed"}
    if record_id not in (item.candidates or []):
        raise ValidationError(f"{record_id} is not one of the candidates {item.candidates}")
    by = f" by user {user}" if user else ""
    conn.execute(
        delete(links).where(and_(links.c.message_id == item.message_id, links.c.record_id == record_id))
    )
    insert_links(
        conn, [(item.message_id, record_id, "manual", f"chosen in the review queue{by}: {item.reason}")]
    )
    conn.execute(
        update(review_items)
        .where(review_items.c.id == item_id)
        .values(status="resolved", resolved_record_id=record_id, resolved_at=at)
    )
    # decided again around the choice: a chosen person brings their only open deal, and the
    # replies below inherit it
    recompute(conn, [item.message_id])
    return {"status": "resolved", "record_id": record_id}
