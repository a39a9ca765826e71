"""Where things land under the sink root: Hive partitions and deterministic names. Pure."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

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


def split(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Partition rows by (observation_spec_id, UTC date, hour of `timestamp`), each sorted by
    (track_id, timestamp): late rows land in their own (older) partition."""
    if table.num_rows == 0:
        return
    hours = pc.floor_temporal(table["timestamp"], unit="hour")
    keyed = table.append_column("_hour", hours)
    groups = keyed.group_by(["observation_spec_id", "_hour"]).aggregate([])
    for spec, hour in zip(
        groups["observation_spec_id"].to_pylist(), groups["_hour"].to_pylist(), strict=True
    ):
        mask = pc.and_(pc.equal(keyed["observation_spec_id"], spec), pc.equal(keyed["_hour"], hour))
        part = keyed.filter(mask).drop_columns(["_hour"])
        part = part.sort_by(
            [("track_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")]
        )
        yield partition_dir(spec, hour.date().isoformat(), hour.hour), part
