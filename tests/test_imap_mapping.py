"""The FETCH fast paths in providers/imap/mapping.py agree with the general code they shortcut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from inboxlink.providers.imap import mapping

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.booleans(),
)
def test_internaldate_fast_path_agrees(when: datetime, minutes: int, space_padded: bool) -> None:
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    day = f"{when.day:2d}" if space_padded else f"{when.day:02d}"
    text = f"{day}-{_MONTHS[when.month - 1]}-{when.year:04d} {when:%H:%M:%S} {zone}".encode()
    mapping._DATES.clear()
    fast = mapping._internaldate(text)
    assert fast == mapping.parse_internaldate(text)
    assert fast is not None and fast.utcoffset() == timedelta(minutes=minutes)
    assert mapping._internaldate(text) is fast  # remembered


@given(st.binary(max_size=30))
def test_internaldate_junk_agrees(text: bytes) -> None:
    mapping._DATES.clear()
    assert mapping._internaldate(text) == mapping.parse_internaldate(text)


def test_usual_items_match_the_general_reader() -> None:
    text = b'UID 42 FLAGS (\\Seen $Label1) INTERNALDATE "04-Dec-2026 19:21:00 +0100" RFC822.SIZE 1234 '
    fast: dict[bytes, object] = {}
    assert mapping._items(text, fast)
    general: dict[bytes, object] = {}
    assert mapping._items(b"X-ORDER " + text, general)  # not the usual shape: the per-item searches
    assert (
        fast
        == general
        == {
            b"UID": 42,
            b"FLAGS": (b"\\Seen", b"$Label1"),
            b"INTERNALDATE": datetime(2026, 12, 4, 18, 21, tzinfo=UTC).astimezone(
                timezone(timedelta(hours=1))
            ),
            b"RFC822.SIZE": 1234,
        }
    )


def test_flag_lists_are_remembered_and_drop_recent() -> None:
    first = mapping.flags_from_wire((b"\\Seen", b"\\Recent"))
    assert first == frozenset({"\\Seen"})
    assert mapping.flags_from_wire((b"\\Seen", b"\\Recent")) is first
    assert mapping.flags_from_wire([b"\\Flagged"]) == frozenset({"\\Flagged"})
