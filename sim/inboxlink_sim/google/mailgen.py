"""Deterministic generator of realistic, varied RFC 822 mailboxes for seeding the simulator.

Same ``(n, seed, user)`` gives the same bytes. A mailbox mixes plain text (7bit, quoted-printable,
ISO-8859-1), ``multipart/alternative`` text+HTML, ``multipart/mixed`` with attachments (PDF, CSV, PNG),
``multipart/related`` HTML with an inline image, HTML-only newsletters with ``List-Unsubscribe``,
calendar invitations (``text/calendar``), forwards carrying a ``message/rfc822`` part, RFC 2047
encoded non-ASCII subjects and names, and threads (replies with ``In-Reply-To``/``References`` and
``Re:`` subjects, about a third of the messages) in which the mailbox owner answers (``SENT``).
Each message comes with the Gmail labels a real mailbox would show (INBOX, categories, UNREAD,
STARRED, IMPORTANT, a few SPAM/TRASH, a few user labels).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

#: the generator's "now": fixed so that output is reproducible
DEFAULT_END = dt.datetime(2025, 6, 2, 9, 30, tzinfo=dt.UTC)
DEFAULT_USER = "alice@example.com"

PEOPLE = [
    ("Bob Martin", "bob.martin@acme-corp.com"),
    ("Carol Nguyen", "carol@nguyen.dev"),
    ("Dmitri Volkov", "d.volkov@volkov-consulting.ru"),
    ("Élodie Durand", "elodie.durand@exemple.fr"),
    ("Jürgen Müller", "juergen.mueller@beispiel.de"),
    ("Priya Raman", "priya.raman@globex.io"),
    ("王小明", "xiaoming.wang@example.cn"),
    ("Sam O'Neil", "sam.oneil@initech.com"),
    ("Fatima Zahra", "fatima@zahra-design.ma"),
    ("Lucas Pereira", "lucas.pereira@exemplo.com.br"),
]
SENDERS_AUTOMATED = [
    ("Acme Billing", "billing@acme-corp.com", "CATEGORY_UPDATES"),
    ("GitHub", "notifications@github.example", "CATEGORY_UPDATES"),
    ("Shopify Deals", "deals@shop.example", "CATEGORY_PROMOTIONS"),
    ("The Weekly Brief", "newsletter@brief.example", "CATEGORY_PROMOTIONS"),
    ("LinkedOut", "messages@linkedout.example", "CATEGORY_SOCIAL"),
    ("Product Forum", "forum@community.example", "CATEGORY_FORUMS"),
]
SUBJECTS = [
    "Quarterly report draft",
    "Lunch on Friday?",
    "Contract renewal – next steps",
    "Meeting notes from Tuesday",
    "Proposal for the Q3 campaign",
    "Résumé and cover letter",
    "Invoice discrepancy",
    "Can we move our call?",
    "Angebot für das Projekt „Nordlicht“",
    "会议安排",
    "Quick question about the API",
    "Onboarding checklist",
    "Price list 2025 🎉",
    "Feedback on the mockups",
]
SENTENCES = [
    "Thanks for getting back to me so quickly.",
    "I've attached the latest version for your review.",
    "Could you take a look before the end of the week?",
    "Let me know if Thursday at 3pm works for you.",
    "We're still waiting on the signed copy from legal.",
    "The numbers look good, but the margin on line 4 seems off.",
    "Happy to jump on a call if that's easier.",
    "Ça me convient parfaitement, merci !",
    "Viele Grüße aus München.",
    "I'll loop in Priya, who owns the integration.",
    "Please find the details below & let me know what you think.",
    "As discussed, the deadline is the 15th.",
]
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e5273ded0000000049454e44ae426082"
)


@dataclass
class GeneratedMessage:
    raw: bytes
    label_ids: list[str]
    internal_date_ms: int
    #: user label names (created on demand when seeding)
    user_labels: list[str] = field(default_factory=list)


@dataclass
class _Sent:
    message_id: str
    subject: str
    references: list[str]
    correspondent: tuple[str, str]
    date: dt.datetime


def _to_bytes(msg: EmailMessage, rng: random.Random | None = None) -> bytes:
    """CRLF bytes; boundaries drawn from ``rng`` so that output is reproducible."""
    rng = rng or random.Random()
    for part in msg.walk():
        if part.is_multipart():
            part.set_boundary(f"sim-{rng.getrandbits(64):016x}")
    return msg.as_bytes(policy=policy.SMTP)


def _part(msg: EmailMessage, index: int) -> EmailMessage:
    parts = msg.get_payload()
    assert isinstance(parts, list)
    part = parts[index]
    assert isinstance(part, EmailMessage)
    return part


def _msgid(rng: random.Random, domain: str) -> str:
    return f"<{rng.getrandbits(64):016x}.{rng.getrandbits(32):08x}@{domain}>"


def _body(rng: random.Random, greeting: str, signer: str) -> str:
    lines = [f"Hi {greeting},", ""]
    lines.append(" ".join(rng.sample(SENTENCES, rng.randint(2, 5))))
    if rng.random() < 0.4:
        lines += ["", " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))]
    lines += ["", "Best,", signer, ""]
    return "\n".join(lines)


def _html(text: str) -> str:
    paras = "".join(
        f"<p>{p.replace('&', '&amp;').replace('<', '&lt;').replace(chr(10), '<br>')}</p>"
        for p in text.split("\n\n")
    )
    return f'<html><body><div dir="ltr">{paras}</div></body></html>'


def _pdf(rng: random.Random) -> bytes:
    filler = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(5, 40)))
    return (
        b"%PDF-1.4\n% inboxlink-sim\n1 0 obj << /Type /Catalog >> endobj\n" + filler.encode() + b"\n%%EOF\n"
    )


def _csv(rng: random.Random) -> bytes:
    rows = ["date,item,amount"] + [
        f"2025-0{rng.randint(1, 5)}-{rng.randint(10, 28)},item-{i},"
        f"{rng.randint(5, 5000)}.{rng.randint(0, 99):02d}"
        for i in range(rng.randint(3, 60))
    ]
    return ("\r\n".join(rows) + "\r\n").encode()


def _ics(rng: random.Random, organizer: str, attendee: str, start: dt.datetime) -> str:
    stamp = start.strftime("%Y%m%dT%H%M%SZ")
    end = (start + dt.timedelta(minutes=30)).strftime("%Y%m%dT%H%M%SZ")
    return "\r\n".join(
        [
            "BEGIN:VCALENDAR",
            "PRODID:-//inboxlink-sim//EN",
            "VERSION:2.0",
            "METHOD:REQUEST",
            "BEGIN:VEVENT",
            f"UID:{rng.getrandbits(48):012x}@inboxlink-sim",
            f"DTSTAMP:{stamp}",
            f"DTSTART:{stamp}",
            f"DTEND:{end}",
            "SUMMARY:Sync call",
            f"ORGANIZER:mailto:{organizer}",
            f"ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{attendee}",
            "END:VEVENT",
            "END:VCALENDAR",
            "",
        ]
    )


def _new_message(
    sender: tuple[str, str], to: list[tuple[str, str]], subject: str, date: dt.datetime, mid: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr(sender)
    msg["To"] = ", ".join(formataddr(a) for a in to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = mid
    return msg


def generate_mailbox(
    n: int,
    seed: int = 0,
    *,
    user: str = DEFAULT_USER,
    user_name: str | None = None,
    end: dt.datetime = DEFAULT_END,
    days: int = 120,
) -> list[GeneratedMessage]:
    """``n`` messages for ``user``'s mailbox, oldest first."""
    rng = random.Random(f"{seed}:{user}")
    me = (user_name or user.split("@")[0].replace(".", " ").title(), user)
    start = end - dt.timedelta(days=days)
    times = sorted(start + dt.timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n))
    out: list[GeneratedMessage] = []
    open_threads: list[_Sent] = []
    for when in times:
        when = when.replace(microsecond=0)
        kind = rng.random()
        if open_threads and kind < 0.33:
            out.append(_reply(rng, me, open_threads, when))
            continue
        if kind < 0.45:
            out.append(_automated(rng, me, when))
            continue
        out.append(_personal(rng, me, open_threads, when))
    return out


