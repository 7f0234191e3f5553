"""A deterministic generator of realistic mailboxes, for tests and benchmarks.

`generate(n, seed)` yields `n` RFC 5322 messages (CRLF line endings, as on the wire) that look like a
real business mailbox rather than a unit-test fixture. The same `(n, seed, owner)` always gives the same
bytes, and the first k messages of `generate(n, seed)` are those of `generate(k, seed)`.

Mix, by count (each message has one body shape):

    35 %  text/plain                       utf-8 (7bit, 8bit, quoted-printable or base64)
    30 %  multipart/alternative            text + html (Gmail / Outlook / Apple Mail flavours)
    15 %  text/html only                   newsletters and notifications, long inline-CSS HTML
    12 %  multipart/mixed + attachments    pdf, png, jpeg, docx, xlsx, zip: 5 KB .. 2 MB, long tail
     5 %  legacy charsets                  iso-8859-1, windows-1252, iso-2022-jp, koi8-r bodies and
                                           encoded-word headers in those charsets
     1 %  calendar invites                 text/plain + text/html + text/calendar (METHOD:REQUEST)
     1 %  forwarded message/rfc822
     1 %  multipart/related                html with an inline (cid:) image

Across shapes: ~25 % are replies in threads (Re:/Fwd: subject, In-Reply-To, References, quoted
text), ~9 % is list mail (List-Id, List-Unsubscribe, Precedence: bulk), `outgoing_ratio` (15 %) of
the rest is sent by the owner (`GeneratedMessage.outgoing`: no Received/DKIM headers, what a Sent
folder holds), and one message in a thousand (index % 1000 == 499) is deliberately malformed,
cycling through `MALFORMED_KINDS`: charset "unknown-8bit" (the stdlib raises LookupError), base64
with invalid characters, no Message-ID, a multipart whose parts use an undeclared boundary, raw
8-bit bytes in the Subject. Message-IDs are unique except the missing ones.

Sizes: about 27 KB per message on average, median about 4 KB (seed 1: 20,000 messages are 541 MB
as generated with CRLF, 516 MB in a Maildir with LF), set by the attachments' log-normal size
distribution (5 KB to 2 MB per file). Speed: attachment payloads are slices of one pre-encoded
random block and text comes from pre-built paragraphs: 20,000 messages take about 4 s.

`build_maildir(dovecot, email, n, seed)` writes such a mailbox into a private Dovecot's user, spread
over folders with realistic flags.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import random
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inboxlink.testing.dovecot import Dovecot

__all__ = [
    "DEFAULT_FOLDERS",
    "DEFAULT_OWNER",
    "MALFORMED_KINDS",
    "GeneratedMessage",
    "build_maildir",
    "generate",
    "generate_messages",
]

DEFAULT_OWNER = "alex.morgan@brightwave.io"
DEFAULT_FOLDERS: Mapping[str, float] = {"INBOX": 0.7, "Sent": 0.15, "Archive": 0.15}
MALFORMED_KINDS = ("unknown-8bit", "bad-base64", "missing-message-id", "broken-boundary", "raw-8bit-header")
_MALFORMED_EVERY = 1000
_MALFORMED_AT = 499

_START = dt.datetime(2022, 3, 1, 8, 0, tzinfo=dt.UTC)
_MEAN_GAP_SECONDS = 2700.0  # 20,000 messages span about 20 months
_POOL_BYTES = 2 * 1024 * 1024 + 64 * 1024
_MAX_ATTACHMENT = 2 * 1024 * 1024
_B64_LINE = 57  # raw bytes per 76-character base64 line

# --------------------------------------------------------------------------- vocabulary


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_WORDS = _words(
    """
account agenda agreement allocation analysis approval attached available budget calendar call
campaign client colleague committee confirm contract costs customer deadline delivery demo
department details discount discussion document draft estimate feedback figures forecast invoice
issue launch lead license meeting milestone notes offer onboarding order partner payment pipeline
plan pricing priority product project proposal purchase quarter quote receipt renewal report request
review revenue risk roadmap schedule scope shipment signature slides specification sprint status
subscription summary supplier support team template terms ticket timeline training update vendor
version warehouse workshop the a an our your their this that these next last first final new updated
revised internal quick short brief detailed current previous upcoming monthly weekly annual regional
global local key main is are was will would could should can may might need needs want think hope
expect plan send sent share shared check checked review reviewed update updated move moved discuss
discussed confirm agree with for from about before after during until by on in at to of and or but
so because if when please thanks kindly also just still already again soon today tomorrow yesterday
morning afternoon Monday Tuesday Wednesday Thursday Friday week month Q1 Q2 Q3 Q4 EMEA APAC we I you
they everyone
"""
)
_GREETINGS = (
    "Hi {first},",
    "Hello {first},",
    "Dear {first},",
    "Hey {first},",
    "Good morning {first},",
    "{first},",
)
_TITLES = ("Account Executive", "Head of Operations", "CFO", "Engineer", "Project Manager")
_CLOSINGS = ("Best,", "Thanks,", "Best regards,", "Cheers,", "Kind regards,", "Thanks again,", "Regards,")
_SUBJECT_TOPICS = (
    "Q{q} forecast",
    "Contract renewal",
    "Invoice #{num}",
    "Meeting notes {day}",
    "Proposal for {company}",
    "Updated pricing",
    "Onboarding schedule",
    "Follow-up on our call",
    "Shipment {num} delayed",
    "Quote request",
    "Project kickoff",
    "Budget review",
    "Intro: {first} <> {first2}",
    "Demo next week?",
    "Signed agreement",
    "Support ticket {num}",
    "Roadmap {year}",
    "Workshop agenda",
    "Purchase order {num}",
    "Re-scheduling Thursday",
    "Question about the license",
    "Slides for {day}",
    "Quick question",
    "Partnership opportunity",
    "Training materials",
    "Status update",
    "Lunch on {day}?",
    "Offsite logistics",
)
_UTF8_SUBJECT_EXTRAS = (
    "☕ coffee chat",
    "Café meeting – agenda",
    "Zürich office",
    "naïve question",
    "résumé",
    "✅ done",
    "🚀 launch",
    "São Paulo trip",
    "Smørrebrød lunch",
    "München offsite",
)

_FIRST_NAMES = _words(
    """
