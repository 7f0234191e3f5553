"""The sync engine: provider-agnostic, the only writer of mail data.

One run for one account:

    lease the account (one syncer at a time, across processes)
    -> status syncing
    -> provider.verify()             AuthError -> auth_error; UnsupportedServer -> unsupported
    -> provider.folders()            recorded; vanished folders lose their placements
    -> for each stream (inbox first):
         loop: changes(stream, cursor) -> ChangeSet
               1. one transaction: reset / removed / present-sweep, flag updates of known
                  placements, placements of messages we already hold (re-attached, not fetched)
               2. the rest is fetched in a pipeline:
                      provider.fetch + blob append (fetch thread)
                        -> prepare rows (this thread, or a worker process: sync/prepare.py)
                        -> one transaction of rows, placements and the checkpoint cursor (this thread)
                  blobs reach the OS before the rows that point at them commit: a crash
                  re-fetches at most one chunk
               3. the cursor of the whole ChangeSet commits with the last write
         until not more
    -> full mode: bodies of messages still stored header-only, fetched through the same pipeline
    -> status connected ("Connected"); `after_sync` upkeep (push, labels); lease released

Idempotence: messages are upserted by (account, provider_id) and placements by (folder,
remote_key), so re-running any part of a run (after a crash, a retry, an expired cursor) converges
on the server's state with no duplicate.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, overload

from sqlalchemy import Connection, select, update

from inboxlink.crm import linking
from inboxlink.domain import AccountStatus, ChangeSet, Cursor, FetchParts, MessageRef, RawMessage
from inboxlink.errors import AuthError, CursorExpired, InboxlinkError, TransientError, UnsupportedServer
from inboxlink.outbound import events
from inboxlink.providers.base import MailProvider, sized_provider_id
from inboxlink.store import mailstore
from inboxlink.store.db import Database
from inboxlink.store.schema import accounts
from inboxlink.sync.holders import holder_is_dead, new_holder
from inboxlink.sync.policy import backoff_seconds
from inboxlink.sync.prepare import Prepared, PreparePool, prepare_batch
from inboxlink.sync.state import SYNCABLE, now, transition

log = logging.getLogger(__name__)

CONNECTED_REASON = "Connected"
LEASE_SECONDS = 600
CHANGES_LIMIT = 10_000
# Below this many downloads a run parses in-process: starting the worker (~0.2 s) would cost more.
POOL_THRESHOLD = 1_000

ProgressFn = Callable[[str, int, int], None]  # (stream, done, total)


@dataclass
class SyncReport:
    account: str
    status: str
    reason: str | None = None
    messages: int = 0  # messages in the account after the run (a copy in two folders: one)
    placements: int = 0  # their copies in folders, as the server counts them
    fetched: int = 0  # messages downloaded by this run
    fetched_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The stable JSON shape shared by `inboxlink sync --json` and `POST .../sync`."""
        return {
            "account": self.account,
            "status": self.status,
            "reason": self.reason,
            "messages": self.messages,
            "placements": self.placements,
            "fetched": self.fetched,
            "fetched_bytes": self.fetched_bytes,
            "seconds": self.seconds,
        }


class AccountBusy(InboxlinkError):
    code = "busy"
    http_status = 409


class _Superseded(Exception):
    """The account left `syncing` under a running sync: unpaired (disconnected) or paired again
    (pending) by its user. The run stops at its next commit, which is undone, and records nothing
    of its own; a re-paired account is synced again, with its new credentials, by the next run."""


@dataclass
class _Run:
    account_id: str
    provider: MailProvider
    parts: FetchParts
    had_messages: bool
    report: SyncReport
    progress: ProgressFn | None
    folder_ids: dict[str, int] = field(default_factory=dict)


_DONE = object()


AfterSync = Callable[[str, MailProvider], None]


