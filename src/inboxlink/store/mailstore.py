"""The sync engine's writes and lookups, in bulk.

All functions take an open `Connection` inside the caller's transaction: the engine decides the
transaction boundaries (data and cursor commit together, DESIGN §4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, select, update

from inboxlink.domain import Cursor, Folder, MessageRef
from inboxlink.store.schema import folders, message_addresses, messages, placements

_IN_CHUNK = 500  # bound parameters per IN (...) query: SQLite's limit is 32,766; keep plans small


def _chunks(items: Sequence[Any], n: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


# -- folders -----------------------------------------------------------------------------------
def upsert_folders(conn: Connection, account_id: str, found: Sequence[Folder]) -> dict[str, int]:
    """Record the server's folders; mark the ones that disappeared, whose placements go with them
    (a message held by no other folder is soft-deleted, as when its last copy is expunged; a folder
    renamed on the server is a new folder whose stream attaches and revives them). Returns key ->
    folder id."""
    existing = {
        r.key: r
        for r in conn.execute(
            select(folders.c.id, folders.c.key, folders.c.name, folders.c.role, folders.c.gone).where(
                folders.c.account_id == account_id
            )
        )
    }
    seen: set[str] = set()
    for f in found:
        seen.add(f.key)
        row = existing.get(f.key)
        if row is None:
            conn.execute(
                folders.insert().values(
                    account_id=account_id, key=f.key, name=f.name, role=f.role.value, gone=False
                )
            )
        elif row.name != f.name or row.role != f.role.value or row.gone:
            conn.execute(
                update(folders)
                .where(folders.c.id == row.id)
                .values(name=f.name, role=f.role.value, gone=False)
            )
    orphans: set[int] = set()
    for key, row in existing.items():
        if key not in seen and not row.gone:
            conn.execute(update(folders).where(folders.c.id == row.id).values(gone=True, cursor=None))
            orphans |= drop_placements(conn, row.id)
    if orphans:
        sweep_orphans(conn, orphans, datetime.now(UTC))
    return {
        r.key: r.id
        for r in conn.execute(select(folders.c.id, folders.c.key).where(folders.c.account_id == account_id))
    }


def folder_cursor(conn: Connection, folder_id: int) -> Cursor | None:
    value: Cursor | None = conn.execute(select(folders.c.cursor).where(folders.c.id == folder_id)).scalar()
    return value


def save_cursor(conn: Connection, folder_id: int, cursor: Cursor | None, at: datetime) -> None:
    conn.execute(
        update(folders)
        .where(folders.c.id == folder_id)
        .values(cursor=dict(cursor) if cursor is not None else None, synced_at=at)
    )


# -- placements --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownPlacement:
    id: int
    message_id: int
    flags: str
    headers_only: bool


def placements_by_key(conn: Connection, folder_id: int, keys: Sequence[str]) -> dict[str, KnownPlacement]:
    out: dict[str, KnownPlacement] = {}
    for chunk in _chunks(keys):
        for r in conn.execute(
            select(
                placements.c.id,
                placements.c.remote_key,
                placements.c.message_id,
                placements.c.flags,
                messages.c.headers_only,
            )
            .join(messages, messages.c.id == placements.c.message_id)
            .where(placements.c.folder_id == folder_id, placements.c.remote_key.in_(chunk))
        ):
            out[r.remote_key] = KnownPlacement(r.id, r.message_id, r.flags, bool(r.headers_only))
    return out


def all_placement_keys(conn: Connection, folder_id: int) -> dict[str, int]:
    return {
        r.remote_key: r.message_id
        for r in conn.execute(
            select(placements.c.remote_key, placements.c.message_id).where(
                placements.c.folder_id == folder_id
            )
        )
    }


def update_flags(conn: Connection, changes: Sequence[tuple[int, str]]) -> None:
    if changes:
        conn.execute(
            update(placements)
            .where(placements.c.id == bindparam("pid"))
            .values(flags=bindparam("new_flags")),
            [{"pid": pid, "new_flags": f} for pid, f in changes],
        )


def remove_placements(conn: Connection, folder_id: int, keys: Sequence[str]) -> set[int]:
    """Delete placements by remote key; return the ids of the messages they pointed at."""
    affected: set[int] = set()
    for chunk in _chunks(keys):
        rows = conn.execute(
            delete(placements)
            .where(placements.c.folder_id == folder_id, placements.c.remote_key.in_(chunk))
            .returning(placements.c.message_id)
        )
        affected.update(r[0] for r in rows)
    return affected


def drop_placements(conn: Connection, folder_id: int) -> set[int]:
    rows = conn.execute(
        delete(placements).where(placements.c.folder_id == folder_id).returning(placements.c.message_id)
    )
    affected = {r[0] for r in rows}
    return affected


def sweep_orphans(conn: Connection, message_ids: Iterable[int], at: datetime) -> int:
    """Soft-delete messages (among `message_ids`) that no folder holds any more."""
    ids = sorted(set(message_ids))
    n = 0
    for chunk in _chunks(ids):
        res = conn.execute(
            update(messages)
            .where(
                messages.c.id.in_(chunk),
                messages.c.deleted_at.is_(None),
                ~exists().where(placements.c.message_id == messages.c.id),
            )
            .values(deleted_at=at)
        )
        n += res.rowcount or 0
    return n


def revive(conn: Connection, message_ids: Iterable[int]) -> None:
    ids = sorted(set(message_ids))
    for chunk in _chunks(ids):
        conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), messages.c.deleted_at.is_not(None))
            .values(deleted_at=None)
        )


# -- messages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownMessage:
    id: int
    headers_only: bool
    deleted: bool
    size: int | None = None  # as the server reported it (IMAP: RFC822.SIZE)


def messages_by_provider_id(conn: Connection, account_id: str, ids: Sequence[str]) -> dict[str, KnownMessage]:
    # Driver SQL, not a Core select: compiling an IN list of 500 bound parameters through
    # SQLAlchemy cost more than the query (~0.15 CPU-s per 20k-message sync, bench/sync_stages.py).
    out: dict[str, KnownMessage] = {}
    unique = sorted(set(ids))
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    for chunk in _chunks(unique):
        sql = (
            "SELECT id, provider_id, headers_only, deleted_at, size FROM messages "
            f"WHERE account_id = {mark} AND provider_id IN ({', '.join([mark] * len(chunk))})"
        )
        for mid, pid, headers_only, deleted_at, size in conn.exec_driver_sql(sql, (account_id, *chunk)):
            out[pid] = KnownMessage(mid, bool(headers_only), deleted_at is not None, size)
    return out


def header_only_refs(conn: Connection, account_id: str) -> list[MessageRef]:
    """One current placement of each live message stored without its body, as a ref to fetch
    it by (so that a full-mode run downloads just those bodies, nothing else, no duplicate)."""
    rows = conn.execute(
        select(
            messages.c.id,
            messages.c.provider_id,
            folders.c.key,
            placements.c.remote_key,
            placements.c.flags,
        )
        .join(placements, placements.c.message_id == messages.c.id)
        .join(folders, folders.c.id == placements.c.folder_id)
        .where(
            messages.c.account_id == account_id,
            messages.c.headers_only.is_(True),
            messages.c.deleted_at.is_(None),
            folders.c.gone.is_(False),
        )
        .order_by(messages.c.id, placements.c.id)
    )
    refs: dict[int, MessageRef] = {}
    for r in rows:
        if r.id not in refs:
            refs[r.id] = MessageRef(
                folder=r.key,
                remote_key=r.remote_key,
                provider_id=r.provider_id,
                flags=frozenset(r.flags.split()),
            )
    return list(refs.values())


def account_has_messages(conn: Connection, account_id: str) -> bool:
    return (
        conn.execute(select(messages.c.id).where(messages.c.account_id == account_id).limit(1)).first()
        is not None
    )


def count_messages(conn: Connection, account_id: str) -> int:
    n: int = conn.execute(
        select(func.count())
        .select_from(messages)
        .where(messages.c.account_id == account_id, messages.c.deleted_at.is_(None))
    ).scalar_one()
    return n


def count_placements(conn: Connection, account_id: str) -> int:
    """Copies in folders: what the server counts (one per message per folder it is in)."""
    n: int = conn.execute(
        select(func.count())
        .select_from(placements.join(folders, folders.c.id == placements.c.folder_id))
        .where(folders.c.account_id == account_id)
    ).scalar_one()
    return n


_MESSAGE_COLUMNS = (
    "account_id", "provider_id", "message_id", "thread_id", "subject", "from_email", "from_name", "date",
    "internal_date", "size", "snippet", "text_body", "has_html", "recipients", "in_reply_to", "references",
    "headers", "attachments", "headers_only", "parse_note", "thread_root", "blob", "created_at", "updated_at",
)  # fmt: skip
_ADDRESS_COLUMNS = ("message_id", "role", "email", "name")


@dataclass(frozen=True)
class NewMessage:
    """One downloaded message, ready to be written (`row` from `sync.prepare.prepare_batch`)."""

    provider_id: str
    row: tuple[Any, ...]
    blob: str
    internal_date: datetime | None
    size: int | None
    thread_id: str | None


class _Bulk:
    """Bulk writes through the driver's own `executemany`, skipping SQLAlchemy's per-row parameter
    processing: on the sync hot path that processing cost more than SQLite's inserts themselves
    (docs/architecture.md). Values arrive already converted as the column types would convert them
    (`sync.prepare`): datetimes in UTC, JSON as text."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.mark = "?" if conn.dialect.name == "sqlite" else "%s"
        self.quote = conn.dialect.identifier_preparer.quote

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql = (
            f"INSERT INTO {self.quote(table)} ({', '.join(self.quote(c) for c in columns)}) "
            f"VALUES ({', '.join([self.mark] * len(columns))})"
        )
        self.conn.exec_driver_sql(sql, rows)


