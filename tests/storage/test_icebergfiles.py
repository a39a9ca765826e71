"""Landed Parquet files as DataFile entries: counts, bounds and partition values from their own
footers, no statistics asked of columns written without them, and which files a table holds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from connector import worker
from connector.icebergfiles import data_files, live_paths
from connector.icebergschema import PARTITION_SPEC, SORT_ORDER, iceberg_schema
from connector.jobs import FlushSettings, SinkSpec
from connector.schema import FIELD_IDS
from connector.sink import Sink

from .test_flush import WRITER, fill_spool


def test_data_files_describe_the_landed_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fx = fill_spool(tmp_path / "spool")
    files = worker.flush(fx.job(), SinkSpec(str(tmp_path / "landing")), FlushSettings(WRITER)).files
    catalog = load_catalog(
        "t", type="sql", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/w"
    )
    catalog.create_namespace("ns")
    table = catalog.create_table(
        "ns.t", iceberg_schema(), partition_spec=PARTITION_SPEC, sort_order=SORT_ORDER
    )
    sink = Sink(str(tmp_path / "landing"))
    with caplog.at_level(logging.WARNING):
        entries = data_files(table, sink, [(path, size) for path, _, size in files])
    assert caplog.text == ""  # no "statistics missing" warning per column and file
    by_path = {e.file_path: e for e in entries}
    for path, rows, size in files:
        entry = by_path[f"file://{tmp_path}/landing/{path}"]
        assert (entry.record_count, entry.file_size_in_bytes) == (rows, size)
        spec_id, hour = entry.partition[0], entry.partition[1]
        assert path.startswith(f"observation_spec_id={spec_id}/")
        assert f"hour={hour % 24:02d}/" in path
        assert FIELD_IDS["seq"] in entry.lower_bounds and FIELD_IDS["seq"] in entry.upper_bounds
        assert FIELD_IDS["geometry"] not in entry.value_counts  # written without statistics
    assert live_paths(table, entries) == set()
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(entries[0])
    assert live_paths(table, entries) == {entries[0].file_path}
