"""ISO-8601 timestamps with 0-9 fractional digits and zones; the canonical output form."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.timeparse import format_us, parse_timestamp_ns, parse_timestamp_us

BASE_NS = int(datetime(2024, 6, 24, 17, 0, 0, tzinfo=UTC).timestamp()) * 10**9


@pytest.mark.parametrize("digits", range(10))
def test_zero_to_nine_fractional_digits(digits: int) -> None:
    fraction = "123456789"[:digits]
    text = "2024-06-24T17:00:00" + (f".{fraction}" if digits else "") + "Z"
    assert parse_timestamp_ns(text) == BASE_NS + int(fraction.ljust(9, "0") or 0)


@pytest.mark.parametrize(
    ("text", "shift_minutes"),
    [
        ("2024-06-24T17:00:00Z", 0),
        ("2024-06-24t17:00:00z", 0),
        ("2024-06-24 17:00:00Z", 0),
        ("2024-06-24T17:00:00+00:00", 0),
        ("2024-06-24T17:00:00-00:00", 0),
        ("2024-06-24T19:00:00+02:00", 0),
        ("2024-06-24T12:00:00-0500", 0),
        ("2024-06-24T22:30:00+05:30", 0),
        ("2024-06-25T16:59:00+23:59", 0),
        ("2024-06-24T18:00:00Z", 60),
    ],
)
def test_offsets_give_the_same_instant(text: str, shift_minutes: int) -> None:
    assert parse_timestamp_ns(text) == BASE_NS + shift_minutes * 60 * 10**9


def test_comma_fraction_and_truncation_to_microseconds() -> None:
    assert parse_timestamp_ns("2024-06-24T17:00:00,5Z") == BASE_NS + 500_000_000
    assert parse_timestamp_us("2024-06-24T17:00:00.123456999Z") == BASE_NS // 1000 + 123456
    # Floor, not round, also before the epoch.
    assert parse_timestamp_us("1969-12-31T23:59:59.9999999Z") == -1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-06-24",
        "2024-06-24T17:00:00",  # no zone: refused, not guessed
        "2024-06-24T17:00Z",
        "2024-06-24T17:00:00.Z",
        "2024-06-24T17:00:00.1234567890Z",  # ten digits
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-06-24T24:00:00Z",
        "2024-06-24T17:00:60Z",
        "2024-06-24T17:00:00+24:00",  # offsets stop at 23:59
        "2024-06-24T17:00:00+01:60",
        "2024-06-24T17:00:00+1:00",
        "24-06-24T17:00:00Z",
        " 2024-06-24T17:00:00Z",
        "2024-06-24T17:00:00Z ",
        "2024-06-24T17:00:00ZZ",
        "٢٠٢٤-06-24T17:00:00Z",  # Arabic-Indic digits are not ISO-8601
        "\uff12\uff10\uff12\uff14-06-24T17:00:00Z",  # nor are full-width ones
        "0001-01-01T00:00:00+01:00",  # before year 1 once the offset is applied
        "9999-12-31T23:30:00-01:00",  # after year 9999
    ],
)
def test_invalid_strings_give_none(text: str) -> None:
    assert parse_timestamp_ns(text) is None
    assert parse_timestamp_us(text) is None


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:00.000001Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
        (500_000, "1970-01-01T00:00:00.5Z"),
        (BASE_NS // 1000 + 120_000, "2024-06-24T17:00:00.12Z"),
        (-62135596800 * 10**6, "0001-01-01T00:00:00Z"),  # zero-padded year
        (253402300799 * 10**6 + 999_999, "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_format_us_canonical_form(us: int, text: str) -> None:
    assert format_us(us) == text
    assert parse_timestamp_us(text) == us


CANONICAL_US = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,5}[1-9])?Z", re.ASCII)
MIN_US = -62135596800 * 10**6
MAX_US = 253402300799 * 10**6 + 999_999


@given(st.integers(MIN_US, MAX_US))
def test_format_us_round_trips(us: int) -> None:
    text = format_us(us)
    assert parse_timestamp_us(text) == us
    assert CANONICAL_US.fullmatch(text), text


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_offsets_against_datetime(naive: datetime, offset_minutes: int) -> None:
    """An independent oracle: datetime's own offset arithmetic."""
    sign = "+" if offset_minutes >= 0 else "-"
    hh, mm = divmod(abs(offset_minutes), 60)
    text = naive.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0") + f"{sign}{hh:02d}:{mm:02d}"
    text = f"{naive.year:04d}" + text[text.index("-") :]
    aware = naive.replace(tzinfo=UTC) - timedelta(minutes=offset_minutes)
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parse_timestamp_us(text) == expected
