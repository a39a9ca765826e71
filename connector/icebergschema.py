"""The Iceberg table's shape: schema, partitioning, sort order and properties, derived from the
one observation schema (connector.schema), and the checks that a table and a file fit it.

The Iceberg schema is pyiceberg's reading of FILE_SCHEMA with the field ids the files carry,
so the table and the files cannot disagree. `geometry` is `binary` (WKB, OGC:CRS84): Iceberg's
own geometry type needs format version 3, which few engines read yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import HourTransform, IdentityTransform
from pyiceberg.types import NestedField, PrimitiveType

from connector import __version__
from connector.schema import FIELD_ID_KEY, FIELD_IDS, FILE_SCHEMA

if TYPE_CHECKING:
    from pyiceberg.table import Table

# Partition field ids start at 1000 by Iceberg's convention.
PARTITION_SPEC = PartitionSpec(
    # The files' own Hive folders: each file holds one spec id and one UTC hour.
    PartitionField(
        FIELD_IDS["observation_spec_id"], 1000, IdentityTransform(), "observation_spec_id"
    ),
    PartitionField(FIELD_IDS["timestamp"], 1001, HourTransform(), "timestamp_hour"),
)
# How rows are sorted inside every file (connector.partition).
SORT_ORDER = SortOrder(
    SortField(FIELD_IDS["track_id"], IdentityTransform()),
    SortField(FIELD_IDS["timestamp"], IdentityTransform()),
)
VERSION_PROPERTY = "gotham-connector.version"


def iceberg_schema() -> Schema:
    return pyarrow_to_schema(FILE_SCHEMA)


def table_properties() -> dict[str, str]:
    schema = iceberg_schema()
    return {
        "format-version": "2",
        VERSION_PROPERTY: __version__,  # the connector version that created the table
        # Files landed before field ids were written (registered by `iceberg sync`) are read
        # by column name.
        "schema.name-mapping.default": schema.name_mapping.model_dump_json(),
        # WKB bounds prune nothing (the bbox columns do): engines rewriting files skip them.
        "write.metadata.metrics.column.geometry": "none",
    }


def table_problems(table: Table) -> list[str]:
    """Why our files cannot be committed to `table` (empty when they can): each of our fields
    must exist under its path with our id and type; a field the table requires we must too."""
    ours, theirs = iceberg_schema(), table.schema()
    problems = []
    for path, field_id in FIELD_IDS.items():
        mine = ours.find_field(field_id)
        try:
            found: NestedField = theirs.find_field(path)
        except ValueError:
            problems.append(f"column {path} is missing")
            continue
        if found.field_id != field_id:
            problems.append(f"column {path} has field id {found.field_id}, the files {field_id}")
        elif isinstance(mine.field_type, PrimitiveType) and found.field_type != mine.field_type:
            problems.append(f"column {path} is {found.field_type}, the files {mine.field_type}")
        elif found.required and not mine.required:
            problems.append(f"column {path} is required, the files may hold nulls")
    return problems


def file_problem(schema: pa.Schema, table_schema: Schema) -> str | None:
    """Why a Parquet file (by its Arrow schema) cannot be registered in a table of
    `table_schema`: a required column missing, an unknown column, or another field id."""
    names = set(schema.names)
    for f in table_schema.fields:
        if f.required and f.name not in names:
            return f"no column {f.name} (written by an older connector?)"
    for f in schema:
        try:
            expected = table_schema.find_field(f.name).field_id
        except ValueError:
            return f"column {f.name} is not in the table"
        written = (f.metadata or {}).get(FIELD_ID_KEY)
        if written is not None and int(written) != expected:
            return f"column {f.name} has field id {int(written)}, the table {expected}"
    return None
