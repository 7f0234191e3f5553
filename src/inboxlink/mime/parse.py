"""Raw RFC 5322 bytes -> `ParsedMessage`, for a whole batch at a time.

`parse_many` is the hot path of a sync. Three tiers, per message:

1. `fast_mail_parser.parse_many` (Rust, parallel, GIL released for the batch) in "lazy" mode: bodies
   decoded, attachments decoded only when we read them (we do, for the exact size, but nothing keeps
   them).
2. The stdlib `email` package (compat32 policy: lenient, and about three times as fast as `default`,
   whose `get_content` raises LookupError for `unknown-8bit`) when fast-mail-parser refuses the
   message (invalid base64 in a body part...) or returned something known to be lossy (below).
3. A "raw fallback" built from the header lines read by hand, when even the stdlib fails.

Headers-only input does not go through fast-mail-parser at all: its header block is read by hand
(`_read_headers`, the reader tiers 2 and 3 use too), which costs less than fast-mail-parser's metadata
parse alone, let alone reading its result back.

Whatever happens, one `ParsedMessage` per input, same order, and nothing raises. `parse_note` says
which fallback was used and why. Header fields are derived the same way in all tiers: message-ids
lose their angle brackets, RFC 2047 words are decoded (unknown charsets as UTF-8, else
Windows-1252), dates become aware datetimes (naive ones are taken as UTC; unparseable ones are None),
addresses follow `email.utils.getaddresses`. Text keeps the message's line endings (CRLF, usually).
On malformed headers the hand reader and fast-mail-parser can still differ in details: the hand
reader strips header names and values of any Unicode whitespace, reads undeclared 8-bit bytes as
UTF-8 else Windows-1252, leaves encoded-words in a Message-ID alone, and parses junk address lists
the way `getaddresses` does.

Speed (CPU per message matters: a sync is CPU-bound). The general helpers have fast paths for the
common case, each falling back to the general code for anything else and tested to agree with it:
the header block read with one regex when it is valid UTF-8 (`_read_header_lines` otherwise);
RFC 2047 words on one ASCII line decoded directly (`_decode_words_std`, i.e. `decode_header`,
otherwise); address lists of plain mailboxes read with a regex (`getaddresses` otherwise) and
cached by header value; the usual Date shape parsed by `datetime.fromisoformat`; HTML text whose
lines only need stripping collapsed without splitting every line into words.

fast-mail-parser 0.10.0 quirks, and what is done about them:
- header names keep the case they were written in (`Message-Id` / `Message-ID`): lower-cased here;
  header values come back RFC 2047-decoded (the raw form is not available): re-read by hand when
  the raw form is needed;
- `text_plain`, `text_html`, `to`, ... are rebuilt on every attribute read: each is read once;
- a charset it does not know (`unknown-8bit`, made-up labels) is decoded as ASCII, every 8-bit
  byte becoming U+FFFD, with a "charset-fallback" warning: such messages go to the stdlib;
- a body in an undeclared (or us-ascii) charset is decoded as Windows-1252, so 8-bit UTF-8 becomes
  mojibake ("cafÃ©"): text that round-trips through Windows-1252 into valid UTF-8 is re-decoded;
- a multipart whose boundary never appears, whose boundary is an RFC 2231 parameter in a charset it
  does not know (`boundary*="ansi-x3.4-1968''..."`), or whose parts lack the blank line after their
  headers loses that text without a warning: a multipart with no text, no attachment and some
  non-boundary, non-header line in its body goes to the stdlib;
- a part with a content type lacking its subtype ("text") becomes an attachment (RFC 2045 says
  text/plain): such messages go to the stdlib;
- invalid base64 fails the whole message in a body part (-> stdlib) and, in lazy mode, only the
  attachment's `content` for an attachment (-> the encoded size is reported, with a note);
- `date_parsed` is wrong for a date without seconds or weekday ("1 Jan 2024 10:00 +0200" comes
  back as 10:03:20 UTC), rolls Feb 30 into March and 24:00 into the next day, maps year 0001 to
  2001, and raises ValueError for year 99999: the Date header is parsed here instead;
- one unparseable mailbox empties the whole address list, a From with two mailboxes keeps only the
  first, a name given as a comment ("a@b (Name)") is dropped, and after an RFC 5322 group or an
  empty list element the next address comes back as ", c@z": such headers are re-read with
  `getaddresses`, and addresses are stripped;
- encoded-words in an unknown charset (`=?unknown-8bit?q?...?=`) are left encoded: decoded here;
- raw 8-bit header bytes that are not UTF-8 are read as Latin-1 (a Windows-1252 quote becomes a C1
  control, UTF-8 with one stray byte becomes "cafÃ©"): such header blocks are re-read by hand, as
  UTF-8 with each other byte Windows-1252;
- an attachment's decoded size needs decoding it (`len(content)`, ~2.3x its size in transient
  memory): above `_MEASURE_MAX` it is computed from the encoded size (metadata mode);
- a body-less message has `text_plain == [""]`, and empty parts are listed: empty parts are dropped
  before joining.
"""

from __future__ import annotations

import binascii
import codecs
import email.utils
import html as html_lib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email import quoprimime
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

import fast_mail_parser as fmp

from inboxlink.domain import Address, Attachment, ParsedMessage

__all__ = [
    "KEPT_HEADERS",
    "SNIPPET_LENGTH",
    "attachment_content",
    "html_to_text",
    "normalize_message_id",
    "parse_many",
]

# The header selection stored with each message: lower-cased name -> first value (RFC 2047-decoded).
KEPT_HEADERS = (
    "message-id", "date", "from", "to", "cc", "subject", "in-reply-to", "references", "list-id",
    "list-unsubscribe", "precedence", "auto-submitted", "x-auto-response-suppress", "return-path",
    "delivered-to", "content-type",
)  # fmt: skip
_KEPT = frozenset(KEPT_HEADERS)
# Read as well, but not stored in `headers`.
_WANTED = _KEPT | {"bcc", "reply-to"}
SNIPPET_LENGTH = 200

