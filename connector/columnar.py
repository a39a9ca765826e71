"""Frames -> Arrow table of the fixed schema, a batch at a time. Pure: no I/O.

Two paths. The compiled scanner (`native`) reads whole frames straight into column buffers and
takes every observation it can hold exactly; that is all of them when they are shaped as
documented. What it leaves out goes to `records.Columns`, the general, lossless Python path:
single odd observations (an unknown or explicitly-null field, integer coordinates, a timestamp
with a zone other than Z, a repeated propertyType, ...) by their verbatim text, and whole frames
it does not take at all (not valid JSON, invalid UTF-8, an unusual envelope, nesting deeper than
it follows). Both paths produce the same rows: a differential Hypothesis test holds them to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from connector import native
from connector.records import Columns, FrameMeta, Rejected


@dataclass
class Converted:
    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    slow_rows: int = 0  # rows that took the general path (a figure for the benchmark)


def convert(frames: Sequence[tuple[FrameMeta, bytes]]) -> Converted:
    """One table (schema SCHEMA, rows in no particular order) for the frames' observations."""
    slow = Columns()
    scanned = native.scan([raw for _, raw in frames])
    table = native.table(scanned, frames) if scanned.rows else None
    whole = [pair for pair, count in zip(frames, scanned.counts, strict=True) if count < 0]
    native.to_general_path(scanned, frames, slow)
    for meta, raw in whole:
        slow.add_frame(meta, raw)
    slow_table = slow.to_table()
    if table is None:
        table = slow_table
    elif slow_table.num_rows:
        table = pa.concat_tables([table, slow_table])
    return Converted(table, slow.rejected, slow_table.num_rows)
