"""The one door to protected rows: every account, message and timeline entry a user sees is loaded
or filtered here, nowhere else.

Who sees what:

    viewer                          an account's mail
    ------------------------------  -------------------------------------------------------------
    the system (operator token, or  everything
    no token in single-user mode)
    the account's owner             everything, linked or not
    another user                    only mail linked to a record, and only as much as the account's
                                    visibility says: metadata (participants, date) / subject /
                                    everything (body, attachments); never unlinked mail

The same message held in several mailboxes is one timeline entry, shown at the best level any of
its copies grants this viewer.
"""

from __future__ import annotations

import enum
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from inboxlink.errors import NotFound
from inboxlink.store.schema import accounts, links, messages, users

VISIBILITIES = ("metadata", "subject", "everything")


class Level(enum.IntEnum):
    NONE = 0
    METADATA = 1
    SUBJECT = 2
    EVERYTHING = 3

    @classmethod
    def of(cls, visibility: str) -> Level:
        return {"metadata": cls.METADATA, "subject": cls.SUBJECT, "everything": cls.EVERYTHING}.get(
            visibility, cls.METADATA
        )


@dataclass(frozen=True)
class Viewer:
    """Who is asking. `user_id=None` is the system: the operator's token, the CLI, or the API with
    no token configured (embedded single-user mode)."""

    user_id: str | None = None

    @property
    def is_system(self) -> bool:
        return self.user_id is None


SYSTEM = Viewer()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def viewer_for_token(conn: Connection, token: str) -> Viewer | None:
    row = conn.execute(select(users.c.id).where(users.c.token_hash == token_hash(token))).first()
    return Viewer(row.id) if row else None


def access_user(conn: Connection, user_id: str) -> Viewer:
    if conn.execute(select(users.c.id).where(users.c.id == user_id)).first() is None:
        raise NotFound(f"no user {user_id}")
    return Viewer(user_id)


def owned_account_ids(conn: Connection, viewer: Viewer) -> set[str] | None:
    """The accounts this viewer owns; None for the system (all of them)."""
    if viewer.is_system:
        return None
    return {r.id for r in conn.execute(select(accounts.c.id).where(accounts.c.owner_id == viewer.user_id))}


def access_account(conn: Connection, viewer: Viewer, account_id: str) -> None:
    """Raise NotFound unless the viewer may manage this account (its owner, or the system). The
    same error as a missing account: a user learns nothing of others' accounts."""
    row = conn.execute(select(accounts.c.owner_id).where(accounts.c.id == account_id)).first()
    if row is None or not (viewer.is_system or row.owner_id == viewer.user_id):
        raise NotFound(f"no account {account_id}")


def message_levels(conn: Connection, viewer: Viewer, message_ids: Sequence[int]) -> dict[int, Level]:
    """How much of each message (row) the viewer may see."""
    if not message_ids:
        return {}
    rows: list[tuple[int, str | None, str]] = []
    for i in range(0, len(message_ids), 500):
        chunk = message_ids[i : i + 500]
        rows.extend(
            (r.id, r.owner_id, r.visibility)
            for r in conn.execute(
                select(messages.c.id, accounts.c.owner_id, accounts.c.visibility)
                .join(accounts, accounts.c.id == messages.c.account_id)
                .where(messages.c.id.in_(chunk))
            )
        )
    if viewer.is_system:
        return {mid: Level.EVERYTHING for mid, _o, _v in rows}
    others = [mid for mid, owner, _v in rows if owner != viewer.user_id]
    linked: set[int] = set()
    for i in range(0, len(others), 500):
        chunk = others[i : i + 500]
        linked.update(
            r.message_id
            for r in conn.execute(select(links.c.message_id).where(links.c.message_id.in_(chunk)))
        )
    levels: dict[int, Level] = {}
    for mid, owner, visibility in rows:
        if owner == viewer.user_id:
            levels[mid] = Level.EVERYTHING
        elif mid in linked:
            levels[mid] = Level.of(visibility)
        else:
            levels[mid] = Level.NONE
    return levels


def access_message(conn: Connection, viewer: Viewer, message_id: int) -> Level:
    """The level at which the viewer may open this message, across every copy of it (the same
    RFC Message-ID in teammates' mailboxes); NotFound when none."""
    return readable_copy(conn, viewer, message_id)[1]


def readable_copy(conn: Connection, viewer: Viewer, message_id: int) -> tuple[int, Level]:
    """The copy of this message to show the viewer, and at what level: the row itself when no copy
    grants more, else the copy that does. What is shown is always read from the row that grants it:
    two different messages may carry one Message-ID (broken mailers, or a sender's choice), and a
    teammate's shared copy must never open another mailbox's message. NotFound when none."""
    row = conn.execute(select(messages.c.message_id).where(messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"no message {message_id}")
    copies = [message_id]
    if row.message_id:
        copies = [
            r.id for r in conn.execute(select(messages.c.id).where(messages.c.message_id == row.message_id))
        ]
    levels = message_levels(conn, viewer, copies)
    # the best level; on a tie the row asked for, else the oldest row
    shown = max(levels, key=lambda mid: (levels[mid], mid == message_id, -mid))
    if levels[shown] == Level.NONE:
        raise NotFound(f"no message {message_id}")
    return shown, levels[shown]


def entry_keys(conn: Connection, message_ids: Iterable[int]) -> dict[int, str]:
    """message row -> the key of its timeline entry: its RFC Message-ID, or the row alone."""
    ids = sorted(set(message_ids))
    keys: dict[int, str] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for r in conn.execute(select(messages.c.id, messages.c.message_id).where(messages.c.id.in_(chunk))):
            keys[r.id] = r.message_id or f"row:{r.id}"
    return keys


def best_copies(
    conn: Connection, viewer: Viewer, message_ids: Iterable[int], keys: dict[int, str] | None = None
) -> dict[str, tuple[int, Level]]:
    """Group message rows into one entry per RFC Message-ID (rows without one stand alone) and pick,
    for each, the copy the viewer sees best. Entries the viewer may not see are left out. `keys`:
    `entry_keys` of these rows when the caller has them already."""
    ids = sorted(set(message_ids))
    if keys is None:
        keys = entry_keys(conn, ids)
    levels = message_levels(conn, viewer, ids)
    groups: dict[str, list[tuple[Level, int]]] = defaultdict(list)
    for mid in ids:
        if mid in keys:
            groups[keys[mid]].append((levels.get(mid, Level.NONE), -mid))
    best: dict[str, tuple[int, Level]] = {}
    for key, options in groups.items():
        level, neg = max(options)
        if level > Level.NONE:
            best[key] = (-neg, level)
    return best
