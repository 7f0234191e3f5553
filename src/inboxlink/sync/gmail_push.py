"""Which Gmail accounts push keeps in sync, so that `serve`'s scheduler polls them only as a safety net.

A Gmail account counts as pushed (`GmailPushes.live`, part of `Scheduler.pushed`) when both hold:

    its users.watch is live       `capabilities.push` records a watch (mode "pubsub", written by
                                  `sync/upkeep.py`) whose `expires_at` is still ahead
    a push of it came in          `POST /push/google` named its mailbox less than `window` ago
                                  (`PUSHED_POLL_SECONDS`, 30 min), in this process

Why both: a watch only says that Gmail publishes the mailbox's changes to our topic; whether the
topic's push subscription exists and reaches this endpoint is the operator's configuration, which
nothing but a received push proves. A watch alone would turn a missing subscription into mail that
shows up only every half hour. Why a window: Gmail pushes only when the mailbox changes, so a quiet
mailbox cannot be told from a broken path; the proof lapses after `window` and the account is
polled at the normal interval again until the next push. A path that stops delivering thus costs
at most `window` of late mail, the bound the safety-net poll gives watched IMAP accounts. An
expired watch, or one stopped at unpairing (mode "stopped"), ends it at once, whatever the pushes.

Only Gmail's Pub/Sub pushes count: Dovecot's delivery hook (`api/routes_push_dovecot.py`) reports
new mail in INBOX only, so an account it keeps in sync would miss flag changes, expunges and other
folders without the poll.

The receptions are kept in memory (account id -> monotonic time of the last push; no schema): a
restarted serve polls normally until the next push proves the path again. Thread-safe: pushes are
recorded on the API's event loop, `live()` is read on the scheduler's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from inboxlink.store.db import Database
from inboxlink.store.schema import accounts
from inboxlink.sync.scheduler import PUSHED_POLL_SECONDS
from inboxlink.sync.state import now


class GmailPushes:
    def __init__(
        self,
        db: Database,
        *,
        window: float = PUSHED_POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.window = window
        self.clock = clock
        self._last: dict[str, float] = {}  # account id -> `clock()` at its last push
        self._lock = threading.Lock()

    def received(self, account_ids: Iterable[str]) -> None:
        """A Pub/Sub push named the mailbox of these accounts (`POST /push/google`)."""
        at = self.clock()
        with self._lock:
            for account_id in account_ids:
                self._last[account_id] = at

    def live(self) -> frozenset[str]:
        """Accounts pushed now, as the module docstring says (any thread; no query without a
        recent push)."""
        horizon = self.clock() - self.window
        with self._lock:
            for account_id in [a for a, at in self._last.items() if at < horizon]:
                del self._last[account_id]
            recent = list(self._last)
        if not recent:
            return frozenset()
        at = now()
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(accounts.c.id, accounts.c.capabilities).where(accounts.c.id.in_(recent))
            ).all()
        return frozenset(r.id for r in rows if watch_live(r.capabilities, at))


def watch_live(capabilities: Mapping[str, Any] | None, at: datetime) -> bool:
    """Whether the account's `capabilities.push` records a users.watch not yet expired at `at` (as
    `Upkeep._push` writes it; polling, refused, stopped or unreadable: no)."""
    push = (capabilities or {}).get("push") or {}
    if push.get("mode") != "pubsub":
        return False
    try:
        return datetime.fromisoformat(str(push["expires_at"])) > at
    except (KeyError, ValueError, TypeError):
        return False