def _labels_incoming(rng: random.Random, category: str = "CATEGORY_PERSONAL") -> tuple[list[str], list[str]]:
    r = rng.random()
    if r < 0.03:
        return ["SPAM"], []
    if r < 0.06:
        return ["TRASH", category], []
    labels = ["INBOX", category]
    if rng.random() < 0.4:
        labels.append("UNREAD")
    if rng.random() < 0.06:
        labels.append("STARRED")
    if rng.random() < 0.2:
        labels.append("IMPORTANT")
    user_labels: list[str] = []
    if rng.random() < 0.12:
        user_labels.append(rng.choice(["Clients", "Invoices", "Follow up/Urgent", "Receipts 2025"]))
    return labels, user_labels


def _personal(
    rng: random.Random, me: tuple[str, str], open_threads: list[_Sent], when: dt.datetime
) -> GeneratedMessage:
    other = rng.choice(PEOPLE)
    outgoing = rng.random() < 0.2
    sender, rcpt = (me, other) if outgoing else (other, me)
    to = [rcpt]
    if rng.random() < 0.25:
        to.append(rng.choice([p for p in PEOPLE if p != other]))
    subject = rng.choice(SUBJECTS)
    mid = _msgid(rng, sender[1].split("@")[1])
    msg = _new_message(sender, to, subject, when, mid)
    if rng.random() < 0.2:
        msg["Cc"] = formataddr(rng.choice(PEOPLE))
    text = _body(rng, rcpt[0].split()[0], sender[0].split()[0])
    shape = rng.random()
    if shape < 0.25:
        msg.set_content(text)
    elif shape < 0.35:
        # a legacy charset where the text fits it (a CJK name in the greeting does not)
        latin1 = all(ord(c) < 256 for c in text)
        msg.set_content(text, charset="iso-8859-1" if latin1 else "utf-8", cte="quoted-printable")
    elif shape < 0.6:
        msg.set_content(text, cte="quoted-printable")
        msg.add_alternative(_html(text), subtype="html")
    elif shape < 0.8:
        msg.set_content(text)
        msg.add_alternative(_html(text), subtype="html")
        kind = rng.choice(["pdf", "csv", "png"])
        if kind == "pdf":
            msg.add_attachment(_pdf(rng), maintype="application", subtype="pdf", filename="report-q2.pdf")
        elif kind == "csv":
            msg.add_attachment(_csv(rng), maintype="text", subtype="csv", filename="export.csv")
        else:
            msg.add_attachment(PNG_1PX, maintype="image", subtype="png", filename="Grafik Übersicht.png")
        if rng.random() < 0.3:
            msg.add_attachment(_pdf(rng), maintype="application", subtype="pdf", filename="terms.pdf")
    elif shape < 0.88:
        msg.set_content(text)
        msg.add_alternative(_html(text) + '<img src="cid:logo@sim">', subtype="html")
        html_part = _part(msg, 1)
        html_part.add_related(PNG_1PX, maintype="image", subtype="png", cid="<logo@sim>", filename="logo.png")
    elif shape < 0.94:
        msg.set_content(text)
        msg.add_alternative(_ics(rng, sender[1], rcpt[1], when + dt.timedelta(days=3)), subtype="calendar")
        _part(msg, 1).set_param("method", "REQUEST")
        msg.replace_header("Subject", "Invitation: Sync call")
    else:
        inner = _new_message(
            rng.choice(PEOPLE), [sender], subject, when - dt.timedelta(days=2), _msgid(rng, "x.example")
        )
        inner.set_content(_body(rng, sender[0].split()[0], "me"))
        msg.replace_header("Subject", "Fwd: " + subject)
        msg.set_content(text)
        msg.add_attachment(inner)
    user_labels: list[str]
    if outgoing:
        labels, user_labels = ["SENT"], []
    else:
        labels, user_labels = _labels_incoming(rng)
    open_threads.append(_Sent(mid, str(msg["Subject"]), [], other, when))
    del open_threads[:-8]
    return GeneratedMessage(_to_bytes(msg, rng), labels, int(when.timestamp() * 1000), user_labels)


