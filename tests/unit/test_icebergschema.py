"""The table's shape comes from the one observation schema, and the checks that a table and a
file fit it say what does not."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import load_catalog
from pyiceberg.schema import Schema
from pyiceberg.types import BinaryType, LongType, NestedField, StringType

from connector.icebergschema import (
    PARTITION_SPEC,
    SORT_ORDER,
    file_problem,
    iceberg_schema,
    table_problems,
    table_properties,
)
from connector.schema import FIELD_ID_KEY, FIELD_IDS, FILE_SCHEMA


def test_the_iceberg_schema_carries_the_files_field_ids() -> None:
    schema = iceberg_schema()
    assert {name: schema.find_field(name).field_id for name in FIELD_IDS} == FIELD_IDS
    assert schema.find_field("geometry").field_type == BinaryType()  # WKB: v2 has no geometry
    assert str(schema.find_field("timestamp").field_type) == "timestamptz"
    assert schema.find_field("track_id").required and not schema.find_field("name").required
    assert [f.source_id for f in PARTITION_SPEC.fields] == [FIELD_IDS["observation_spec_id"], 5]
    assert [f.source_id for f in SORT_ORDER.fields] == [FIELD_IDS["track_id"], 5]
    assert table_properties()["format-version"] == "2"


def test_ids_are_stable_numbers() -> None:
    # A contract: renumbering breaks every table and file written before.
    assert FIELD_IDS["source_system_id"] == 1 and FIELD_IDS["seq"] == 18
    assert FIELD_IDS["geometry"] == 19 and FIELD_IDS["bbox"] == 20
    assert FIELD_IDS["static_properties.key"] == 21 and FIELD_IDS["bbox.ymax"] == 28
    assert sorted(FIELD_IDS.values()) == list(range(1, len(FIELD_IDS) + 1))


def test_a_table_of_another_shape_is_described(tmp_path: Path) -> None:
    catalog = load_catalog(
        "t", type="sql", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/w"
    )
    catalog.create_namespace("ns")
    other = Schema(
        NestedField(1, "source_system_id", StringType(), required=True),
        NestedField(2, "seq", LongType(), required=True),
        NestedField(3, "collection_id", LongType(), required=False),
    )
    problems = table_problems(catalog.create_table("ns.other", other))
    assert "column seq has field id 2, the files 18" in problems
    assert "column collection_id has field id 3, the files 2" in problems
    assert "column geometry is missing" in problems
    assert table_problems(catalog.create_table("ns.ours", iceberg_schema())) == []


def test_file_problems_name_the_column() -> None:
    schema = iceberg_schema()
    assert file_problem(FILE_SCHEMA, schema) is None
    old = pa.schema([f for f in FILE_SCHEMA if f.name not in ("geometry", "bbox")])
    assert file_problem(old, schema) == "no column geometry (written by an older connector?)"
    extra = FILE_SCHEMA.append(pa.field("surprise", pa.string()))
    assert file_problem(extra, schema) == "column surprise is not in the table"
    moved = FILE_SCHEMA.set(0, FILE_SCHEMA.field(0).with_metadata({FIELD_ID_KEY: b"99"}))
    assert file_problem(moved, schema) == "column source_system_id has field id 99, the table 1"
    unnamed = pa.schema([f.remove_metadata() for f in FILE_SCHEMA])
    assert file_problem(unnamed, schema) is None  # read by the table's name mapping
