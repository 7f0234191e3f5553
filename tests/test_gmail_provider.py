"""Gmail-specific behaviour against the Google simulator (the seam's common promises are in
tests/contract): labels as placements through the real sync engine, history and its expiry,
header-only sync under gmail.metadata, token refresh on 401, rate limits and server errors,
batches, quota units, sending, drafts, labelling and push registration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from inboxlink.config import Settings
from inboxlink.crm.records import RecordInput
from inboxlink.domain import FetchParts, OutgoingMessage
from inboxlink.errors import AuthError, CursorExpired, RateLimited, RecipientsRejected, TransientError
from inboxlink.providers import registry
from inboxlink.providers.gmail import mapping
from inboxlink.providers.gmail.client import GmailClient, QuotaBudget
from inboxlink.providers.gmail.provider import GmailConfig, GmailProvider
from inboxlink.runtime import Runtime
from inboxlink.store.db import Database, open_database
from inboxlink.store.schema import accounts, folders, messages, placements
from inboxlink.sync.engine import SyncEngine
from inboxlink_sim.google import GoogleSim
from tests.gmail_support import AUTH, METADATA_SCOPES, GmailAccount, running_sim
from tests.support import make_message

Placements = set[tuple[str, str, str]]  # (folder key, Gmail id, flags)


@pytest.fixture(scope="module")
def sim() -> Iterator[GoogleSim]:
    with running_sim() as s:
        yield s
        assert s.schema_violations == [], "the simulator answered outside the discovery document"


@pytest.fixture
def account(sim: GoogleSim) -> Iterator[GmailAccount]:
    yield GmailAccount.create(sim, messages=40, seed=3)
    sim.clear_faults()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(Settings(home=tmp_path / "home"))
    yield database
    database.engine.dispose()


def new_account(db: Database, email: str, sync_mode: str = "full") -> str:
    at = datetime.now(UTC)
    with db.engine.begin() as conn:
        conn.execute(
            accounts.insert().values(
                id="gm" + email.split("@")[0][-8:],
                provider="gmail",
                email=email,
                status="pending",
                status_at=at,
                config={"email": email},
                sync_mode=sync_mode,
                created_at=at,
                failures=0,
            )
        )
    return "gm" + email.split("@")[0][-8:]


def server_placements(sim: GoogleSim, email: str) -> Placements:
    """What Gmail holds, in placements: labels mapped by the rules of `mapping`."""
    box = sim.mailbox(email)
    with sim.state.lock:
        return {
            (folder, m.id, " ".join(sorted(mapping.flags(m.label_ids))))
            for m in box.messages.values()
            for folder in mapping.placements(m.label_ids)
        }


def our_placements(db: Database, account_id: str) -> Placements:
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(folders.c.key, messages.c.provider_id, placements.c.flags)
            .join(placements, placements.c.folder_id == folders.c.id)
            .join(messages, messages.c.id == placements.c.message_id)
            .where(folders.c.account_id == account_id, messages.c.deleted_at.is_(None))
        )
        return {(r.key, r.provider_id, r.flags) for r in rows}


def live_rows(db: Database, account_id: str) -> list[str]:
    with db.engine.connect() as conn:
        return [
            r.provider_id
            for r in conn.execute(
                select(messages.c.provider_id).where(
                    messages.c.account_id == account_id, messages.c.deleted_at.is_(None)
                )
            )
        ]


def test_sync_labels_as_placements_incremental_and_expired_history(
    sim: GoogleSim, account: GmailAccount, db: Database
) -> None:
    box = sim.mailbox(account.email)
    with sim.state.lock:
        # the generated mailbox depends on the (random) address: make sure some mail has two labels
        inbox_ids = sorted(m.id for m in box.messages.values() if "INBOX" in m.label_ids)[:3]
        box.modify(inbox_ids, [box.ensure_user_label("Projects").id], [])
        multi = [m.id for m in box.messages.values() if len(mapping.placements(m.label_ids)) > 1]
        archived = [m.id for m in box.messages.values() if mapping.placements(m.label_ids) == {"ARCHIVE"}]
    assert multi, "the seeded mailbox has messages in several labels"
    provider = account.provider()
    engine = SyncEngine(db, lambda _id: provider)
    account_id = new_account(db, account.email)

    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.fetched == report.messages == 40, "each message downloaded once, whatever its labels"
    ours = our_placements(db, account_id)
    assert ours == server_placements(sim, account.email)
    assert all(len({f for f, pid, _ in ours if pid == m}) > 1 for m in multi)
    assert all(("ARCHIVE", m) in {(f, pid) for f, pid, _ in ours} for m in archived)
    assert engine.sync(account_id).fetched == 0

    # Another client changes the mailbox: new mail, a new label, archive, trash, delete, star.
    with sim.state.lock:
        inbox = sorted(
            m.id
            for m in box.messages.values()
            if mapping.placements(m.label_ids) == {"INBOX"} and "STARRED" not in m.label_ids
        )
        label = box.create_label("Deals")
    assert len(inbox) >= 5
    new_id = sim.deliver(account.email, make_message(100, subject="A new lead"))
    with sim.state.lock:
        box.modify([inbox[0]], [label.id], [])
        box.modify([inbox[1]], [], ["INBOX"])
        box.trash([inbox[2]])
        box.delete([inbox[3]])
        box.modify([inbox[4]], ["STARRED"], ["UNREAD"])
    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.fetched == 1
    ours = our_placements(db, account_id)
    assert ours == server_placements(sim, account.email)
    assert {f for f, pid, _ in ours if pid == inbox[0]} == {"INBOX", label.id}
    assert {f for f, pid, _ in ours if pid == inbox[1]} == {"ARCHIVE"}
    assert {f for f, pid, _ in ours if pid == inbox[2]} == {"TRASH"}
    assert inbox[3] not in live_rows(db, account_id)
    # starred and read (Gmail may also have marked it IMPORTANT: the equality above checks that)
    assert all({"\\Flagged", "\\Seen"} <= set(fl.split()) for f, pid, fl in ours if pid == inbox[4])
    assert ("INBOX", new_id, "") in ours

    # Gmail forgets the history: the engine starts over, downloads nothing, duplicates nothing.
    sim.expire_history(account.email)
    with sim.state.lock:
        box.modify([inbox[5]], ["STARRED"], [])  # changed while the cursor was unusable
    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.fetched == 0
    rows = live_rows(db, account_id)
    assert len(rows) == len(set(rows)) == len(box.messages) == 40
    assert our_placements(db, account_id) == server_placements(sim, account.email)
    engine.close()


def test_a_deleted_label_drops_its_placements_but_keeps_its_mail(
    sim: GoogleSim, account: GmailAccount, db: Database
) -> None:
    """A folder gone from the server takes its placements along, and mail held in no other folder is
    soft-deleted (mailstore.upsert_folders); a deleted Gmail label is such a folder, but its mail
    is still in the mailbox (archived): the history's labelsRemoved move it to ARCHIVE, which
    revives it, downloading nothing."""
    box = sim.mailbox(account.email)
    with sim.state.lock:
        label = box.create_label("Doomed")
        inbox = sorted(m.id for m in box.messages.values() if mapping.placements(m.label_ids) == {"INBOX"})
        only_there, also_inbox = inbox[0], inbox[1]
        box.modify([only_there], [label.id], ["INBOX"])  # archived, kept under the label only
        box.modify([also_inbox], [label.id], [])
    provider = account.provider()
    engine = SyncEngine(db, lambda _id: provider)
    account_id = new_account(db, account.email)
    assert engine.sync(account_id).status == "connected"
    assert {f for f, pid, _ in our_placements(db, account_id) if pid == only_there} == {label.id}

    with sim.state.lock:
        box.delete_label(label.id)
    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.fetched == 0
    ours = our_placements(db, account_id)
    assert ours == server_placements(sim, account.email)
    assert {f for f, pid, _ in ours if pid == only_there} == {"ARCHIVE"}
    assert {f for f, pid, _ in ours if pid == also_inbox} == {"INBOX"}
    rows = live_rows(db, account_id)
    assert len(rows) == len(set(rows)) == len(box.messages)
    engine.close()


def test_history_404_is_cursor_expired_and_stale_page_token_too(
    account: GmailAccount, sim: GoogleSim
) -> None:
    p = account.provider()
    try:
        first = p.changes("INBOX", None, limit=10)
        assert first.more and "full" in first.next_cursor
        sim.deliver(account.email, make_message(1))
        sim.expire_history(account.email)  # the history since our id is gone
        with pytest.raises(CursorExpired):
            p.changes("INBOX", {"history_id": first.next_cursor["history_id"]}, limit=10)
        with pytest.raises(CursorExpired):
            p.changes("INBOX", {"history_id": "1", "full": {"page": "bm90LWEtdG9rZW4"}}, limit=10)
    finally:
        p.close()


def test_full_pass_takes_history_id_before_listing_and_resumes_at_checkpoints(
    account: GmailAccount, sim: GoogleSim
) -> None:
    p = account.provider()
    try:
        first = p.changes("INBOX", None, limit=15)
        assert first.checkpoint is not None
        # A message arrives during the full pass: the pass's history id predates it, so the
        # incremental sync that follows reports it.
        late = sim.deliver(account.email, make_message(7, subject="Arrived mid-sync"))
        resumed = p.changes("INBOX", first.checkpoint(3), limit=1000)  # killed after 3 stored
        listed = {r.remote_key for r in first.upserts[3:]} | {r.remote_key for r in resumed.upserts}
        seen = {r.remote_key for r in first.upserts} | {r.remote_key for r in resumed.upserts}
        assert {r.remote_key for r in first.upserts[3:]} <= listed and len(seen) >= 40
        assert not resumed.more and "full" not in resumed.next_cursor
        after = p.changes("INBOX", resumed.next_cursor, limit=1000)
        assert late in {r.remote_key for r in after.upserts}
    finally:
        p.close()


def test_headers_only_under_the_metadata_scope(sim: GoogleSim, db: Database) -> None:
    account = GmailAccount.create(sim, messages=12, seed=5, scopes=METADATA_SCOPES)
    provider = account.provider()
    refs = [r for r in provider.changes("INBOX", None, limit=100).upserts]
    with pytest.raises(AuthError, match="metadata"):
        next(provider.fetch(refs, FetchParts.FULL))
    heads = [m for chunk in provider.fetch(refs, FetchParts.HEADERS) for m in chunk]
    assert heads and all(
        m.headers_only and m.raw.endswith(b"\r\n\r\n") and b"Subject:" in m.raw for m in heads
    )

    engine = SyncEngine(db, lambda _id: provider)
    account_id = new_account(db, account.email, sync_mode="headers")
    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.messages == 12
    with db.engine.connect() as conn:
        stored = conn.execute(select(messages.c.headers_only, messages.c.subject)).all()
    assert stored and all(r.headers_only and r.subject for r in stored)
    engine.close()


def test_401_refreshes_once_then_auth_error(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        p.verify()
        before = account.tokens.refreshes
        sim.expire_access_tokens(account.email)  # our token source still believes in its token
        refs = p.changes("INBOX", None, limit=60).upserts  # plain calls and batches
        assert account.tokens.refreshes == before + 1
        sim.expire_access_tokens(account.email)
        assert len([m for c in p.fetch(refs[:5], FetchParts.HEADERS) for m in c]) == 5
        assert account.tokens.refreshes == before + 2

        sim.change_password(account.email)  # Google revokes the refresh tokens
        sim.expire_access_tokens(account.email)
        with pytest.raises(AuthError):
            p.verify()
    finally:
        p.close()


def test_rate_limits_are_retried_honouring_retry_after(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        sim.fail_next(1, 429, retry_after=1)
        sim.fail_next(1, 403, "userRateLimitExceeded")
        started = time.monotonic()
        p.verify()
        assert time.monotonic() - started >= 1.0, "Retry-After: 1 was honoured"

        refs = p.changes("INBOX", None, limit=100).upserts
        # some parts of a batch fail: only those are sent again
        sim.fail_next(3, 403, "rateLimitExceeded", methods=["gmail.users.messages.get"])
        got = [m for c in p.fetch(refs, FetchParts.HEADERS) for m in c]
        assert len(got) == len(refs)

        sim.fail_next(1, 429, retry_after=120)  # longer than the client waits: the engine's turn
        with pytest.raises(RateLimited) as info:
            p.verify()
        assert info.value.retry_after == 120
    finally:
        p.close()


def test_server_errors_and_network_become_transient(account: GmailAccount, sim: GoogleSim) -> None:
    client = GmailClient(sim.base_url, account.tokens, max_attempts=2, budget=QuotaBudget(1e6, 1e6))
    p = GmailProvider(GmailConfig(email=account.email, api_base=sim.base_url), account.tokens, client=client)
    try:
        sim.fail_next(1, 503)
        p.verify()  # one 503, then success: retried inside the client
        sim.fail_next(2, 500)
        with pytest.raises(TransientError):
            p.verify()
        sim.fail_next(1, 503, methods=["batch"])  # the whole batch envelope fails once
        refs = p.changes("INBOX", None, limit=100).upserts
        assert len({r.remote_key for r in refs}) == 40
    finally:
        p.close()


def test_fetch_batches_50_calls_and_spends_documented_quota(account: GmailAccount) -> None:
    budget = QuotaBudget(units_per_second=1e6, burst=1e6)
    p = account.provider(budget=budget)
    try:
        cs = p.changes("INBOX", None, limit=1000)
        ids = list(dict.fromkeys(r.remote_key for r in cs.upserts))
        assert len(ids) == 40
        # profile 1 + one list page 5 + a minimal get per message 5 (one batch of 40) + labels.list
        # 1 (the pass's complete listing names every folder; folders() was not called here)
        assert budget.spent == 1 + 5 + 40 * 5 + 1
        assert p.client.calls == 1 + 1 + 1 + 1
        calls, spent = p.client.calls, budget.spent
        refs = [r for r in cs.upserts if r.folder != "SPAM"]
        raws = [m for chunk in p.fetch(refs, FetchParts.FULL) for m in chunk]
        fetched = len({r.remote_key for r in refs})
        assert len(raws) == len(refs) and all(m.raw and m.provider_id for m in raws)
        assert budget.spent - spent == fetched * 5
        assert p.client.calls - calls == -(-fetched // 50), "at most 50 calls per batch"
    finally:
        p.close()


def test_quota_budget_paces_spending() -> None:
    budget = QuotaBudget(units_per_second=200, burst=10)
    started = time.monotonic()
    for _ in range(6):
        budget.spend(10)  # 60 units: the first 10 from the burst, 50 more at 200/s = 0.25 s
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0 and budget.spent == 60


def test_send_threads_by_hint_and_reports_rejections(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        box = sim.mailbox(account.email)
        with sim.state.lock:
            original = next(m for m in box.messages.values() if "INBOX" in m.label_ids)
            subject, thread = original.parsed.subject, original.thread_id
        reply = make_message(
            200, subject=f"Re: {subject}", to="someone@customer.example", msgid="r200@inboxlink.test"
        )
        sent = p.send(
            OutgoingMessage(
                reply, account.email, ("someone@customer.example",), "r200@inboxlink.test", thread
            )
        )
        assert sent.thread_id == thread and sent.folder == "SENT" and sent.message_id == "r200@inboxlink.test"
        assert sim.outbox[-1].message_id == sent.provider_id
        with sim.state.lock:
            assert "SENT" in box.messages[str(sent.provider_id)].label_ids

        # a thread Gmail no longer has: sent all the same, unthreaded
        lone = make_message(201, to="someone@customer.example", msgid="r201@inboxlink.test")
        again = p.send(
            OutgoingMessage(lone, account.email, ("someone@customer.example",), "r201@inboxlink.test", "ffff")
        )
        assert again.provider_id and again.thread_id != "ffff"

        nobody = make_message(202, to="", msgid="r202@inboxlink.test")
        with pytest.raises(RecipientsRejected):
            p.send(OutgoingMessage(nobody, account.email, (), "r202@inboxlink.test"))
    finally:
        p.close()


def test_drafts_are_created_then_replaced(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        first = p.save_draft(
            OutgoingMessage(make_message(300, subject="Offer v1"), account.email, ("a@b.example",), "d1@x")
        )
        assert first.folder == "DRAFT"
        fresh = account.provider()  # another process: finds the draft by listing
        second = fresh.save_draft(
            OutgoingMessage(make_message(300, subject="Offer v2"), account.email, ("a@b.example",), "d1@x"),
            replaces=first,
        )
        fresh.close()
        box = sim.mailbox(account.email)
        with sim.state.lock:
            subjects = [box.messages[d.message_id].parsed.subject for d in box.drafts.values()]
        assert subjects == ["Offer v2"] and second.provider_id != first.provider_id
    finally:
        p.close()


def test_modify_maps_flags_and_creates_the_linked_label_once(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        refs = [r for r in p.changes("INBOX", None, limit=100).upserts if r.folder == "INBOX"][:3]
        p.modify(refs, add=["inboxlink/Linked", "seen", "flagged"])
        p.modify(refs[:1], add=["inboxlink/Linked"], remove=["\\Flagged"])
        box = sim.mailbox(account.email)
        with sim.state.lock:
            linked = [x for x in box.labels.values() if x.name == "inboxlink/Linked"]
            assert len(linked) == 1
            labels = [set(box.messages[r.remote_key].label_ids) for r in refs]
        assert all(linked[0].id in s and "UNREAD" not in s for s in labels)
        assert "STARRED" not in labels[0] and all("STARRED" in s for s in labels[1:])
        p.modify(refs[1:2], add=["ARCHIVE"])
        with sim.state.lock:
            assert "INBOX" not in box.messages[refs[1].remote_key].label_ids
        assert linked[0].id in {f.key for f in p.folders()}
    finally:
        p.close()


def test_watch_and_stop(account: GmailAccount, sim: GoogleSim) -> None:
    p = account.provider()
    try:
        info = p.watch("projects/inboxlink/topics/gmail", label_ids=["INBOX"])
        box = sim.mailbox(account.email)
        assert box.watch is not None and box.watch.topic == "projects/inboxlink/topics/gmail"
        assert int(info.history_id) == box.history_id
        assert timedelta(days=6) < info.expiration - datetime.now(UTC) <= timedelta(days=7)
        p.stop()
        assert box.watch is None
    finally:
        p.close()


def test_registry_requires_a_token_source(account: GmailAccount) -> None:
    from inboxlink.errors import ConfigError

    settings = Settings(google_api_base=account.sim.base_url)
    with pytest.raises(ConfigError):
        registry.build_provider("gmail", {"email": account.email}, {}, settings)
    p = registry.build_provider("gmail", {"email": account.email}, {}, settings, token_source=account.tokens)
    try:
        assert p.verify()[0].email == account.email
    finally:
        p.close()


def _by_folder(placed: Placements) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for folder, pid, _flags in placed:
        out.setdefault(folder, set()).add(pid)
    return {k: frozenset(v) for k, v in out.items()}


def test_resync_after_expired_history_sweeps_deleted_mail_and_removed_labels(
    sim: GoogleSim, account: GmailAccount, db: Database
) -> None:
    box = sim.mailbox(account.email)
    with sim.state.lock:  # the generated mailbox depends on the (random) address: make sure of a label
        first = sorted(m.id for m in box.messages.values() if not {"TRASH", "SPAM"} & set(m.label_ids))[0]
        box.modify([first], [box.ensure_user_label("Projects").id], [])
    provider = account.provider()
    engine = SyncEngine(db, lambda _id: provider)
    account_id = new_account(db, account.email)
    assert engine.sync(account_id).status == "connected"
    with sim.state.lock:
        in_labels = [
            m
            for m in box.messages.values()
            if any(x.startswith("Label_") for x in m.label_ids) and not {"TRASH", "SPAM"} & set(m.label_ids)
        ]
        relabelled = in_labels[0]
        dropped = next(x for x in relabelled.label_ids if x.startswith("Label_"))
        emptied = box.create_label("Soon empty")
        plain = sorted(  # not in Trash/Spam: there a message's other labels are hidden (mapping)
            m.id
            for m in box.messages.values()
            if m.id != relabelled.id and m.label_ids and not {"TRASH", "SPAM"} & set(m.label_ids)
        )
        box.modify([plain[0]], [emptied.id], [])
    assert engine.sync(account_id).fetched == 0
    assert (emptied.id, plain[0]) in {(f, pid) for f, pid, _ in our_placements(db, account_id)}

    # A message is deleted for good, a label is taken off a message, another label loses its only
    # message, new mail arrives; then Gmail forgets that history (it keeps about a week).
    with sim.state.lock:
        box.delete([plain[1]])
        box.modify([relabelled.id], [], [dropped])
        box.modify([plain[0]], [], [emptied.id])
    new_id = sim.deliver(account.email, make_message(400, subject="Arrived while history was gone"))
    sim.expire_history(account.email)
    report = engine.sync(account_id)
    assert report.status == "connected", report.reason
    assert report.fetched == 1, "only the new message is downloaded: nothing known is fetched again"
    ours = our_placements(db, account_id)
    assert ours == server_placements(sim, account.email)
    assert plain[1] not in live_rows(db, account_id)
    assert (dropped, relabelled.id) not in {(f, pid) for f, pid, _ in ours}
    assert not [pid for f, pid, _ in ours if f == emptied.id]
    assert new_id in live_rows(db, account_id)
    rows = live_rows(db, account_id)
    assert len(rows) == len(set(rows)) == len(box.messages)
    engine.close()


def test_full_pass_resumed_elsewhere_lists_what_is_present(account: GmailAccount, sim: GoogleSim) -> None:
    """A pass resumed from a checkpoint by another instance (another run, another process) did not
    see the first pages: it asks Gmail for each label's messages, and gets the same answer as a
    pass that saw every page."""
    first = account.provider()
    start = first.changes("INBOX", None, limit=15)
    assert start.more and start.present_by_folder is None
    first.close()
    box = sim.mailbox(account.email)
    with sim.state.lock:
        ids = sorted(box.messages)
        box.delete([ids[0]])
        box.trash([ids[1]])
    truth = _by_folder(server_placements(sim, account.email))
    resumed = account.provider()
    try:
        resumed.folders()
        cs = resumed.changes("INBOX", start.checkpoint(5) if start.checkpoint else None, limit=1000)
        assert not cs.more and cs.present_by_folder is not None
        listed = {k: v for k, v in cs.present_by_folder.items() if v}
        assert listed == truth
        whole = resumed.changes("INBOX", None, limit=1000)
        assert whole.present_by_folder is not None
        assert {k: v for k, v in whole.present_by_folder.items() if v} == truth
        # every folder is named, the empty ones too: their stored placements are swept
        assert set(whole.present_by_folder) >= {f.key for f in resumed.folders()}
    finally:
        resumed.close()


def test_switching_from_headers_only_to_full_downloads_each_body_once(sim: GoogleSim, db: Database) -> None:
    account = GmailAccount.create(sim, messages=30, seed=8)
    box = sim.mailbox(account.email)
    with sim.state.lock:
        # nothing in the inbox, the folder where Gmail's one stream keeps its cursor
        box.modify([m.id for m in box.messages.values() if "INBOX" in m.label_ids], [], ["INBOX"])
    provider = account.provider()
    engine = SyncEngine(db, lambda _id: provider)
    account_id = new_account(db, account.email, sync_mode="headers")
    heads = engine.sync(account_id)
    assert heads.status == "connected" and heads.messages == 30
    with db.engine.connect() as conn:
        assert all(r.headers_only for r in conn.execute(select(messages.c.headers_only)))
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(sync_mode="full"))
        conn.commit()

    full = engine.sync(account_id)
    assert full.status == "connected", full.reason
    assert full.fetched == 30, "each header-only message's body, once, whatever its labels"
    with db.engine.connect() as conn:
        rows = conn.execute(select(messages.c.headers_only, messages.c.text_body)).all()
    assert len(rows) == 30 and not any(r.headers_only for r in rows)
    assert sum(1 for r in rows if r.text_body) >= 25
    assert engine.sync(account_id).fetched == 0
    assert our_placements(db, account_id) == server_placements(sim, account.email)
    engine.close()


def _gmail_calls(sim: GoogleSim, email: str, *methods: str) -> int:
    return sum(1 for c in sim.calls if c.user == email and c.method in methods)


def _capabilities(db: Database, account_id: str) -> dict[str, Any]:
    with db.engine.connect() as conn:
        caps = conn.execute(select(accounts.c.capabilities).where(accounts.c.id == account_id)).scalar()
    return dict(caps or {})


def _grant(db: Database, account_id: str, account: GmailAccount) -> None:
    """What pairing records: the granted scopes, which decide whether labelling is allowed."""
    with db.engine.begin() as conn:
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(capabilities={"scopes": sorted(account.tokens.granted_scopes)})
        )


def test_linked_mail_gets_the_linked_label_once(sim: GoogleSim, tmp_path: Path) -> None:
    rt = Runtime.open(Settings(home=tmp_path / "home", google_api_base=sim.base_url))
    account = GmailAccount.create(sim, messages=5, seed=11)
    rt.records.create("person", RecordInput(name="Jane", emails=["jane@acme.example"]))
    linked = {
        sim.deliver(account.email, make_message(500 + i, sender="jane@acme.example", to=account.email))
        for i in range(3)
    }
    provider = account.provider()
    engine = SyncEngine(rt.db, lambda _id: provider, after_sync=rt.accounts.upkeep.after_sync)
    account_id = new_account(rt.db, account.email)
    _grant(rt.db, account_id, account)
    box = sim.mailbox(account.email)
    try:
        assert engine.sync(account_id).status == "connected"
        with sim.state.lock:
            label = next(x for x in box.labels.values() if x.name == "inboxlink/Linked")
            assert {m.id for m in box.messages.values() if label.id in m.label_ids} == linked
        caps = _capabilities(rt.db, account_id)
        assert caps["linked_label"] == {"enabled": True, "reason": None}
        assert caps["push"]["mode"] == "polling" and "INBOXLINK_GOOGLE_PUBSUB_TOPIC" in caps["push"]["reason"]

        # the next sync records the placements from Gmail's history; from then on nothing is sent
        assert engine.sync(account_id).fetched == 0
        ours = our_placements(rt.db, account_id)
        assert {pid for f, pid, _ in ours if f == label.id} == linked
        assert ours == server_placements(sim, account.email)
        modifies = ("gmail.users.messages.modify", "gmail.users.messages.batchModify")
        before = _gmail_calls(sim, account.email, *modifies)
        assert before >= 1
        engine.sync(account_id)
        assert _gmail_calls(sim, account.email, *modifies) == before
    finally:
        engine.close()
        rt.close()


def test_without_gmail_modify_nothing_is_labelled_and_the_account_says_why(
    sim: GoogleSim, tmp_path: Path
) -> None:
    # a topic Gmail refuses: the account says it is polled, and why
    rt = Runtime.open(Settings(home=tmp_path / "home", google_pubsub_topic="not-a-topic"))
    account = GmailAccount.create(
        sim, messages=3, seed=12, scopes=("openid", "email", AUTH + "gmail.readonly")
    )
    rt.records.create("person", RecordInput(name="Jo", emails=["jo@acme.example"]))
    sim.deliver(account.email, make_message(600, sender="jo@acme.example", to=account.email))
    provider = account.provider()
    engine = SyncEngine(rt.db, lambda _id: provider, after_sync=rt.accounts.upkeep.after_sync)
    account_id = new_account(rt.db, account.email)
    _grant(rt.db, account_id, account)
    try:
        assert engine.sync(account_id).status == "connected"
        caps = _capabilities(rt.db, account_id)
        assert caps["linked_label"]["enabled"] is False and "gmail.modify" in caps["linked_label"]["reason"]
        assert caps["push"]["mode"] == "polling" and "subscription failed" in caps["push"]["reason"]
        box = sim.mailbox(account.email)
        with sim.state.lock:
            assert not [x for x in box.labels.values() if x.name == "inboxlink/Linked"]
        assert not _gmail_calls(
            sim, account.email, "gmail.users.messages.modify", "gmail.users.messages.batchModify"
        )
    finally:
        engine.close()
        rt.close()
