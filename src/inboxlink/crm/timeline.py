"""A record's Activity timeline and a message's detail, as one viewer may see them.

The timeline of a person is the mail linked to them; of a company, the mail linked to it or to its
people; of a deal, the mail linked to it. Newest first, one entry per message however many of the
team's mailboxes hold it, each entry saying why it is there (`rule`, `evidence`: the strongest
reason first, all of them in `reasons`). Every row passes through `crm.access`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from inboxlink.crm import records as crm_records
from inboxlink.crm.access import Level, Viewer, best_copies, entry_keys, readable_copy
from inboxlink.domain import Attachment
from inboxlink.errors import Conflict, Forbidden, NotFound, ValidationError
from inboxlink.mime.parse import attachment_content, parse_many
from inboxlink.mime.quotes import fold_quotes
from inboxlink.mime.sanitize import sanitize_html
from inboxlink.store.blobs import BlobStore
from inboxlink.store.schema import links, messages, records

# Which reason leads when a message is linked for several: the most specific first.
RULE_ORDER = {
    "manual": 0,  # a user chose it
    "sent": 1,  # a user sent it from this record
    "token": 2,
    "participant": 3,
    "domain": 4,
    "deal_contact": 5,
    "thread": 6,
}


def participants(r: Any, roles: tuple[str, ...] = ("to", "cc")) -> dict[str, Any]:
    """A message row's sender and recipients (`roles` of its `recipients`) as the API shows them."""
    recipients = r.recipients or {}
    return {
        "from": {"email": r.from_email, "name": r.from_name} if r.from_email else None,
        **{role: [{"email": e, "name": n} for e, n in recipients.get(role, [])] for role in roles},
    }


def iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def timeline_record_ids(conn: Connection, record_type: str, record_id: str) -> list[str]:
    row = conn.execute(select(records.c.type).where(records.c.id == record_id)).first()
    if row is None or row.type != record_type:
        raise NotFound(f"no {record_type} {record_id}")
    ids = [record_id]
    if record_type == "company":
        ids += [r.id for r in conn.execute(select(records.c.id).where(records.c.company_id == record_id))]
    return ids