James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan
Joseph Jessica Thomas Sarah Charles Karen Daniel Lisa Matthew Nancy Anthony Sandra Mark Ashley
Steven Emily Paul Michelle Andrew Amanda Joshua Melissa Kevin Stephanie Brian Rebecca George Laura
Priya Arjun Wei Mei Hiroshi Yuki Carlos Sofía José Zoë Björn François Łukasz Søren Noémie Ingrid
Mateo Amélie Jürgen Olga Dmitri Fatima Omar Aisha Chen Ananya Lars Siobhan Niamh Giulia Luca Ahmed
Leila Tomás Inês
"""
)
_LAST_NAMES = _words(
    """
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez
Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark
Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams
Nelson Baker Hall Müller Schmidt Schneider Fischer Weber Dubois Lefèvre Rossi Bianchi Kowalski Nowak
Andersson Nielsen Patel Sharma Kumar Wang Li Zhang Tanaka Suzuki Sato Ivanova Petrov O'Brien Murphy
Kelly Silva Santos
"""
)
_COMPANIES = _words(
    """
brightwave.io northwind-traders.com kestrel-logistics.de acumen-partners.co.uk bluefin-analytics.com
meridian-health.org lumen-studio.fr orbital-dynamics.com cedar-capital.com harbor-freight-lines.com
tessellate.ai quarry-systems.com silverline-media.com vantage-realty.com pinecrest-foods.com
atlas-engineering.de nordlys.no stellar-insurance.com greenfield-energy.com copperleaf.io
ironbridge-consulting.com sunday-labs.com redwood-legal.com polaris-biotech.com
"""
)
_FREEMAIL = _words(
    """
gmail.com gmail.com gmail.com yahoo.com outlook.com hotmail.com icloud.com gmx.de web.de proton.me
aol.com orange.fr
"""
)
_LIST_SOURCES = (
    ("OpenSaaS Announce", "announce@lists.opensaas.org", "announce.lists.opensaas.org"),
    ("CloudHost Updates", "news@updates.cloudhost.com", "updates.cloudhost.com"),
    ("DevForum Digest", "digest@community.devforum.net", "digest.community.devforum.net"),
    ("Sales Leaders Weekly", "weekly@salesleaders.news", "weekly.salesleaders.news"),
    ("metrics-users", "metrics-users@lists.metricsproject.org", "metrics-users.lists.metricsproject.org"),
    ("Expense Notifications", "no-reply@expenses.brightwave.io", "notifications.expenses.brightwave.io"),
)

# Legacy-charset mail: (charset, transfer encoding, names, domain, sentences)
_LEGACY = (
    (
        "iso-8859-1",
        "quoted-printable",
        ("Jürgen Müller", "Käthe Schröder", "Günther Weiß"),
        "atlas-engineering.de",
        (
            "Vielen Dank für Ihre schnelle Rückmeldung.",
            "Anbei die überarbeitete Größenübersicht für März.",
            "Können wir das Gespräch auf Dienstag verschieben?",
            "Die Lieferung ist für nächste Woche geplant.",
            "Mit freundlichen Grüßen aus München.",
        ),
    ),
    (
        "windows-1252",
        "quoted-printable",
        ("Noémie Lefèvre", "François Dubois", "Amélie Moreau"),
        "lumen-studio.fr",
        (
            "Merci pour votre réponse – c’est parfait.",
            "Le devis révisé coûte 1 250 € hors taxes.",
            "Pourriez-vous confirmer la réunion de jeudi ?",
            "Voici le « brouillon » du contrat.",
            "Je reviens vers vous très bientôt…",
        ),
    ),
    (
        "iso-2022-jp",
        "7bit",
        ("田中 陽菜", "鈴木 一郎", "佐藤 花子"),
        "tanaka-seiki.co.jp",
        (
            "いつもお世話になっております。",
            "見積書を添付いたしましたので、ご確認ください。",
            "来週の打ち合わせの日程について相談させてください。",
            "納期は三月末を予定しております。",
            "よろしくお願いいたします。",
        ),
    ),
    (
        "koi8-r",
        "8bit",
        ("Ольга Иванова", "Дмитрий Петров", "Анна Смирнова"),
        "volga-trade.ru",
        (
            "Спасибо за быстрый ответ.",
            "Направляю обновлённый договор на подпись.",
            "Можем ли мы перенести встречу на среду?",
            "Счёт будет оплачен до конца месяца.",
            "С уважением, отдел продаж.",
        ),
    ),
)
_LEGACY_SUBJECTS = {
    "iso-8859-1": ("Rückfrage zur Bestellung", "Angebot für Größe XL", "Termin nächste Woche"),
    "windows-1252": ("Devis révisé – 2e version", "Réunion de jeudi", "Contrat « cadre »"),
    "iso-2022-jp": ("お見積りの件", "打ち合わせ日程のご相談", "納品予定について"),
    "koi8-r": ("Договор на подпись", "Перенос встречи", "Счёт за март"),
}

# Attachment kinds: (content type, extension, magic bytes at the start of the file, weight)
_ATTACHMENT_KINDS = (
    ("application/pdf", "pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", 40),
    ("image/png", "png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00\x00\x00\x03\x00\x08\x06", 15),
    ("image/jpeg", "jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x01\x00H\x00H\x00\x00", 15),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "docx",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml",
        15,
    ),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "xlsx",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml",
        10,
    ),
    ("application/zip", "zip", b"PK\x03\x04\x0a\x00\x00\x00\x00\x00", 5),
)
_ATTACHMENT_NAMES = (
    "Invoice_{num}",
    "Proposal_{company}",
    "Q{q}_report",
    "contract_signed",
    "IMG_{num}",
    "Screenshot {year}-03-{day2} at 10.4{q}.12",
    "meeting-notes",
    "pricing_{year}",
    "Scan_{num}",
    "Angebot_Größe",
    "résumé_final",
)

_FOLD = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae", "đ": "d"})
_LIST_SUBJECTS = (
    "Your weekly digest",
    "[ANN] Release {num}.{q} is out",
    "New features in {year}",
    "Webinar: scaling your pipeline",
    "Your {day} summary",
    "Expense report #{num} approved",
    "Security advisory {year}-{num}",
    "Last chance: {q}0% off",
    "Community highlights",
    "Re: [metrics-users] question about retention",
)
_SHAPES = (
    ("plain", 35.0),
    ("alternative", 30.0),
    ("html", 15.0),
    ("attachment", 12.0),
    ("legacy", 5.0),
    ("calendar", 1.0),
    ("forward", 1.0),
    ("related", 1.0),
)
_TZ_OFFSETS = (0, 0, 60, 60, 60, 120, -300, -300, -240, -420, -480, 330, 480, 540, 600, 180)

_HTML_OUTLOOK_HEAD = (
    '<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office" '
    'xmlns:w="urn:schemas-microsoft-com:office:word" '
    'xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
    'xmlns="http://www.w3.org/TR/REC-html40">\n<head>\n<meta http-equiv="Content-Type" content="text/html; '
    'charset=utf-8">\n<meta name="Generator" content="Microsoft Word 15 (filtered medium)">\n<style><!--\n'
    '/* Font Definitions */\n@font-face\n\t{font-family:"Cambria Math";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n'
    "@font-face\n\t{font-family:Calibri;\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}\n/* Style Definitions */\n"
    "p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0cm;\n\tfont-size:11.0pt;\n\t"
    'font-family:"Calibri",sans-serif;\n\tmso-fareast-language:EN-US;}\na:link, span.MsoHyperlink\n\t'
    "{mso-style-priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}\nspan.EmailStyle17\n\t"
    '{mso-style-type:personal-compose;\n\tfont-family:"Calibri",sans-serif;\n\tcolor:windowtext;}\n'
    '.MsoChpDefault\n\t{mso-style-type:export-only;\n\tfont-family:"Calibri",sans-serif;\n\t'
    "mso-fareast-language:EN-US;}\n@page WordSection1\n\t{size:612.0pt 792.0pt;\n\t"
    "margin:72.0pt 72.0pt 72.0pt 72.0pt;}\ndiv.WordSection1\n\t{page:WordSection1;}\n--></style>"
    '<!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext="edit" spidmax="1026" />\n</xml><![endif]-->'
    '<!--[if gte mso 9]><xml>\n<o:shapelayout v:ext="edit">\n<o:idmap v:ext="edit" data="1" />\n'
    "</o:shapelayout></xml><![endif]-->\n</head>\n"
    '<body lang="EN-US" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">\n'
    '<div class="WordSection1">\n'
)
_NEWSLETTER_ROW = (
    '<tr><td align="left" valign="top" style="padding:24px 32px 8px 32px;font-family:Helvetica,Arial,'
    'sans-serif;font-size:16px;line-height:24px;color:#333333;">{p}</td></tr>\n<tr><td align="center" '
    'style="padding:8px 32px 24px 32px;"><table role="presentation" cellspacing="0" cellpadding="0" '
    'border="0"><tr><td style="border-radius:4px;background:#1a73e8;"><a href="https://{domain}/c/{token}" '
    'style="background:#1a73e8;border:1px solid #1a73e8;font-family:Helvetica,Arial,sans-serif;font-size:'
    "15px;line-height:15px;text-decoration:none;padding:13px 17px;color:#ffffff;display:block;border-radius:"
    '4px;">Read more</a></td></tr></table></td></tr>\n'
)


@dataclass(frozen=True)
class GeneratedMessage:
    """One generated message and what the generator knows about it."""

    index: int
    raw: bytes
    shape: str  # one of the body shapes in the module docstring (a malformed one may have lost it)
    message_id: str | None  # without angle brackets; None when deliberately missing
    date: dt.datetime
    outgoing: bool  # sent by the owner (belongs in Sent)
    is_reply: bool
    is_list: bool
    malformed: str | None  # one of MALFORMED_KINDS, or None


@dataclass
class _Person:
    name: str
    address: str

    @property
    def first(self) -> str:
        return self.name.split()[0]


@dataclass
class _ThreadEntry:
    subject: str
    message_id: str
    references: list[str]
    sender: _Person
    recipients: list[_Person]
    outgoing: bool
    date: dt.datetime
    snippet: list[str]


def generate(
    n: int, seed: int, *, owner: str = DEFAULT_OWNER, outgoing_ratio: float = 0.15
) -> Iterator[bytes]:
    """`n` realistic RFC 5322 messages (bytes, CRLF), the same for the same arguments."""
    for message in generate_messages(n, seed, owner=owner, outgoing_ratio=outgoing_ratio):
        yield message.raw


def generate_messages(
    n: int, seed: int, *, owner: str = DEFAULT_OWNER, outgoing_ratio: float = 0.15
) -> Iterator[GeneratedMessage]:
    """Like `generate`, with each message's metadata (shape, Message-ID, direction, malformation)."""
    generator = _Generator(seed, owner, outgoing_ratio)
    for index in range(n):
        yield generator.message(index)


