"""ISO-8601 UTC timestamps with 0-9 fractional digits, to integer microseconds. Pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})\Z",
    re.IGNORECASE | re.ASCII,
)


def parse_timestamp_ns(text: str) -> int | None:
    """Nanoseconds since the epoch, or None when `text` is not an ISO-8601 timestamp with a zone.

    A timestamp without a zone is refused rather than guessed: the API promises UTC.
    """
    m = _RE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    if zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            return None
        try:
            dt -= sign * timedelta(hours=hours, minutes=minutes)
        except OverflowError:  # the offset moves the instant out of years 1-9999
            return None
    delta = dt - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


_UTC_Z = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z\Z", re.ASCII)
_DAYS: dict[str, int | None] = {}


def parse_z(text: str) -> tuple[int, bool] | None:
    """Fast path for `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`: (nanoseconds, canonical), where canonical
    means format_us would write the same text. None for any other spelling (the caller then
    takes parse_timestamp_ns). Per-observation hot path: a regex and a cached day number."""
    m = _UTC_Z.match(text)
    if m is None:
        return None
    date, hh, mm, ss, frac = m.groups()
    days = _DAYS.get(date, -1)
    if days == -1:
        try:
            days = (datetime.fromisoformat(date + "T00:00:00+00:00") - _EPOCH).days
        except ValueError:
            days = None
        if len(_DAYS) < 10_000:
            _DAYS[date] = days
    hours, minutes, seconds = int(hh), int(mm), int(ss)
    if days is None or hours > 23 or minutes > 59 or seconds > 59:
        return None
    whole = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if not frac:
        return whole * 1_000_000_000, True
    canonical = len(frac) <= 6 and frac[-1] != "0"
    return whole * 1_000_000_000 + int(frac.ljust(9, "0")), canonical


def parse_timestamp_us(text: str) -> int | None:
    ns = parse_timestamp_ns(text)
    return None if ns is None else ns // 1000


def format_us(us: int) -> str:
    """Canonical form: seconds, then a fraction only when there is one, trailing zeros dropped."""
    seconds, micros = divmod(us, 1_000_000)
    # isoformat, not strftime("%Y"): glibc does not zero-pad years below 1000.
    base = (_EPOCH + timedelta(seconds=seconds)).replace(tzinfo=None).isoformat()
    if micros:
        base += "." + f"{micros:06d}".rstrip("0")
    return base + "Z"
