"""Split a plain-text reply into what the sender wrote and the quoted history below it.

`fold_quotes(text)` returns `(new_text, quoted_tail)`; the tail is None when nothing was recognised.
Recognised, in this order:

1. a reply header that introduces the quoted message:
   - "On <date>, <someone> wrote:" (Gmail, Apple Mail, Thunderbird; may wrap over up to three
     lines) and its French/German/Spanish/Dutch forms,
   - "-----Original Message-----" (Outlook plain text, also "Forwarded message"),
   - an Outlook header block: "From: ..." followed within three lines by "Sent:"/"Date:"
     (also "Von:/Gesendet:", "De:/Envoyé:"), optionally after a line of underscores;
2. otherwise a trailing block of `>`-quoted lines (blank lines allowed inside it).

An attribution line followed by a mix of `>` lines and unquoted lines is an inline (interleaved)
reply and is not folded there. If folding would leave no new text at all (a bare forward), nothing
is folded. Everything is linear in the size of the text: one multi-line regex scan finds candidate
lines, and only those are examined.
"""

from __future__ import annotations

import re

# Lines that may begin a reply header. Checked further before being believed.
_CANDIDATE = re.compile(
    r"^[ \t]*(?:"
    r"(?P<attr>(?:On|Le|Am|El|Op)\b[^\n]*)"
    r"|(?P<orig>-{2,}[ \t]*(?:Original Message|Forwarded message|Ursprüngliche Nachricht|Message d'origine)"
    r"[ \t]*-{2,}[^\n]*)"
    r"|(?P<rule>_{8,}[ \t\r]*)"
    r"|(?P<from>(?:\*\s*)?(?:From|Von|De|Van)\s*:(?:\*)?[ \t]*\S[^\n]*)"
    r")$",
    re.MULTILINE | re.IGNORECASE,
)
# The end of an attribution, once its (possibly wrapped) lines are joined with spaces.
_ATTR_END = re.compile(
    r"(?:\bwrote|a écrit|schrieb|escribió|schreef|написал|ha scritto)\s*:\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FIELD = re.compile(
    r"[ \t]*(?:\*\s*)?(?:Sent|Date|Gesendet|Datum|Envoyé|Enviado|Verzonden)\s*:", re.IGNORECASE
)
_QUOTED_LINE = re.compile(r"^[ \t]*>", re.MULTILINE)
# Candidates examined before giving up on headers (keeps hostile input linear).
_MAX_CANDIDATES = 50


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end + 1


def _attribution_end(text: str, start: int) -> int | None:
    """If an attribution starts at `start`, the offset just after its last line."""
    end = start
    joined = ""
    for _ in range(3):
        if end >= len(text):
            return None
        nxt = _line_end(text, end)
        line = text[end:nxt].strip()
        if not line or line.startswith(">"):
            return None
        joined = f"{joined} {line}" if joined else line
        end = nxt
        if _ATTR_END.search(joined):
            return end
    return None


def _is_outlook_header(text: str, start: int) -> bool:
    """A "From:" line with a "Sent:"/"Date:" line within the next three lines."""
    pos = _line_end(text, start)
    for _ in range(3):
        if pos >= len(text):
            return False
        nxt = _line_end(text, pos)
        if _OUTLOOK_FIELD.match(text, pos, nxt):
            return True
        pos = nxt
    return False


def _not_interleaved(tail: str) -> bool:
    """False for an interleaved reply: both `>` lines and unquoted non-blank lines below."""
    if not _QUOTED_LINE.search(tail):
        return True
    return all(not line.strip() or line.lstrip().startswith(">") for line in tail.splitlines())


def _split(text: str, at: int) -> tuple[str, str | None]:
    new = text[:at].rstrip()
    if not new.strip():
        return text, None
    return new, text[at:]


def fold_quotes(text: str) -> tuple[str, str | None]:
    """Split `text` into (new text, quoted tail). The tail is None when no quote was recognised."""
    for n, m in enumerate(_CANDIDATE.finditer(text)):
        if n >= _MAX_CANDIDATES:
            break
        start = m.start()
        if m.group("attr") is not None:
            end = _attribution_end(text, start)
            if end is not None and _not_interleaved(text[end:]):
                return _split(text, start)
        elif m.group("orig") is not None:
            return _split(text, start)
        elif m.group("rule") is not None:
            nxt = _line_end(text, start)
            following = _CANDIDATE.match(text, nxt)
            if following is not None and following.group("from") is not None:
                return _split(text, start)
        elif _is_outlook_header(text, start):
            return _split(text, start)
    return _fold_trailing_quote(text)


def _fold_trailing_quote(text: str) -> tuple[str, str | None]:
    """Fold a block of `>` lines (and blank lines) at the very end of the text."""
    lines = text.splitlines(keepends=True)
    i = len(lines)
    quoted = False
    while i > 0:
        stripped = lines[i - 1].strip()
        if stripped.startswith(">"):
            quoted = True
        elif stripped:
            break
        i -= 1
    if not quoted:
        return text, None
    # Leave blank lines that precede the block with the new text (rstripped away by _split).
    while i < len(lines) and not lines[i].strip():
        i += 1
    return _split(text, sum(len(line) for line in lines[:i]))