_FMP_MAX_BYTES = 100 * 1024 * 1024  # fast-mail-parser refuses larger input
_STDLIB_MAX_BYTES = 64 * 1024 * 1024  # above this a refused message gets the raw fallback only
_CHUNK_BYTES = 32 * 1024 * 1024  # bound on what one fast_mail_parser.parse_many call materialises
_HEADER_BLOCK_MAX = 1024 * 1024  # the hand reader looks no further for the end of the headers

_MSGID = re.compile(r"<([^<>]*)>")
_SNIPPET_SOURCE = 4000  # chars of text examined for the snippet

_stdlib_parser = BytesParser(policy=compat32)
_CRLF = compat32.clone(linesep="\r\n")  # to re-serialise an embedded message/rfc822 as on the wire


# --------------------------------------------------------------------------------------------------
# Text decoding helpers


def _c1_as_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode error handler: C1 controls (U+0080-U+009F) back to the byte they came from."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    if all(0x80 <= ord(c) <= 0x9F for c in chunk):
        return chunk.encode("latin-1"), exc.end
    raise exc


codecs.register_error("inboxlink-c1", _c1_as_bytes)


def _cp1252_bytes(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: bytes that are not UTF-8 read as Windows-1252 (Latin-1 where it has no
    character), so valid UTF-8 around a stray byte keeps its meaning ("café" and "\xff" in one
    header)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    return "".join(chr(b) if b in _CP1252_HOLES else bytes([b]).decode("cp1252") for b in chunk), exc.end


_CP1252_HOLES = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})
codecs.register_error("inboxlink-cp1252", _cp1252_bytes)

_ASCII_LABELS = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "646", "iso646-us", "us"})
_UNKNOWN_LABELS = frozenset({"unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined"})
# Labels that in practice mean Windows-1252 (as browsers and fast-mail-parser read them).
_LATIN1_LABELS = frozenset({"iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "cp819",
                            "windows-1252", "cp1252"})  # fmt: skip


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared (possibly bogus) charset -> str, never raising.

    A known charset decodes with replacement characters for bad bytes (Latin-1 is read as its
    superset Windows-1252); an absent, ASCII or unknown one reads UTF-8, and each byte that is not
    UTF-8 as Windows-1252 (or Latin-1, where Windows-1252 has no character): never fails.
    """
    label = charset.strip().strip('"').lower() if charset else ""
    if label in _LATIN1_LABELS:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if label and label not in _ASCII_LABELS and label not in _UNKNOWN_LABELS:
        try:
            return data.decode(label, "replace")
        except Exception:  # LookupError, or a codec that is not a bytes->str text encoding
            pass
    return data.decode("utf-8", "inboxlink-cp1252")


# A UTF-8 lead byte followed by a continuation byte, both seen through Windows-1252. Only looked for
# when one of the lead bytes of Latin-1 letters, symbols and punctuation (Ã, Â, â) is present.
_MOJIBAKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)


def _fix_mojibake(text: str) -> str:
    """Undo UTF-8 bytes decoded as Windows-1252 (fast-mail-parser's default charset)."""
    if text.isascii() or not ("Ã" in text or "Â" in text or "â" in text) or not _MOJIBAKE.search(text):
        return text
    try:
        return text.encode("cp1252", "inboxlink-c1").decode("utf-8")
    except UnicodeError:
        return text


# An RFC 2047 encoded-word, as `email.header.decode_header` finds it (its `ecre`).
_ENCODED_WORD = re.compile(r"=\?([^?]*?)\?([qQbB])\?(.*?)\?=")
# What `str.splitlines` splits an ASCII string at: `decode_header` works line by line.
_ASCII_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e]")
# A "=" that is not a =XX escape: `binascii.a2b_qp` and `quoprimime.header_decode` differ there.
_QP_ODD_EQUALS = re.compile(r"=(?![0-9A-Fa-f]{2})")


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words, with the same fallbacks as bodies for unknown charsets.

    What `_decode_words_std` (`email.header.decode_header`) gives, computed directly for the usual
    value: ASCII on one line. Anything else goes to the stdlib."""
    if "=?" not in value:
        return value
    if value.isascii() and _ASCII_LINE_BREAK.search(value) is None:
        try:
            return _decode_words_line(value)
        except (binascii.Error, ValueError):  # decode_header's HeaderParseError: value kept as is
            return value
    return _decode_words_std(value)


def _decode_words_std(value: str) -> str:
    try:
        chunks = decode_header(value)
    except Exception:
        return value
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(_decode_bytes(chunk, charset))
    return "".join(out)


def _decode_words_line(value: str) -> str:
    """`decode_header` + `_decode_bytes` for one ASCII line: the text before the first encoded-word
    is lstripped; a word whose text is whitespace between two encoded-words is dropped (even an
    encoded one, as `decode_header` does); adjacent encoded-words in the same charset are joined as
    bytes before decoding (a character may straddle two of them)."""
    parts = _ENCODED_WORD.split(value)  # text, (charset, q/b, encoded, text)*
    if len(parts) == 1:
        return value
    if len(parts) == 5:  # one encoded-word: nothing to drop or join
        return parts[0].lstrip() + _decode_bytes(_word_bytes(parts[3], parts[2]), parts[1].lower()) + parts[4]
    words: list[tuple[str, str, str | None]] = []  # (text, charset, encoding or None for plain text)
    text = parts[0].lstrip()
    if text:
        words.append((text, "", None))
    for i in range(1, len(parts), 4):
        words.append((parts[i + 2], parts[i].lower(), parts[i + 1]))
        if parts[i + 3]:
            words.append((parts[i + 3], "", None))
    last = len(words) - 1
    out: list[str] = []
    run = b""
    run_charset: str | None = None  # None: no encoded-word pending
    for k, (text, charset, encoding) in enumerate(words):
        if 0 < k < last and words[k - 1][2] and words[k + 1][2] and text.isspace():
            continue
        if encoding is None:
            if run_charset is not None:
                out.append(_decode_bytes(run, run_charset))
                run_charset = None
            out.append(text)
            continue
        word = _word_bytes(text, encoding)
        if charset == run_charset:
            run += word
        else:
            if run_charset is not None:
                out.append(_decode_bytes(run, run_charset))
            run, run_charset = word, charset
    if run_charset is not None:
        out.append(_decode_bytes(run, run_charset))
    return "".join(out)


def _word_bytes(text: str, encoding: str) -> bytes:
    """An encoded-word's bytes, as `decode_header` decodes them (binascii.Error for bad base64)."""
    if encoding in "qQ":
        if _QP_ODD_EQUALS.search(text) is None:
            return binascii.a2b_qp(text.encode("ascii"), header=True)
        return quoprimime.header_decode(text).encode("latin-1")
    if not text:
        return b""
    if len(text) % 4:
        text += "==="[: 4 - len(text) % 4]
    return binascii.a2b_base64(text.encode("ascii"))


