"""The compiled scanner's column buffers as Arrow arrays, zero-copy. Pure.

`connector._native.scan` (C, see `_native.c`) reads whole frames and writes each column's
offsets, bytes and presence flags into contiguous buffers; here they become arrays without a
Python object per observation. What it leaves out (odd observations, bailed frames) is the
caller's to route to the Python paths.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from connector import _native
from connector.records import Columns, FrameMeta
from connector.schema import SCHEMA, UTC_US

# The order in which _native.c returns its buffers (its enum).
_BUFFERS = [
    "src_off",
    "src_data",
    "col_off",
    "col_data",
    "spec_off",
    "spec_data",
    "track_off",
    "track_data",
    "ts_us",
    "name_off",
    "name_data",
    "name_valid",
    "lon",
    "lat",
    "elev",
    "elev_valid",
    "st_list",
    "st_valid",
    "st_key_off",
    "st_key_data",
    "st_val_off",
    "st_val_data",
    "lv_list",
    "lv_valid",
    "lv_key_off",
    "lv_key_data",
    "lv_val_off",
    "lv_val_data",
    "style_off",
    "style_data",
    "style_valid",
    "extra_off",
    "extra_data",
    "extra_valid",
]


@dataclass
class Scanned:
    rows: int
    counts: list[int]  # per frame: observations kept in the columns; -1: frame left whole
    odd: list[tuple[int, int, int, int]]  # (frame, index in frame, start, end) of the rest
    columns: dict[str, pa.Array]  # observation columns, `extra` included


def scan(raws: Sequence[bytes]) -> Scanned:
    rows, counts, odd, buffers = _native.scan(raws)
    b = {
        name: None if buffer is None else pa.py_buffer(buffer)
        for name, buffer in zip(_BUFFERS, buffers, strict=True)
    }

    def text(prefix: str, valid: pa.Buffer | None = None) -> pa.Array:
        return pa.Array.from_buffers(
            pa.string(), rows, [valid, b[f"{prefix}_off"], b[f"{prefix}_data"]]
        )

    def floats(name: str, valid: pa.Buffer | None = None) -> pa.Array:
        return pa.Array.from_buffers(pa.float64(), rows, [valid, b[name]])

    def properties(prefix: str) -> pa.Array:
        offsets = pa.Array.from_buffers(pa.int32(), rows + 1, [None, b[f"{prefix}_list"]])
        entries = offsets[-1].as_py()
        keys = pa.Array.from_buffers(
            pa.string(), entries, [None, b[f"{prefix}_key_off"], b[f"{prefix}_key_data"]]
        )
        values = pa.Array.from_buffers(
            pa.string(), entries, [None, b[f"{prefix}_val_off"], b[f"{prefix}_val_data"]]
        )
        valid = b[f"{prefix}_valid"]
        absent = None
        if valid is not None:  # MapArray takes a mask (true: null), not a validity bitmap
            absent = pc.invert(pa.Array.from_buffers(pa.bool_(), rows, [None, valid]))
        return pa.MapArray.from_arrays(offsets, keys, values, mask=absent)

    columns = {
        "source_system_id": text("src"),
        "collection_id": text("col"),
        "observation_spec_id": text("spec"),
        "track_id": text("track"),
        "timestamp": pa.Array.from_buffers(UTC_US, rows, [None, b["ts_us"]]),
        "longitude": floats("lon"),
        "latitude": floats("lat"),
        "elevation": floats("elev", b["elev_valid"]),
        "name": text("name", b["name_valid"]),
        "static_properties": properties("st"),
        "live_properties": properties("lv"),
        "style": text("style", b["style_valid"]),
        # Written by the scanner as the general path writes it; null in nearly every row.
        "extra": text("extra", b["extra_valid"]),
    }
    return Scanned(rows, counts, odd, columns)


def table(scanned: Scanned, frames: Sequence[tuple[FrameMeta, bytes]]) -> pa.Table:
    """The scanned rows as a table of SCHEMA."""
    counts = [
        (meta, count) for (meta, _), count in zip(frames, scanned.counts, strict=True) if count > 0
    ]
    arrays = {
        **scanned.columns,
        **_frame_columns(counts),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in SCHEMA], schema=SCHEMA)


def to_general_path(
    scanned: Scanned, frames: Sequence[tuple[FrameMeta, bytes]], slow: Columns
) -> None:
    """The observations the scanner left out, by their verbatim text, frame by frame."""
    for frame, spans in itertools.groupby(scanned.odd, key=lambda span: span[0]):
        meta, raw = frames[frame]
        slow.add_observations(meta, [(index, raw[start:end]) for _, index, start, end in spans])


def _frame_columns(counts: list[tuple[FrameMeta, int]]) -> dict[str, pa.Array]:
    """Per-frame values, repeated for each of the frame's rows by run-end decoding (in C++)."""
    run_ends = pa.array(itertools.accumulate(count for _, count in counts), pa.int64())

    def runs(values: list[object], dtype: pa.DataType) -> pa.Array:
        encoded = pa.RunEndEncodedArray.from_arrays(run_ends, pa.array(values, dtype))
        return pc.run_end_decode(encoded)

    return {
        "subscription": runs([m.subscription for m, _ in counts], pa.string()),
        "subscription_id": runs([m.subscription_id for m, _ in counts], pa.string()),
        "origin": runs([m.origin for m, _ in counts], pa.string()),
        "received_at": runs([m.received_at_us for m, _ in counts], pa.int64()).cast(UTC_US),
        "seq": runs([m.seq for m, _ in counts], pa.int64()),
    }
