"""Where things land under the sink root: Hive partition folders and deterministic names. Pure
(no pyarrow: the receiving process uses it too)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

DEAD_LETTER_DIR = "_dead_letter"
LEDGER_DIR = "_ledger"


def file_stem(writer_id: str, first: int, last: int) -> str:
    """Derived from the cut, so a replay after a crash rewrites the same names (no duplicates)."""
    return f"{writer_id}-{first:012d}-{last:012d}"


SPEC_PREFIX = "observation_spec_id="
_HOUR_US = 3_600_000_000


def hour_dirs(start_us: int, end_us: int) -> list[str]:
    """`date=.../hour=..` folder names (below any spec's folder) of every hour in the range."""
    out = []
    hour = start_us // _HOUR_US * _HOUR_US
    while hour <= end_us:
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=hour)
        out.append(f"date={at.date().isoformat()}/hour={at.hour:02d}")
        hour += _HOUR_US
    return out


# A folder name must fit every store: 255 bytes on local file systems (with our prefix), and
# S3 keys are at most 1,024 bytes in all.
MAX_VALUE_BYTES = 160


def partition_dir(spec: str, date: str, hour: int) -> str:
    return f"{SPEC_PREFIX}{partition_value(spec)}/date={date}/hour={hour:02d}"


def partition_value(value: str) -> str:
    """Path-safe and bounded: percent-encoded (a '/' or '=' cannot create bogus partitions, a
    lone surrogate cannot break the path), and a value too long for a folder name is cut and
    suffixed with a hash of the whole, so distinct values keep distinct folders. The column in
    the file keeps the value itself."""
    encoded = _quote(value)
    if len(encoded) <= MAX_VALUE_BYTES:
        return encoded
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head, room = [], MAX_VALUE_BYTES - len(digest) - 1
    for char in value:  # whole characters: never half a UTF-8 sequence or an escape
        piece = _quote(char)
        if len(piece) > room:
            break
        head.append(piece)
        room -= len(piece)
    return f"{''.join(head)}~{digest}"


def _quote(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")
