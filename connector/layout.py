"""Where things land under the sink root: Hive partition folders and deterministic names. Pure
(no pyarrow: the receiving process uses it too)."""

from __future__ import annotations

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


def partition_dir(spec: str, date: str, hour: int) -> str:
    # Percent-encoding keeps a '/' or '=' in a spec id from creating bogus partitions.
    return f"{SPEC_PREFIX}{quote(spec, safe='')}/date={date}/hour={hour:02d}"
