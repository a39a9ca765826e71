"""GeoParquet 1.1: each row's point as WKB plus a bbox covering, and the file's `geo` metadata.

Built per row group with Arrow kernels, no Python object per row: a 2D WKB point is 21 bytes
(byte order 1 = little endian, geometry type 1 = Point, x, y), and Arrow's float64 buffers are
already little-endian x and y, so the column is one `binary_join_element_wise` of a constant
header and the two coordinate buffers viewed as 8-byte binaries (zero-copy). Pure: no I/O.
"""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.compute as pc

from connector.schema import BBOX as BBOX_TYPE
from connector.schema import FILE_SCHEMA

GEOMETRY = "geometry"
BBOX = "bbox"
FIELDS = [FILE_SCHEMA.field(GEOMETRY), FILE_SCHEMA.field(BBOX)]
_POINT_HEADER = pa.scalar(b"\x01\x01\x00\x00\x00", pa.binary())  # little endian, Point
assert sys.byteorder == "little", "WKB is built from the machine's float64 bytes"


def _as_bytes(values: pa.Array) -> pa.Array:
    """A float64 array's values viewed as 8-byte binaries, without copying them."""
    values = values.cast(pa.float64())
    if values.offset or values.null_count:  # views need the buffer from its start, no nulls
        values = pa.concat_arrays([values])
    view = pa.Array.from_buffers(pa.binary(8), len(values), [None, values.buffers()[1]])
    return view.cast(pa.binary())


def points(longitude: pa.Array, latitude: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(WKB point, bbox struct) columns for these coordinates."""
    wkb = pc.binary_join_element_wise(
        _POINT_HEADER, _as_bytes(longitude), _as_bytes(latitude), pa.scalar(b"", pa.binary())
    )
    bbox = pa.StructArray.from_arrays(
        [longitude, latitude, longitude, latitude], fields=list(BBOX_TYPE)
    )
    return wkb, bbox


def with_points(table: pa.Table) -> pa.Table:
    """The table with its `geometry` and `bbox` columns appended."""
    lon = table.column("longitude").combine_chunks()
    lat = table.column("latitude").combine_chunks()
    wkb, bbox = points(lon, lat)
    return table.append_column(FIELDS[0], wkb).append_column(FIELDS[1], bbox)


def file_schema(schema: pa.Schema, table: pa.Table) -> pa.Schema:
    """`schema` plus the point columns and the GeoParquet metadata (with this file's bbox)."""
    metadata = dict(schema.metadata or {})
    metadata[b"geo"] = json.dumps(_metadata(table), separators=(",", ":")).encode()
    return pa.schema([*schema, *FIELDS], metadata=metadata)


def _metadata(table: pa.Table) -> dict[str, object]:
    column: dict[str, object] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        # The 1.1 covering: readers prune row groups by the bbox column's statistics.
        "covering": {
            BBOX: {key: [BBOX, key] for key in ("xmin", "ymin", "xmax", "ymax")},
        },
    }
    if table.num_rows:
        lon = pc.min_max(table.column("longitude"))
        lat = pc.min_max(table.column("latitude"))
        column["bbox"] = [
            lon["min"].as_py(),
            lat["min"].as_py(),
            lon["max"].as_py(),
            lat["max"].as_py(),
        ]
    # No "crs": GeoParquet's default is OGC:CRS84 (longitude, latitude on WGS84).
    return {"version": "1.1.0", "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}
