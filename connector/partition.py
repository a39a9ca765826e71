"""A cut's table -> its Hive partitions, each with its row order. Converter-side (pyarrow)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from connector.layout import partition_dir

SORT_KEYS = [("track_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")]


def split(table: pa.Table) -> Iterator[tuple[str, pa.Table, pa.Array]]:
    """(folder, rows, order) per (observation_spec_id, UTC date, hour of `timestamp`): late rows
    land in their own (older) partition. `order` sorts the rows by (track_id, timestamp, seq);
    the caller applies it a row group at a time, so no sorted copy of a whole cut is made."""
    if table.num_rows == 0:
        return
    hours = pc.floor_temporal(table["timestamp"], unit="hour")
    spec_range, hour_range = pc.min_max(table["observation_spec_id"]), pc.min_max(hours)
    if spec_range["min"] == spec_range["max"] and hour_range["min"] == hour_range["max"]:
        # The common case, found with two min/max scans: one spec, one hour, no copy.
        specs, starts = [spec_range["min"].as_py()], [hour_range["min"].as_py()]
    else:
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