def db_datetime(value: datetime | None, *, sqlite: bool) -> Any:
    """A datetime as the database stores it: UTC always; on SQLite, text of one fixed shape (the one
    SQLAlchemy's SQLite DateTime reads) so that text order is time order."""
    if value is None:
        return None
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else value


def _conn_dt(conn: Connection, value: datetime | None) -> Any:
    return db_datetime(value, sqlite=conn.dialect.name == "sqlite")


def _message_tuple(account_id: str, m: NewMessage, idate: Any, stamp: Any) -> tuple[Any, ...]:
    r = m.row
    # _MESSAGE_COLUMNS order; r is (provider_id, message_id, subject, from_email, from_name, date,
    # snippet, text, has_html, recipients, in_reply_to, references, headers, attachments,
    # headers_only, parse_note, addresses, thread_root)
    return (
        account_id,
        m.provider_id,
        r[1],
        m.thread_id,
        *r[2:6],
        idate,
        m.size,
        *r[6:16],
        r[17],
        m.blob,
        stamp,
        stamp,
    )


def write_messages(
    conn: Connection,
    account_id: str,
    items: Sequence[NewMessage],
    known: dict[str, KnownMessage],
    at: datetime,
) -> dict[str, int]:
    """Insert new messages and overwrite known ones (same provider id); return provider_id -> id.
    `items` must have distinct provider ids."""
    bulk = _Bulk(conn)
    sqlite = conn.dialect.name == "sqlite"
    stamp = db_datetime(at, sqlite=sqlite)
    new = [m for m in items if m.provider_id not in known]
    old = [m for m in items if m.provider_id in known]
    ids: dict[str, int] = {}
    if new:
        below = conn.exec_driver_sql("SELECT max(id) FROM messages").scalar() or 0
        bulk.insert(
            "messages",
            _MESSAGE_COLUMNS,
            [_message_tuple(account_id, m, db_datetime(m.internal_date, sqlite=sqlite), stamp) for m in new],
        )
        ids.update(_new_ids(conn, account_id, [m.provider_id for m in new], below))
    if old:
        columns = _MESSAGE_COLUMNS[2:-2]  # not account/provider id, nor the creation stamp
        sets = ", ".join(f"{bulk.quote(c)} = {bulk.mark}" for c in columns)
        sql = (
            f"UPDATE messages SET {sets}, updated_at = {bulk.mark}, deleted_at = NULL, "
            f"html_sanitized = NULL WHERE id = {bulk.mark}"
        )
        rows = []
        for m in old:
            mid = known[m.provider_id].id
            ids[m.provider_id] = mid
            full = _message_tuple(account_id, m, _conn_dt(conn, m.internal_date), stamp)
            rows.append((*full[2:-2], stamp, mid))
        conn.exec_driver_sql(sql, rows)
        for chunk in _chunks([known[m.provider_id].id for m in old]):
            conn.execute(delete(message_addresses).where(message_addresses.c.message_id.in_(chunk)))
    addr: list[tuple[Any, ...]] = []
    for m in items:
        mid = ids[m.provider_id]
        addr.extend((mid, *a) for a in m.row[16])
    bulk.insert("message_addresses", _ADDRESS_COLUMNS, addr)
    return ids