def _reply(
    rng: random.Random, me: tuple[str, str], open_threads: list[_Sent], when: dt.datetime
) -> GeneratedMessage:
    parent = rng.choice(open_threads)
    if when <= parent.date:
        when = parent.date + dt.timedelta(minutes=rng.randint(5, 600))
    outgoing = rng.random() < 0.5
    sender, rcpt = (me, parent.correspondent) if outgoing else (parent.correspondent, me)
    base = parent.subject
    subject = base if base.lower().startswith("re:") else "Re: " + base
    mid = _msgid(rng, sender[1].split("@")[1])
    msg = _new_message(sender, [rcpt], subject, when, mid)
    refs = [*parent.references, parent.message_id]
    msg["In-Reply-To"] = parent.message_id
    msg["References"] = " ".join(refs[-10:])
    text = _body(rng, rcpt[0].split()[0], sender[0].split()[0])
    quoted = "\n".join("> " + line for line in _body(rng, sender[0], rcpt[0]).splitlines())
    msg.set_content(text + "\n" + quoted + "\n")
    if rng.random() < 0.5:
        msg.add_alternative(_html(text), subtype="html")
    user_labels: list[str]
    if outgoing:
        labels, user_labels = ["SENT"], []
    else:
        labels, user_labels = _labels_incoming(rng)
        labels = [x for x in labels if x not in ("SPAM",)] or ["INBOX", "CATEGORY_PERSONAL"]
    parent.message_id, parent.subject, parent.references, parent.date = mid, subject, refs, when
    return GeneratedMessage(_to_bytes(msg, rng), labels, int(when.timestamp() * 1000), user_labels)


