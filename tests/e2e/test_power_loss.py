"""Power loss: the page cache does not survive (issue 8, item 13).

The connector and its converter run under `tests.powerloss`: every fsync (of a file or of a
folder) is journalled, and a "power cut" SIGKILLs the whole process group and then rebuilds the
state dir and the landing zone as a disk holds them once unsynced writes are gone (the module
docstring says exactly what is modelled). The connector is then started again on that, as an
operator's restart would, against the same simulator, and the result is read back with DuckDB.

Promise checked: a power loss costs at most `state.fsync_seconds` of received frames (and
backfill heals them), never a duplicate, never a lost gap record. Three chains of three power
cuts each, then a clean run: cut by the converter itself right after a data file became durable
(before the checkpoint moves) or between a file's fsync and its rename; cut by the receiver
right before a spool fsync (the most unsynced data there can be); cut from outside the moment
the durable checkpoint drops a gap that backfill healed, while backfill works, or anywhere.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connector.simulator import SimulatorOptions, SimulatorThread
from tests import powerloss
from tests.e2e.conftest import TIME_FACTOR, TOKEN, Deployment, identity
from tests.e2e.test_durability import (
    _us,
    assert_complete,
    assert_no_duplicates,
    expected,
    no_partial_files,
    streaming_window,
)
from tests.oracle import row_to_observation

FSYNC_SECONDS = 0.5
# Cuts (each synced before its files are written) come less often than the fsync ticker, so
# the ticker is what bounds a loss here. Not a multiple of it: cuts fall anywhere between two
# fsyncs (with equal periods every cut came right after one, and a missing sync went unseen).
CUT_SECONDS = 1.3
# What a loss may exceed `fsync_seconds` by: the ticker sleeps `fsync_seconds` *between* syncs
# (plus the fsync itself and event-loop lag on a busy 2-core machine).
SLACK_SECONDS = 0.35
MARGIN_US = 1_000_000  # a gap's window vs observation timestamps (send latency, clock reads)
STREAM = "origin = 'stream'"


# -- the fault layer itself -------------------------------------------------------------------
MODEL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    root = Path(sys.argv[1])

    def fsync_dir(path):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def write(path, data):
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    write(root / "durable", b"A" * 10)
    write(root / "appended", b"C" * 4)
    write(root / "old", b"old")
    write(root / "deleted", b"E")
    (root / "kept").mkdir()
    fsync_dir(root)
    with open(root / "appended", "ab") as fh:
        fh.write(b"D" * 4)
    write(root / ".new.tmp", b"new")
    os.replace(root / ".new.tmp", root / "old")
    os.unlink(root / "deleted")
    write(root / "kept" / "g", b"G")
    fsync_dir(root / "kept")
    (root / "sub").mkdir()
    write(root / "sub" / "f", b"F")
    fsync_dir(root / "sub")
    write(root / "no-entry", b"B")
    """
)


