"""Operations that drive the simulator from outside the API: seeding, deliveries, faults.

Shared by :class:`~inboxlink_sim.google.server.GoogleSim` (Python) and the ``/_sim`` admin API (JSON).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterable, Iterator
from typing import Any

from . import mailgen
from .state import Fault, SimState, TokenFault, User

DEFAULT_INCOMING_LABELS = ("INBOX", "UNREAD", "CATEGORY_PERSONAL")


def seed_user(
    state: SimState,
    email: str,
    name: str | None = None,
    messages: int = 0,
    seed: int = 0,
    generator: str = "sim",
) -> User:
    user = state.add_user(email, name)
    if messages:
        seed_messages(state, email, messages, seed, generator)
    return user


def seed_messages(state: SimState, email: str, n: int, seed: int = 0, generator: str = "sim") -> list[str]:
    """Add ``n`` generated messages as pre-existing mail.

    ``generator="sim"`` uses :mod:`.mailgen` (small, varied, labelled like a Gmail mailbox);
    ``"inboxlink"`` uses ``inboxlink.testing.mailgen`` (bigger attachments, legacy charsets, one
    malformed message per thousand) with SENT for outgoing mail and INBOX/CATEGORY_PERSONAL, 40 %
    UNREAD, for the rest. Seeding writes no history records: afterwards the retained history
    starts at the current ``historyId`` (an older ``startHistoryId`` 404s), so use :func:`deliver`
    for changes a sync should see incrementally.
    """
    with state.lock:
        box = state.mailbox(email)
        ids = []
        for raw, labels, user_labels, when in _generated(box.user.email, box.user.name, n, seed, generator):
            labels = labels + [box.ensure_user_label(name).id for name in user_labels]
            ids.append(box.add_message(raw, labels, internal_date=when, record=False).id)
        box.history_floor = box.history_id
        return ids


def _generated(
    email: str, name: str, n: int, seed: int, generator: str
) -> Iterator[tuple[bytes, list[str], list[str], int]]:
    if generator == "sim":
        for item in mailgen.generate_mailbox(n, seed, user=email, user_name=name):
            yield item.raw, list(item.label_ids), list(item.user_labels), item.internal_date_ms
        return
    if generator != "inboxlink":
        raise ValueError(f"unknown generator {generator!r} (sim or inboxlink)")
    # optional, and outside this package: imported by name so the simulator never requires it
    inboxlink_mailgen: Any = importlib.import_module("inboxlink.testing.mailgen")
    rng = random.Random(f"labels:{seed}")
    for msg in inboxlink_mailgen.generate_messages(n, seed, owner=email):
        if msg.outgoing:
            labels = ["SENT"]
        else:
            labels = ["INBOX", "CATEGORY_PERSONAL"] + (["UNREAD"] if rng.random() < 0.4 else [])
        yield msg.raw, labels, [], int(msg.date.timestamp() * 1000)


def insert_raw(
    state: SimState,
    email: str,
    raw: bytes,
    label_ids: Iterable[str] = DEFAULT_INCOMING_LABELS,
    *,
    internal_date: int | None = None,
    thread_id: str | None = None,
    record: bool = True,
) -> str:
    with state.lock:
        box = state.mailbox(email)
        return box.add_message(
            raw, label_ids, internal_date=internal_date, thread_hint=thread_id, record=record
        ).id


def deliver(
    state: SimState,
    email: str,
    raw: bytes | None = None,
    *,
    sender: str = "Sim Sender <sender@external.example>",
    subject: str = "Hello from the simulator",
    body: str = "A new message.\n",
    label_ids: Iterable[str] = DEFAULT_INCOMING_LABELS,
    in_reply_to: str | None = None,
) -> str:
    """Simulate incoming mail: the message lands now, with history and a push notification."""
    with state.lock:
        box = state.mailbox(email)
        if raw is None:
            raw = mailgen.simple_message(
                sender=sender, to=box.user.email, subject=subject, body=body, in_reply_to=in_reply_to
            )
        return box.add_message(raw, label_ids).id


def add_fault(
    state: SimState,
    count: int = 1,
    status: int = 429,
    reason: str | None = None,
    *,
    retry_after: int | None = None,
    message: str | None = None,
    methods: Iterable[str] | None = None,
    user: str | None = None,
) -> Fault:
    """The next ``count`` matching Gmail calls fail with ``status`` (Google's error JSON)."""
    if reason is None:
        reason = {429: "rateLimitExceeded", 403: "userRateLimitExceeded", 400: "failedPrecondition"}.get(
            status, "backendError"
        )
    if status == 429 and retry_after is None:
        retry_after = 1
    fault = Fault(status, reason, count, retry_after, message, frozenset(methods) if methods else None, user)
    with state.lock:
        state.faults.append(fault)
    return fault


def add_token_fault(
    state: SimState,
    error: str = "invalid_grant",
    description: str = "Token has been expired or revoked.",
    *,
    count: int = 1,
    status: int = 400,
    grant_type: str | None = "refresh_token",
    user: str | None = None,
) -> TokenFault:
    fault = TokenFault(error, description, count, status, grant_type, user)
    with state.lock:
        state.token_faults.append(fault)
    return fault


def clear_faults(state: SimState) -> None:
    with state.lock:
        state.faults.clear()
        state.token_faults.clear()


def expire_history(state: SimState, email: str) -> None:
    with state.lock:
        state.mailbox(email).expire_history()


def change_password(state: SimState, email: str) -> int:
    """Revoke every refresh token of the user (as Google does for Gmail scopes); returns how many."""
    with state.lock:
        n = 0
        for rt in state.refresh_tokens.values():
            if rt.user.lower() == email.lower() and not rt.revoked:
                rt.revoked = True
                n += 1
        return n


def expire_access_tokens(state: SimState, email: str | None = None) -> int:
    with state.lock:
        n = 0
        for at in state.access_tokens.values():
            if email is None or at.user.lower() == email.lower():
                at.expires_at = min(at.expires_at, state.now() - 1)
                n += 1
        return n


def set_push_endpoint(state: SimState, url: str | None, topic: str = "*") -> None:
    with state.lock:
        if url is None:
            state.push_endpoints.pop(topic, None)
        else:
            state.push_endpoints[topic] = url


def summary(state: SimState) -> dict[str, Any]:
    with state.lock:
        return {
            "baseUrl": state.base_url,
            "users": [
                {
                    "email": box.user.email,
                    "messages": len(box.messages),
                    "threads": len(box.threads),
                    "historyId": str(box.history_id),
                    "historyFloor": str(box.history_floor),
                    "watch": None
                    if box.watch is None
                    else {"topicName": box.watch.topic, "expiration": str(box.watch.expiration_ms)},
                }
                for box in state.mailboxes.values()
            ],
            "clients": [c.client_id for c in state.clients.values()],
            "faults": len(state.faults),
            "tokenFaults": len(state.token_faults),
            "pushEndpoints": dict(state.push_endpoints),
        }
