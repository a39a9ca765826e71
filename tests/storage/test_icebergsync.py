"""`gotham-connector iceberg sync`: landed cuts registered one commit each, idempotently, only
those that are complete, and never a file the table cannot hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connector import worker
from connector.checkpoint import Checkpoint, CheckpointStore
from connector.cli import main
from connector.icebergspec import CutKey, key_of
from connector.jobs import FlushSettings, SinkSpec
from connector.statedir import StateDirLock

from .test_flush import WRITER, fill_spool
from .test_iceberg import table_in


def setup(root: Path, committed: int) -> Path:
    """A landing zone with one cut of WRITER (seq 1-8), a state dir whose checkpoint is at
    `committed`, and a config with the table enabled."""
    fx = fill_spool(root / "spool")
    worker.flush(fx.job(), SinkSpec(str(root / "landing")), FlushSettings(WRITER))
    (root / "state").mkdir()
    CheckpointStore(root / "state").save(Checkpoint(writer_id=WRITER, committed_seq=committed))
    config = root / "connector.toml"
    catalog = {
        "type": "sql",
        "uri": f"sqlite:///{root}/catalog.db",
        "warehouse": f"file://{root}/wh",
    }
    config.write_text(
        '[source]\nurl = "wss://gotham.example.com"\nobservation_spec_id = "baz"\n'
        '[[subscriptions]]\nname = "all"\nquery = {}\n'
        f"[sink]\nurl = {json.dumps(str(root / 'landing'))}\n"
        f"[state]\ndir = {json.dumps(str(root / 'state'))}\n"
        '[iceberg]\nenabled = true\ncatalog_name = "lake"\ncatalog = { '
        + ", ".join(f"{k} = {json.dumps(v)}" for k, v in catalog.items())
        + " }\n"
    )
    return config


def copy_as_writer(landing: Path, writer: str) -> None:
    for path in list(landing.rglob(f"{WRITER}-*.parquet")):
        shutil.copy(path, path.with_name(path.name.replace(WRITER, writer)))


def test_sync_registers_each_cut_once_and_again_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = setup(tmp_path, committed=8)
    copy_as_writer(tmp_path / "landing", "other-0000aaaa")
    assert main(["iceberg", "sync", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 cut(s) registered (4 file(s))" in out and "1 cut(s) of other writers" in out
    assert main(["iceberg", "sync", "--config", str(config), "--all-writers"]) == 0
    assert "1 cut(s) registered (4 file(s)), 1 already in the table" in capsys.readouterr().out
    assert main(["iceberg", "sync", "--config", str(config), "--all-writers"]) == 0
    assert "0 cut(s) registered (0 file(s)), 2 already in the table" in capsys.readouterr().out
    table = table_in(tmp_path)
    keys = [key_of(s.summary.additional_properties) for s in table.snapshots()]
    assert keys == [CutKey(WRITER, 1, 8), CutKey("other-0000aaaa", 1, 8)]
    assert all(s.summary["gotham-connector.committed-by"] == "sync" for s in table.snapshots())
    assert table.scan().to_arrow().num_rows == 2 * 10


def test_sync_leaves_cuts_past_the_checkpoint_to_the_connector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = setup(tmp_path, committed=7)  # the cut 1-8 may still be landing: not complete
    assert main(["iceberg", "sync", "--config", str(config)]) == 0
    assert "1 cut(s) past the checkpoint" in capsys.readouterr().out


def test_sync_skips_files_the_table_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = setup(tmp_path, committed=8)
    for path in (tmp_path / "landing").rglob("*.parquet"):  # as a version-1 connector wrote them
        pq.write_table(pq.read_table(path).drop_columns(["geometry", "bbox"]), path)
    assert main(["iceberg", "sync", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "0 cut(s) registered" in out and "1 cut(s) whose files do not fit the table" in out


def test_sync_needs_the_state_dir_to_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = setup(tmp_path, committed=8)
    lock = StateDirLock(tmp_path / "state")
    lock.acquire()  # a running connector
    try:
        assert main(["iceberg", "sync", "--config", str(config)]) == 2
    finally:
        lock.release()
    assert "in use by another connector process" in capsys.readouterr().err
