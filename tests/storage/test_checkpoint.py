"""connector.checkpoint on real files: atomic replace, writer ids, versions and the migration of
version-1 files."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from connector.checkpoint import VERSION, Checkpoint, CheckpointStore, SubscriptionState
from connector.errors import ConfigError, ConnectorError

SUFFIX = r"[0-9a-f]{8}"


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state")
    cp = store.load(None)
    cp.committed_seq = 1234
    cp.subscriptions["air"] = SubscriptionState(
        accepted=True, gap_from_us=1_719_248_400_000_000, pending_gaps=[(1, 2), (5, 9)]
    )
    cp.subscriptions["sea"] = SubscriptionState()
    cp.last_seen_us = 99
    store.save(cp)

    again = CheckpointStore(tmp_path / "state").load(None)
    assert again == cp
    assert again.subscriptions["air"].pending_gaps == [(1, 2), (5, 9)]
    on_disk = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
    assert on_disk["committed_seq"] == 1234
    assert on_disk["version"] == VERSION == 2
    assert on_disk["last_seen_us"] == 99
    assert on_disk["subscriptions"]["air"] == {
        "accepted": True,
        "gap_from_us": 1_719_248_400_000_000,
        "pending_gaps": [[1, 2], [5, 9]],
        "spool_full_from_us": None,
    }


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    for seq in range(1, 6):
        cp.committed_seq = seq
        store.save(cp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    assert store.load(None).committed_seq == 5


def test_a_checkpoint_that_cannot_be_encoded_leaves_the_previous_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    cp.committed_seq = 7
    store.save(cp)
    before = (tmp_path / "checkpoint.json").read_bytes()

    cp.committed_seq = 8
    cp.subscriptions["air"] = object()  # type: ignore[assignment]  # not encodable
    with pytest.raises(TypeError):
        store.save(cp)
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    assert store.load(None).committed_seq == 7


FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from connector.checkpoint import CheckpointStore, SubscriptionState

    store = CheckpointStore(Path(sys.argv[1]))
    cp = store.load(None)
    cp.committed_seq = 8
    for i in range(200):
        cp.subscriptions[f"sub-{i}"] = SubscriptionState(accepted=True, pending_gaps=[(i, i + 1)])
    # The disk refuses the temp file after 64 bytes (EFBIG, like ENOSPC: an OSError).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        store.save(cp)
    except OSError as exc:
        print(json.dumps({"errno": exc.errno}))
    else:
        print(json.dumps({"errno": None}))
    """
)


def test_a_save_the_disk_refuses_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    cp.committed_seq = 7
    store.save(cp)
    before = (tmp_path / "checkpoint.json").read_bytes()
    assert len(before) > 64  # the limit is on new bytes, not on the file already there

    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"errno": errno.EFBIG}
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]  # no temp file
    assert store.load(None) == cp


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
    newer = rf"state\.dir: checkpoint version {VERSION + 1} is newer than this connector"
    with pytest.raises(ConfigError, match=newer) as info:
        store.load(None)
    assert isinstance(info.value, ConnectorError) and info.value.exit_code == 2
    # Nothing was overwritten: a newer connector can still read its checkpoint.
    assert json.loads(store.path.read_text())["version"] == VERSION + 1
    assert json.loads(store.path.read_text())["writer_id"] == cp.writer_id


def test_checkpoint_defaults() -> None:
    cp = Checkpoint(writer_id="w-00000000")
    assert (cp.committed_seq, cp.subscriptions, cp.last_seen_us, cp.version) == (0, {}, 0, VERSION)
    state = SubscriptionState()
    assert (state.accepted, state.gap_from_us, state.pending_gaps) == (False, None, [])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "not a checkpoint object"),
        ('{"committed_seq": 3}', "not a checkpoint object"),
        ('{"writer_id": "w-1", "committed_seq": "three", "version": 2}', "committed_seq"),
        ('{"writer_id": "w-1", "subscriptions": {"air": {"pending_gaps": [[1]]}}}', "pending"),
    ],
)
def test_an_unreadable_checkpoint_is_refused_naming_state_dir(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "checkpoint.json").write_text(text)
    with pytest.raises(ConfigError, match=r"^state\.dir: cannot read ") as info:
        CheckpointStore(tmp_path).load(None)
    assert problem in str(info.value)
    assert str(tmp_path / "checkpoint.json") in str(info.value)
    assert (tmp_path / "checkpoint.json").read_text() == text  # never overwritten


# -- version 1 ----------------------------------------------------------------------------------
# What the version-1 connector wrote (json.dumps(asdict(cp), indent=1, sort_keys=True)): free-form
# per-subscription dicts (a gap_from_us popped when closed, pending_gaps only once one was
# recorded) and last_seen_us under `totals`.
V1 = """{
 "committed_seq": 4521,
 "subscriptions": {
  "air": {
   "accepted": true,
   "gap_from_us": 1719248400000000,
   "pending_gaps": [
    [
     1719240000000000,
     1719243600000000
    ]
   ]
  },
  "refused": {
   "accepted": false
  },
  "sea": {
   "accepted": true,
   "last_data_us": 1719248399000000
  }
 },
 "totals": {
  "last_seen_us": 1719248412345678
 },
 "version": 1,
 "writer_id": "edge-1a2b3c4d"
}
"""


def test_a_version_1_checkpoint_is_migrated_on_load_and_saved_as_version_2(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(V1)
    store = CheckpointStore(tmp_path)
    cp = store.load("edge")
    assert cp == Checkpoint(
        writer_id="edge-1a2b3c4d",
        committed_seq=4521,
        subscriptions={
            "air": SubscriptionState(
                accepted=True,
                gap_from_us=1_719_248_400_000_000,
                pending_gaps=[(1_719_240_000_000_000, 1_719_243_600_000_000)],
            ),
            "refused": SubscriptionState(accepted=False),
            "sea": SubscriptionState(accepted=True),
        },
        last_seen_us=1_719_248_412_345_678,
        version=2,
    )
    assert path.read_text() == V1  # loading alone writes nothing

    store.save(cp)
    on_disk: dict[str, Any] = json.loads(path.read_text())
    assert on_disk["version"] == 2
    assert "totals" not in on_disk
    assert on_disk["last_seen_us"] == 1_719_248_412_345_678
    assert on_disk["writer_id"] == "edge-1a2b3c4d"
    assert on_disk["committed_seq"] == 4521
    assert on_disk["subscriptions"]["air"]["pending_gaps"] == [
        [1_719_240_000_000_000, 1_719_243_600_000_000]
    ]
    assert on_disk["subscriptions"]["sea"] == {
        "accepted": True,
        "gap_from_us": None,
        "pending_gaps": [],
        "spool_full_from_us": None,
    }
    # Read back as version 2 (no migration this time), it is the same checkpoint.
    assert CheckpointStore(tmp_path).load("edge") == cp


def test_a_version_1_checkpoint_without_totals_or_version_field(tmp_path: Path) -> None:
    """The oldest files: no `version` (1 is implied) and no totals yet."""
    v1: dict[str, Any] = json.loads(V1)
    del v1["version"], v1["totals"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(v1))
    cp = CheckpointStore(tmp_path).load(None)
    assert (cp.version, cp.last_seen_us, cp.committed_seq) == (VERSION, 0, 4521)
    assert cp.subscriptions["air"].gap_from_us == 1_719_248_400_000_000