class SyncEngine:
    def __init__(
        self,
        db: Database,
        open_provider: Callable[[str], MailProvider],
        *,
        prepare_workers: int = 0,
        after_sync: AfterSync | None = None,
    ) -> None:
        self.db = db
        self.open_provider = open_provider
        # Upkeep of a mailbox that needs the open provider (push subscriptions, labels: sync/upkeep.py):
        # called after each successful run, still under the lease; it handles its own failures.
        self.after_sync = after_sync
        self.owner = new_holder()
        self._pool = PreparePool(prepare_workers) if prepare_workers > 0 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    # -- leases --------------------------------------------------------------------------------
    def _lease(self, account_id: str) -> bool:
        at = now()
        with self.db.engine.begin() as conn:
            res = conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .where(
                    (accounts.c.lease_until.is_(None))
                    | (accounts.c.lease_until < at)
                    | (accounts.c.lease_owner == self.owner)
                )
                .values(lease_owner=self.owner, lease_until=at + timedelta(seconds=LEASE_SECONDS))
            )
            if res.rowcount:
                return True
            holder = conn.execute(select(accounts.c.lease_owner).where(accounts.c.id == account_id)).scalar()
            if holder and holder_is_dead(holder):
                # A process on this machine that died holding the lease (kill -9, crash): take it over.
                res = conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id, accounts.c.lease_owner == holder)
                    .values(lease_owner=self.owner, lease_until=at + timedelta(seconds=LEASE_SECONDS))
                )
                return bool(res.rowcount)
            return False

    def _release(self, account_id: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id, accounts.c.lease_owner == self.owner)
                .values(lease_owner=None, lease_until=None)
            )

    def _renew(self, conn: Connection, account_id: str) -> None:
        """Extend the lease, in each transaction that commits a run's work; raise `_Superseded`
        (undoing the transaction) when the account is no longer syncing."""
        status = conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(lease_until=now() + timedelta(seconds=LEASE_SECONDS))
            .returning(accounts.c.status)
        ).scalar()
        if status != AccountStatus.SYNCING.value:
            raise _Superseded(f"account {account_id} is now {status}")

    def _finish(self, account_id: str, status: AccountStatus, reason: str, values: dict[str, Any]) -> bool:
        """Record how the run ended, unless its user changed the account meanwhile (False then)."""
        try:
            with self.db.engine.begin() as conn:
                self._renew(conn, account_id)
                transition(conn, account_id, status, reason)
                if values:
                    conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
        except _Superseded as exc:
            log.info("sync stopped: %s (its user changed it meanwhile)", exc)
            return False
        return True

    # -- public ----------------------------------------------------------------------------------
    def sync(
        self,
        account_id: str,
        *,
        headers_only: bool | None = None,
        progress: ProgressFn | None = None,
        attempts: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> SyncReport:
        """Run until the account is in sync, retrying transient failures `attempts` times in all."""
        report = SyncReport(account=account_id, status="")
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self._sync_once(account_id, headers_only=headers_only, progress=progress, report=report)
                break
            except TransientError as exc:
                self._transient_failure(account_id, exc, final=attempt >= attempts)
                if attempt >= attempts:
                    break
                sleep(backoff_seconds(attempt, base=0.5, exc=exc))
        report.seconds = round(time.monotonic() - started, 3)
        with self.db.engine.connect() as conn:
            report.messages = mailstore.count_messages(conn, account_id)
            report.placements = mailstore.count_placements(conn, account_id)
            row = conn.execute(
                select(accounts.c.status, accounts.c.status_reason).where(accounts.c.id == account_id)
            ).one()
        report.status, report.reason = row.status, row.status_reason
        return report

    def _transient_failure(self, account_id: str, exc: TransientError, *, final: bool) -> None:
        reason = exc.message
        with self.db.engine.begin() as conn:
            row = conn.execute(
                select(accounts.c.failures, accounts.c.status).where(accounts.c.id == account_id)
            ).one()
            failures = int(row.failures or 0) + 1
            conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(
                    failures=failures,
                    last_error=reason,
                    next_attempt_at=now() + timedelta(seconds=backoff_seconds(failures, exc=exc)),
                )
            )
            # (not when its user unpaired it or paired it again meanwhile: their state stands)
            if final and row.status == AccountStatus.SYNCING:
                transition(conn, account_id, AccountStatus.CONNECT_ERROR, reason)

    def _sync_once(
        self, account_id: str, *, headers_only: bool | None, progress: ProgressFn | None, report: SyncReport
    ) -> None:
        """One attempt; counts what it downloads into `report`. Status and reason are read back
        from the account row by `sync()`."""
        with self.db.engine.connect() as conn:
            acct = conn.execute(select(accounts).where(accounts.c.id == account_id)).one()
        status = AccountStatus(acct.status)
        if status not in SYNCABLE:
            return
        if not self._lease(account_id):
            raise AccountBusy(f"account {account_id} is being synced by another process")
        provider: MailProvider | None = None
        try:
            with self.db.engine.begin() as conn:
                if status != AccountStatus.SYNCING:
                    transition(conn, account_id, AccountStatus.SYNCING, "sync started")
                had = mailstore.account_has_messages(conn, account_id)
                if headers_only is None:
                    headers_only = acct.sync_mode == "headers"
            provider = self.open_provider(account_id)
            run = _Run(
                account_id,
                provider,
                FetchParts.HEADERS if headers_only else FetchParts.FULL,
                had,
                report,
                progress,
            )
            try:
                self._run(run)
                status, reason = AccountStatus.CONNECTED, CONNECTED_REASON
                values: dict[str, Any] = {
                    "last_sync_at": now(),
                    "failures": 0,
                    "last_error": None,
                    "next_attempt_at": None,
                }
            except AuthError as exc:
                status, reason, values = AccountStatus.AUTH_ERROR, exc.message, {"last_error": exc.message}
            except UnsupportedServer as exc:
                status, reason, values = AccountStatus.UNSUPPORTED, exc.message, {}
            except _Superseded as exc:
                log.info("sync stopped: %s (its user changed it meanwhile)", exc)
                return
            if not self._finish(account_id, status, reason, values) or status is not AccountStatus.CONNECTED:
                return
            if self.after_sync is not None:
                self.after_sync(account_id, provider)
        finally:
            if provider is not None:
                provider.close()
            self._release(account_id)

    # -- one run -------------------------------------------------------------------------------
    def _run(self, run: _Run) -> None:
        provider = run.provider
        _identity, caps = provider.verify()
        found = provider.folders()
        with self.db.engine.begin() as conn:
            stored = conn.execute(
                select(accounts.c.capabilities).where(accounts.c.id == run.account_id)
            ).scalar()
            # Refresh the server's facts; keep what pairing recorded about sending.
            conn.execute(
                update(accounts)
                .where(accounts.c.id == run.account_id)
                .values(capabilities={**(stored or {}), **caps.server_facts()})
            )
            run.folder_ids = mailstore.upsert_folders(conn, run.account_id, found)
        for stream in provider.streams():
            self._sync_stream(run, stream)
        if run.parts is FetchParts.FULL:
            self._complete_bodies(run)

    def _complete_bodies(self, run: _Run) -> None:
        """Download the bodies of messages stored header-only (the account went from headers-only
        to full mode), each once, through one of its current placements. This needs no full pass:
        a stream's cursor may live on a folder holding none of them (Gmail: one stream, its cursor
        on INBOX). Run after the streams, so the placements are current; a message that vanished
        meanwhile is skipped by `fetch()` and stays header-only until a sync reports it gone."""
        with self.db.engine.connect() as conn:
            refs = mailstore.header_only_refs(conn, run.account_id)
        if refs:
            self._fetch_and_store(run, None, None, refs)

    def _sync_stream(self, run: _Run, stream: str) -> None:
        folder_id = run.folder_ids[stream]
        with self.db.engine.connect() as conn:
            cursor = mailstore.folder_cursor(conn, folder_id)
        expired_once = False
        while True:
            try:
                cs = run.provider.changes(stream, cursor, CHANGES_LIMIT)
            except CursorExpired:
                if expired_once:
                    raise
                expired_once, cursor = True, None
                log.info("cursor of %s expired; full resync", stream)
                continue
            self._apply(run, folder_id, cs)
            cursor = cs.next_cursor
            if not cs.more:
                break

    def _apply(self, run: _Run, folder_id: int, cs: ChangeSet) -> None:
        """`folder_id` is the stream's folder, where its cursor lives. Upserts and removals name
        their own folders: a stream may span several (Gmail: one stream, labels as folders)."""
        at = now()
        to_fetch: list[MessageRef] = []
        with self.db.engine.begin() as conn:
            self._renew(conn, run.account_id)
            if ({r.folder for r in cs.upserts} | {f for f, _k in cs.removed}) - run.folder_ids.keys():
                # a folder made since folders() ran (a new Gmail label): record it first
                run.folder_ids = mailstore.upsert_folders(conn, run.account_id, run.provider.folders())
            affected: set[int] = set()
            if cs.reset:
                affected |= mailstore.drop_placements(conn, folder_id)
            for _folder, fid, keys in _by_folder(cs.removed, run.folder_ids):
                affected |= mailstore.remove_placements(conn, fid, keys)
            for folder, present in (cs.presence() or {}).items():
                listed = folder_id if folder == cs.folder else run.folder_ids.get(folder)
                if listed is None:
                    continue  # a folder we never recorded holds nothing of ours
                stored = mailstore.all_placement_keys(conn, listed)
                gone = [k for k in stored if k not in present]
                if gone:
                    affected |= mailstore.remove_placements(conn, listed, gone)
            upserts = [r for r in cs.upserts if r.folder in run.folder_ids]  # else gone meanwhile
            known_pl: dict[tuple[str, str], mailstore.KnownPlacement] = {}
            for folder, fid, keys in _by_folder([(r.folder, r.remote_key) for r in upserts], run.folder_ids):
                found = mailstore.placements_by_key(conn, fid, keys)
                known_pl.update(((folder, k), pl) for k, pl in found.items())
            flag_updates: list[tuple[int, str]] = []
            new_refs: list[MessageRef] = []
            for ref in upserts:
                pl = known_pl.get((ref.folder, ref.remote_key))
                if pl is None:
                    new_refs.append(ref)
                elif pl.headers_only and run.parts is FetchParts.FULL:
                    to_fetch.append(ref)  # bodies wanted now: download; the upsert completes the row
                elif ref.flags is not None:
                    text = mailstore.flags_text(ref.flags)
                    if text != pl.flags:
                        flag_updates.append((pl.id, text))
            mailstore.update_flags(conn, flag_updates)
            derived: set[tuple[str, str]] = set()
            if new_refs and run.had_messages and any(r.provider_id is None for r in new_refs):
                derived = {(r.folder, r.remote_key) for r in new_refs if r.provider_id is None}
                new_refs = run.provider.identify(new_refs)
            attach: list[tuple[int, int, str, str]] = []
            revived: list[int] = []
            with_ids = [r.provider_id for r in new_refs if r.provider_id]
            known_msgs = mailstore.messages_by_provider_id(conn, run.account_id, with_ids) if with_ids else {}
            # An id derived from the Message-ID whose stored message has another size names another
            # message: look for the one stored under its sized id (`_split_reused_ids`).
            resized: dict[tuple[str, str], str] = {}
            for ref in new_refs:
                km = known_msgs.get(ref.provider_id or "")
                if (
                    (ref.folder, ref.remote_key) in derived
                    and km is not None
                    and not _same_size(km, ref.size)
                ):
                    assert ref.provider_id is not None and ref.size is not None
                    resized[(ref.folder, ref.remote_key)] = sized_provider_id(ref.provider_id, ref.size)
            if resized:
                known_msgs.update(
                    mailstore.messages_by_provider_id(conn, run.account_id, list(set(resized.values())))
                )
            for ref in new_refs:
                km = known_msgs.get(resized.get((ref.folder, ref.remote_key), ref.provider_id or ""))
                if km is None or (km.headers_only and run.parts is FetchParts.FULL):
                    to_fetch.append(ref)
                    continue
                attach.append(
                    (km.id, run.folder_ids[ref.folder], ref.remote_key, mailstore.flags_text(ref.flags or ()))
                )
                if km.deleted:
                    revived.append(km.id)
            mailstore.put_placements(conn, attach)
            mailstore.revive(conn, revived)
            if affected:
                mailstore.sweep_orphans(conn, affected, at)
            if not to_fetch:
                mailstore.save_cursor(conn, folder_id, cs.next_cursor, at)
        if to_fetch:
            self._fetch_and_store(run, folder_id, cs, to_fetch)

    # -- the pipeline ------------------------------------------------------------------------------
    def _fetch_and_store(
        self, run: _Run, folder_id: int | None, cs: ChangeSet | None, refs: list[MessageRef]
    ) -> None:
        """Download `refs` and store them; with a ChangeSet, checkpoint its cursor on the way and
        save its `next_cursor` on `folder_id` at the end (without one: no cursor is involved)."""
        position = {(r.folder, r.remote_key): i for i, r in enumerate(cs.upserts if cs else ())}
        # Fetch in the ChangeSet's order: a checkpoint after chunk k then covers a stored prefix.
        refs = sorted(refs, key=lambda r: position.get((r.folder, r.remote_key), -1))
        # A message known by id before the fetch (Gmail) and placed in several folders is
        # downloaded once; its other placements are written with it.
        # (By id and size: two messages may share a derived id, see `_split_reused_ids`.)
        seen: set[tuple[str, int | None]] = set()
        also: dict[tuple[str, int | None], list[MessageRef]] = {}
        unique: list[MessageRef] = []
        for ref in refs:
            key = (ref.provider_id or "", ref.size)
            if ref.provider_id is None or key not in seen:
                unique.append(ref)
                if ref.provider_id is not None:
                    seen.add(key)
            else:
                also.setdefault(key, []).append(ref)
        refs = unique
        total = len(refs)
        headers_only = run.parts is FetchParts.HEADERS
        sqlite = self.db.is_sqlite
        pool = self._pool if total >= POOL_THRESHOLD and self._pool is not None else None
        stop = threading.Event()
        fetched: queue.Queue[Any] = queue.Queue(maxsize=3)

        def produce() -> None:
            """Fetch thread: download chunks and hand each to the prepare worker at once, so that
            downloading, parsing and writing overlap."""
            try:
                for chunk in run.provider.fetch(refs, run.parts):
                    if stop.is_set():
                        return
                    # Blobs first: put_many hands them to the OS before any row points at them,
                    # and the prepare worker reads them from there.
                    blob_refs = self.db.blobs.put_many([m.raw for m in chunk])
                    prepared = (
                        pool.submit(self.db.blobs.root, blob_refs, headers_only, sqlite)
                        if pool is not None
                        else None
                    )
                    fetched.put((chunk, blob_refs, prepared))
            except BaseException as exc:
                fetched.put(exc)
            finally:
                fetched.put(_DONE)

        thread = threading.Thread(target=produce, name="sync-fetch", daemon=True)
        thread.start()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # the batches allocate many small objects and no cycles: GC passes are waste
        done = 0
        last_pos = -1
        try:
            while True:
                item = fetched.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                chunk, blob_refs, prepared = item
                if not chunk:
                    continue
                rows = (
                    prepared.result()
                    if prepared is not None
                    else prepare_batch([m.raw for m in chunk], headers_only, sqlite)
                )
                last_pos = max(last_pos, *(position.get((m.ref.folder, m.ref.remote_key), -1) for m in chunk))
                checkpoint = (
                    cs.checkpoint(last_pos + 1)
                    if cs is not None and cs.checkpoint is not None and last_pos >= 0
                    else None
                )
                self._store_chunk(run, folder_id, chunk, blob_refs, rows, checkpoint, also)
                done += len(chunk)
                if run.progress:
                    run.progress(cs.folder if cs else "bodies", done, total)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    fetched.get(timeout=0.05)
            if gc_was_enabled:
                gc.enable()
        if cs is not None and folder_id is not None:
            with self.db.engine.begin() as conn:
                mailstore.save_cursor(conn, folder_id, cs.next_cursor, now())

    def _store_chunk(
        self,
        run: _Run,
        folder_id: int | None,
        chunk: list[RawMessage],
        blob_refs: list[str],
        rows: list[Prepared],
        checkpoint: Cursor | None,
        also: dict[tuple[str, int | None], list[MessageRef]] | None = None,
    ) -> None:
        at = now()
        with self.db.engine.begin() as conn:
            self._renew(conn, run.account_id)
            pids = [raw.provider_id or row[0] for raw, row in zip(chunk, rows, strict=True)]
            known = mailstore.messages_by_provider_id(conn, run.account_id, pids)
            pids = _split_reused_ids(conn, run.account_id, chunk, pids, known)
            by_pid: dict[str, mailstore.NewMessage] = {}
            placements_for: list[tuple[str, MessageRef, frozenset[str]]] = []
            for raw, blob, row, pid in zip(chunk, blob_refs, rows, pids, strict=True):
                # the same message twice in one chunk: one row, two placements
                by_pid[pid] = mailstore.NewMessage(pid, row, blob, raw.internal_date, raw.size, raw.thread_id)
                placements_for.append((pid, raw.ref, raw.flags))
                for ref in (also or {}).get((raw.ref.provider_id or "", raw.ref.size), ()):
                    placements_for.append((pid, ref, ref.flags if ref.flags is not None else raw.flags))
            new = list(by_pid.values())
            ids = mailstore.write_messages(conn, run.account_id, new, known, at)
            flags_text = _flags_text
            mailstore.put_placements(
                conn,
                [
                    (ids[pid], run.folder_ids[ref.folder], ref.remote_key, flags_text(flags))
                    for pid, ref, flags in placements_for
                ],
            )
            # links commit with their message: a message is on its timelines the moment it is stored
            first_time = {ids[m.provider_id] for m in new if m.provider_id not in known}
            linking.link_messages(conn, _Facts(run.account_id, ids, new), create=first_time)
            events.emit_many(
                conn,
                events.MESSAGE_CREATED,
                (
                    events.message_created(run.account_id, ids[m.provider_id], m.row)
                    for m in new
                    if m.provider_id not in known
                ),
            )
            if checkpoint is not None and folder_id is not None:
                mailstore.save_cursor(conn, folder_id, checkpoint, at)
        run.report.fetched += len(chunk)
        run.report.fetched_bytes += sum(len(r.raw) for r in chunk)