def _automated(rng: random.Random, me: tuple[str, str], when: dt.datetime) -> GeneratedMessage:
    name, addr, category = rng.choice(SENDERS_AUTOMATED)
    subject = {
        "CATEGORY_UPDATES": f"Your receipt #{rng.randint(1000, 99999)}",
        "CATEGORY_PROMOTIONS": rng.choice(["Summer sale: 30% off everything", "This week's top stories"]),
        "CATEGORY_SOCIAL": "You have 3 new connection requests",
        "CATEGORY_FORUMS": "[community] Re: Best practices for webhooks",
    }[category]
    msg = _new_message((name, addr), [me], subject, when, _msgid(rng, addr.split("@")[1]))
    msg["List-Unsubscribe"] = f"<mailto:unsubscribe@{addr.split('@')[1]}>"
    items = "".join(f"<li>{rng.choice(SENTENCES)}</li>" for _ in range(rng.randint(2, 8)))
    markup = (
        "<html><head><style>body{font-family:sans-serif}</style></head><body>"
        f"<h1>{subject}</h1><ul>{items}</ul><p>You receive this because you signed up.</p></body></html>"
    )
    if rng.random() < 0.5:
        msg.set_content(markup, subtype="html")
    else:
        msg.set_content(f"{subject}\n\nView this message in your browser.\n")
        msg.add_alternative(markup, subtype="html")
    labels, user_labels = _labels_incoming(rng, category)
    return GeneratedMessage(_to_bytes(msg, rng), labels, int(when.timestamp() * 1000), user_labels)


def generate(n: int, seed: int = 0) -> Iterator[bytes]:
    """Raw messages only (same interface as ``inboxlink.testing.mailgen.generate``)."""
    for item in generate_mailbox(n, seed):
        yield item.raw


def simple_message(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    date: dt.datetime | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    """A small text/plain message (used for ``deliver()`` without raw bytes)."""
    rng = random.Random()
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = message_id or _msgid(rng, "sim.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    return _to_bytes(msg)