def _new_ids(conn: Connection, account_id: str, provider_ids: Sequence[str], below: int) -> dict[str, int]:
    """The ids of rows just inserted, read as the id range above `below` (the largest id before the
    insert): new ids are larger than any before them (SQLite: max(rowid) + 1 under our write lock;
    PostgreSQL: a sequence), so the range holds ours and, on PostgreSQL, at most rows other
    transactions committed meanwhile, which the provider-id filter drops. A range scan instead of an
    IN list of 500 provider ids measured ~0.1 CPU-s less per 20k-message sync (bench/sync_stages.py);
    anything not found that way (never seen) is looked up by provider id."""
    wanted = set(provider_ids)
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    ids: dict[str, int] = {}
    for mid, pid in conn.exec_driver_sql(
        f"SELECT id, provider_id FROM messages WHERE id > {mark} AND account_id = {mark}", (below, account_id)
    ):
        if pid in wanted:
            ids[pid] = mid
    if len(ids) < len(wanted):
        ids.update(_ids_of(conn, account_id, [p for p in provider_ids if p not in ids]))
    return ids


def _ids_of(conn: Connection, account_id: str, provider_ids: Sequence[str]) -> Iterator[tuple[str, int]]:
    for chunk in _chunks(provider_ids):
        for r in conn.execute(
            select(messages.c.provider_id, messages.c.id).where(
                messages.c.account_id == account_id, messages.c.provider_id.in_(chunk)
            )
        ):
            yield r.provider_id, r.id


def put_placements(conn: Connection, rows: list[tuple[int, int, str, str]]) -> None:
    """Upsert (message_id, folder_id, remote_key, flags) rows; the same SQL on SQLite and PostgreSQL."""
    if not rows:
        return
    bulk = _Bulk(conn)
    marks = ", ".join([bulk.mark] * 4)
    conn.exec_driver_sql(
        f"INSERT INTO placements (message_id, folder_id, remote_key, flags) VALUES ({marks}) "
        "ON CONFLICT (folder_id, remote_key) DO UPDATE SET message_id = excluded.message_id, "
        "flags = excluded.flags",
        rows,
    )