# --------------------------------------------------------------------------------------------------
# HTML -> text, snippet


# <br>, <hr>, and the opening or closing tag of p, div, tr, li, h1-h6, table, blockquote, ul, ol, pre,
# dd, dt (factored: the regex engine tries fewer alternatives at each "<").
_BLOCK_TAG = re.compile(
    r"<(?:/?(?:p|div|tr|li|h[1-6]|table|blockquote|ul|ol|pre|d[dt])|[bh]r)\b[^<>]*+>", re.IGNORECASE
)
_CELL_TAG = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]*+>")
# Comments, scripts, styles and the head, dropped whole: an opener and what closes it. ASCII case
# folding, spelt out (str.lower() would change the length of "İ", shifting every index after it).
_DROP_START = re.compile(r"<(?:(!--)|([sS][cC][rR][iI][pP][tT])|([sS][tT][yY][lL][eE])|([hH][eE][aA][dD])\b)")
_DROP_END = {
    1: re.compile(r"-->"),
    2: re.compile(r"</script", re.IGNORECASE | re.ASCII),
    3: re.compile(r"</style", re.IGNORECASE | re.ASCII),
    4: re.compile(r"</head", re.IGNORECASE | re.ASCII),
}
# Whitespace other than " " and "\n": what str.split() and str.strip() see besides those two.
_ODD_SPACE = re.compile("[\t\x0b\x0c\r\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_BLANK_LINES = re.compile(r"\n\n\n+")


def _drop_blocks(html: str) -> str:
    """Remove comments, scripts, styles and the head, in linear time (unclosed: to the end)."""
    m = _DROP_START.search(html)
    if m is None:
        return html
    out: list[str] = []
    pos = 0
    while m is not None:
        out.append(html[pos : m.start()])
        close = _DROP_END[m.lastindex or 1].search(html, m.end())
        if close is None:
            return " ".join(out)
        gt = html.find(">", close.start())
        pos = len(html) if gt < 0 else gt + 1
        m = _DROP_START.search(html, pos)
    out.append(html[pos:])
    return " ".join(out)


def html_to_text(html: str) -> str:
    """A cheap plain-text rendering of HTML: tags stripped, entities decoded, whitespace collapsed
    (runs of blanks within a line to one space, lines stripped, at most one empty line in a row)."""
    text = _drop_blocks(html)
    text = _BLOCK_TAG.sub("\n", text)
    text = _CELL_TAG.sub(" ", text)
    text = _ANY_TAG.sub("", text)
    if "&" in text:
        text = html_lib.unescape(text)
    return _collapse_whitespace(text)


def _collapse_whitespace(text: str) -> str:
    """`_collapse_lines`, faster when stripping each line is enough (no run of blanks and no odd
    whitespace inside a line: the usual case)."""
    stripped = "\n".join([line.strip() for line in text.split("\n")])
    if "  " not in stripped and _ODD_SPACE.search(stripped) is None:
        return _BLANK_LINES.sub("\n\n", stripped).strip()
    return _collapse_lines(text)


def _collapse_lines(text: str) -> str:
    """Runs of whitespace within a line to one space, lines stripped, at most one empty line in a
    row, no empty line first or last."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# A line that starts the quoted part of a reply, as far as the snippet cares (quotes.fold_quotes is
# the thorough version).
_SNIPPET_STOP = re.compile(
    r"(?:On\s.*\bwrote\s*:|-{2,}\s*(?:Original Message|Forwarded message)|_{8,}$|From:\s.*)",
    re.IGNORECASE,
)
_STOP_INITIALS = frozenset("OoFf-_")


def _may_quote(head: str) -> bool:
    """Whether a quote or reply header could start in `head` (plain substring tests: fastest)."""
    return (
        ">" in head
        or "rote" in head
        or "\nOn " in head
        or "\non " in head
        or "----" in head
        or "____" in head
        or "rom:" in head
        or "ROM:" in head
    )


def _cut(snippet: str) -> str:
    if len(snippet) <= SNIPPET_LENGTH:
        return snippet
    cut = snippet.rfind(" ", SNIPPET_LENGTH - 40, SNIPPET_LENGTH)
    return snippet[: cut if cut > 0 else SNIPPET_LENGTH]


def _snippet(text: str) -> str:
    """The first ~200 characters of the new text: whitespace collapsed, `>` lines and the quoted
    part below an "On ... wrote:" / "-----Original Message-----" / "From:" line left out."""
    head = text[: SNIPPET_LENGTH + 60]
    if not _may_quote(head):
        snippet = " ".join(head.split())  # the common case: no quote starts this early
        if len(snippet) >= SNIPPET_LENGTH or len(head) == len(text):
            return _cut(snippet)
    words: list[str] = []
    size = 0
    prev = ""
    pos = 0
    end = min(len(text), _SNIPPET_SOURCE)
    while pos < end:
        nl = text.find("\n", pos, end)
        if nl < 0:
            nl = end
        line = text[pos:nl].strip()
        pos = nl + 1
        if not line or line[0] == ">":
            prev = line
            continue
        if (line[0] in _STOP_INITIALS and _SNIPPET_STOP.match(line)) or (
            prev[:3].lower() == "on " and line.lower().endswith(("wrote:", "wrote :"))
        ):
            if prev[:3].lower() == "on " and words and words[-1] == prev:
                words.pop()
            break
        words.append(line)
        prev = line
        size += len(line) + 1
        if size > SNIPPET_LENGTH:
            break
    return _cut(" ".join(" ".join(words).split()))


# --------------------------------------------------------------------------------------------------
# Header fields (shared by all tiers)


def _msgids(value: str | None, *, strict: bool) -> list[str]:
    """Message-ids in a header, without brackets. Without any complete `<...>`, whitespace-separated
    tokens are taken instead: those with an "@" when `strict`, else the first one."""
    if not value:
        return []
    if "<" in value:
        ids = _MSGID.findall(value)
        if ids and all(ids) and not any(" " in i or "\t" in i for i in ids):
            return ids
        ids = [m for m in (x.strip() for x in ids) if m]
        if ids:
            return ids
    tokens = value.replace("<", " ").replace(">", " ").split()
    if strict:
        return [t for t in tokens if "@" in t]
    return tokens[:1]


def normalize_message_id(value: str | None) -> str | None:
    """A Message-ID header value as inboxlink stores it: the first `<...>` without its brackets and
    surrounding whitespace; without brackets, the first token; None when nothing is left."""
    if value and value[0] == "<" and value[-1] == ">" and value.count("<") == 1:
        return value[1:-1].strip() or None
    ids = _msgids(value, strict=False)
    return ids[0] if ids else None


def _first_reference(value: str | None) -> str | None:
    if value and value[0] == "<" and value[-1] == ">" and value.count("<") == 1:
        return value[1:-1].strip() or None
    ids = _msgids(value, strict=True)
    return ids[0] if ids else None


def _references(value: str | None) -> list[str]:
    ids = _msgids(value, strict=True)
    return list(dict.fromkeys(ids)) if len(ids) > 1 else ids


# The common shape of a Date header, parsed without the stdlib's general (and slower) parser.
_FAST_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
    r"(?:\s*\([^()]*\))?\s*"
)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
)}  # fmt: skip
_TZ_CACHE: dict[str, tzinfo] = {}


_MONTH_DIGITS = {name: f"{number:02d}" for name, number in _MONTHS.items()}
_MONTH_DIGITS.update({name.title(): digits for name, digits in _MONTH_DIGITS.items()})


def _fast_date(m: re.Match[str]) -> datetime | None:
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    digits = _MONTH_DIGITS.get(mon)
    if digits is not None and oh < "24" and om < "60" and m.string.isascii():
        # What the general branch below computes, via the C ISO parser (~2x as fast); it raises
        # ValueError for the same out-of-range fields.
        return datetime.fromisoformat(f"{year}-{digits}-{day:0>2}T{hh}:{mm}:{ss}{sign}{oh}{om}")
    return _fast_date_fields(m)


def _fast_date_fields(m: re.Match[str]) -> datetime | None:
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    key = sign + oh + om
    tz = _TZ_CACHE.get(key)
    if tz is None:
        offset = timedelta(hours=int(oh), minutes=int(om))
        if offset >= timedelta(hours=24):
            return None
        tz = UTC if not offset else timezone(-offset if sign == "-" else offset)
        if len(_TZ_CACHE) < 256:
            _TZ_CACHE[key] = tz
    return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)


def _date(value: str | None) -> datetime | None:
    """The Date header as an aware datetime (naive -> UTC); None when absent or unparseable."""
    if not value:
        return None
    try:
        m = _FAST_DATE.fullmatch(value)
        if m is not None:
            return _fast_date(m)
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # ValueError, TypeError, IndexError, OverflowError ...
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


# The usual shapes of an address list, read without `getaddresses` when the whole value is made of
# them: `addr-spec`, or `phrase <addr-spec>` / `<addr-spec>` with a phrase of atoms (dots allowed,
# as `getaddresses` does) and quoted strings without escapes; no comments, groups, routes or empty
# elements. Anything else takes the general path, whose results these agree with (tested).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]++"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*+"
# Possessive: a run of atom characters is one word, never re-split while backtracking.
_PHRASE_WORD = r'(?:"[^"\\\r\n]*+"|[^\s()<>@,:;"\[\]\\]++)'
_MAILBOX = (
    rf"(?:({_PHRASE_WORD}(?:[ \t]*+{_PHRASE_WORD})*+)[ \t]*+)?<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM})"
)
_SIMPLE_ADDRESS_LIST = re.compile(rf"[ \t]*+(?:{_MAILBOX})(?:[ \t]*+,[ \t]*+(?:{_MAILBOX}))*+[ \t]*+")
_SIMPLE_MAILBOX = re.compile(_MAILBOX)
_ONE_SIMPLE_MAILBOX = re.compile(rf"[ \t]*+(?:{_MAILBOX})[ \t]*+")
_PHRASE_WORDS = re.compile(r'"([^"]*)"|([^\s"]+)')


# Address lists by header value: the same From / To values recur all through a mailbox.
_ADDRESS_LISTS: dict[str, tuple[Address, ...]] = {}
_ADDRESS_LISTS_MAX = 20_000
_ADDRESS_LIST_CACHED_CHARS = 1000


def _addresses(value: str | None) -> list[Address]:
    """An address header's mailboxes (undecoded value in; names RFC 2047-decoded), as
    `_std_addresses` reads them."""
    if not value:
        return []
    cached = _ADDRESS_LISTS.get(value)
    if cached is not None:
        return list(cached)
    mailboxes: list[tuple[str, str, str]] = []
    one = _ONE_SIMPLE_MAILBOX.fullmatch(value) if "," not in value else None
    if one is not None:
        phrase, addr, bare = one.groups("")
        mailboxes.append((phrase, addr, bare))
    elif _SIMPLE_ADDRESS_LIST.fullmatch(value) is not None:
        mailboxes = _SIMPLE_MAILBOX.findall(value)
    if not mailboxes:
        out = _std_addresses(value)
    else:
        out = []
        for phrase, addr, bare in mailboxes:
            if bare:
                out.append(_address(bare, None))
                continue
            if not phrase:
                name = None
            else:
                if '"' in phrase:
                    phrase = " ".join([q + a for q, a in _PHRASE_WORDS.findall(phrase)])
                elif " " in phrase or "\t" in phrase:
                    phrase = " ".join(phrase.split())
                name = _decode_words(phrase).strip() or None
            out.append(_address(addr, name))
    if len(value) <= _ADDRESS_LIST_CACHED_CHARS:
        if len(_ADDRESS_LISTS) >= _ADDRESS_LISTS_MAX:
            _ADDRESS_LISTS.clear()
        _ADDRESS_LISTS[value] = tuple(out)
    return out


def _std_addresses(value: str | None) -> list[Address]:
    """`email.utils.getaddresses` on a raw (undecoded) header value; names RFC 2047-decoded."""
    if not value:
        return []
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:
        return []
    out = []
    for name, addr in pairs:
        addr = addr.strip()
        if addr:
            out.append(_address(addr, _decode_words(name).strip() or None))
    return out


# The end of the header block: `\r?\n\r?\n`, found from its first `\n` (a literal first character
# makes the regex engine scan fast).
_HEADER_END = re.compile(rb"\n\r?\n")
# One header field (from the start of its line, which the caller marks with a "\n"): a name that
# does not start with whitespace (that would be a continuation line), a colon, the value with its
# continuation lines; or else a line without a colon, which ends the header block (as it does for
# fast-mail-parser and the stdlib) and comes out as ("", ""). Possessive quantifiers: nothing after
# each run could match what it would give back.
_HEADER_FIELD = re.compile(
    r"\n(?:([^\n\t :][^\n:]*+):([^\n]*+(?:\n[\t ][^\n]*+)*+)"  # name: value
    r"|[^\n\t :][^\n]*+)"  # or a line without a colon
)
# Header name as written -> the wanted name it stands for, or "" (names repeat across messages).
_HEADER_KEYS: dict[str, str] = {}


def _header_key(name: str) -> str:
    key = name.strip().lower()
    key = key if key in _WANTED else ""
    if len(_HEADER_KEYS) >= 4096:
        _HEADER_KEYS.clear()
    _HEADER_KEYS[name] = key
    return key


def _header_end(raw: bytes, limit: int) -> tuple[int, int] | None:
    """Where the first blank line in `raw[:limit]` starts (its line break included) and ends. An
    empty first line ends an empty header block, as for fast-mail-parser and the stdlib."""
    if raw[:1] == b"\n":
        return 0, 1
    if raw[:2] == b"\r\n":
        return 0, 2
    m = _HEADER_END.search(raw, 0, limit)
    if m is None:
        return None
    start = m.start()
    return (start - 1 if start and raw[start - 1] == 13 else start), m.end()


def _header_block(raw: bytes) -> bytes:
    end = _header_end(raw, _HEADER_BLOCK_MAX)
    return raw[: end[0]] if end is not None else raw[:_HEADER_BLOCK_MAX]


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_headers(raw: bytes) -> dict[str, str]:
    """The wanted headers of `raw`, read by hand: lower-cased name -> first value, unfolded and
    decoded from bytes (UTF-8, else Windows-1252) but not RFC 2047-decoded. Never raises for bytes.

    A header block that is valid UTF-8 (nearly all) is read with one regex; others line by line
    (`_read_header_lines`, which defines the result: the two agree, tested)."""
    block = _header_block(raw)
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return _read_header_lines(block)
    out: dict[str, str] = {}
    keys = _HEADER_KEYS
    for name, value in _HEADER_FIELD.findall("\n" + text):
        key = keys.get(name)
        if key is None:
            if not name:
                break
            key = _header_key(name)
        if not key or key in out:
            continue
        if "\n" in value:
            out[key] = " ".join([p for p in [line.strip() for line in value.split("\n")] if p])
        else:
            out[key] = value.strip()
    return out


def _read_header_lines(block: bytes) -> dict[str, str]:
    """`_read_headers` for any header block, line by line (a line that is not valid UTF-8 is read as
    Windows-1252, so one stray byte does not spoil the rest). A line without a colon (other than a
    continuation line) ends the headers; a name is compared stripped and lower-cased."""
    out: dict[str, str] = {}
    name: str | None = None
    parts: list[str] = []

    def flush() -> None:
        if name is not None and name in _WANTED and name not in out:
            out[name] = " ".join(p for p in parts if p)

    try:
        lines = block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = [_decode_bytes(line, None) for line in block.split(b"\n")]
    for line in lines:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t"):
            if name is not None:
                parts.append(line.strip())
            continue
        flush()
        key, sep, value = line.partition(":")
        if not sep:  # not a header line: the headers end here
            name = None
            break
        key = key.strip().lower()
        if not key or " " in key:
            name = None
            continue
        name, parts = key, [value.strip()]
    flush()
    return out


def _message(
    hdrs: dict[str, str],
    text: str | None,
    html: str | None,
    snippet: str,
    attachments: list[Attachment],
    headers_only: bool,
    note: str | None,
) -> ParsedMessage:
    """A ParsedMessage: the header fields derived from `_read_headers` output, the rest as given."""
    get = hdrs.get
    headers = hdrs.copy()
    bcc = headers.pop("bcc", None)
    reply_to = headers.pop("reply-to", None)
    for k, value in headers.items():
        if "=?" in value:
            headers[k] = _decode_words(value)
    # (Absent headers are common: no call for them.)
    return ParsedMessage(
        message_id=normalize_message_id(get("message-id")),
        subject=headers.get("subject"),
        date=_date(get("date")),
        from_=_addresses(a) if (a := get("from")) else [],
        to=_addresses(b) if (b := get("to")) else [],
        cc=_addresses(c) if (c := get("cc")) else [],
        bcc=_addresses(bcc) if bcc else [],
        reply_to=_addresses(reply_to) if reply_to else [],
        in_reply_to=_first_reference(irt) if (irt := get("in-reply-to")) else None,
        references=_references(refs) if (refs := get("references")) else [],
        text=text,
        html=html,
        snippet=snippet,
        attachments=attachments,
        headers=headers,
        headers_only=headers_only,
        parse_note=note,
    )


# --------------------------------------------------------------------------------------------------
# Tier 1: fast-mail-parser


class _Retry(Exception):
    """fast-mail-parser's result is known to be lossy: parse with the stdlib instead."""


_ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to")
# Address is frozen, so equal ones can be shared; a mailbox repeats the same few hundred senders.
_ADDRESS_CACHE: dict[tuple[str, str | None], Address] = {}
_ADDRESS_CACHE_MAX = 20_000


def _address(addr: str, name: str | None) -> Address:
    key = (addr, name)
    cached = _ADDRESS_CACHE.get(key)
    if cached is None:
        if len(_ADDRESS_CACHE) >= _ADDRESS_CACHE_MAX:
            _ADDRESS_CACHE.clear()
        cached = _ADDRESS_CACHE[key] = Address(email=addr, name=name)
    return cached


# Attachments larger than this (encoded) are sized from their encoded size rather than decoded just
# to be measured: fast-mail-parser's decode peaks at ~2.3x the decoded size (a 44 MB message with a
# 33 MB attachment: +77 MB RSS), which a sync's peak RSS cannot afford for every large attachment.
_MEASURE_MAX = 4 << 20


def _encoded_sizes(raw: bytes) -> dict[tuple[str | None, int], int]:
    """Decoded sizes of the parts over _MEASURE_MAX, from their encoded size and transfer encoding,
    keyed by (filename, encoded size). fast-mail-parser's metadata mode decodes and keeps nothing.
    Base64 as mail writes it (76-character lines and CRLF: 57 bytes per 78) is within a line of
    exact; any other encoding counts its encoded size (quoted-printable: an upper bound)."""
    try:
        tree = fmp.parse_email_tree(raw, mode="metadata")
    except Exception:
        return {}
    sizes: dict[tuple[str | None, int], int] = {}
    for part in fmp.walk(tree):
        encoded = part.encoded_size  # None for a multipart node
        if part.children or encoded is None or encoded <= _MEASURE_MAX:
            continue
        encoding = next(
            (v for k, v in part.headers.items() if k.lower() == "content-transfer-encoding"), [""]
        )
        base64 = encoding[-1].strip().lower() == "base64" if encoding else False
        sizes[(part.filename or None, encoded)] = encoded * 57 // 78 if base64 else encoded
    return sizes


def _attachments(items: list[fmp.PyLazyAttachment], raw: bytes) -> tuple[list[Attachment], str | None]:
    out = []
    note = None
    large = _encoded_sizes(raw) if any(a.encoded_size > _MEASURE_MAX for a in items) else {}
    for a in items:
        mimetype = a.mimetype
        if "/" not in mimetype:
            # e.g. "Content-Type: text": RFC 2045 says text/plain, fast-mail-parser an attachment
            raise _Retry(f"fast-mail-parser kept an invalid content type {mimetype!r}")
        filename = a.filename
        try:
            estimate = large.get((filename or None, a.encoded_size))
            # exact below _MEASURE_MAX: decoding is native and costs about 1 ns a byte
            size = estimate if estimate is not None else len(a.content)
        except Exception:  # DecodeError: the part's transfer encoding is broken
            size = a.encoded_size
            if note is None:
                note = f"attachment {filename or mimetype!r} could not be decoded; size is its encoded size"
        disposition = a.disposition
        disposition = disposition.lower() if disposition else ""
        cid = a.content_id
        cid = cid.strip() or None if cid else None
        out.append(
            Attachment(
                filename=filename or None,
                content_type=mimetype.lower(),
                size=size,
                content_id=cid,
                inline=disposition == "inline" or (not disposition and cid is not None),
            )
        )
    return out, note


_PART_HEADER = re.compile(rb"[!-9;-~]+:")


def _has_loose_text(raw: bytes) -> bool:
    """Whether the body has a line that is neither blank, a boundary nor a part header: text that a
    multipart parse should have found somewhere."""
    end = _header_end(raw, len(raw))
    if end is None:
        return False
    for line in raw[end[1] : end[1] + 65536].splitlines():
        line = line.strip()
        if line and not line.startswith(b"--") and not _PART_HEADER.match(line):
            return True
    return False


def _nonempty(parts: list[str]) -> list[str]:
    """Body parts to join: the empty ones dropped, unless all are empty (then the first)."""
    if len(parts) > 1:
        return [p for p in parts if p] or parts[:1]
    return parts


# Header name as fast-mail-parser returns it (as written) -> the wanted name, or "".
_FMP_KEYS: dict[str, str] = {}
_ADDRESS_JUNK = frozenset(" \t\r\n,;")


def _fmp_key(name: str) -> str:
    key = name.lower()
    key = key if key in _WANTED else ""
    if len(_FMP_KEYS) >= 4096:
        _FMP_KEYS.clear()
    _FMP_KEYS[name] = key
    return key


def _fmp_addresses(items: list[fmp.PyAddress]) -> list[Address]:
    out = []
    for a in items:
        addr = a.address
        if addr[:1] in _ADDRESS_JUNK or addr[-1:] in _ADDRESS_JUNK:
            addr = addr.strip(" \t\r\n,;")
        if addr:
            name = a.display_name
            if name is not None:
                name = (_decode_words(name) if "=?" in name else name).strip() or None
            out.append(_address(addr, name))
    return out


def _has_text(parts: list[str]) -> bool:
    return any(p and not p.isspace() for p in parts)


def _from_fmp(mail: fmp.PyLazyMail, raw: bytes) -> ParsedMessage:
    """fast-mail-parser's result, checked and completed (see the module docstring)."""
    for w in mail.warnings:
        if w.kind == "charset-fallback":
            raise _Retry("fast-mail-parser did not know a charset")

    # The wanted headers' first values (RFC 2047-decoded by fast-mail-parser). Reading `headers`
    # builds the dict (every header, every value) once; it is the cheapest way to the rest.
    sel: dict[str, str] = {}
    keys = _FMP_KEYS
    for name, values in mail.headers.items():
        key = keys.get(name)
        if key is None:
            key = _fmp_key(name)
        if key and key not in sel and values:
            sel[key] = values[0]

    # Header bytes that are not UTF-8 (8-bit legacy charsets, a stray byte in UTF-8): fast-mail-
    # parser reads them as Latin-1; the hand reader as UTF-8 with each other byte Windows-1252.
    raw_headers: dict[str, str] | None = None
    if any(not v.isascii() for v in sel.values()) and not _utf8(block := _header_block(raw)):
        raw_headers = _read_header_lines(block)  # what _read_headers does for a non-UTF-8 block
        for key, fmp_value in sel.items():
            own = raw_headers.get(key)
            if not fmp_value.isascii() and own is not None and not own.isascii():
                sel[key] = own

    # Addresses: fast-mail-parser's, unless it visibly lost some (see module docstring).
    lists: list[list[Address]] = []
    for hname in _ADDRESS_HEADERS:
        value = sel.get(hname)
        if not value:
            lists.append([])
            continue
        if hname == "from":
            from_ = mail.from_
            addrs = _fmp_addresses([from_]) if from_ is not None else []
        elif hname == "to":
            addrs = _fmp_addresses(mail.to)
        elif hname == "cc":
            addrs = _fmp_addresses(mail.cc)
        elif hname == "bcc":
            addrs = _fmp_addresses(mail.bcc)
        else:
            addrs = _fmp_addresses(mail.reply_to)
        # Re-read when a mailbox is missing, or a name given as a comment ("a@b (Name)") was lost.
        if (
            not addrs
            or value.count("@") > len(addrs)
            or ("(" in value and any(a.name is None for a in addrs))
        ):
            if raw_headers is None:
                raw_headers = _read_headers(raw)
            std = _std_addresses(raw_headers.get(hname))
            if len(std) >= len(addrs):
                addrs = std
        lists.append(addrs)

    plain_parts = _nonempty(mail.text_plain)
    html_parts = _nonempty(mail.text_html)
    fmp_atts = mail.attachments
    if (
        not fmp_atts
        and sel.get("content-type", "").lstrip()[:10].lower() == "multipart/"
        and not _has_text(plain_parts)
        and not _has_text(html_parts)
        and _has_loose_text(raw)
    ):
        # The boundary never appears, is an RFC 2231 parameter, or parts lost their body.
        raise _Retry("fast-mail-parser found no text in a multipart body")
    text = html = None
    if plain_parts:
        text = "\n".join([_fix_mojibake(p) for p in plain_parts])
    if html_parts:
        html = "\n".join([_fix_mojibake(p) for p in html_parts])
        if not text:
            text = html_to_text(html)
    attachments, note = _attachments(fmp_atts, raw) if fmp_atts else ([], None)

    message_id = normalize_message_id(sel.get("message-id"))
    in_reply_to = _first_reference(sel.get("in-reply-to"))
    references = _references(sel.get("references"))
    date = _date(sel.get("date"))
    # What is left of `sel` is the stored selection; encoded-words fast-mail-parser left alone
    # (unknown charsets) are decoded, as in the other tiers.
    sel.pop("bcc", None)
    sel.pop("reply-to", None)
    for k, v in sel.items():
        if "=?" in v:
            sel[k] = _decode_words(v)
    return ParsedMessage(
        message_id=message_id,
        subject=sel.get("subject"),
        date=date,
        from_=lists[0],
        to=lists[1],
        cc=lists[2],
        bcc=lists[3],
        reply_to=lists[4],
        in_reply_to=in_reply_to,
        references=references,
        text=text,
        html=html,
        snippet=_snippet(text) if text else "",
        attachments=attachments,
        headers=sel,
        headers_only=False,
        parse_note=note,
    )


def _headers_only(raw: bytes) -> ParsedMessage:
    """A header block (or a whole message, of which only the headers are read): read by hand, which
    is what the other tiers do with headers anyway; fast-mail-parser would add nothing."""
    return _message(_read_headers(raw), None, None, "", [], True, None)


# --------------------------------------------------------------------------------------------------
# Tier 2: the stdlib; tier 3: headers read by hand


def _part_filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return _decode_words(name).strip() or None if name else None


def _part_charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:
        return None


def _stdlib_body(
    msg: Message, contents: list[bytes | None] | None = None
) -> tuple[list[str], list[str], list[Attachment], str | None]:
    """Texts, HTML parts and attachments of `msg`; with `contents`, each attachment's decoded bytes
    are appended to it too, in the same order."""
    texts: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    note = None
    stack: list[Message] = [msg]
    while stack:
        part = stack.pop()
        ctype = part.get_content_type()
        payload = part.get_payload()
        if isinstance(payload, list):
            if not ctype.startswith("multipart/"):  # message/rfc822, delivery-status ...
                embedded = b""
                inner = payload[0] if payload else None
                if isinstance(inner, Message):
                    try:
                        embedded = inner.as_bytes(policy=_CRLF)
                    except Exception:
                        embedded = b""
                attachments.append(
                    Attachment(filename=_part_filename(part), content_type=ctype, size=len(embedded))
                )
                if contents is not None:
                    contents.append(embedded)
            else:
                stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = b""
        try:
            disposition = part.get_content_disposition()
        except Exception:
            disposition = None
        if ctype.startswith("multipart/"):
            # The boundary never appears: keep what there is as text.
            texts.append(_decode_bytes(data, _part_charset(part)))
            note = "the multipart boundary never appears; its body is kept as text"
        elif ctype in ("text/plain", "text/html") and disposition != "attachment":
            decoded = _fix_mojibake(_decode_bytes(data, _part_charset(part)))
            (texts if ctype == "text/plain" else htmls).append(decoded)
        else:
            cid_raw = part.get("Content-ID")
            cid = str(cid_raw).strip().strip("<>").strip() or None if cid_raw else None
            attachments.append(
                Attachment(
                    filename=_part_filename(part),
                    content_type=ctype,
                    size=len(data),
                    content_id=cid,
                    inline=disposition == "inline" or (disposition is None and cid is not None),
                )
            )
            if contents is not None:
                contents.append(data)
    return texts, htmls, attachments, note


def _from_stdlib(raw: bytes, headers_only: bool, reason: str) -> ParsedMessage:
    hdrs = _read_headers(raw)
    text = html = None
    snippet = ""
    attachments: list[Attachment] = []
    note = f"{reason}; parsed with the stdlib"
    if not headers_only:
        msg = _stdlib_parser.parsebytes(raw)
        texts, htmls, attachments, body_note = _stdlib_body(msg)
        if body_note:
            note = f"{note}; {body_note}"
        if texts:
            text = "\n".join([t for t in texts if t] or texts[:1])
        if htmls:
            html = "\n".join([h for h in htmls if h] or htmls[:1])
            if not text:
                text = html_to_text(html)
        if text:
            snippet = _snippet(text)
    return _message(hdrs, text, html, snippet, attachments, headers_only, note)


def _raw_fallback(raw: object, headers_only: bool, reason: str) -> ParsedMessage:
    note = f"{reason}; only the header lines were read"
    if isinstance(raw, bytes):
        try:
            return _message(_read_headers(raw), None, None, "", [], headers_only, note)
        except Exception as exc:
            note = f"{reason}; the headers could not be read either ({type(exc).__name__})"
    return _message({}, None, None, "", [], headers_only, note)


def _fallback(raw: bytes, headers_only: bool, reason: str) -> ParsedMessage:
    if headers_only or len(raw) <= _STDLIB_MAX_BYTES:
        try:
            return _from_stdlib(raw, headers_only, reason)
        except Exception as exc:
            reason = f"{reason}; the stdlib failed too ({type(exc).__name__}: {exc})"
    else:
        reason = f"{reason}; too large for the stdlib fallback"
    return _raw_fallback(raw, headers_only, reason)


# --------------------------------------------------------------------------------------------------
# Entry point


def _as_bytes(raw: object) -> bytes | None:
    if type(raw) is bytes:
        return raw
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return raw.encode("utf-8", "replace")
    return None


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit)


