"""RFC 822 parsing into Gmail's ``MessagePart`` tree, snippets and the header facts threading needs.

Faithfulness notes:

* ``payload`` mirrors Gmail's: the top part has ``partId`` ``""``; children are numbered ``"0"``,
  ``"1"``, grand-children ``"1.0"``...; multipart parts carry ``body: {"size": 0}`` and ``parts``;
  leaf bodies are transfer-decoded (base64/quoted-printable removed, charset untouched) and given as
  padded base64url ``data``, except parts with a filename (attachments, inline images) and parts
  larger than ``inline_limit`` which get an ``attachmentId`` to fetch with ``attachments.get``.
* Header values are unfolded and RFC 2047 encoded-words decoded; raw 8-bit header bytes are read
  as UTF-8. Header order and duplicates are kept.
* ``message/rfc822`` parts are leaves (their bytes are the attachment) rather than expanded.
* The snippet is the first ~200 characters of the first text/plain part (else the tag-stripped
  text/html), whitespace-collapsed and HTML-escaped the way Gmail escapes it (``&#39;``, ``&quot;``,
  ``&amp;``, ``&lt;``, ``&gt;``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import html
import re
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from typing import Any

SNIPPET_LENGTH = 200
#: bodies bigger than this are not inlined in format=full even without a filename
DEFAULT_INLINE_LIMIT = 1024 * 1024

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_TAG = re.compile(r"<[^>]*>")
_STYLE = re.compile(r"<(style|script)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_WS = re.compile(r"\s+")
_MSGID = re.compile(r"<[^<>\s]+>")
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|tr|rif)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def b64url_padded(data: bytes) -> str:
    """Gmail emits padded base64url for ``raw`` and ``body.data``."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def decode_bytes_field(value: str) -> bytes:
    """Decode a JSON ``format: byte`` field: base64url or standard base64, padding optional."""
    text = re.sub(r"\s+", "", value).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"Invalid value for ByteString: {value[:40]}") from exc


def decode_header_value(value: Any) -> str:
    """Unfold and decode a header value (encoded-words; raw 8-bit bytes read as UTF-8)."""
    text = str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    text = _FOLD.sub("", text)
    if "=?" in text:
        with contextlib.suppress(ValueError, LookupError, UnicodeError, binascii.Error):
            text = str(make_header(decode_header(text)))
    return text.strip()


def normalize_subject(subject: str) -> str:
    """Subject with reply/forward prefixes removed and whitespace collapsed, lower-cased."""
    return _WS.sub(" ", _SUBJECT_PREFIX.sub("", subject)).strip().lower()


def gmail_escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def _charset_decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("latin-1")


def html_to_text(markup: str) -> str:
    return html.unescape(_TAG.sub(" ", _STYLE.sub(" ", markup)))


@dataclass
class Part:
    part_id: str
    mime_type: str
    filename: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    children: list[Part] = field(default_factory=list)
    charset: str | None = None
    is_attachment: bool = False

    @property
    def is_multipart(self) -> bool:
        return self.mime_type.startswith("multipart/")

    def walk(self) -> list[Part]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    def find(self, part_id: str) -> Part | None:
        for part in self.walk():
            if part.part_id == part_id:
                return part
        return None


@dataclass
class ParsedMessage:
    root: Part
    subject: str
    message_id: str
    in_reply_to: list[str]
    references: list[str]
    from_addrs: list[tuple[str, str]]
    to_addrs: list[tuple[str, str]]
    cc_addrs: list[tuple[str, str]]
    bcc_addrs: list[tuple[str, str]]
    date_ms: int | None
    snippet: str
    text: str

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.root.headers

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.root.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def attachments(self) -> list[Part]:
        return [p for p in self.root.walk() if p.is_attachment]


def _filename(msg: Message) -> str:
    name = msg.get_filename() or msg.get_param("name", header="content-type")
    if isinstance(name, tuple):  # RFC 2231 triple
        name = email.utils.collapse_rfc2231_value(name)
    return decode_header_value(name) if name else ""


