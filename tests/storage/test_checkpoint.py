"""connector.checkpoint on real files: atomic replace, writer ids, versions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from connector.checkpoint import VERSION, Checkpoint, CheckpointStore
from connector.errors import ConfigError, ConnectorError

SUFFIX = r"[0-9a-f]{8}"


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    cp = store.load(None)
    cp.committed_seq = 1234
    cp.subscriptions["air"] = {"last_data_us": 1_719_248_400_000_000, "gaps": [[1, 2]]}
    cp.totals["last_seen_us"] = 99
    store.save(cp)

    again = CheckpointStore(tmp_path / "state").load(None)
    assert again == cp
    on_disk = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
    assert on_disk["committed_seq"] == 1234
    assert on_disk["version"] == VERSION


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    for seq in range(1, 6):
        cp.committed_seq = seq
        store.save(cp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    assert store.load(None).committed_seq == 5


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    cp.committed_seq = 7
    store.save(cp)
    before = (tmp_path / "checkpoint.json").read_bytes()

    cp.committed_seq = 8
    cp.subscriptions["air"] = {"not json": {1, 2}}  # json.dump fails half-way through
    with pytest.raises(TypeError):
        store.save(cp)
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    assert store.load(None).committed_seq == 7


def test_writer_id_is_created_once_and_stable(tmp_path: Path) -> None:
    first = CheckpointStore(tmp_path).load(None)
    assert re.fullmatch(rf"w-{SUFFIX}", first.writer_id)
    assert (tmp_path / "checkpoint.json").exists()  # chosen ids are persisted immediately
    for _ in range(3):
        assert CheckpointStore(tmp_path).load(None).writer_id == first.writer_id


def test_random_suffix_differs_between_fresh_state_dirs(tmp_path: Path) -> None:
    a = CheckpointStore(tmp_path / "a").load("edge")
    b = CheckpointStore(tmp_path / "b").load("edge")
    assert a.writer_id != b.writer_id
    assert a.writer_id.startswith("edge-") and b.writer_id.startswith("edge-")


def test_configured_writer_id_prefix(tmp_path: Path) -> None:
    cp = CheckpointStore(tmp_path).load("east-1")
    assert re.fullmatch(rf"east-1-{SUFFIX}", cp.writer_id)
    suffix = cp.writer_id.rsplit("-", 1)[1]
    assert CheckpointStore(tmp_path).load("east-1").writer_id == cp.writer_id
    # No prefix configured: the stored id stays.
    assert CheckpointStore(tmp_path).load(None).writer_id == cp.writer_id
    # A state dir keeps its writer id: replays must rewrite the names a crash left behind.
    assert CheckpointStore(tmp_path).load("west").writer_id == cp.writer_id
    assert CheckpointStore(tmp_path).load("east").writer_id == cp.writer_id
    assert suffix


def test_newer_version_refuses_to_load(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    data = json.loads(store.path.read_text())
    data["version"] = VERSION + 1
    store.path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"state\.dir: checkpoint version 2 is newer") as info:
        store.load(None)
    assert isinstance(info.value, ConnectorError) and info.value.exit_code == 2
    # Nothing was overwritten: a newer connector can still read its checkpoint.
    assert json.loads(store.path.read_text())["version"] == VERSION + 1
    assert json.loads(store.path.read_text())["writer_id"] == cp.writer_id


def test_checkpoint_defaults() -> None:
    cp = Checkpoint(writer_id="w-00000000")
    assert (cp.committed_seq, cp.subscriptions, cp.totals, cp.version) == (0, {}, {}, VERSION)
