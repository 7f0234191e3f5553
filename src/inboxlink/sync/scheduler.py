"""Keeps every paired account in sync inside `serve` (embedded mode).

    every tick: accounts that may sync (pending, syncing, connected, connect_error), whose
    backoff has passed (`next_attempt_at`) and whose last sync is older than the poll interval
    (or that were poked through `trigger()`), are handed to a small pool; one run each at a time.

Push calls `trigger()` (IMAP IDLE: `sync/push.py`; Gmail's Pub/Sub and Dovecot's delivery hook:
`api/routes_push*.py`): a poked account runs at the next wake, whatever its interval. Pokes
coalesce: those before a run starts make one run, those during a run make exactly one follow-up run
after it (a change seen mid-run may have been missed by it). Accounts that `pushed()` reports (push
tells of every change of theirs) are polled only every `PUSHED_POLL_SECONDS`, as a safety net. In
serve that is the union (`any_of`) of the IMAP watchers in IDLE (`PushWatcher.live`) and the Gmail
accounts whose users.watch is live and of which a Pub/Sub push arrived within `PUSHED_POLL_SECONDS`
(`sync/gmail_push.GmailPushes.live`, which says why both); never Dovecot's delivery hook, which
reports new INBOX mail only. `poll = False` syncs poked accounts only (`inboxlink watch`).
An account in auth_error, unsupported or disconnected is never touched: only pairing again
revives it. A transient failure only pushes `next_attempt_at` back (the engine records it).

Other background loops of `serve` (webhook delivery: `outbound.webhooks.WebhookLoop`) are handed
in as `also`, and start and stop with the scheduler.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import select

from inboxlink.domain import AccountStatus
from inboxlink.store.schema import accounts
from inboxlink.sync.engine import SyncEngine
from inboxlink.sync.state import SYNCABLE, now

log = logging.getLogger(__name__)

# Watched accounts are still polled this often: a watch that died unnoticed costs at most this.
PUSHED_POLL_SECONDS = 30 * 60.0


class Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Scheduler:
    def __init__(
        self,
        engine: SyncEngine,
        *,
        interval: float,
        workers: int = 2,
        tick: float = 1.0,
        also: Sequence[Background] = (),
    ) -> None:
        self.engine = engine
        self.also = list(also)
        self.interval = interval
        self.tick = tick
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")
        self._running: dict[str, Future[object]] = {}
        self._poked: set[str] = set()
        self._followup: set[str] = set()  # poked while their run was going: one more run each
        self.pushed: Callable[[], Collection[str]] | None = None  # e.g. PushWatcher.live
        self.poll = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sync-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()
        for loop in self.also:
            loop.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for loop in self.also:
            loop.stop()

    def trigger(self, account_id: str) -> None:
        """Sync `account_id` soon (thread-safe; coalesced as the module docstring says)."""
        with self._lock:
            self._poked.add(account_id)
        self._wake.set()

    def _due(self) -> tuple[list[str], set[str]]:
        at = now()
        stale = at - timedelta(seconds=self.interval)
        safety_net = at - timedelta(seconds=max(self.interval, PUSHED_POLL_SECONDS))
        pushed = self.pushed() if self.pushed is not None else frozenset()
        with self.engine.db.engine.connect() as conn:
            rows = conn.execute(
                select(accounts.c.id, accounts.c.status, accounts.c.last_sync_at, accounts.c.next_attempt_at)
            ).all()
        due = []
        with self._lock:
            poked, self._poked = self._poked, set()
        for r in rows:
            if AccountStatus(r.status) not in SYNCABLE:
                continue
            if r.next_attempt_at is not None and _aware(r.next_attempt_at) > at and r.id not in poked:
                continue
            limit = safety_net if r.id in pushed else stale
            if r.id in poked or (self.poll and (r.last_sync_at is None or _aware(r.last_sync_at) < limit)):
                due.append(r.id)
        return due, poked

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                due, poked = self._due()
                for account_id in due:
                    with self._lock:
                        running = self._running.get(account_id)
                        if running is not None and not running.done():
                            if account_id in poked:
                                self._followup.add(account_id)
                            continue
                        future = self._pool.submit(self._run, account_id)
                        self._running[account_id] = future
                    # outside the lock: a future already done runs the callback right here
                    future.add_done_callback(functools.partial(self._finished, account_id))
            except Exception:
                log.exception("scheduler tick failed")
            self._wake.wait(self.tick)
            self._wake.clear()

    def _finished(self, account_id: str, _future: Future[object]) -> None:
        # Checked under the lock that `_loop` holds while it tests `done()`: a poke is either seen
        # by a new run or recorded as a follow-up here, never lost between the two.
        with self._lock:
            if account_id not in self._followup:
                return
            self._followup.discard(account_id)
            self._poked.add(account_id)
        self._wake.set()

    def _run(self, account_id: str) -> object:
        try:
            report = self.engine.sync(account_id, attempts=1)
            log.info(
                "account %s: %s (%s), %d fetched", account_id, report.status, report.reason, report.fetched
            )
            return report
        except Exception:
            log.exception("sync of account %s failed", account_id)
            return None


def any_of(*sources: Callable[[], Collection[str]] | None) -> Callable[[], frozenset[str]]:
    """One `Scheduler.pushed` of several (None: none): the accounts that any of them reports."""
    present = [source for source in sources if source is not None]

    def pushed() -> frozenset[str]:
        return frozenset(account for source in present for account in source())

    return pushed


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
