"""Arrow table -> GeoParquet bytes. Knows nothing about paths or stores."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from connector import geo


def encode(
    table: pa.Table,
    *,
    compression: str,
    level: int | None = None,
    row_group_rows: int = 10_000,
    order: pa.Array | None = None,
) -> pa.Buffer:
    """The file's bytes. With `order` (row indices), rows are written in that order, taken a
    row group at a time: memory holds one sorted row group, not a sorted copy of the table.
    The point columns (`geo`) are added a row group at a time too."""
    sink = pa.BufferOutputStream()
    schema = geo.file_schema(table.schema, table)
    with pq.ParquetWriter(
        sink,
        schema,
        compression=None if compression == "none" else compression,
        compression_level=level,
        # Dictionaries pay off for repeated text (ids, property names and values); for floats
        # and times they are tried and abandoned. Measured: 20% less CPU, 20% smaller files.
        use_dictionary=_text_columns(table.schema),
        # Statistics of the bbox struct's leaves are the GeoParquet 1.1 covering readers prune by.
        # Page indexes and statistics let DuckDB skip row groups by time and track.
        write_statistics=_statistics_columns(schema),
        write_page_index=True,
    ) as writer:
        for start in range(0, table.num_rows, row_group_rows):
            piece = (
                table.slice(start, row_group_rows)
                if order is None
                else table.take(order.slice(start, row_group_rows))
            )
            writer.write_table(
                geo.with_points(piece).replace_schema_metadata(schema.metadata),
                row_group_size=row_group_rows,
            )
    return sink.getvalue()


# Min/max of these prune nothing: WKB bytes (the bbox covering prunes by place), map entries
# and the `extra` JSON text. Leaving them out measured ~0.1 us/observation less encoding.
_NO_STATISTICS = {"geometry", "extra"}


def _statistics_columns(schema: pa.Schema) -> list[str]:
    paths = []
    for f in schema:
        if f.name in _NO_STATISTICS or pa.types.is_map(f.type):
            continue
        if pa.types.is_struct(f.type):
            paths += [f"{f.name}.{child.name}" for child in f.type]
        else:
            paths.append(f.name)
    return paths


def _text_columns(schema: pa.Schema) -> list[str]:
    paths = []
    for f in schema:
        if pa.types.is_string(f.type):
            paths.append(f.name)
        elif pa.types.is_map(f.type):
            paths += [f"{f.name}.key_value.key", f"{f.name}.key_value.value"]
    return paths
