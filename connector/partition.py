"""A cut's table -> its Hive partitions, each with its row order. Converter-side (pyarrow)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from connector.layout import partition_dir

HOUR_US = 3_600_000_000
SORT_KEYS = [("track_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")]


def split(table: pa.Table) -> Iterator[tuple[str, pa.Table, pa.Array]]:
    """(folder, rows, order) per (observation_spec_id, UTC date, hour of `timestamp`): late rows
    land in their own (older) partition. `order` sorts the rows by (track_id, timestamp, seq);
    the caller applies it a row group at a time, so no sorted copy of a whole cut is made."""
    if table.num_rows == 0:
        return
    spec_range, time_range = (
        pc.min_max(table["observation_spec_id"]),
        pc.min_max(table["timestamp"]),
    )
    first_hour, last_hour = (time_range[end].value // HOUR_US for end in ("min", "max"))
    if spec_range["min"] == spec_range["max"] and first_hour == last_hour:
        # The common case, found with two min/max scans: one spec, one hour, no copy. (Rounding
        # every row down to its hour first cost ~0.07 us per observation.)
        specs = [spec_range["min"].as_py()]
        starts = [time_range["min"].as_py().replace(minute=0, second=0, microsecond=0)]
    else:
        hours = pc.floor_temporal(table["timestamp"], unit="hour")
        keyed = table.append_column("_hour", hours)
        groups = keyed.group_by(["observation_spec_id", "_hour"]).aggregate([])
        specs, starts = groups["observation_spec_id"].to_pylist(), groups["_hour"].to_pylist()
    for spec, hour in zip(specs, starts, strict=True):
        if len(specs) == 1:
            part = table
        else:
            mask = pc.and_(
                pc.equal(keyed["observation_spec_id"], spec), pc.equal(keyed["_hour"], hour)
            )
            part = table.filter(mask)
        order = pc.sort_indices(part, sort_keys=SORT_KEYS)
        yield partition_dir(spec, hour.date().isoformat(), hour.hour), part, order