class _Generator:
    def __init__(self, seed: int, owner: str, outgoing_ratio: float) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.outgoing_ratio = outgoing_ratio
        owner_local = owner.split("@", 1)[0]
        owner_name = " ".join(part.capitalize() for part in owner_local.replace("_", ".").split(".") if part)
        self.owner = _Person(owner_name or owner_local, owner)
        self.owner_domain = owner.split("@", 1)[-1]
        self.people = [self._person(rng) for _ in range(400)]
        # Zipf-like: a few correspondents write most of the mail.
        self.weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(self.people))]
        self.colleagues = [
            _Person(p.name, f"{_local(p.name)}@{self.owner_domain}") for p in self.people[::20]
        ]
        self.paragraphs = [self._paragraph(rng) for _ in range(1500)]
        self.pool = rng.randbytes(_POOL_BYTES)
        self.pool_b64 = base64.encodebytes(self.pool)  # 77-byte lines ("...\n")
        self.pool_lines = len(self.pool_b64) // 77
        self.threads: list[_ThreadEntry] = []
        self.date = _START
        self.shape_names = [name for name, _ in _SHAPES]
        self.shape_weights = [weight for _, weight in _SHAPES]
        self.attachment_weights = [kind[3] for kind in _ATTACHMENT_KINDS]

    # ---------------------------------------------------------------- building blocks

    def _person(self, rng: random.Random) -> _Person:
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        domain = rng.choice(_FREEMAIL) if rng.random() < 0.3 else rng.choice(_COMPANIES)
        local = _local(name)
        if rng.random() < 0.3:
            local = f"{local.split('.')[0][0]}{local.split('.')[-1]}"
        if domain in _FREEMAIL and rng.random() < 0.5:
            local += str(rng.randint(1, 99))
        return _Person(name, f"{local}@{domain}")

    def _paragraph(self, rng: random.Random) -> str:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = rng.choices(_WORDS, k=rng.randint(6, 20))
            sentence = " ".join(words)
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....?!"))
        return _wrap(" ".join(sentences))

    def _pick_person(self) -> _Person:
        return self.rng.choices(self.people, weights=self.weights)[0]

    def _next_date(self) -> dt.datetime:
        rng = self.rng
        self.date += dt.timedelta(seconds=rng.expovariate(1.0 / _MEAN_GAP_SECONDS))
        offset = dt.timezone(dt.timedelta(minutes=rng.choice(_TZ_OFFSETS)))
        return self.date.astimezone(offset)

    def _message_id(self, index: int, sender: _Person) -> str:
        rng = self.rng
        style = rng.random()
        token = f"{rng.getrandbits(64):016x}{index:x}"
        domain = sender.address.split("@", 1)[1]
        if style < 0.35:
            return f"CA{base64.b32encode(rng.randbytes(20)).decode().rstrip('=')}+{index:x}@mail.gmail.com"
        if style < 0.65:
            prefix = rng.choice(("DB9PR", "AM6PR", "BN8PR", "VI1PR", "CH2PR"))
            box = f"{prefix}{rng.randint(1, 9)}MB{rng.randint(1000, 9999)}"
            return f"{box}{token.upper()}@{box}.eurprd0{rng.randint(1, 9)}.prod.outlook.com"
        if style < 0.8:
            return f"{token[:8].upper()}-{token[8:12].upper()}-{token[12:]}@{domain}"
        return f"{token}.{index}@{domain}"

    def _body_paragraphs(self, low: int, high: int) -> list[str]:
        return self.rng.sample(self.paragraphs, self.rng.randint(low, high))

    def _text(
        self, recipient: _Person, sender: _Person, paragraphs: Sequence[str], quote: _ThreadEntry | None
    ) -> str:
        rng = self.rng
        parts = [
            rng.choice(_GREETINGS).format(first=recipient.first),
            *paragraphs,
            f"{rng.choice(_CLOSINGS)}\n{sender.first}",
        ]
        if rng.random() < 0.4:
            title = rng.choice(_TITLES)
            phone = [
                rng.randint(1, 49),
                rng.randint(100, 999),
                rng.randint(100, 999),
                rng.randint(1000, 9999),
            ]
            parts.append(f"-- \n{sender.name}\n{title}\n+{' '.join(map(str, phone))}")
        text = "\n\n".join(parts)
        if quote is not None:
            when = format_datetime(quote.date)
            quoted = "\n".join(
                f"> {line}" if line else ">" for line in "\n\n".join(quote.snippet).split("\n")
            )
            text += f"\n\nOn {when}, {quote.sender.name} <{quote.sender.address}> wrote:\n{quoted}\n"
        return text + "\n"

    def _html(
        self,
        text_paragraphs: Sequence[str],
        recipient: _Person,
        sender: _Person,
        quote: _ThreadEntry | None,
        flavour: str,
    ) -> str:
        rng = self.rng
        greeting = _escape(rng.choice(_GREETINGS).format(first=recipient.first))
        if flavour == "outlook":
            blank = '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
            body = "".join(
                f'<p class="MsoNormal">{_escape(p)}<o:p></o:p></p>\n{blank}' for p in text_paragraphs
            )
            closing = f"{_escape(rng.choice(_CLOSINGS))}<br>{_escape(sender.first)}"
            html = (
                f'{_HTML_OUTLOOK_HEAD}<p class="MsoNormal">{greeting}<o:p></o:p></p>\n{body}'
                f'<p class="MsoNormal">{closing}<o:p></o:p></p>\n'
            )
            if quote is not None:
                sender_line = f"{_escape(quote.sender.name)} &lt;{quote.sender.address}&gt;"
                html += (
                    '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">\n'
                    f'<p class="MsoNormal"><b>From:</b> {sender_line}<br><b>Sent:</b> '
                    f"{format_datetime(quote.date)}<br><b>Subject:</b> {_escape(quote.subject)}</p>\n</div>\n"
                    + "".join(f'<p class="MsoNormal">{_escape(p)}</p>\n' for p in quote.snippet)
                )
            return html + "</div>\n</body>\n</html>\n"
        body = "".join(f"<div>{_escape(p)}</div><div><br></div>\n" for p in text_paragraphs)
        html = (
            f'<div dir="ltr"><div>{greeting}</div><div><br></div>\n{body}'
            f"<div>{_escape(rng.choice(_CLOSINGS))}</div><div>{_escape(sender.first)}</div></div>\n"
        )
        if quote is not None:
            html += (
                '<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On '
                f"{format_datetime(quote.date)}, {_escape(quote.sender.name)} "
                f"&lt;{quote.sender.address}&gt; wrote:<br></div>"
                '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
                'rgb(204,204,204);padding-left:1ex">'
                + "".join(f"<div>{_escape(p)}</div>" for p in quote.snippet)
                + "</blockquote></div>\n"
            )
        return html

    def _newsletter(self, domain: str) -> str:
        rng = self.rng
        rows = "".join(
            _NEWSLETTER_ROW.format(p=_escape(p), domain=domain, token=f"{rng.getrandbits(96):024x}")
            for p in self._body_paragraphs(4, 14)
        )
        pixel = f'<img src="https://{domain}/o/{rng.getrandbits(128):032x}.gif" width="1" height="1" alt="">'
        return (
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">'
            '<head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8"><meta name="viewport" '
            'content="width=device-width, initial-scale=1.0"><style type="text/css">body{margin:0;padding:0;}'
            "table,td{border-collapse:collapse;mso-table-lspace:0pt;mso-table-rspace:0pt;}img{border:0;height:auto;"
            "line-height:100%;outline:none;text-decoration:none;}@media only screen and (max-width:480px){"
            '.mobile{width:100% !important;}}</style></head>\n<body style="background:#f4f4f4;">\n'
            '<table role="presentation" width="100%" cellspacing="0" cellpadding="0" border="0" '
            'style="background:#f4f4f4;"><tr><td align="center"><table class="mobile" role="presentation" '
            'width="600" cellspacing="0" cellpadding="0" border="0" style="background:#ffffff;">\n'
            f"{rows}</table></td></tr>"
            '<tr><td align="center" style="font-size:12px;color:#888888;padding:24px;">'
            f'You are receiving this because you subscribed. <a href="https://{domain}/unsubscribe/'
            f'{rng.getrandbits(64):016x}">Unsubscribe</a></td></tr></table>{pixel}\n</body></html>\n'
        )

    def _attachment_size(self) -> int:
        size = int(self.rng.lognormvariate(10.5, 1.35))  # median ≈ 36 KB
        return max(5 * 1024, min(size, _MAX_ATTACHMENT))

    def _attachment_b64(self, magic: bytes, size: int) -> bytes:
        """Base64 lines (LF) of a file starting with `magic`, about `size` bytes; a pool slice."""
        head = (magic + self.pool[: _B64_LINE - len(magic)])[:_B64_LINE]
        lines = max(1, size // _B64_LINE - 1)
        start = self.rng.randrange(self.pool_lines)
        end = start + lines
        body = self.pool_b64[start * 77 : end * 77]
        if end > self.pool_lines:
            body += self.pool_b64[: (end - self.pool_lines) * 77]
        return base64.encodebytes(head) + body

    # ---------------------------------------------------------------- one message

    def message(self, index: int) -> GeneratedMessage:
        rng = self.rng
        malformed = (
            MALFORMED_KINDS[(index // _MALFORMED_EVERY) % len(MALFORMED_KINDS)]
            if index % _MALFORMED_EVERY == _MALFORMED_AT
            else None
        )
        shape = rng.choices(self.shape_names, weights=self.shape_weights)[0]
        date = self._next_date()
        is_list = shape in {"html", "alternative"} and rng.random() < 0.2
        outgoing = not is_list and rng.random() < self.outgoing_ratio
        quote: _ThreadEntry | None = None
        if not is_list and shape not in {"calendar", "legacy"} and self.threads and rng.random() < 0.3:
            quote = self.threads[-1 - min(int(rng.expovariate(0.05)), len(self.threads) - 1)]

        legacy = _LEGACY[rng.randrange(len(_LEGACY))] if shape == "legacy" else None
        sender, to, cc = self._participants(outgoing, quote, legacy)
        if is_list:
            list_name, list_address, list_id = _LIST_SOURCES[rng.randrange(len(_LIST_SOURCES))]
            sender = _Person(list_name, list_address)
            to = [self.owner]
            cc = []

        # Subject
        if quote is not None:
            base = quote.subject[4:] if quote.subject.startswith("Re: ") else quote.subject
            subject = ("Fwd: " if shape == "forward" else "Re: ") + base
        elif legacy is not None:
            subject = rng.choice(_LEGACY_SUBJECTS[legacy[0]])
        else:
            subject = rng.choice(_LIST_SUBJECTS if is_list else _SUBJECT_TOPICS).format(
                q=rng.randint(1, 4),
                num=rng.randint(1000, 99999),
                day=rng.choice(("Monday", "Tuesday", "Friday")),
                company=rng.choice(_COMPANIES).split(".")[0].replace("-", " ").title(),
                first=rng.choice(_FIRST_NAMES),
                first2=rng.choice(_FIRST_NAMES),
                year=date.year,
            )
            if rng.random() < 0.05:
                subject += f" – {rng.choice(_UTF8_SUBJECT_EXTRAS)}"
            if shape == "calendar":
                subject = f"Invitation: {subject} @ {date:%a %b} {date.day}, {date.year}"
        message_id = self._message_id(index, sender)

        # Body
        recipient = to[0]
        paragraphs = self._body_paragraphs(1, 4)
        content_headers, body = self._body(
            shape, index, sender, recipient, paragraphs, quote, legacy, is_list, subject, date
        )

        # Headers
        references: list[str] = []
        if quote is not None:
            references = [*quote.references[-9:], quote.message_id]
        headers = [] if outgoing else self._transport_headers(index, sender, date, message_id)
        headers.append(f"From: {_address(sender, legacy)}")
        headers.append(f"To: {', '.join(_address(p, legacy) for p in to)}")
        if cc:
            headers.append(f"Cc: {', '.join(_address(p, None) for p in cc)}")
        if outgoing and rng.random() < 0.05:
            headers.append(f"Bcc: {_address(self._pick_person(), None)}")
        if malformed == "raw-8bit-header":
            plain = subject.encode("ascii", "replace").decode()
            headers.append(f"Subject: {plain} Gr\xfc\xdfe")  # latin-1 bytes, no encoded-word
        else:
            headers.append(f"Subject: {_encode_header(subject, legacy[0] if legacy else 'utf-8')}")
        headers.append(f"Date: {format_datetime(date)}")
        if malformed != "missing-message-id":
            headers.append(f"Message-ID: <{message_id}>")
        if quote is not None:
            headers.append(f"In-Reply-To: <{quote.message_id}>")
            headers.append("References: " + "\n ".join(f"<{ref}>" for ref in references))
        if is_list:
            list_domain = list_address.split("@")[1]
            headers += [
                f"List-Id: {list_name} <{list_id}>",
                f"List-Unsubscribe: <mailto:unsubscribe-{rng.getrandbits(48):012x}@{list_domain}>,\n"
                f" <https://{list_domain}/u/{rng.getrandbits(96):024x}>",
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                "Precedence: bulk",
                f"Reply-To: {list_address}",
            ]
        headers.append(
            rng.choice(
                (
                    "X-Mailer: Microsoft Outlook 16.0",
                    "User-Agent: Mozilla Thunderbird",
                    "X-Mailer: Apple Mail (2.3731)",
                    "X-Mailer: iPhone Mail (21E236)",
                    "X-Google-Smtp-Source: AGHT+IF" + f"{rng.getrandbits(120):030x}",
                )
            )
        )
        headers.append("MIME-Version: 1.0")
        headers += content_headers

        if malformed is not None:
            body, headers = _break(malformed, body, headers)
        text = "\n".join(headers) + "\n\n"
        head = text.encode("latin-1") if malformed == "raw-8bit-header" else text.encode("ascii")
        raw = (head + body).replace(b"\n", b"\r\n")

        if malformed != "missing-message-id":
            snippet = paragraphs[:2]
            self.threads.append(
                _ThreadEntry(subject, message_id, references, sender, to, outgoing, date, snippet)
            )
            if len(self.threads) > 400:
                del self.threads[:100]
        return GeneratedMessage(
            index=index,
            raw=raw,
            shape=shape,
            message_id=None if malformed == "missing-message-id" else message_id,
            date=date,
            outgoing=outgoing,
            is_reply=quote is not None,
            is_list=is_list,
            malformed=malformed,
        )

    def _participants(
        self, outgoing: bool, quote: _ThreadEntry | None, legacy: tuple[object, ...] | None
    ) -> tuple[_Person, list[_Person], list[_Person]]:
        rng = self.rng
        if legacy is not None:
            names: Sequence[str] = legacy[2]  # type: ignore[assignment]
            domain = str(legacy[3])
            other = _Person(
                rng.choice(names), f"{rng.choice(('info', 'sales', 'k.tanaka', 'o.ivanova', 'jm'))}@{domain}"
            )
        elif quote is not None:
            others = [p for p in [quote.sender, *quote.recipients] if p.address != self.owner.address]
            other = rng.choice(others) if others else self._pick_person()
        else:
            other = self._pick_person()
        to = [other]
        if rng.random() < 0.15:
            to += [self._pick_person() for _ in range(rng.randint(1, 3))]
        cc = [self._pick_person() for _ in range(rng.randint(1, 3))] if rng.random() < 0.25 else []
        if rng.random() < 0.1:
            cc.append(rng.choice(self.colleagues))
        if outgoing:
            return self.owner, _unique(to), _unique(cc)
        if rng.random() < 0.1:  # the owner is only on Cc
            return other, _unique([self._pick_person()]), _unique([self.owner, *cc])
        return other, _unique([self.owner, *to[1:]]), _unique(cc)

    def _transport_headers(
        self, index: int, sender: _Person, date: dt.datetime, message_id: str
    ) -> list[str]:
        rng = self.rng
        domain = sender.address.split("@", 1)[1]
        owner, owner_domain = self.owner.address, self.owner_domain
        stamp = format_datetime(date)
        mx_a, mx_b = rng.randint(1, 4), rng.randint(1, 4)
        internal = f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        lmtp_id = base64.b64encode(rng.randbytes(12)).decode()
        hops = [
            f"Return-Path: <{sender.address}>",
            f"Delivered-To: {owner}",
            f"Received: from mx{mx_a}.{owner_domain} (mx{mx_b}.{owner_domain} [{internal}])\n"
            f"\tby imap.{owner_domain} with LMTP\n\tid {lmtp_id}\n\t(envelope-from <{sender.address}>)\n"
            f"\tfor <{owner}>; {stamp}",
        ]
        for _ in range(rng.randint(1, 3)):
            pool = rng.choice(("ej1", "wr1", "pl1", "qt1", "eur05"))
            helo = f"mail-{pool}-f{rng.randint(10, 250)}.{domain}"
            rdns = f"mail-f{rng.randint(10, 250)}.{domain}"
            address = _ip(rng)
            hops.append(
                f"Received: from {helo} ({rdns} [{address}])\n"
                f"\tby mx.{owner_domain} (Postfix) with ESMTPS id "
                f"{rng.getrandbits(40):010X}\n\tfor <{owner}>; {stamp}"
            )
        signature = base64.b64encode(rng.randbytes(256)).decode()
        hops.append(
            f"Authentication-Results: mx.{owner_domain};\n"
            f'\tdkim=pass (2048-bit key) header.d={domain} header.i=@{domain} header.b="{signature[:8]}";\n'
            f"\tspf=pass (domain of {sender.address} designates {_ip(rng)} as permitted sender) "
            f"smtp.mailfrom={sender.address};\n\tdmarc=pass (p=NONE) header.from={domain}"
        )
        selector = f"s{date.year}{rng.randint(1, 12):02d}"
        body_hash = base64.b64encode(rng.randbytes(32)).decode()
        hops.append(
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};"
            f" t={int(date.timestamp())};\n"
            "\th=from:to:cc:subject:date:message-id:mime-version:content-type;\n"
            f"\tbh={body_hash};\n\tb="
            + "\n\t ".join(signature[i : i + 70] for i in range(0, len(signature), 70))
        )
        if rng.random() < 0.3:
            hops.append(
                f"X-Spam-Status: No, score=-{rng.randint(0, 40) / 10} required=5.0 tests=DKIM_SIGNED,"
                "DKIM_VALID,\n\tHTML_MESSAGE,RCVD_IN_DNSWL_NONE,SPF_HELO_NONE,SPF_PASS autolearn=ham"
            )
        return hops

    # ---------------------------------------------------------------- bodies

    def _body(
        self,
        shape: str,
        index: int,
        sender: _Person,
        recipient: _Person,
        paragraphs: list[str],
        quote: _ThreadEntry | None,
        legacy: tuple[object, ...] | None,
        is_list: bool,
        subject: str,
        date: dt.datetime,
    ) -> tuple[list[str], bytes]:
        rng = self.rng
        flavour = rng.choice(("gmail", "outlook", "outlook", "apple"))
        boundary = _boundary(rng, flavour, index)
        if legacy is not None:
            charset, cte = str(legacy[0]), str(legacy[1])
            sentences: Sequence[str] = legacy[4]  # type: ignore[assignment]
            text = (
                "\n\n".join(" ".join(rng.sample(list(sentences), 3)) for _ in range(rng.randint(1, 3))) + "\n"
            )
            if cte == "8bit" and rng.random() < 0.5:
                cte = "base64"
            return _leaf("text/plain", text, charset, cte)
        if shape == "plain":
            return _leaf(
                "text/plain", self._text(recipient, sender, paragraphs, quote), "utf-8", self._text_cte()
            )
        if shape == "html" or (shape == "alternative" and is_list):
            html = (
                self._newsletter(sender.address.split("@", 1)[1])
                if is_list
                else self._html(paragraphs, recipient, sender, quote, flavour)
            )
            if shape == "html":
                return _leaf("text/html", html, "utf-8", self._html_cte())
            text = "\n\n".join(paragraphs) + "\n"
            return _multipart(
                "alternative",
                boundary,
                [
                    _leaf("text/plain", text, "utf-8", self._text_cte()),
                    _leaf("text/html", html, "utf-8", self._html_cte()),
                ],
            )
        alternative = _multipart(
            "alternative",
            boundary + "_alt" if shape != "alternative" else boundary,
            [
                _leaf(
                    "text/plain", self._text(recipient, sender, paragraphs, quote), "utf-8", self._text_cte()
                ),
                _leaf(
                    "text/html",
                    self._html(paragraphs, recipient, sender, quote, flavour),
                    "utf-8",
                    self._html_cte(),
                ),
            ],
        )
        if shape == "alternative":
            return alternative
        if shape == "attachment":
            parts = [
                alternative
                if rng.random() < 0.6
                else _leaf(
                    "text/plain", self._text(recipient, sender, paragraphs, quote), "utf-8", self._text_cte()
                )
            ]
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 4)):
                parts.append(self._attachment_part(date))
            return _multipart("mixed", boundary, parts)
        if shape == "related":
            cid = f"image001.png@01DA{rng.getrandbits(32):08X}.{rng.getrandbits(32):08X}"
            html = self._html(paragraphs, recipient, sender, quote, "outlook").replace(
                "</div>\n</body>",
                f'<p class="MsoNormal"><img width="200" height="60" src="cid:{cid}" '
                'alt="logo"></p>\n</div>\n</body>',
            )
            image = self._attachment_b64(_ATTACHMENT_KINDS[1][2], rng.randint(8 * 1024, 90 * 1024))
            related = _multipart(
                "related",
                boundary + "_rel",
                [
                    _leaf("text/html", html, "utf-8", "quoted-printable"),
                    (
                        [
                            'Content-Type: image/png; name="image001.png"',
                            "Content-Transfer-Encoding: base64",
                            f"Content-ID: <{cid}>",
                            'Content-Disposition: inline; filename="image001.png"',
                        ],
                        image,
                    ),
                ],
            )
            text_part = _leaf(
                "text/plain", self._text(recipient, sender, paragraphs, quote), "utf-8", "quoted-printable"
            )
            return _multipart("alternative", boundary, [text_part, related])
        if shape == "calendar":
            return self._invite(boundary, sender, recipient, subject, date, paragraphs)
        # forward: the quoted message travels as message/rfc822
        inner_sender = self._pick_person()
        inner_headers = [
            f"From: {_address(inner_sender, None)}",
            f"To: {_address(sender, None)}",
            f"Subject: {_encode_header(subject.removeprefix('Fwd: '), 'utf-8')}",
            f"Date: {format_datetime(date - dt.timedelta(days=rng.randint(1, 30)))}",
            f"Message-ID: <fwd.{rng.getrandbits(64):016x}.{index}@{inner_sender.address.split('@')[1]}>",
            "MIME-Version: 1.0",
        ]
        inner_content, inner_body = _leaf(
            "text/plain", "\n\n".join(self._body_paragraphs(1, 3)) + "\n", "utf-8", "7bit"
        )
        inner = ("\n".join(inner_headers + inner_content) + "\n\n").encode() + inner_body
        note = _leaf("text/plain", f"FYI, see below.\n\n{sender.first}\n", "utf-8", "7bit")
        return _multipart(
            "mixed",
            boundary,
            [
                note,
                (
                    [
                        "Content-Type: message/rfc822",
                        'Content-Disposition: attachment; filename="forwarded.eml"',
                    ],
                    inner,
                ),
            ],
        )

    def _text_cte(self) -> str:
        return self.rng.choices(("7bit", "8bit", "quoted-printable", "base64"), weights=(30, 25, 35, 10))[0]

    def _html_cte(self) -> str:
        return self.rng.choices(("quoted-printable", "base64", "7bit"), weights=(70, 20, 10))[0]

    def _attachment_part(self, date: dt.datetime) -> tuple[list[str], bytes]:
        rng = self.rng
        ctype, ext, magic, _ = rng.choices(_ATTACHMENT_KINDS, weights=self.attachment_weights)[0]
        stem = rng.choice(_ATTACHMENT_NAMES).format(
            num=rng.randint(1000, 99999),
            company=rng.choice(_COMPANIES).split(".")[0],
            q=rng.randint(1, 4),
            year=date.year,
            day2=f"{rng.randint(1, 28):02d}",
        )
        filename = f"{stem}.{ext}"
        if filename.isascii():
            disposition = f'Content-Disposition: attachment; filename="{filename}"'
            name = f'name="{filename}"'
        else:
            disposition = f"Content-Disposition: attachment;\n filename*=utf-8''{_percent(filename)}"
            name = f'name="{_encode_header(filename, "utf-8")}"'
        return [
            f"Content-Type: {ctype}; {name}",
            disposition,
            "Content-Transfer-Encoding: base64",
        ], self._attachment_b64(magic, self._attachment_size())

    def _invite(
        self,
        boundary: str,
        sender: _Person,
        recipient: _Person,
        subject: str,
        date: dt.datetime,
        paragraphs: list[str],
    ) -> tuple[list[str], bytes]:
        rng = self.rng
        start = (
            (date + dt.timedelta(days=rng.randint(1, 14)))
            .astimezone(dt.UTC)
            .replace(hour=rng.randint(8, 16), minute=rng.choice((0, 30)), second=0)
        )
        end = start + dt.timedelta(minutes=rng.choice((30, 45, 60, 90)))
        uid = f"{rng.getrandbits(128):032x}@{sender.address.split('@')[1]}"
        fmt = "%Y%m%dT%H%M%SZ"
        ics = "\n".join(
            [
                "BEGIN:VCALENDAR",
                "PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN",
                "VERSION:2.0",
                "METHOD:REQUEST",
                "BEGIN:VEVENT",
                f"UID:{uid}",
                f"DTSTAMP:{date.astimezone(dt.UTC).strftime(fmt)}",
                f"DTSTART:{start.strftime(fmt)}",
                f"DTEND:{end.strftime(fmt)}",
                f"SUMMARY:{subject}",
                f"ORGANIZER;CN={sender.name}:mailto:{sender.address}",
                f"ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN={recipient.name}:mailto:{recipient.address}",
                "LOCATION:Microsoft Teams Meeting",
                "SEQUENCE:0",
                "STATUS:CONFIRMED",
                "TRANSP:OPAQUE",
                "BEGIN:VALARM",
                "ACTION:DISPLAY",
                "DESCRIPTION:REMINDER",
                "TRIGGER;RELATED=START:-PT15M",
                "END:VALARM",
                "END:VEVENT",
                "END:VCALENDAR",
                "",
            ]
        )
        text = (
            f"When: {start:%A, %B %d, %Y %H:%M} UTC\nWhere: Microsoft Teams Meeting\n\n"
            + "\n\n".join(paragraphs)
            + "\n"
        )
        return _multipart(
            "alternative",
            boundary,
            [
                _leaf("text/plain", text, "utf-8", "quoted-printable"),
                _leaf(
                    "text/html",
                    "<html><body>"
                    + "".join(f"<p>{_escape(p)}</p>" for p in text.split("\n\n"))
                    + "</body></html>\n",
                    "utf-8",
                    "quoted-printable",
                ),
                _leaf("text/calendar", ics, "utf-8", "base64", extra="; method=REQUEST"),
            ],
        )


