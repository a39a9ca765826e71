"""Arrow table -> Parquet bytes. Knows nothing about paths or stores."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


def encode(
    table: pa.Table, *, compression: str, level: int | None = None, row_group_rows: int = 100_000
) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=None if compression == "none" else compression,
        compression_level=level,
        row_group_size=row_group_rows,
        # Page indexes and statistics let DuckDB skip row groups by time and track.
        write_statistics=True,
        write_page_index=True,
    )
    return bytes(sink.getvalue())
