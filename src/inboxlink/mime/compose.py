"""Building outgoing mail (stdlib `email`, policy SMTP: CRLF, RFC 2047 where needed).

The Message-ID is ours and deterministic (`<outbox id>@<sender's domain>`): a retry produces the
same message, and a reply to it finds its way back to the outbox row. A reply carries In-Reply-To
(the parent's Message-ID) and References (the parent's references, then the parent), RFC 5322
§3.6.4. Bcc recipients go in the envelope only, never in the headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from inboxlink.errors import ValidationError
from inboxlink.mime.parse import html_to_text

_MAX_REFERENCES = 20  # keep the header bounded in long threads: the first and the latest


@dataclass
class Draft:
    sender: str
    sender_name: str | None
    to: list[str]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    in_reply_to: str | None = None  # the parent's Message-ID, without <>
    references: list[str] = field(default_factory=list)  # the parent's References (without <>)


def _address(value: str) -> HeaderAddress:
    from email.errors import HeaderParseError

    try:
        local, _, domain = value.strip().rpartition("@")
        return HeaderAddress(addr_spec=f"{local}@{domain}")
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise ValidationError(f"{value!r} is not an email address") from exc


def normalize(value: str) -> str:
    """An address as the envelope and headers will carry it; ValidationError when it is not one."""
    if "<" in value and value.rstrip().endswith(">"):
        raise ValidationError(f"{value!r}: give the bare address (name@example.com), no display name")
    addr = _address(value).addr_spec
    local, _, domain = addr.rpartition("@")
    if not local or "." not in domain or " " in addr:
        raise ValidationError(f"{value!r} is not an email address")
    return addr


def message_id_for(outbox_id: str, sender: str) -> str:
    return f"{outbox_id}@{sender.rpartition('@')[2] or 'inboxlink.invalid'}"


def reply_subject(parent_subject: str | None) -> str:
    subject = (parent_subject or "").strip()
    return subject if subject.lower().startswith(("re:", "aw:", "sv:")) else f"Re: {subject}".strip()


def compose(draft: Draft, message_id: str, date: datetime) -> bytes:
    if not (draft.to or draft.cc or draft.bcc):
        raise ValidationError("a message needs at least one recipient")
    if draft.text is None and draft.html is None:
        raise ValidationError("a message needs a text or an HTML body")
    m = EmailMessage(policy=SMTP)
    m["From"] = HeaderAddress(
        display_name=draft.sender_name or "", addr_spec=_address(draft.sender).addr_spec
    )
    if draft.to:
        m["To"] = [_address(a) for a in draft.to]
    if draft.cc:
        m["Cc"] = [_address(a) for a in draft.cc]
    m["Subject"] = draft.subject
    m["Date"] = format_datetime(date)
    m["Message-ID"] = f"<{message_id}>"
    if draft.in_reply_to:
        chain = [r for r in draft.references if r != draft.in_reply_to] + [draft.in_reply_to]
        if len(chain) > _MAX_REFERENCES:
            chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]
        m["In-Reply-To"] = f"<{draft.in_reply_to}>"
        m["References"] = " ".join(f"<{r}>" for r in chain)
    text = draft.text if draft.text is not None else html_to_text(draft.html or "")
    m.set_content(text)
    if draft.html is not None:
        m.add_alternative(draft.html, subtype="html")
    return m.as_bytes()


def recipients(draft: Draft) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for a in [*draft.to, *draft.cc, *draft.bcc]:
        seen.setdefault(_address(a).addr_spec, None)
    return tuple(seen)