# --------------------------------------------------------------------------- MIME helpers


def _leaf(ctype: str, text: str, charset: str, cte: str, extra: str = "") -> tuple[list[str], bytes]:
    data = text.encode(charset)
    if cte in {"7bit", "8bit"} and not data.isascii() and cte == "7bit" and charset != "iso-2022-jp":
        cte = "quoted-printable"
    if cte == "8bit" and data.isascii():
        cte = "7bit"
    if cte == "quoted-printable":
        body = binascii.b2a_qp(data, istext=True)
    elif cte == "base64":
        body = base64.encodebytes(data)
    else:
        body = data
    if not body.endswith(b"\n"):
        body += b"\n"
    return [f'Content-Type: {ctype}; charset="{charset}"{extra}', f"Content-Transfer-Encoding: {cte}"], body


def _multipart(
    subtype: str, boundary: str, parts: Sequence[tuple[list[str], bytes]]
) -> tuple[list[str], bytes]:
    delimiter = f"--{boundary}\n".encode()
    chunks = [b"This is a multi-part message in MIME format.\n\n"] if subtype == "mixed" else []
    for headers, body in parts:
        chunks += [delimiter, ("\n".join(headers) + "\n\n").encode(), body, b"\n"]
    chunks.append(f"--{boundary}--\n".encode())
    return [f'Content-Type: multipart/{subtype};\n\tboundary="{boundary}"'], b"".join(chunks)


