"""Cuts committed to an Iceberg table by the converter's own flush handler: a real spool, real
Parquet in a local landing zone, pyiceberg's SQL catalog on SQLite in a temp dir."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.table import Table

from connector import worker
from connector.iceberg import Target, commit, commit_cut, translate
from connector.icebergschema import iceberg_schema
from connector.icebergspec import (
    CutKey,
    IcebergRefused,
    IcebergSetupError,
    IcebergSpec,
    IcebergUnavailable,
    key_of,
)
from connector.jobs import FlushSettings, SinkSpec
from connector.schema import FIELD_ID_KEY, FIELD_IDS
from connector.sink import Sink

from .test_flush import WRITER, Fixture, fill_spool

TABLE = "gotham.observations"


def spec_in(root: Path, **extra: str) -> IcebergSpec:
    catalog = {
        "type": "sql",
        "uri": f"sqlite:///{root}/catalog.db",
        "warehouse": f"file://{root}/warehouse",
        **extra,
    }
    return IcebergSpec(TABLE, "lake", tuple(sorted(catalog.items())), str(root / "pin.json"))


def table_in(root: Path) -> Table:
    catalog = {"uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"}
    return load_catalog("lake", type="sql", **catalog).load_table(TABLE)


@pytest.fixture
def cut(tmp_path: Path) -> Fixture:
    return fill_spool(tmp_path / "spool")


def land(root: Path, fx: Fixture, spec: IcebergSpec | None) -> list[tuple[str, int, int]]:
    """The flush request as the committer sends it to the converter."""
    sink = SinkSpec(str(root / "landing"))
    return worker.flush(fx.job(), sink, FlushSettings(WRITER, iceberg=spec)).files


def test_a_cut_is_one_snapshot_and_a_replay_adds_nothing(tmp_path: Path, cut: Fixture) -> None:
    spec = spec_in(tmp_path)
    files = land(tmp_path, cut, spec)
    assert len(files) == 4  # two specs, three hours: one file each
    land(tmp_path, cut, spec)  # the replay after a kill between commit and checkpoint
    table = table_in(tmp_path)
    assert [key_of(s.summary.additional_properties) for s in table.snapshots()] == [
        CutKey(WRITER, cut.first, cut.last)
    ]
    rows = table.scan().to_arrow()
    assert rows.num_rows == len(cut.expected) == sum(n for _, n, _ in files)
    assert sorted(
        zip(rows["seq"].to_pylist(), rows["track_id"].to_pylist(), strict=True)
    ) == sorted((seq, track) for seq, track, _ in cut.expected)
    landed = {f"file://{tmp_path}/landing/{path}": size for path, _, size in files}
    assert {
        t.file.file_path: t.file.file_size_in_bytes for t in table.scan().plan_files()
    } == landed
    assert table.properties["gotham-connector.version"]
    assert [f.name for f in table.spec().fields] == ["observation_spec_id", "timestamp_hour"]
    assert table.metadata.format_version == 2


def test_field_ids_in_the_files_equal_the_tables(tmp_path: Path, cut: Fixture) -> None:
    files = land(tmp_path, cut, spec_in(tmp_path))
    schema = table_in(tmp_path).schema()
    assert schema == iceberg_schema()
    for path, _, _ in files:
        written = dict(field_ids(pq.read_schema(tmp_path / "landing" / path)))
        assert written == {name: schema.find_field(name).field_id for name in written}
        assert written == FIELD_IDS  # every column, nested ones too


def field_ids(fields: Iterable[pa.Field], prefix: str = "") -> Iterator[tuple[str, int]]:
    """(column path, PARQUET:field_id) of every field and nested field, as written."""
    for f in fields:
        path = prefix + f.name
        yield path, int(f.metadata[FIELD_ID_KEY])
        if pa.types.is_map(f.type):
            yield from field_ids([f.type.key_field, f.type.item_field], path + ".")
        elif pa.types.is_struct(f.type):
            yield from field_ids(f.type, path + ".")


def test_a_conflicting_commit_of_the_same_cut_is_found_not_repeated(
    tmp_path: Path, cut: Fixture
) -> None:
    """Two committers of one cut at once (`iceberg sync` and the connector, or a converter
    orphaned by a kill): the loser's commit conflicts, it looks again and finds the cut."""
    spec = spec_in(tmp_path)
    files = land(tmp_path, cut, None)
    sink, key = Sink(str(tmp_path / "landing")), CutKey(WRITER, cut.first, cut.last)
    sized = [(path, size) for path, _, size in files]
    late, early = Target(spec), Target(spec)
    late.open(), early.open()  # both have seen the table without the cut
    assert commit(early, key, sized, sink, "sync", check_files=False) is True
    assert commit(late, key, sized, sink, "run", check_files=False) is False
    assert len(table_in(tmp_path).snapshots()) == 1