def _build_part(msg: Message, part_id: str) -> Part:
    headers = [(k, decode_header_value(v)) for k, v in msg.items()]
    mime_type = msg.get_content_type()
    filename = _filename(msg)
    disposition = (msg.get_content_disposition() or "").lower()
    if mime_type.startswith("multipart/") and isinstance(msg.get_payload(), list):
        children = [
            _build_part(sub, f"{part_id}.{i}" if part_id else str(i))
            for i, sub in enumerate(msg.get_payload())
            if isinstance(sub, Message)
        ]
        return Part(part_id, mime_type, "", headers, b"", children)
    if msg.get_content_maintype() == "message" and isinstance(msg.get_payload(), list):
        inner = msg.get_payload(0)
        body = inner.as_bytes() if isinstance(inner, Message) else b""
    else:
        decoded = msg.get_payload(decode=True)
        body = decoded if isinstance(decoded, bytes) else b""
    is_attachment = bool(filename) or disposition == "attachment" or mime_type == "message/rfc822"
    return Part(part_id, mime_type, filename, headers, body, [], msg.get_content_charset(), is_attachment)


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    return [(n, a) for n, a in email.utils.getaddresses(values) if a]


def _msgids(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


def _text_of(root: Part) -> tuple[str, str]:
    """(snippet source, searchable text)."""
    plain: list[str] = []
    htmls: list[str] = []
    for part in root.walk():
        if part.is_multipart or part.is_attachment:
            continue
        if part.mime_type == "text/plain":
            plain.append(_charset_decode(part.body, part.charset))
        elif part.mime_type == "text/html":
            htmls.append(html_to_text(_charset_decode(part.body, part.charset)))
    first = plain[0] if plain else (htmls[0] if htmls else "")
    return first, "\n".join(plain + htmls)


def parse(raw: bytes) -> ParsedMessage:
    msg = BytesParser(policy=policy.compat32).parsebytes(raw)
    root = _build_part(msg, "")
    headers = root.headers

    def all_of(name: str) -> list[str]:
        return [v for k, v in headers if k.lower() == name]

    def one(name: str) -> str:
        found = all_of(name)
        return found[0] if found else ""

    date_ms: int | None = None
    if one("date"):
        try:
            parsed_date = email.utils.parsedate_to_datetime(one("date"))
            if parsed_date.tzinfo is not None:
                date_ms = int(parsed_date.timestamp() * 1000)
        except (TypeError, ValueError, IndexError):
            date_ms = None
    snippet_source, text = _text_of(root)
    snippet = _WS.sub(" ", snippet_source).strip()
    if len(snippet) > SNIPPET_LENGTH:
        snippet = snippet[:SNIPPET_LENGTH].rsplit(" ", 1)[0]
    raw_mid = _msgids(str(msg.get("Message-ID", "")))
    return ParsedMessage(
        root=root,
        subject=one("subject"),
        message_id=raw_mid[0] if raw_mid else "",
        in_reply_to=_msgids(str(msg.get("In-Reply-To", ""))),
        references=_msgids(" ".join(str(v) for v in msg.get_all("References", []))),
        from_addrs=_addresses(all_of("from")),
        to_addrs=_addresses(all_of("to")),
        cc_addrs=_addresses(all_of("cc")),
        bcc_addrs=_addresses(all_of("bcc")),
        date_ms=date_ms,
        snippet=gmail_escape(snippet),
        text=text,
    )


def attachment_id(message_id: str, part_id: str) -> str:
    """Opaque, stable attachment id (Gmail's change between calls; any of them stays valid)."""
    token = base64.urlsafe_b64encode(f"{message_id}:{part_id}".encode()).decode().rstrip("=")
    return "ANGjdJ" + token


def parse_attachment_id(value: str) -> tuple[str, str] | None:
    if not value.startswith("ANGjdJ"):
        return None
    token = value[6:]
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    message_id, sep, part_id = decoded.partition(":")
    return (message_id, part_id) if sep else None


def part_json(part: Part, message_id: str, inline_limit: int = DEFAULT_INLINE_LIMIT) -> dict[str, Any]:
    out: dict[str, Any] = {
        "partId": part.part_id,
        "mimeType": part.mime_type,
        "filename": part.filename,
        "headers": [{"name": k, "value": v} for k, v in part.headers],
    }
    if part.is_multipart:
        out["body"] = {"size": 0}
        out["parts"] = [part_json(child, message_id, inline_limit) for child in part.children]
        return out
    size = len(part.body)
    if size == 0:
        out["body"] = {"size": 0}
    elif part.filename or part.is_attachment or size > inline_limit:
        out["body"] = {"attachmentId": attachment_id(message_id, part.part_id), "size": size}
    else:
        out["body"] = {"size": size, "data": b64url_padded(part.body)}
    return out