def _same_size(known: mailstore.KnownMessage, size: int | None) -> bool:
    return known.size is None or size is None or known.size == size


def _split_reused_ids(
    conn: Connection,
    account_id: str,
    chunk: Sequence[RawMessage],
    pids: list[str],
    known: dict[str, mailstore.KnownMessage],
) -> list[str]:
    """Ids for a chunk's messages, where an id derived from the Message-ID (the provider has none
    of its own: `raw.provider_id` is None) that already names a message of another size becomes the
    message's sized id: a second message reusing a Message-ID is stored beside the first, never over
    it. Copies of one message (same bytes, same size) keep sharing one row. `known` gains the sized
    ids already stored."""
    sizes = {pid: k.size for pid, k in known.items()}
    out = list(pids)
    for i, raw in enumerate(chunk):
        if raw.provider_id is not None or raw.size is None:
            continue
        first = sizes.setdefault(pids[i], raw.size)
        if first is not None and first != raw.size:
            out[i] = sized_provider_id(pids[i], raw.size)
    extra = [pid for pid, base in zip(out, pids, strict=True) if pid != base]
    if extra:
        known.update(mailstore.messages_by_provider_id(conn, account_id, extra))
    return out


def _by_folder(
    pairs: Iterable[tuple[str, str]], folder_ids: dict[str, int]
) -> list[tuple[str, int, list[str]]]:
    """(folder key, folder id, remote keys) per folder of (folder, remote key) pairs; folders we do
    not know (gone from the server) are left out: nothing of ours is in them."""
    groups: dict[str, list[str]] = {}
    for folder, key in pairs:
        if folder in folder_ids:
            groups.setdefault(folder, []).append(key)
    return [(folder, folder_ids[folder], keys) for folder, keys in groups.items()]