def test_files_already_in_the_table_are_not_added_again(tmp_path: Path, cut: Fixture) -> None:
    """A cut whose snapshot was expired (no summary to find) is recognised by its files."""
    spec = spec_in(tmp_path)
    files = land(tmp_path, cut, spec)
    table = table_in(tmp_path)
    with table.transaction() as tx:
        tx.set_properties({"note": "someone else's commit"})  # the history moves on
    sink, other = Sink(str(tmp_path / "landing")), CutKey(WRITER, cut.first, cut.last + 1)
    sized = [(path, size) for path, _, size in files]
    assert commit(Target(spec), other, sized, sink, "run", check_files=True) is False
    assert len(table_in(tmp_path).snapshots()) == 1


def test_a_table_gone_from_the_catalog_is_an_outage_not_a_new_table(
    tmp_path: Path, cut: Fixture
) -> None:
    spec = spec_in(tmp_path)
    files = land(tmp_path, cut, spec)
    load_catalog("lake", **dict(spec.catalog)).drop_table(TABLE)
    key = CutKey(WRITER, cut.last + 1, cut.last + 5)
    with pytest.raises(IcebergUnavailable, match="NoSuchTableError"):
        commit_cut(spec, key, files, Sink(str(tmp_path / "landing")))  # the loaded table's
    with pytest.raises(IcebergUnavailable, match=r"restore it, or delete .*pin\.json"):
        commit_cut(spec, key, files, Sink(str(tmp_path / "landing")))  # the retry reopens
    assert not load_catalog("lake", **dict(spec.catalog)).table_exists(TABLE)
    os.unlink(spec.pin)  # the operator's answer: start a new table
    commit_cut(spec, key, files, Sink(str(tmp_path / "landing")))
    assert len(table_in(tmp_path).snapshots()) == 1


def test_a_locked_catalog_is_transient(tmp_path: Path, cut: Fixture) -> None:
    spec = spec_in(tmp_path)
    files = land(tmp_path, cut, spec)
    blocker = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        # SQLite's driver waits up to its timeout for the lock (short here), then gives up.
        locked = spec_in(tmp_path, uri=f"sqlite:///{tmp_path}/catalog.db?timeout=0.2")
        with pytest.raises(IcebergUnavailable, match="database is locked"):
            commit_cut(locked, CutKey(WRITER, 100, 200), files, Sink(str(tmp_path / "landing")))
    finally:
        blocker.execute("COMMIT")
        blocker.close()


def test_catalog_errors_never_show_a_secret(tmp_path: Path, cut: Fixture) -> None:
    secret = tmp_path / "credential"
    secret.write_text("cred-value-789")
    # No type and no uri: pyiceberg's error lists every property it was given.
    spec = IcebergSpec(TABLE, "lake", (("credential_file", str(secret)),), str(tmp_path / "p"))
    with pytest.raises(IcebergSetupError) as info:
        commit_cut(spec, CutKey(WRITER, 1, 2), [("x.parquet", 1, 1)], Sink(str(tmp_path)))
    assert "cred-value-789" not in str(info.value) and "iceberg.catalog" in str(info.value)


def test_translate_maps_catalog_errors_onto_the_retry_policy() -> None:
    from pyiceberg.exceptions import CommitFailedException, ForbiddenError, ServerError

    assert isinstance(translate(ServerError("503"), "x"), IcebergUnavailable)
    assert isinstance(translate(CommitFailedException("lost"), "x"), IcebergUnavailable)
    assert isinstance(translate(ConnectionRefusedError(), "x"), IcebergUnavailable)
    assert isinstance(translate(ForbiddenError("no"), "x"), IcebergRefused)
    bug = KeyError("a bug")
    assert translate(bug, "x") is bug