def run_child(disk: powerloss.Disk, tmp_path: Path, script: str, *args: str) -> None:
    proc = powerloss.start(["-c", script, *args], disk, {}, tmp_path / "child.log")
    assert proc.wait(60) == 0, (tmp_path / "child.log").read_text()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_model_keeps_only_what_was_fsynced(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    disk = powerloss.Disk([root], tmp_path / "work")
    run_child(disk, tmp_path, MODEL_SCRIPT, str(root))
    before = tree(root)
    assert before["appended"] == b"CCCCDDDD" and "no-entry" in before and "deleted" not in before
    # Asked before the loss, the disk already knows what will be left.
    assert disk.durable(root / "old") == b"old" and disk.durable(root / "deleted") == b"E"
    assert disk.durable(root / "appended") == b"CCCC" and disk.durable(root / "no-entry") is None
    disk.power_loss()
    assert tree(root) == {
        "durable": b"A" * 10,
        "appended": b"CCCC",  # the unsynced append is gone
        "old": b"old",  # the rename over it was never made durable in the folder
        "deleted": b"E",  # so was the unlink
        "kept/g": b"G",
    }  # no "sub" (its own entry was never fsynced) and no "no-entry"


def test_a_partial_writeback_keeps_a_prefix_of_the_unsynced_tail(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    disk = powerloss.Disk([root], tmp_path / "work")
    run_child(disk, tmp_path, MODEL_SCRIPT, str(root))
    disk.power_loss(random.Random(3), tail_survival=1.0)
    appended = (root / "appended").read_bytes()
    assert b"CCCCDDDD".startswith(appended) and len(appended) >= 4


# -- each durability fix, on its own ------------------------------------------------------------
STATE_DIR_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from connector.checkpoint import CheckpointStore
    from connector.statedir import StateDirLock

    state = Path(sys.argv[1])
    StateDirLock(state).acquire()
    CheckpointStore(state).load("w")
    """
)


def test_a_new_state_dir_survives_a_power_loss(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    disk = powerloss.Disk([root], tmp_path / "work")
    run_child(disk, tmp_path, STATE_DIR_SCRIPT, str(root / "volume" / "state"))
    disk.power_loss()
    # The checkpoint holds the writer id: losing it renames every file a replay rewrites.
    assert json.loads((root / "volume" / "state" / "checkpoint.json").read_bytes())["writer_id"]


SINK_SCRIPT = textwrap.dedent(
    """
    import sys
    from connector.sink import Sink

    sink = Sink(sys.argv[1])
    sink.check()
    sink.put("observation_spec_id=baz/date=2024-06-24/hour=17/w-1-2.parquet", b"rows")
    """
)


def test_a_file_in_new_partition_folders_survives_a_power_loss(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    disk = powerloss.Disk([root], tmp_path / "work")
    run_child(disk, tmp_path, SINK_SCRIPT, str(root / "landing"))
    disk.power_loss()
    landed = root / "landing/observation_spec_id=baz/date=2024-06-24/hour=17/w-1-2.parquet"
    assert landed.read_bytes() == b"rows"


# -- the connector, cut off at chosen moments -------------------------------------------------
@dataclass
class Rig:
    """One deployment on a disk that can lose power, against one simulator."""

    sim: SimulatorThread
    disk: powerloss.Disk
    dep: Deployment
    log: Path
    rng: random.Random
    proc: subprocess.Popen[bytes] | None = None
    subscriptions: int = 0  # the simulator's, before this run
    streaming: float | None = None  # when the simulator first sent data to this run
    # (kill point, when that run began to receive, when its power was cut): wall clock, as
    # received_at is
    cuts: list[tuple[str, float, float]] = field(default_factory=list)
    journalled: set[str] = field(default_factory=set)  # "receiver", "converter": hooks were live

    def start(self, cut_at: powerloss.CutAt | None = None) -> None:
        self.dep.write_config()
        self.subscriptions, self.streaming = len(self.sim.stats()["subscriptions"]), None
        argv = ["-m", "connector", "run", "--config", str(self.dep.config)]
        env = {"GOTHAM_TOKEN": TOKEN}
        self.proc = powerloss.start(argv, self.disk, env, self.log, cut_at)
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Note when this run began to receive: its frames can only be lost from then on."""
        while proc.poll() is None:
            subs = list(self.sim.stats()["subscriptions"].values())[self.subscriptions :]
            if any(s["sent"] for s in subs):
                self.streaming = time.time()
                return
            time.sleep(0.01)

    def cut_power(self, point: str, tail_survival: float = 0.5) -> None:
        """Half the time (by default) some of the unsynced tail reaches the disk anyway."""
        assert self.proc is not None and self.proc.poll() is None, self.output()
        at = time.time()
        powerloss.cut_power(self.proc)
        self._lost(point, at, tail_survival)

    def _lost(self, point: str, at: float, tail_survival: float) -> None:
        assert self.proc is not None
        for e in self.disk.events():
            self.journalled.add("receiver" if e["pid"] == self.proc.pid else "converter")
        self.cuts.append((point, self.streaming or at, at))
        self.disk.power_loss(self.rng, tail_survival)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30 * TIME_FACTOR) == 0, self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout * TIME_FACTOR
        while True:
            if predicate():
                return
            assert self.proc is not None and self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"{what}: not reached\n{self.output()}"
            time.sleep(0.005)

    # -- what the disk holds for sure, per the journal --------------------------------------
    def durable_checkpoint(self) -> dict[str, Any] | None:
        path = self.dep.state / "checkpoint.json"
        data = self.disk.durable(path)
        return json.loads(data) if data else None

    def pending_gaps(self) -> int | None:
        cp = self.durable_checkpoint()
        if cp is None:
            return None
        return sum(len(s["pending_gaps"]) for s in cp["subscriptions"].values())

    def landed_files(self) -> int:
        """Parquet files whose folder entry was fsynced (the sink's last step)."""
        return sum(
            1
            for e in self.disk.events()
            if "hour=" in e.get("dir", "")
            for name in e["entries"]
            if name.endswith(".parquet")
        )

    # -- kill points -----------------------------------------------------------------------------
    def after_a_flush(self) -> None:
        """Cut by the converter itself, right after the folder entry of the run's 2nd to 4th
        data file is fsynced (the sink's last step), before the checkpoint can move past its
        cut: the cut record must be on disk already, or the replay cuts anew and lands the same
        rows under another name. Nothing unsynced survives (a partial writeback could save the
        record). Not the run's first file: its cut falls on the first tick of the fsync timer
        (both start with the stream), which would hide a missing sync."""
        # Each data file is two fsyncs under its hour folder: its temp file, then the folder.
        self._cut_from_inside(
            "after a flush", powerloss.CutAt("/hour=", 2 * self.rng.randint(2, 4))
        )

    def during_a_flush(self) -> None:
        """Cut right after a data file's temp file is fsynced, before its rename."""
        at = powerloss.CutAt("/hour=", 2 * self.rng.randint(2, 4) - 1)
        self._cut_from_inside("during a flush", at)

    def before_a_spool_fsync(self) -> None:
        """Cut right before the spool is fsynced: the most a loss can take, `fsync_seconds`
        of frames since the last fsync (or less, when a cut's sync came in between)."""
        at = powerloss.CutAt("/spool/", self.rng.randint(3, 6), before=True)
        self._cut_from_inside("before a spool fsync", at)

    def _cut_from_inside(self, point: str, at: powerloss.CutAt) -> None:
        self.start(at)
        assert self.proc is not None
        deadline = time.monotonic() + 30 * TIME_FACTOR
        while self.proc.poll() is None:  # until the child cuts its own power
            assert time.monotonic() < deadline, f"{point}: no cut\n{self.output()}"
            time.sleep(0.005)
        powerloss.cut_power(self.proc)  # waits for the whole group
        [cut] = [e["t"] for e in self.disk.events() if "cut" in e]
        self._lost(point, cut, 0.0)

    def after_a_gap_is_settled(self) -> None:
        """The moment the durable checkpoint drops a gap that backfill healed. Nothing
        unsynced survives here: the rows that healed it must have been made durable first."""
        self.start()
        self.wait("gap pending", lambda: (self.pending_gaps() or 0) > 0)
        self.wait("gap settled", lambda: self.pending_gaps() == 0)
        self.cut_power("after a gap is settled", tail_survival=0.0)

    def during_backfill(self) -> None:
        """While backfill pages the history and spools what it found."""
        self.start()
        calls = self.sim.stats()["rest_calls"]
        self.wait("gap pending", lambda: (self.pending_gaps() or 0) > 0)
        self.wait("backfill started", lambda: self.sim.stats()["rest_calls"] > calls)
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.cut_power("during backfill")

    def while_streaming(self) -> None:
        """Anywhere between two fsyncs."""
        self.start()
        self.wait("first file", lambda: self.landed_files() > 0)
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.cut_power("while streaming")

    def finish(self) -> None:
        """Let backfill settle what the cuts left, stream a little more, stop cleanly."""
        self.start()
        self.wait("gap pending", lambda: (self.pending_gaps() or 0) > 0)
        self.wait("gaps settled", lambda: self.pending_gaps() == 0)
        time.sleep(1.0)
        self.stop()


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    # Small frames, often: a cut then ends between two fsyncs, with frames after the last one.
    options = SimulatorOptions(token=TOKEN, tracks=30, rate=300.0, batch=5, seed=5)
    with SimulatorThread(options) as server:
        yield server


def make_rig(tmp_path: Path, sim: SimulatorThread, seed: int) -> Rig:
    root = tmp_path / "disk"
    disk = powerloss.Disk([root], tmp_path / "work")
    dep = Deployment(root, sim.ws_url)
    dep.sections = {
        "state": {"fsync_seconds": FSYNC_SECONDS, "segment_bytes": 1_000_000},
        "batch": {"max_seconds": CUT_SECONDS},
        # A short overlap: a later gap's window must not heal an earlier one by accident (that
        # would hide a gap dropped from the checkpoint unhealed).
        "backfill": {"enabled": True, "overlap_seconds": 0.5},
        "source": {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0},
        "sink": {"max_attempts": 2},
    }
    return Rig(sim, disk, dep, tmp_path / "connector.log", random.Random(seed))


def check(rig: Rig) -> None:
    dep, sim = rig.dep, rig.sim
    # The hooks were live in both processes (else the cuts lost nothing and proved nothing).
    assert rig.journalled == {"receiver", "converter"}
    no_partial_files(dep)
    assert_no_duplicates(dep)
    assert_complete(dep, sim)  # backfill healed every loss
    window = streaming_window(dep)
    gaps: dict[str, list[tuple[int, int]]] = {}
    healed: dict[str, list[tuple[int, int]]] = {}
    for e in dep.ledger():
        if e["event"] == "gap":
            gaps.setdefault(e["subscription"], []).append((_us(e["gap_start"]), _us(e["gap_end"])))
        if e["event"] == "backfill" and e["outcome"] == "ok":
            healed.setdefault(e["subscription"], []).append(
                (_us(e["window_start"]), _us(e["window_end"]))
            )
    # A gap leaves the checkpoint only with its backfill record: none is dropped unhealed.
    for name, windows in gaps.items():
        for start, end in windows:
            assert any(lo <= start and end <= hi for lo, hi in healed.get(name, [])), (
                name,
                (start, end),
                healed.get(name),
            )
    for name, query in dep.subscriptions.items():
        stream = {identity(row_to_observation(r)) for r in dep.rows(f"{_sub(name)} AND {STREAM}")}
        # Never a lost gap record: whatever the stream lost lies in a recorded gap.
        for ident in expected(sim, query, window) - stream:
            at = _us(ident[4])
            assert any(s - MARGIN_US <= at <= e + MARGIN_US for s, e in gaps.get(name, [])), (
                name,
                ident,
                gaps.get(name),
            )
        # Each cut is inside a recorded gap of every subscription.
        for point, _, at in rig.cuts:
            at_us = int(at * 1_000_000)
            assert any(s <= at_us <= e for s, e in gaps.get(name, [])), (name, point, gaps)
    # At most fsync_seconds of received frames: the newest frame kept from before each cut.
    losses = []
    received = [
        r[0] for r in dep.sql(f"SELECT epoch_us(received_at) FROM obs WHERE {STREAM} ORDER BY 1")
    ]
    for point, started, at in rig.cuts:
        # Frames this run received and the disk did not keep: from the newest one kept (or the
        # first one sent to the run, when it kept none) to the cut.
        kept = max(r / 1e6 for r in received if r <= at * 1e6)
        lost = at - max(kept, started)
        losses.append((point, round(lost, 3)))
        assert lost <= FSYNC_SECONDS + SLACK_SECONDS * TIME_FACTOR, (point, lost)
    print("power cuts (kill point, seconds of received frames lost):", losses)


def _sub(name: str) -> str:
    return f"subscription = '{name}'"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "points"),
    [
        pytest.param(1, ["after_a_flush", "after_a_gap_is_settled", "during_backfill"], id="1"),
        pytest.param(
            2, ["while_streaming", "after_a_gap_is_settled", "before_a_spool_fsync"], id="2"
        ),
        pytest.param(3, ["during_a_flush", "before_a_spool_fsync", "after_a_flush"], id="3"),
    ],
)
def test_power_cuts_lose_at_most_fsync_seconds_and_duplicate_nothing(
    tmp_path: Path, sim: SimulatorThread, seed: int, points: list[str]
) -> None:
    rig = make_rig(tmp_path, sim, seed)
    try:
        for point in points:
            getattr(rig, point)()
        rig.finish()
    finally:
        if rig.proc is not None and rig.proc.poll() is None:
            powerloss.cut_power(rig.proc)
    check(rig)
