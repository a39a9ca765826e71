"""The one observation schema. Single source of truth; `schemas/observation.json` mirrors it."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")
PROPERTIES = pa.map_(pa.string(), pa.string())

# (name, type, nullable, origin in the wire format, meaning)
COLUMNS: list[tuple[str, pa.DataType, bool, str, str]] = [
    ("source_system_id", pa.string(), False, "sourceSystemId", "system that produced the track"),
    ("collection_id", pa.string(), False, "collectionId", "collection within the source system"),
    ("observation_spec_id", pa.string(), False, "observationSpecId", "observation spec (schema)"),
    ("track_id", pa.string(), False, "trackId", "track within the collection"),
    ("timestamp", UTC_US, False, "timestamp", "observation time, UTC, microseconds"),
    ("longitude", pa.float64(), False, "position.longitude", "WGS84 degrees"),
    ("latitude", pa.float64(), False, "position.latitude", "WGS84 degrees"),
    ("elevation", pa.float64(), True, "position.elevation", "metres; null when absent"),
    ("name", pa.string(), True, "name", "entity name; null when absent or null"),
    (
        "static_properties",
        PROPERTIES,
        True,
        "staticProperties",
        'propertyType -> value as JSON text (12 vs "12" stay distinct)',
    ),
    (
        "live_properties",
        PROPERTIES,
        True,
        "liveProperties",
        "propertyType -> value as JSON text",
    ),
    ("style", pa.string(), True, "style", "the style object as JSON text; null when absent"),
    ("extra", pa.string(), True, "(any)", "JSON object of what the typed columns cannot hold"),
    ("subscription", pa.string(), False, "(config)", "configured subscription name"),
    ("subscription_id", pa.string(), True, "data.id", "server's subscription id; null on backfill"),
    ("origin", pa.string(), False, "(connector)", "stream or backfill"),
    ("received_at", UTC_US, False, "(connector)", "when the connector received the frame"),
    ("seq", pa.int64(), False, "(connector)", "spool sequence number of the frame (lineage)"),
]

BBOX = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])
# Derived from longitude/latitude when a file is written (connector.geo): GeoParquet 1.1.
GEO_COLUMNS: list[tuple[str, pa.DataType, bool, str, str]] = [
    ("geometry", pa.binary(), False, "position", "the point as WKB (GeoParquet 1.1, OGC:CRS84)"),
    ("bbox", BBOX, False, "position", "the point's box: GeoParquet 1.1 covering, prunes by space"),
]
VERSION = 2  # 2: the GeoParquet columns; files of version 1 lack them (read with union_by_name)

# Iceberg field ids, written into every file as PARQUET:field_id so that table readers match
# columns by id, never by name. A contract like the names: never reuse or renumber one; a new
# column takes the next free number. Top-level columns first, then nested fields in column
# order: the order Iceberg itself assigns fresh ids in, so a table created from this schema
# gets these very ids (connector.icebergschema checks that it did).
FIELD_IDS: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            *(c[0] for c in COLUMNS),
            *(c[0] for c in GEO_COLUMNS),
            "static_properties.key",
            "static_properties.value",
            "live_properties.key",
            "live_properties.value",
            "bbox.xmin",
            "bbox.ymin",
            "bbox.xmax",
            "bbox.ymax",
        ],
        start=1,
    )
}
FIELD_ID_KEY = b"PARQUET:field_id"


def _with_id(f: pa.Field, path: str = "") -> pa.Field:
    """`f` (and its children) carrying their field ids in the field metadata."""
    path = f"{path}.{f.name}" if path else f.name
    dtype = f.type
    if pa.types.is_map(dtype):
        dtype = pa.map_(_with_id(dtype.key_field, path), _with_id(dtype.item_field, path))
    elif pa.types.is_struct(dtype):
        dtype = pa.struct([_with_id(child, path) for child in dtype])
    metadata = {**(f.metadata or {}), FIELD_ID_KEY: str(FIELD_IDS[path]).encode()}
    return pa.field(f.name, dtype, nullable=f.nullable, metadata=metadata)


# What conversion produces; files hold these plus GEO_COLUMNS (FILE_SCHEMA).
SCHEMA = pa.schema(
    [_with_id(pa.field(name, dtype, nullable=n)) for name, dtype, n, _, _ in COLUMNS],
    metadata={"gotham_connector.schema_version": str(VERSION)},
)
FILE_SCHEMA = pa.schema(
    [*SCHEMA, *(_with_id(pa.field(n, t, nullable=null)) for n, t, null, _, _ in GEO_COLUMNS)],
    metadata=SCHEMA.metadata,
)

IDENTITY = ("source_system_id", "collection_id", "observation_spec_id", "track_id", "timestamp")


def schema_document() -> dict[str, Any]:
    """The published, readable form of SCHEMA (kept equal to the code by a test)."""
    return {
        "name": "gotham_observation",
        "version": VERSION,
        "partitioning": ["observation_spec_id", "date", "hour"],
        "sort_order": ["track_id", "timestamp"],
        "identity": list(IDENTITY),
        "columns": [
            {
                "name": name,
                "type": str(dtype),
                "nullable": nullable,
                "origin": origin,
                "meaning": meaning,
            }
            for name, dtype, nullable, origin, meaning in [*COLUMNS, *GEO_COLUMNS]
        ],
    }


def schema_json() -> str:
    return json.dumps(schema_document(), indent=2, ensure_ascii=False) + "\n"