def _boundary(rng: random.Random, flavour: str, index: int) -> str:
    if flavour == "gmail":
        return f"000000000000{rng.getrandbits(64):016x}{index:x}"
    if flavour == "outlook":
        return f"_000_{rng.getrandbits(96):024X}{index:x}_"
    return f"Apple-Mail={rng.getrandbits(128):032X}-{index}"


def _break(kind: str, body: bytes, headers: list[str]) -> tuple[bytes, list[str]]:
    """Turn a well-formed message into the deliberately malformed `kind`."""
    if kind == "unknown-8bit":
        headers = [h for h in headers if not h.startswith(("Content-Type:", "Content-Transfer-Encoding:"))]
        headers += ['Content-Type: text/plain; charset="unknown-8bit"', "Content-Transfer-Encoding: 8bit"]
        body = b"Pr\xe9sentation jointe \xe0 revoir \x96 merci \x93d\xe9j\xe0\x94 vu.\n" * 3
    elif kind == "bad-base64":
        headers = [h for h in headers if not h.startswith(("Content-Type:", "Content-Transfer-Encoding:"))]
        headers += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: base64"]
        body = b"SGVsbG8gd29ybGQh*&^%$#\nVGhpcyBpcyBub3Qg!!!YmFzZTY0\nQUJD=\n=ZGVm\n"
    elif kind == "broken-boundary":
        headers = [h for h in headers if not h.startswith(("Content-Type:", "Content-Transfer-Encoding:"))]
        headers.append('Content-Type: multipart/mixed; boundary="declared-boundary-0001"')
        body = (
            b"--other-boundary-9999\nContent-Type: text/plain\n\nThe parts use a boundary the header never"
            b" declared,\nand the closing delimiter is missing.\n--other-boundary-9999\n"
            b"Content-Type: text/html"
            b"\n\n<p>half a part</p>\n"
        )
    return body, headers