def _fmp_batch(payloads: list[str | bytes]) -> Sequence[fmp.PyLazyMail | BaseException]:
    """fast_mail_parser.parse_many, or one parse_email per message if the batch call itself fails.
    (A Rust panic surfaces as pyo3's PanicException, which derives from BaseException.)"""
    batch: Sequence[fmp.PyLazyMail | BaseException] = []
    try:
        batch = fmp.parse_many(payloads, mode="lazy")
    except BaseException as exc:
        if _is_fatal(exc):
            raise
    if len(batch) == len(payloads):
        return batch
    results: list[fmp.PyLazyMail | BaseException] = []
    for payload in payloads:
        try:
            results.append(fmp.parse_email(payload, mode="lazy"))
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            results.append(exc)
    return results


def _convert(result: fmp.PyLazyMail | BaseException, raw: bytes) -> ParsedMessage:
    if isinstance(result, BaseException):
        return _fallback(raw, False, f"fast-mail-parser: {type(result).__name__}: {result}")
    try:
        return _from_fmp(result, raw)
    except _Retry as exc:
        return _fallback(raw, False, str(exc))
    except Exception as exc:
        return _fallback(raw, False, f"reading fast-mail-parser's result failed: {exc!r}")


def attachment_content(raw: bytes, index: int) -> tuple[Attachment, bytes | None] | None:
    """Attachment `index` of the message, as `parse_many` lists it, with its decoded bytes (None
    when its transfer encoding is broken); None when the message has no such attachment. The same
    tier reads the message as in `parse_many`, so indexes match the stored list."""
    if len(raw) <= _FMP_MAX_BYTES:
        result = _fmp_batch([raw])[0]
        if not isinstance(result, BaseException):
            try:
                listed = _from_fmp(result, raw).attachments
            except Exception:  # _Retry and the like: the stdlib tier read it
                listed = None
            if listed is not None:
                if not 0 <= index < len(listed):
                    return None
                try:
                    data: bytes | None = bytes(result.attachments[index].content)
                except Exception:  # DecodeError: listed with its encoded size
                    data = None
                return listed[index], data
    if len(raw) > _STDLIB_MAX_BYTES:
        return None
    try:
        _read_headers(raw)  # as `_from_stdlib`: when this fails, the raw fallback lists nothing
        contents: list[bytes | None] = []
        _texts, _htmls, attachments, _note = _stdlib_body(_stdlib_parser.parsebytes(raw), contents)
    except Exception:  # the raw fallback: no attachments were listed
        return None
    if not 0 <= index < len(attachments):
        return None
    return attachments[index], contents[index]


