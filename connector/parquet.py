"""Arrow table -> Parquet bytes. Knows nothing about paths or stores."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


def encode(
    table: pa.Table,
    *,
    compression: str,
    level: int | None = None,
    row_group_rows: int = 100_000,
    order: pa.Array | None = None,
) -> pa.Buffer:
    """The file's bytes. With `order` (row indices), rows are written in that order, taken a
    row group at a time: memory holds one sorted row group, not a sorted copy of the table."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression=None if compression == "none" else compression,
        compression_level=level,
        # Dictionaries pay off for repeated text (ids, property names and values); for floats
        # and times they are tried and abandoned. Measured: 20% less CPU, 20% smaller files.
        use_dictionary=_text_columns(table.schema),
        # Page indexes and statistics let DuckDB skip row groups by time and track.
        write_statistics=True,
        write_page_index=True,
    ) as writer:
        if order is None:
            writer.write_table(table, row_group_size=row_group_rows)
        else:
            for start in range(0, len(order), row_group_rows):
                piece = table.take(order.slice(start, row_group_rows))
                writer.write_table(piece, row_group_size=row_group_rows)
    return sink.getvalue()


def _text_columns(schema: pa.Schema) -> list[str]:
    paths = []
    for f in schema:
        if pa.types.is_string(f.type):
            paths.append(f.name)
        elif pa.types.is_map(f.type):
            paths += [f"{f.name}.key_value.key", f"{f.name}.key_value.value"]
    return paths
