"""Landed Parquet files as Iceberg DataFile entries, and which of them a table holds already.

A file is registered as it is: its statistics and partition values come from its Parquet
footer (pyiceberg's own readers of it), its field ids are checked against the table's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
    Or,
)
from pyiceberg.io.pyarrow import (
    MetricModeTypes,
    MetricsMode,
    StatisticsCollector,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

from connector.icebergschema import PARTITION_SPEC, file_problem
from connector.icebergspec import UnfitFile

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from connector.sink import Sink


def live_paths(table: Table, data: Sequence[DataFile]) -> set[str]:
    """Which of these files the table's current snapshot holds (manifests pruned by the
    files' partitions)."""
    if table.current_snapshot() is None:
        return set()
    wanted = {d.file_path for d in data}
    tasks = table.scan(row_filter=_partitions_filter(table, data)).plan_files()
    return {t.file.file_path for t in tasks} & wanted


def _partitions_filter(table: Table, data: Sequence[DataFile]) -> BooleanExpression:
    if table.spec().fields != PARTITION_SPEC.fields:
        return AlwaysTrue()  # someone changed the partitioning: plan every file
    terms: list[BooleanExpression] = []
    for spec_id, hour in {(d.partition[0], d.partition[1]) for d in data}:
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=hour)
        end = start + timedelta(hours=1)
        terms.append(
            And(
                _predicate(EqualTo, "observation_spec_id", spec_id),
                _predicate(GreaterThanOrEqual, "timestamp", start.isoformat()),
                _predicate(LessThan, "timestamp", end.isoformat()),
            )
        )
    return terms[0] if len(terms) == 1 else Or(*terms)


def _predicate(kind: Any, column: str, value: object) -> BooleanExpression:
    # pyiceberg's predicates are pydantic models: type checkers see their fields as the
    # constructor's parameters, not the (term, literal) that __init__ takes.
    made: BooleanExpression = kind(column, value)
    return made


def data_files(table: Table, sink: Sink, files: Sequence[tuple[str, int]]) -> list[DataFile]:
    """DataFile entries for landed files ((path under the sink root, bytes)), statistics and
    partition values read from their Parquet footers."""
    schema = table.schema()
    plan = compute_statistics_plan(schema, table.metadata.properties)
    paths = parquet_path_to_id_mapping(schema)
    out = []
    for relative, size in files:
        with sink.fs.open(sink.path(relative), "rb") as fh:
            metadata = pq.read_metadata(fh)
        problem = file_problem(metadata.schema.to_arrow_schema(), schema)
        if problem is not None:
            raise UnfitFile(f"{relative}: {problem}")
        stats = data_file_statistics_from_parquet_metadata(
            metadata, _plan_for(metadata, plan, paths), paths
        )
        partition = stats.partition(table.spec(), schema)
        if any(partition[i] is None for i in range(len(partition))):
            raise UnfitFile(f"{relative}: no statistics tell its partition values")
        out.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=sink.fs.unstrip_protocol(sink.path(relative)),
                file_format=FileFormat.PARQUET,
                partition=partition,
                file_size_in_bytes=size,
                sort_order_id=None,
                spec_id=table.metadata.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )
        )
    return out


def _plan_for(
    metadata: pq.FileMetaData, plan: dict[int, StatisticsCollector], paths: dict[str, int]
) -> dict[int, StatisticsCollector]:
    """The statistics plan, minus columns the file has no statistics for (connector.parquet
    leaves some out on purpose): pyiceberg would warn about each, in every file."""
    if metadata.num_row_groups == 0:
        return plan
    group, plan = metadata.row_group(0), dict(plan)
    for i in range(metadata.num_columns):
        column = group.column(i)
        if not column.is_stats_set and column.path_in_schema in paths:
            field_id = paths[column.path_in_schema]
            plan[field_id] = replace(plan[field_id], mode=MetricsMode(MetricModeTypes.NONE))
    return plan