def parse_many(raws: Sequence[bytes], *, headers_only: bool = False) -> list[ParsedMessage]:
    """Parse a batch of raw messages (or header blocks, with `headers_only`). Never raises for bad
    input; returns exactly one `ParsedMessage` per input, in order.

    Allocation-heavy: a caller parsing many batches in a row should pause the cyclic garbage
    collector around them, as the sync engine does (it is about a third of the Python-side time).
    """
    if headers_only:
        return _parse_headers_only(raws)
    return _parse_many(raws)


def _parse_headers_only(raws: Sequence[bytes]) -> list[ParsedMessage]:
    out = []
    for item in raws:
        raw = _as_bytes(item)
        if raw is None:
            out.append(_raw_fallback(None, True, f"input is {type(item).__name__}, not bytes"))
            continue
        try:
            out.append(_headers_only(raw))
        except Exception as exc:
            out.append(_raw_fallback(raw, True, f"reading the headers failed: {exc!r}"))
    return out


def _parse_many(raws: Sequence[bytes]) -> list[ParsedMessage]:
    out: list[ParsedMessage | None] = [None] * len(raws)
    chunk: list[tuple[int, bytes]] = []
    chunk_bytes = 0
    for i, item in enumerate(raws):
        raw = _as_bytes(item)
        if raw is None:
            out[i] = _raw_fallback(None, False, f"input is {type(item).__name__}, not bytes")
        elif len(raw) > _FMP_MAX_BYTES:
            out[i] = _fallback(raw, False, "larger than fast-mail-parser accepts")
        else:
            chunk.append((i, raw))
            chunk_bytes += len(raw)
            if chunk_bytes >= _CHUNK_BYTES:
                _run_chunk(chunk, out)
                chunk, chunk_bytes = [], 0
    if chunk:
        _run_chunk(chunk, out)
    return [p if p is not None else _raw_fallback(None, False, "not parsed") for p in out]


def _run_chunk(chunk: list[tuple[int, bytes]], out: list[ParsedMessage | None]) -> None:
    payloads: list[str | bytes] = [raw for _, raw in chunk]
    results: list[fmp.PyLazyMail | BaseException | None] = list(_fmp_batch(payloads))
    for k, (i, raw) in enumerate(chunk):
        result, results[k] = results[k], None  # freed as soon as it is used, while still in cache
        if result is not None:
            out[i] = _convert(result, raw)