def _encode_header(text: str, charset: str) -> str:
    """RFC 2047 encoded-words (B encoding) when `text` is not ASCII; chunks stay under 75 characters."""
    if text.isascii():
        return text
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    words = []
    chunk = ""
    for char in text:
        if len((chunk + char).encode(charset)) > 36:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\n ".join(f"=?{charset}?B?{base64.b64encode(w.encode(charset)).decode()}?=" for w in words if w)


def _address(person: _Person, legacy: tuple[object, ...] | None) -> str:
    name = person.name
    if name.isascii():
        specials = any(c in name for c in '()<>[]:;@\\,."')
        return f'"{name}" <{person.address}>' if specials else f"{name} <{person.address}>"
    charset = str(legacy[0]) if legacy is not None and not name.encode("utf-8").isascii() else "utf-8"
    try:
        name.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    return f"{_encode_header(name, charset)} <{person.address}>"


def _ip(rng: random.Random) -> str:
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _local(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name.translate(_FOLD))
    ascii_name = folded.encode("ascii", "ignore").decode() or "user"
    parts = [p for p in ascii_name.lower().replace("'", "").split() if p]
    return ".".join(parts) or "user"


def _unique(people: list[_Person]) -> list[_Person]:
    seen: set[str] = set()
    out = []
    for person in people:
        if person.address not in seen:
            seen.add(person.address)
            out.append(person)
    return out


