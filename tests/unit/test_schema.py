"""The published schema artefact equals the code, and the code has the contracted columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from connector.schema import FILE_SCHEMA, IDENTITY, SCHEMA, schema_document, schema_json

ARTEFACT = Path(__file__).resolve().parents[2] / "schemas" / "observation.json"

UTC_US = pa.timestamp("us", tz="UTC")
REQUIRED = {
    "source_system_id": pa.string(),
    "collection_id": pa.string(),
    "observation_spec_id": pa.string(),
    "track_id": pa.string(),
    "timestamp": UTC_US,
    "longitude": pa.float64(),
    "latitude": pa.float64(),
    "elevation": pa.float64(),
    "name": pa.string(),
    "static_properties": pa.map_(pa.string(), pa.string()),
    "live_properties": pa.map_(pa.string(), pa.string()),
    "style": pa.string(),
    "subscription": pa.string(),
    "subscription_id": pa.string(),
    "received_at": UTC_US,
    "extra": pa.string(),
}
NULLABLE = {
    "elevation",
    "name",
    "static_properties",
    "live_properties",
    "style",
    "extra",
    "subscription_id",
}


def test_published_artefact_is_exactly_the_code() -> None:
    assert ARTEFACT.read_text(encoding="utf-8") == schema_json(), (
        "schemas/observation.json is stale: regenerate it from connector.schema.schema_json()"
    )


def test_artefact_describes_every_schema_field_in_order() -> None:
    doc = json.loads(ARTEFACT.read_text(encoding="utf-8"))
    # The artefact describes the files: the converted columns, then the GeoParquet ones.
    assert [c["name"] for c in doc["columns"]] == FILE_SCHEMA.names
    assert FILE_SCHEMA.names[: len(SCHEMA)] == SCHEMA.names
    for column, schema_field in zip(doc["columns"], FILE_SCHEMA, strict=True):
        assert column["type"] == str(schema_field.type)
        assert column["nullable"] is schema_field.nullable
        assert column["meaning"]
    assert doc["version"] == int(SCHEMA.metadata[b"gotham_connector.schema_version"])
    assert doc["identity"] == list(IDENTITY)
    assert doc == schema_document()


def test_schema_has_the_required_columns_with_their_types() -> None:
    for name, dtype in REQUIRED.items():
        assert name in SCHEMA.names, name
        assert SCHEMA.field(name).type == dtype, name
    assert str(SCHEMA.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(SCHEMA.field("received_at").type) == "timestamp[us, tz=UTC]"


def test_nullability_follows_the_wire_format() -> None:
    for name in REQUIRED:
        assert SCHEMA.field(name).nullable is (name in NULLABLE), name


def test_identity_columns_exist_and_are_required() -> None:
    for name in IDENTITY:
        assert not SCHEMA.field(name).nullable
