"""Records: people (several addresses each), companies (domains), deals/tickets (a short token such
as T-1042, written in subjects as "[T-1042]"). Created and changed through the API and the CLI, or
pushed in bulk by a host CRM (idempotent by its external id).

Every change re-links past mail at once (`crm.linking.relink_records`) in the same transaction:
add a person and their history appears on their timeline; remove an address and the mail that was
linked only through it leaves.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from inboxlink.crm import linking
from inboxlink.crm.settings import RECORD_TYPES
from inboxlink.errors import Conflict, NotFound, ValidationError
from inboxlink.store.db import LIKE_ESCAPE, Database, like_literal
from inboxlink.store.schema import record_keys, records
from inboxlink.sync.state import now

TOKEN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,15}-\d{1,12}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9-]{1,63}\.)+[a-z]{2,63}$")


@dataclass
class RecordInput:
    """What a caller may set on a record. `None` leaves a field unchanged on update."""

    name: str | None = None
    emails: list[str] | None = None  # people
    domains: list[str] | None = None  # companies
    token: str | None = None  # deals
    status: str | None = None  # deals: open | closed
    company_id: str | None = None
    person_id: str | None = None
    external_id: str | None = None
    data: dict[str, Any] | None = None


@dataclass
class Record:
    id: str
    type: str
    name: str
    emails: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    token: str | None = None
    status: str = "open"
    company_id: str | None = None
    person_id: str | None = None
    external_id: str | None = None
    origin: str = "user"
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": self.type, "name": self.name}
        if self.type == "person":
            d.update(emails=self.emails, company_id=self.company_id)
        elif self.type == "company":
            d["domains"] = self.domains
        else:
            d.update(
                token=self.token, status=self.status, person_id=self.person_id, company_id=self.company_id
            )
        d.update(external_id=self.external_id, origin=self.origin, data=self.data)
        return d


def _check_type(kind: str) -> str:
    if kind not in RECORD_TYPES:
        raise ValidationError(f"unknown record type {kind!r}; known: {', '.join(RECORD_TYPES)}")
    return kind


def normalize_email(value: str) -> str:
    v = value.strip().lower()
    if not _EMAIL_RE.match(v) or len(v) > 320:
        raise ValidationError(f"{value!r} is not an email address")
    return v


def normalize_domain(value: str) -> str:
    v = value.strip().lower().lstrip("@").rstrip(".")
    if v.startswith("www."):
        v = v[4:]
    if not _DOMAIN_RE.match(v):
        raise ValidationError(f"{value!r} is not a domain name")
    return v


def normalize_token(value: str) -> str:
    v = value.strip().strip("[]").upper()
    if not TOKEN_RE.match(v):
        raise ValidationError(f"{value!r} is not a record token (letters, a dash, digits: T-1042)")
    return v


def load(conn: Connection, record_id: str) -> Record:
    row = conn.execute(select(records).where(records.c.id == record_id)).one_or_none()
    if row is None:
        raise NotFound(f"no record {record_id}")
    keys = conn.execute(
        select(record_keys.c.kind, record_keys.c.value)
        .where(record_keys.c.record_id == record_id)
        .order_by(record_keys.c.value)
    ).all()
    return Record(
        id=row.id,
        type=row.type,
        name=row.name,
        emails=[k.value for k in keys if k.kind == "email"],
        domains=[k.value for k in keys if k.kind == "domain"],
        token=row.token,
        status=row.status,
        company_id=row.company_id,
        person_id=row.person_id,
        external_id=row.external_id,
        origin=row.origin,
        data=row.data,
    )


def _check_ref(conn: Connection, record_id: str | None, kind: str, field_name: str) -> None:
    if record_id is None:
        return
    found = conn.execute(select(records.c.type).where(records.c.id == record_id)).scalar()
    if found != kind:
        raise ValidationError(f"{field_name}: {record_id} is not a {kind}")


def _write(conn: Connection, kind: str, record_id: str, data: RecordInput, *, creating: bool) -> None:
    values: dict[str, Any] = {}
    if data.name is not None:
        name = data.name.strip()
        if not name:
            raise ValidationError("a record needs a name")
        values["name"] = name[:500]
    elif creating:
        raise ValidationError("a record needs a name")
    if kind == "deal":
        if data.token is not None:
            token = normalize_token(data.token)
            clash = conn.execute(
                select(records.c.id).where(records.c.token == token, records.c.id != record_id)
            ).scalar()
            if clash:
                raise Conflict(f"token {token} already belongs to record {clash}", record_id=clash)
            values["token"] = token
        if data.status is not None:
            if data.status not in ("open", "closed"):
                raise ValidationError("a deal's status is open or closed")
            values["status"] = data.status
        _check_ref(conn, data.person_id, "person", "person_id")
        if data.person_id is not None:
            values["person_id"] = data.person_id
    elif data.token is not None:
        raise ValidationError("only deals carry a token")
    if kind in ("deal", "person"):
        _check_ref(conn, data.company_id, "company", "company_id")
        if data.company_id is not None:
            values["company_id"] = data.company_id
    if data.external_id is not None:
        values["external_id"] = data.external_id[:256] or None
    if data.data is not None:
        values["data"] = data.data
    keys: list[tuple[str, str]] | None = None
    if data.emails is not None:
        if kind != "person":
            raise ValidationError("only people have email addresses")
        keys = [("email", normalize_email(e)) for e in data.emails]
    if data.domains is not None:
        if kind != "company":
            raise ValidationError("only companies have domains")
        keys = [("domain", normalize_domain(d)) for d in data.domains]
    at = now()
    if creating:
        conn.execute(
            insert(records).values(
                id=record_id,
                type=kind,
                created_at=at,
                updated_at=at,
                status=values.pop("status", "open"),
                **values,
            )
        )
    else:
        conn.execute(update(records).where(records.c.id == record_id).values(updated_at=at, **values))
    if keys is not None:
        conn.execute(delete(record_keys).where(record_keys.c.record_id == record_id))
        unique = sorted(set(keys))
        if unique:
            conn.execute(
                insert(record_keys), [{"record_id": record_id, "kind": k, "value": v} for k, v in unique]
            )


# The order an import writes kinds in: each only refers to kinds before it (a person to its
# company; a deal to its company and its person). Unknown kinds go first, to be refused at once.
_IMPORT_ORDER = {"company": 1, "person": 2, "deal": 3}


class RecordService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, kind: str, data: RecordInput, *, origin: str = "user") -> Record:
        _check_type(kind)
        record_id = uuid.uuid4().hex[:16]
        with self.db.engine.begin() as conn:
            _write(conn, kind, record_id, data, creating=True)
            if origin != "user":
                conn.execute(update(records).where(records.c.id == record_id).values(origin=origin))
            linking.relink_records(conn, [record_id])
            return load(conn, record_id)

    def update(self, record_id: str, data: RecordInput) -> Record:
        with self.db.engine.begin() as conn:
            current = load(conn, record_id)
            before = linking.affected_by(conn, [record_id])
            _write(conn, current.type, record_id, data, creating=False)
            linking.relink_records(conn, [record_id], before)
            return load(conn, record_id)

    def delete(self, record_id: str) -> None:
        with self.db.engine.begin() as conn:
            load(conn, record_id)
            affected = linking.affected_by(conn, [record_id])
            conn.execute(update(records).where(records.c.person_id == record_id).values(person_id=None))
            conn.execute(update(records).where(records.c.company_id == record_id).values(company_id=None))
            conn.execute(delete(records).where(records.c.id == record_id))
            linking.forget_record(conn, record_id, affected)

    def get(self, record_id: str) -> Record:
        with self.db.engine.connect() as conn:
            return load(conn, record_id)

    def find(
        self, kind: str | None = None, *, limit: int = 100, offset: int = 0, q: str | None = None
    ) -> list[Record]:
        stmt = select(records.c.id).order_by(records.c.created_at, records.c.id).limit(limit).offset(offset)
        if kind is not None:
            stmt = stmt.where(records.c.type == _check_type(kind))
        if q:
            stmt = stmt.where(records.c.name.ilike(f"%{like_literal(q)}%", escape=LIKE_ESCAPE))
        with self.db.engine.connect() as conn:
            return [load(conn, r.id) for r in conn.execute(stmt)]

    def import_many(self, items: list[tuple[str, RecordInput]]) -> dict[str, Any]:
        """Create or update records by their external id, in one transaction, then re-link once.

        People and deals may name their company/person by the host CRM's id too: `company_id` /
        `person_id` values that match an `external_id` of this import (or of an earlier one) are
        resolved to our ids, wherever they stand in the batch: companies are written first, then
        people, then deals (what each kind may refer to), each kind in the order given. `ids`
        answer in the order of `items`."""
        created = updated = 0
        ids: list[str] = [""] * len(items)
        with self.db.engine.begin() as conn:
            # our ids of the records this import names (its own, and those it refers to), read once;
            # records it creates join as it goes, so a later item can update or refer to them
            named = sorted(
                {d.external_id for _k, d in items if d.external_id}
                | {ref for _k, d in items for ref in (d.company_id, d.person_id) if ref}
            )
            by_external: dict[tuple[str, str], str] = {
                (r.type, r.external_id): r.id
                for i in range(0, len(named), 500)
                for r in conn.execute(
                    select(records.c.id, records.c.type, records.c.external_id).where(
                        records.c.external_id.in_(named[i : i + 500])
                    )
                )
            }
            updating = [
                by_external[(k, d.external_id or "")]
                for k, d in items
                if (k, d.external_id or "") in by_external
            ]
            before = linking.affected_by(conn, updating)  # the mail of what the updates take away
            for index in sorted(range(len(items)), key=lambda i: _IMPORT_ORDER.get(items[i][0], 0)):
                kind, data = items[index]
                _check_type(kind)
                if not data.external_id:
                    raise ValidationError("every imported record needs an external_id")
                for attr, ref_kind in (("company_id", "company"), ("person_id", "person")):
                    ref = getattr(data, attr)
                    found = by_external.get((ref_kind, ref)) if ref is not None else None
                    if found:
                        setattr(data, attr, found)
                existing = by_external.get((kind, data.external_id))
                if existing:
                    _write(conn, kind, existing, data, creating=False)
                    updated += 1
                    ids[index] = existing
                else:
                    rid = uuid.uuid4().hex[:16]
                    _write(conn, kind, rid, data, creating=True)
                    conn.execute(update(records).where(records.c.id == rid).values(origin="import"))
                    by_external[(kind, data.external_id)] = rid
                    created += 1
                    ids[index] = rid
            linking.relink_records(conn, ids, before)
        return {"created": created, "updated": updated, "ids": ids}