def timeline(
    conn: Connection, viewer: Viewer, record_type: str, record_id: str, *, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    if not 1 <= limit <= 500:
        raise ValidationError("limit must be between 1 and 500")
    if offset < 0:
        raise ValidationError("offset must be 0 or more")
    record_ids = timeline_record_ids(conn, record_type, record_id)
    names = {
        r.id: (r.type, r.name)
        for r in conn.execute(
            select(records.c.id, records.c.type, records.c.name).where(records.c.id.in_(record_ids))
        )
    }
    reasons: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for lk in conn.execute(
        select(links.c.message_id, links.c.record_id, links.c.rule, links.c.evidence)
        .join(messages, messages.c.id == links.c.message_id)
        .where(links.c.record_id.in_(record_ids), messages.c.deleted_at.is_(None))
    ):
        reasons[lk.message_id].append((lk.rule, lk.evidence, lk.record_id))
    key_of = entry_keys(conn, reasons)
    best = best_copies(conn, viewer, reasons, key_of)
    # every copy's reasons count for the entry: gather them by RFC Message-ID
    entry_reasons: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for mid, rs in reasons.items():
        entry_reasons[key_of.get(mid, f"row:{mid}")].update(rs)
    chosen = {mid: (key, level) for key, (mid, level) in best.items()}
    entries = []
    for _when, mid, summary in summaries(conn, {mid: level for mid, (_key, level) in chosen.items()}):
        why = sorted(entry_reasons[chosen[mid][0]], key=lambda x: (RULE_ORDER.get(x[0], 9), x[2], x[1]))
        entries.append(summary | _why(why, names))
    page = entries[offset : offset + limit]
    return {"entries": page, "total": len(entries), "offset": offset, "limit": limit}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def summaries(
    conn: Connection, levels: dict[int, Level]
) -> list[tuple[datetime | None, int, dict[str, Any]]]:
    """One line per message row, as much as its level shows, newest first: what timeline entries
    and search results have in common. Rows deleted meanwhile are left out."""
    ids = sorted(levels)
    out = []
    for i in range(0, len(ids), 500):
        for r in conn.execute(
            select(
                messages.c.id,
                messages.c.message_id,
                messages.c.subject,
                messages.c.date,
                messages.c.internal_date,
                messages.c.from_email,
                messages.c.from_name,
                messages.c.recipients,
                messages.c.snippet,
                messages.c.attachments,
            ).where(messages.c.id.in_(ids[i : i + 500]), messages.c.deleted_at.is_(None))
        ):
            level = levels[r.id]
            when = r.date or r.internal_date
            out.append(
                (
                    _aware(when) if when else None,
                    r.id,
                    {
                        "id": r.id,
                        "message_id": r.message_id,
                        "date": iso_utc(when),
                        **participants(r),
                        "visibility": level.name.lower(),
                        "subject": r.subject if level >= Level.SUBJECT else None,
                        "snippet": r.snippet if level >= Level.EVERYTHING else None,
                        "has_attachments": bool(r.attachments) if level >= Level.EVERYTHING else None,
                    },
                )
            )
    oldest = datetime.min.replace(tzinfo=UTC)
    out.sort(key=lambda e: (e[0] or oldest, e[1]), reverse=True)
    return out


def _why(why: list[tuple[str, str, str]], names: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "rule": why[0][0],
        "evidence": why[0][1],
        "reasons": [
            {
                "rule": rule,
                "evidence": evidence,
                "record": {
                    "type": names.get(rec, ("record", ""))[0],
                    "id": rec,
                    "name": names.get(rec, ("", ""))[1],
                },
            }
            for rule, evidence, rec in why
        ],
    }


def message_detail(conn: Connection, blobs: BlobStore, viewer: Viewer, message_id: int) -> dict[str, Any]:
    """One message as the viewer may see it: sanitized HTML (made on first display and kept),
    the text with its quoted history folded away, attachments, and the links with their reasons."""
    shown, level = readable_copy(conn, viewer, message_id)
    r = conn.execute(select(messages).where(messages.c.id == shown)).one()
    out: dict[str, Any] = {
        "id": r.id,
        "message_id": r.message_id,
        "thread_id": r.thread_id,
        "date": iso_utc(r.date or r.internal_date),
        **participants(r, ("to", "cc", "reply_to")),
        "visibility": level.name.lower(),
        "subject": r.subject if level >= Level.SUBJECT else None,
        "in_reply_to": r.in_reply_to,
        "links": [
            {"record_id": x.record_id, "rule": x.rule, "evidence": x.evidence}
            for x in conn.execute(
                select(links.c.record_id, links.c.rule, links.c.evidence).where(links.c.message_id == r.id)
            )
        ],
    }
    if level >= Level.EVERYTHING:
        text = r.text_body or ""
        new_text, quoted = fold_quotes(text) if text else ("", None)
        out.update(
            text=new_text,
            quoted_text=quoted,
            snippet=r.snippet,
            attachments=r.attachments or [],
            headers_only=r.headers_only,
            parse_note=r.parse_note,
            html=_sanitized_html(conn, blobs, r) if r.has_html else None,
        )
    return out


def message_raw(conn: Connection, blobs: BlobStore, viewer: Viewer, message_id: int) -> tuple[int, bytes]:
    """The message as it was received (RFC 5322 bytes), for a viewer who may see everything of it:
    (the row shown, its bytes). Forbidden below that level; Conflict when only its headers were
    downloaded (a headers-only account)."""
    r = _whole(conn, viewer, message_id)
    return r.id, blobs.get(r.blob)


def message_attachment(
    conn: Connection, blobs: BlobStore, viewer: Viewer, message_id: int, index: int
) -> tuple[Attachment, bytes]:
    """Attachment `index` (as listed in the message's `attachments`) with its decoded bytes."""
    r = _whole(conn, viewer, message_id)
    found = attachment_content(blobs.get(r.blob), index)
    if found is None:
        raise NotFound(f"message {r.id} has no attachment {index}")
    attachment, data = found
    if data is None:
        raise ValidationError(
            f"attachment {index} of message {r.id} has a broken transfer encoding: "
            f"GET /api/v1/messages/{r.id}/raw has the message as it was received"
        )
    return attachment, data


def _whole(conn: Connection, viewer: Viewer, message_id: int) -> Any:
    shown, level = readable_copy(conn, viewer, message_id)
    if level < Level.EVERYTHING:
        raise Forbidden(f"the mailbox of message {message_id} shares only its {level.name.lower()} with you")
    r = conn.execute(
        select(messages.c.id, messages.c.blob, messages.c.headers_only).where(messages.c.id == shown)
    ).one()
    if r.headers_only or not r.blob:
        raise Conflict(f"only the headers of message {r.id} were downloaded (the account syncs headers only)")
    return r


def _sanitized_html(conn: Connection, blobs: BlobStore, r: Any) -> str | None:
    """Sanitize lazily, once: nh3 over every HTML part at ingest measured ~4.3 s per 20k messages."""
    if r.html_sanitized is not None:
        return str(r.html_sanitized)
    if not r.blob:
        return None
    raw = blobs.get(r.blob)
    parsed = parse_many([raw])[0]
    if parsed.html is None:
        return None
    clean = sanitize_html(parsed.html)
    conn.execute(messages.update().where(messages.c.id == r.id).values(html_sanitized=clean))
    return clean


def record_view(conn: Connection, record_id: str) -> dict[str, Any]:
    return crm_records.load(conn, record_id).to_dict()
