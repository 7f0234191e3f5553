"""The task queue (Huey): sends from the outbox now or later, a once-a-minute sweep, and an hourly
renewal of push subscriptions (Gmail watches lapse after 7 days; `sync/upkeep.py` renews each one
about daily).

Embedded default: `SqliteHuey` in $INBOXLINK_HOME/tasks.db, consumed by threads inside `serve` (no
extra service). The outbox table stays the source of truth; a task only says "look at row X now".
So a lost task costs at most a minute (the sweep sends whatever is due and recovers crashed
sends), and a duplicated task costs nothing (`OutboxService.send` claims the row first).

Huey is imported only when a queue is used: it adds ~0.3 s to every CLI command otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from inboxlink.config import Settings

if TYPE_CHECKING:
    from inboxlink.outbound.outbox import OutboxService
    from inboxlink.sync.upkeep import Upkeep

log = logging.getLogger(__name__)


class TaskQueue:
    """One Huey instance with inboxlink's tasks registered. `outbox` is resolved lazily, in the
    consuming process (the CLI enqueues without consuming)."""

    def __init__(
        self,
        settings: Settings,
        outbox: Callable[[], OutboxService],
        *,
        upkeep: Callable[[], Upkeep] | None = None,
        index_search: Callable[[], int] | None = None,
    ) -> None:
        from huey import SqliteHuey, crontab

        self.huey = SqliteHuey(
            "inboxlink", filename=str(settings.resolved_home / "tasks.db"), utc=True, immediate=False
        )
        self._consumer: Any = None

        @self.huey.task(name="send_outbox")  # type: ignore[untyped-decorator]
        def send_outbox(outbox_id: str) -> None:
            state = outbox().send(outbox_id)
            due = state.get("send_at")
            if state.get("status") == "queued" and due:
                # ran before its time (Huey's scheduler rounds, clocks step): look again then, not
                # at the next minute's sweep
                when = datetime.fromisoformat(due)
                if when > datetime.now(UTC):
                    self.enqueue_send(outbox_id, when)

        @self.huey.periodic_task(crontab(minute="*"), name="outbox_sweep")  # type: ignore[untyped-decorator]
        def outbox_sweep() -> None:
            service = outbox()
            service.recover()
            service.send_due()

        @self.huey.periodic_task(crontab(minute="23"), name="renew_push")  # type: ignore[untyped-decorator]
        def renew_push() -> None:
            # hourly, so that a serve stopped at the due time catches up within the hour
            if upkeep is not None:
                upkeep().renew_subscriptions()

        @self.huey.periodic_task(crontab(minute="*"), name="index_search")  # type: ignore[untyped-decorator]
        def search_index() -> None:
            # the full-text index trails ingest by at most a minute, off the sync path (crm/search.py)
            if index_search is not None:
                index_search()

        self._send = send_outbox
        self.sweep = outbox_sweep
        self.index_search = search_index
        self.renew_push = renew_push

    def enqueue_send(self, outbox_id: str, when: datetime | None) -> None:
        if when is None:
            self._send(outbox_id)
        else:
            # An aware time: Huey (utc=True) converts it to UTC exactly. A naive one it would read
            # as the machine's local time, with the fraction of a second dropped: early anywhere
            # east of UTC, and by up to a second everywhere.
            eta = when if when.tzinfo else when.replace(tzinfo=UTC)
            self._send.schedule(args=(outbox_id,), eta=eta)

    def pending(self) -> int:
        return int(self.huey.pending_count()) + int(self.huey.scheduled_count())

    # -- consuming inside serve ---------------------------------------------------------------------
    def start_consumer(self, workers: int = 2) -> None:
        from huey.consumer import Consumer

        class _InProcess(Consumer):  # type: ignore[misc]
            def _set_signal_handlers(self) -> None:
                """serve owns the signals; this consumer runs on a thread of it."""

        self._consumer = _InProcess(
            self.huey, workers=workers, worker_type="thread", periodic=True, check_worker_health=False
        )
        self._consumer.start()

    def stop_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None
