"""Cloud Pub/Sub push delivery of Gmail ``watch`` notifications.

A mailbox change on a watched mailbox publishes ``{"emailAddress": ..., "historyId": <number>}`` to
the watch's topic. The simulator plays the push subscription: a worker thread POSTs

    {"message": {"data": base64(json), "messageId", "message_id", "publishTime", "publish_time",
                 "attributes": {}},
     "subscription": "projects/<project>/subscriptions/inboxlink-sim-push"}

to the endpoint configured for that topic (or for ``"*"``), retrying with exponential backoff up
to ``push_max_attempts`` times until it answers 102/200/201/202/204 (Pub/Sub's acknowledgement
codes). Like real Gmail, ``historyId`` in the data is a JSON number (Google's guide shows a string)
and ``data`` is standard base64. Not simulated: Gmail's 1 notification/second/user cap and
coalescing, Pub/Sub ordering, OIDC-authenticated push, pull subscriptions.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import queue
import threading
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from .state import PushRecord, SimState

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})


class Pusher:
    def __init__(self, state: SimState) -> None:
        self.state = state
        self._queue: queue.Queue[PushRecord | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._counter = 0

    def publish(self, topic: str, email: str, history_id: int) -> None:
        from .state import PushRecord

        with self.state.lock:
            self._counter += 1
            url = self.state.push_endpoints.get(topic) or self.state.push_endpoints.get("*")
            project = topic.split("/")[1] if topic.count("/") >= 3 else "inboxlink-sim"
            notification = {"emailAddress": email, "historyId": history_id}
            now = dt.datetime.fromtimestamp(self.state.now(), dt.UTC).isoformat(timespec="milliseconds")
            now = now.replace("+00:00", "Z")
            message_id = str(2070443601311540 + self._counter)
            data = base64.b64encode(json.dumps(notification).encode()).decode()
            payload = {
                "message": {
                    "data": data,
                    "messageId": message_id,
                    "message_id": message_id,
                    "publishTime": now,
                    "publish_time": now,
                    "attributes": {},
                },
                "subscription": f"projects/{project}/subscriptions/inboxlink-sim-push",
            }
            record = PushRecord(url, payload, notification)
            self.state.push_log.append(record)
            if url is None:
                record.error = f"no push endpoint configured for {topic}"
                record.done = True
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="google-sim-push", daemon=True)
                self._thread.start()
        self._queue.put(record)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while True:
                record = self._queue.get()
                if record is None:
                    return
                self._deliver(client, record)

    def _deliver(self, client: httpx.Client, record: PushRecord) -> None:
        try:
            self._attempts(client, record)
        finally:
            record.done = True

    def _attempts(self, client: httpx.Client, record: PushRecord) -> None:
        assert record.url is not None
        delay = 0.05
        for _ in range(self.state.push_max_attempts):
            record.attempts += 1
            try:
                response = client.post(record.url, json=record.payload)
                record.status = response.status_code
                record.error = None
                if response.status_code in ACK_STATUSES:
                    return
            except httpx.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