def _wrap(text: str, width: int = 72) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _percent(text: str) -> str:
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-._~") else "".join(f"%{b:02X}" for b in c.encode())
        for c in text
    )


# --------------------------------------------------------------------------- mailboxes


def build_maildir(
    dovecot: Dovecot,
    email_address: str,
    n: int,
    seed: int,
    folders: Mapping[str, float] = DEFAULT_FOLDERS,
    *,
    batch: int = 500,
) -> dict[str, int]:
    """Write `n` generated messages for `email_address` into a private Dovecot; return counts per folder.

    Messages the owner sent go to "Sent" (in the proportion `folders["Sent"]`, 0 when absent); the
    rest are spread over the other folders by weight. Flags: received mail mostly \\Seen (recent
    mail less often), some \\Flagged and \\Answered, a few $Forwarded; sent mail \\Seen.
    """
    sent_weight = folders.get("Sent", 0.0)
    total = sum(folders.values())
    if total <= 0:
        raise ValueError("folders needs a positive weight")
    received = {name: weight for name, weight in folders.items() if name != "Sent" and weight > 0}
    if not received:
        raise ValueError("folders needs a folder for received mail")
    names, weights = list(received), list(received.values())
    rng = random.Random(seed ^ 0x5EED)
    pending: dict[str, list[tuple[bytes, str]]] = {name: [] for name in folders}
    counts = {name: 0 for name in folders}

    def flush(name: str) -> None:
        if pending[name]:
            dovecot.write_messages(email_address, name, pending[name])
            counts[name] += len(pending[name])
            pending[name] = []

    for message in generate_messages(
        n, seed, owner=email_address.lower(), outgoing_ratio=sent_weight / total
    ):
        if message.outgoing:
            folder, flags = "Sent", "\\Seen"
        else:
            folder = rng.choices(names, weights=weights)[0]
            recent = message.index > n * 0.97
            flag_list = []
            if rng.random() < (0.5 if recent else 0.93) or folder != "INBOX":
                flag_list.append("\\Seen")
            if rng.random() < 0.03:
                flag_list.append("\\Flagged")
            if rng.random() < 0.12:
                flag_list.append("\\Answered")
            elif rng.random() < 0.02:
                flag_list.append("$Forwarded")
            flags = " ".join(flag_list)
        pending[folder].append((message.raw, flags))
        if len(pending[folder]) >= batch:
            flush(folder)
    for name in list(pending):
        flush(name)
    return counts
