"""A subset of Gmail's search syntax for ``messages.list``/``threads.list`` ``q``.

Supported: terms joined by AND (juxtaposition), ``-term`` negation, ``"quoted phrases"``, and the
operators ``in:`` (inbox, sent, drafts, trash, spam, starred, important, anywhere, chats),
``is:`` (unread, read, starred, important), ``label:`` (name, with ``-``/``_`` for spaces/slashes,
or id), ``category:`` (primary, social, promotions, updates, forums), ``from:``, ``to:``, ``cc:``,
``bcc:``, ``subject:``, ``after:``/``before:`` (``YYYY/MM/DD`` read as UTC midnight, or epoch
seconds), ``newer_than:``/``older_than:`` (``Nd``, ``Nm``, ``Ny``), ``has:attachment``,
``filename:``, ``rfc822msgid:``, ``larger:``/``smaller:`` (bytes, ``K``/``M`` suffix). Free words
match case-insensitively anywhere in the subject, addresses, body text or attachment names.
Not supported: ``OR``, ``{}``, parentheses, ``AROUND``, ``deliveredto:``, ``list:``, time zones
(Gmail reads dates in the account's zone).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .mime import ParsedMessage

CATEGORY = {
    "primary": "CATEGORY_PERSONAL",
    "personal": "CATEGORY_PERSONAL",
    "social": "CATEGORY_SOCIAL",
    "promotions": "CATEGORY_PROMOTIONS",
    "updates": "CATEGORY_UPDATES",
    "forums": "CATEGORY_FORUMS",
}
IN_LABEL = {
    "inbox": "INBOX",
    "sent": "SENT",
    "drafts": "DRAFT",
    "draft": "DRAFT",
    "trash": "TRASH",
    "spam": "SPAM",
    "starred": "STARRED",
    "important": "IMPORTANT",
    "chats": "CHAT",
    "unread": "UNREAD",
}


class QueryError(ValueError):
    pass


class Searchable(Protocol):
    @property
    def label_ids(self) -> list[str]: ...
    @property
    def internal_date(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def parsed(self) -> ParsedMessage: ...


Predicate = Callable[[Searchable], bool]


@dataclass
class Query:
    predicates: list[Predicate]
    #: the query names in:trash/in:spam/in:anywhere, which lifts the default spam/trash exclusion
    wants_spam_trash: bool

    def matches(self, msg: Searchable) -> bool:
        return all(p(msg) for p in self.predicates)


def _date_ms(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    m = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if not m:
        raise QueryError(f"bad date {value!r}")
    day = dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=dt.UTC)
    return int(day.timestamp() * 1000)


def _relative_ms(value: str) -> int:
    m = re.fullmatch(r"(\d+)([dmyh])", value.lower())
    if not m:
        raise QueryError(f"bad relative date {value!r}")
    unit = {"h": 3600, "d": 86400, "m": 31 * 86400, "y": 366 * 86400}[m[2]]
    return int(m[1]) * unit * 1000


def _size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmM]?)", value)
    if not m:
        raise QueryError(f"bad size {value!r}")
    return int(m[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m[2].lower()]


def _addr_match(addrs: list[tuple[str, str]], needle: str) -> bool:
    needle = needle.lower()
    return any(needle in name.lower() or needle in addr.lower() for name, addr in addrs)


def compile_query(q: str, *, now_ms: int, label_resolver: Callable[[str], str | None]) -> Query:
    try:
        tokens = shlex.split(q, posix=True)
    except ValueError as exc:
        raise QueryError(str(exc)) from exc
    predicates: list[Predicate] = []
    wants_spam_trash = False
    for token in tokens:
        negate = token.startswith("-") and len(token) > 1
        if negate:
            token = token[1:]
        key, sep, value = token.partition(":")
        key = key.lower() if sep else ""
        pred: Predicate
        if key == "in" and value.lower() == "anywhere":
            wants_spam_trash = True
            continue
        if key == "in" and value.lower() in IN_LABEL:
            label = IN_LABEL[value.lower()]
            wants_spam_trash = wants_spam_trash or label in ("SPAM", "TRASH")
            pred = _has_label(label)
        elif key == "is" and value.lower() in ("unread", "starred", "important"):
            pred = _has_label(value.upper())
        elif key == "is" and value.lower() == "read":
            pred = _not(_has_label("UNREAD"))
        elif key == "label":
            label_id = label_resolver(value)
            if label_id is None:
                pred = _never
            else:
                wants_spam_trash = wants_spam_trash or label_id in ("SPAM", "TRASH")
                pred = _has_label(label_id)
        elif key == "category" and value.lower() in CATEGORY:
            pred = _has_label(CATEGORY[value.lower()])
        elif key in ("from", "to", "cc", "bcc"):
            pred = _addr_pred(key, value)
        elif key == "subject":
            pred = _subject_pred(value.lower())
        elif key in ("after", "before", "newer_than", "older_than"):
            bound = _date_ms(value) if key in ("after", "before") else now_ms - _relative_ms(value)
            pred = _date_pred(bound, key in ("after", "newer_than"))
        elif key == "has" and value.lower() == "attachment":
            pred = _has_attachment
        elif key == "filename":
            pred = _filename_pred(value.lower())
        elif key == "rfc822msgid":
            pred = _msgid_pred(value.strip("<>"))
        elif key in ("larger", "smaller"):
            pred = _size_pred(_size(value), key == "larger")
        else:
            pred = _text_pred(token)
        predicates.append(_not(pred) if negate else pred)
    return Query(predicates, wants_spam_trash)


def _subject_pred(needle: str) -> Predicate:
    return lambda m: needle in m.parsed.subject.lower()


def _date_pred(bound: int, after: bool) -> Predicate:
    if after:
        return lambda m: m.internal_date >= bound
    return lambda m: m.internal_date < bound


def _has_attachment(m: Searchable) -> bool:
    return bool(m.parsed.attachments)


def _filename_pred(needle: str) -> Predicate:
    return lambda m: any(needle in a.filename.lower() for a in m.parsed.attachments)


def _msgid_pred(mid: str) -> Predicate:
    return lambda m: m.parsed.message_id.strip("<>") == mid


def _size_pred(limit: int, larger: bool) -> Predicate:
    if larger:
        return lambda m: m.size > limit
    return lambda m: m.size < limit


def _has_label(label: str) -> Predicate:
    return lambda m: label in m.label_ids


def _never(_: Searchable) -> bool:
    return False


def _not(pred: Predicate) -> Predicate:
    return lambda m: not pred(m)


def _addr_pred(key: str, value: str) -> Predicate:
    def pred(m: Searchable) -> bool:
        p = m.parsed
        addrs = {"from": p.from_addrs, "to": p.to_addrs, "cc": p.cc_addrs, "bcc": p.bcc_addrs}[key]
        return _addr_match(addrs, value)

    return pred


def _text_pred(word: str) -> Predicate:
    needle = word.lower()

    def pred(m: Searchable) -> bool:
        p = m.parsed
        hay = [p.subject, p.text, *(a.filename for a in p.attachments)]
        hay += [f"{n} {a}" for n, a in p.from_addrs + p.to_addrs + p.cc_addrs]
        return any(needle in h.lower() for h in hay)

    return pred