_FLAGS_TEXT: dict[frozenset[str], str] = {}


def _flags_text(flags: frozenset[str]) -> str:
    """`mailstore.flags_text`, remembered: a mailbox uses a handful of flag sets."""
    text = _FLAGS_TEXT.get(flags)
    if text is None:
        if len(_FLAGS_TEXT) > 1024:
            _FLAGS_TEXT.clear()
        text = _FLAGS_TEXT[flags] = mailstore.flags_text(flags)
    return text


class _Facts(Sequence[linking.MessageFacts]):
    """What linking reads of a stored chunk, built on first access: with no records (linking idle)
    `link_messages` only asks whether there are any, and building 20k MessageFacts measured
    ~0.1 CPU-s per 20k-message sync (bench/sync_stages.py)."""

    def __init__(self, account_id: str, ids: dict[str, int], new: list[mailstore.NewMessage]) -> None:
        self._args = (account_id, ids, new)
        self._built: list[linking.MessageFacts] | None = None

    def _list(self) -> list[linking.MessageFacts]:
        if self._built is None:
            account_id, ids, new = self._args
            self._built = [_facts(account_id, ids[m.provider_id], m) for m in new]
        return self._built

    def __len__(self) -> int:
        return len(self._args[2])

    def __iter__(self) -> Iterator[linking.MessageFacts]:
        return iter(self._list())

    @overload
    def __getitem__(self, i: int) -> linking.MessageFacts: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[linking.MessageFacts]: ...
    def __getitem__(self, i: int | slice) -> linking.MessageFacts | Sequence[linking.MessageFacts]:
        return self._list()[i]


def _facts(account_id: str, message_row: int, m: mailstore.NewMessage) -> linking.MessageFacts:
    r = m.row  # layout: sync.prepare.Prepared
    references = r[11]
    return linking.MessageFacts(
        id=message_row,
        account_id=account_id,
        message_id=r[1],
        subject=r[2],
        text=r[7],
        addresses=list(r[16]),
        in_reply_to=r[10],
        references=json.loads(references) if references and references != "[]" else [],
        thread_id=m.thread_id,
        headers_json=r[12],
    )
