"""connector.intake in-process: a real Spool in a real folder, real Gaps, a collecting `on_cut`.

Every frame is spooled before it is accounted; every cut is on disk (a CUT record a fresh scan
finds) before `on_cut` sees it; a restart hands on the recorded cuts and re-cuts the tail
exactly; a full spool drops frames with one gap per subscription; `sync` and the syncer move
`synced_frame_us`. The batcher's clock is `time.monotonic()`: the seconds limit is checked with a
short `max_seconds` and a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.batcher import Cut
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.spool import DATA, DEAD, LEDGER, RecordMeta, Spool
from tests.stages.helpers import (
    SECOND,
    T0,
    IntakeRig,
    assert_partition,
    make_rig,
    recorded_cuts,
    spool_records,
    until,
)

Rigs = Callable[..., IntakeRig]


@contextlib.asynccontextmanager
async def running(intake: Intake) -> AsyncIterator[asyncio.Task[None]]:
    """`intake.run()` (cut timer and syncer) as a task, cancelled at the end."""
    task = asyncio.get_running_loop().create_task(intake.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- spooled first, counted after ---------------------------------------------------------------
def test_a_frame_is_in_the_spool_before_it_is_counted(tmp_path: Path, rigs: Rigs) -> None:
    """Counted: accounted towards a cut. By the time a frame counts, its record is on file."""
    rig = rigs(tmp_path, max_rows=2)
    assert rig.data("air", T0, rows=1, size=10)
    [record] = spool_records(rig.spool)
    assert (record.kind, record.seq, record.received_at_us) == (DATA, 1, T0)
    assert (record.meta.sub, record.meta.n, record.payload) == ("air", 1, b"x" * 10)
    assert rig.cuts == []
    assert rig.intake.last_frame_us == T0

    # The second row reaches max_rows: the cut that frame triggers already covers it on disk.
    assert rig.data("air", T0 + 1, rows=1, size=10)
    assert rig.cuts == [Cut(1, 2, 2, 20, "rows")]
    assert rig.unrecorded == []


class DiskFullSpool(Spool):
    """A real Spool whose next append fails as a full state disk would (ENOSPC)."""

    fail_next = False

    def append(
        self,
        kind: int,
        meta: RecordMeta,
        payload: bytes,
        received_at_us: int,
        *,
        force: bool = False,
    ) -> int:
        if self.fail_next:
            self.fail_next = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().append(kind, meta, payload, received_at_us, force=force)


def test_a_frame_the_disk_refuses_is_never_counted(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path, max_rows=2, spool_type=DiskFullSpool)
    spool = rig.spool
    assert isinstance(spool, DiskFullSpool)
    assert rig.data("air", T0)
    spool.fail_next = True
    assert not rig.data("air", T0 + 1)
    assert rig.intake.counts.dropped_frames == 1
    assert rig.cuts == [] and rig.intake.last_seq == 1  # no seq used, no row accounted
    assert rig.data("air", T0 + 2)
    # The cut covers the two frames on file; the lost one is a gap from the last spooled frame.
    assert rig.cuts == [Cut(1, 2, 2, 80, "rows")]
    assert rig.gaps == [Gap("air", T0, T0 + 2, "spool_full")]
    assert rig.unrecorded == []


def test_a_cut_is_recorded_in_the_spool_before_on_cut_sees_it(tmp_path: Path, rigs: Rigs) -> None:
    """Each route to a cut (rows, bytes, forced) writes the CUT record first; the rig's on_cut
    rescans the folder from scratch, as a restart would, and finds it there every time."""
    rig = rigs(tmp_path, max_rows=3, max_bytes=100)
    for i in range(3):
        rig.data("air", T0 + i, rows=1, size=10)  # rows
    rig.data("air", T0 + 3, rows=0, size=120)  # bytes
    rig.data("air", T0 + 4, rows=1, size=10)
    rig.intake.cut("barrier")  # forced
    assert [(c.first, c.last, c.reason) for c in rig.cuts] == [
        (1, 3, "rows"),
        (4, 4, "bytes"),
        (5, 5, "barrier"),
    ]
    assert rig.unrecorded == []
    assert recorded_cuts(tmp_path) == [(1, 3), (4, 4), (5, 5)]


def test_cuts_by_rows_count_rows_not_frames(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path, max_rows=5)
    rig.data("air", T0, rows=2)
    rig.intake.record({"event": "note"})  # a ledger record: bytes, no rows
    rig.data("air", T0 + 1, rows=2)
    assert rig.cuts == []
    rig.data("air", T0 + 2, rows=1)
    rig.data("air", T0 + 3, rows=7)  # one frame alone over the limit: a cut of its own
    assert [(c.first, c.last, c.rows, c.reason) for c in rig.cuts] == [
        (1, 4, 5, "rows"),
        (5, 5, 7, "rows"),
    ]
    assert rig.unrecorded == []


def test_cuts_by_bytes_count_payload_bytes(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path, max_bytes=100)
    rig.data("air", T0, size=40)
    rig.data("air", T0 + 1, size=40)
    assert rig.cuts == []
    rig.data("air", T0 + 2, size=40)
    rig.dead(T0 + 3, b"y" * 100)  # dead-lettered frames take spool bytes too
    assert [(c.first, c.last, c.bytes, c.reason) for c in rig.cuts] == [
        (1, 3, 120, "bytes"),
        (4, 4, 100, "bytes"),
    ]
    assert rig.unrecorded == []


def test_cut_forces_what_is_pending_and_nothing_when_empty(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path)
    rig.intake.cut("stop")
    assert rig.cuts == []
    rig.data("air", T0, rows=3, size=11)
    rig.dead(T0 + 1, b"zz")
    rig.intake.cut("barrier")
    rig.intake.cut("barrier")  # nothing pending any more
    assert rig.cuts == [Cut(1, 2, 3, 13, "barrier")]
    assert recorded_cuts(tmp_path) == [(1, 2)]


async def test_the_seconds_limit_cuts_a_batch_that_stopped_growing(
    tmp_path: Path, rigs: Rigs
) -> None:
    rig = rigs(tmp_path, max_seconds=0.2)
    async with running(rig.intake):
        opened = time.monotonic()
        rig.data("air", T0)
        await until(lambda: bool(rig.cuts), what="a cut by age")
        waited = time.monotonic() - opened
    assert [(c.first, c.last, c.reason) for c in rig.cuts] == [(1, 1, "seconds")]
    assert waited >= 0.2  # never before the oldest row is max_seconds old
    assert rig.unrecorded == []


async def test_the_seconds_limit_holds_when_the_timer_was_idle(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path, max_seconds=0.2)
    async with running(rig.intake):
        await asyncio.sleep(0.05)  # setup, not a check: the timer is now waiting with no batch
        opened = time.monotonic()
        rig.data("air", T0)
        await until(lambda: bool(rig.cuts), what="a cut by age")
        waited = time.monotonic() - opened
    assert rig.cuts[0].reason == "seconds"
    assert waited < 0.2 + 0.5, f"cut after {waited:.2f}s with max_seconds=0.2"


# -- recovery -----------------------------------------------------------------------------------
async def test_backfilled_records_do_not_move_where_a_restart_gap_begins(
    tmp_path: Path, rigs: Rigs
) -> None:
    """A restart's gap begins at the last frame the stream delivered. Backfill spools its rows
    when it fetches them, later: counting those would start the gap after stream time that was
    never received, and backfill would never look there."""
    first = rigs(tmp_path, max_rows=100)
    first.data("air", T0)
    first.data("air", T0 + SECOND)
    backfilled = RecordMeta(sub="air", origin="backfill", n=5)
    assert first.intake.frame(DATA, backfilled, b"x" * 40, 5, T0 + 60 * SECOND, None)
    await first.intake.sync()
    assert first.intake.synced_frame_us == T0 + SECOND  # what the checkpoint's last_seen takes
    first.intake.close()

    second = rigs(tmp_path, committed=None, max_rows=100)
    recovered = second.intake.recover(0)
    assert recovered.tail_records == 3  # the backfilled record is replayed like any other
    assert recovered.last_received_us == T0 + SECOND


def test_recover_hands_on_recorded_cuts_then_recuts_the_tail_exactly(
    tmp_path: Path, rigs: Rigs
) -> None:
    first = rigs(tmp_path, max_rows=3, segment_bytes=200)
    for i in range(7):
        first.data("air", T0 + i * SECOND)
    first.intake.record({"event": "note"})
    assert first.ranges() == [(1, 3), (4, 6)]  # 7 and 8 were pending when the process died
    first.intake.close()

    second = rigs(tmp_path, committed=None, max_rows=3, segment_bytes=200)
    recovered = second.intake.recover(0)
    assert (recovered.cuts, recovered.tail_first, recovered.tail_records) == (
        [(1, 3), (4, 6)],
        7,
        2,
    )
    assert recovered.last_received_us == T0 + 6 * SECOND
    assert [(c.first, c.last, c.reason) for c in second.cuts] == [
        (1, 3, "replay"),
        (4, 6, "replay"),
        (7, 8, "replay"),
    ]
    assert second.unrecorded == []  # the tail's cut was recorded before it was handed on
    assert_partition(second.ranges(), 1, 8)
    # New frames continue the sequence after the replayed ones.
    second.data("air", T0 + 10 * SECOND)
    assert second.intake.last_seq == 9
    second.intake.close()

    # A second restart, committed through 3, replays exactly the same decisions past 3.
    third = rigs(tmp_path, committed=None, max_rows=3, segment_bytes=200)
    third.intake.recover(3)
    assert third.ranges() == [(4, 6), (7, 8), (9, 9)]
    assert_partition(third.ranges(), 4, 9)


def test_a_long_tail_is_recut_by_the_limits_and_each_cut_recorded(
    tmp_path: Path, rigs: Rigs
) -> None:
    first = rigs(tmp_path, max_rows=100)
    for i in range(7):
        first.data("air", T0 + i)
    assert first.cuts == []
    first.intake.close()

    # Restarted with a smaller limit: the tail is cut by it, then the remainder by "replay".
    second = rigs(tmp_path, committed=None, max_rows=3)
    second.intake.recover(0)
    assert [(c.first, c.last, c.reason) for c in second.cuts] == [
        (1, 3, "rows"),
        (4, 6, "rows"),
        (7, 7, "replay"),
    ]
    assert second.unrecorded == []
    second.intake.close()
    third = rigs(tmp_path, committed=None, max_rows=100)
    third.intake.recover(0)
    assert third.ranges() == [(1, 3), (4, 6), (7, 7)]


# One step of a process's life: a data frame (rows), a ledger record, or a forced cut.
_step = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 4)),
    st.tuples(st.just("ledger"), st.just(0)),
    st.tuples(st.just("cut"), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lives=st.lists(st.lists(_step, max_size=12), min_size=1, max_size=4),
    max_rows=st.integers(1, 6),
    commit=st.integers(0, 50),
)
def test_every_restart_partitions_the_uncommitted_spool_the_same_way(
    lives: list[list[tuple[str, int]]], max_rows: int, commit: int
) -> None:
    """Several processes in turn on one spool, each killed without a final cut; after each,
    the committed point moves to some recorded cut boundary. Every recovery hands on contiguous
    ranges covering exactly what is not committed, and a further restart repeats them."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        committed = 0
        for steps in lives:
            rig = make_rig(directory, committed=None, max_rows=max_rows, segment_bytes=300)
            try:
                rig.intake.recover(committed)
                assert rig.unrecorded == []
                replayed = rig.ranges()
                last = rig.intake.last_seq
                if last > committed:
                    assert_partition(replayed, committed + 1, last)
                else:
                    assert replayed == []
                for kind, rows in steps:
                    if kind == "data":
                        rig.data("air", T0 + rig.intake.last_seq, rows=rows)
                    elif kind == "ledger":
                        rig.intake.record({"event": "note"})
                    else:
                        rig.intake.cut("barrier")
                assert rig.unrecorded == []
                if rig.cuts:
                    assert_partition(rig.ranges(), committed + 1, rig.cuts[-1].last)
            finally:
                rig.intake.close()
            # Once more without new frames: the very same ranges again.
            again = make_rig(directory, committed=None, max_rows=max_rows, segment_bytes=300)
            try:
                again.intake.recover(committed)
                assert again.ranges()[: len(replayed)] == replayed
                if again.intake.last_seq > committed:
                    assert_partition(again.ranges(), committed + 1, again.intake.last_seq)
                boundaries = [hi for _, hi in again.ranges()]
            finally:
                again.intake.close()
            if boundaries:
                committed = boundaries[commit % len(boundaries)]


# -- a full spool -----------------------------------------------------------------------------
def _record_size(directory: Path, meta: RecordMeta, payload: bytes) -> int:
    probe = Spool(directory, segment_bytes=1 << 20, max_bytes=1 << 30)
    probe.open(0)
    probe.append(DATA, meta, payload, T0)
    size = probe.size_bytes
    probe.close()
    return size


def test_a_full_spool_drops_frames_with_one_gap_per_subscription(
    tmp_path: Path, rigs: Rigs
) -> None:
    record = _record_size(tmp_path / "probe", RecordMeta(sub="air", id="S1", n=1), b"x" * 100)
    # Room for two frames; one segment per record, so a release frees room at once.
    rig = rigs(tmp_path / "spool", max_spool_bytes=2 * record + record // 2, segment_bytes=1)
    assert rig.data("air", T0, size=100)
    assert rig.data("sea", T0 + 10, size=100)
    # Full: every further frame is refused, spooled nowhere, accounted nowhere.
    refused = [
        rig.data("air", T0 + 20, size=100),
        rig.data("sea", T0 + 30, size=100),
        rig.data("air", T0 + 40, size=100),
        rig.data("sea", T0 + 50, size=100),
        rig.dead(T0 + 60, b"y" * 100),
    ]
    assert refused == [False] * 5
    assert rig.intake.counts.dropped_frames == 5
    assert rig.intake.last_seq == 2
    assert rig.intake.last_frame_us == T0 + 10  # a refused frame is not "received" on disk
    assert rig.gaps == []  # open, not yet closed
    # Ledger records say what was lost: they bypass the limit.
    rig.intake.record({"event": "note"})
    assert rig.intake.last_seq == 3

    rig.intake.cut("barrier")
    assert rig.cuts == [Cut(1, 3, 2, 200 + len(b'{"event":"note"}'), "barrier")]
    rig.intake.release(3)  # committed: the segments go, the room comes back
    assert rig.data("air", T0 + 70, size=100)
    assert rig.data("sea", T0 + 80, size=100)
    assert rig.data("air", T0 + 90, size=10)
    # One gap each, from the last frame spooled to the first one that fit again.
    assert rig.gaps == [
        Gap("air", T0, T0 + 70, "spool_full"),
        Gap("sea", T0 + 10, T0 + 80, "spool_full"),
    ]
    assert [r.seq for r in spool_records(rig.spool, DATA)] == [4, 5, 6]


def test_a_spool_full_gap_without_an_earlier_frame_starts_at_the_first_drop(
    tmp_path: Path, rigs: Rigs
) -> None:
    record = _record_size(tmp_path / "probe", RecordMeta(sub="air", id="S1", n=1), b"x" * 100)
    rig = rigs(tmp_path / "spool", max_spool_bytes=record + record // 2, segment_bytes=1)
    assert rig.data("air", T0, size=100)
    assert not rig.data("new", T0 + 5, size=100)
    assert not rig.data("new", T0 + 6, size=100)
    assert not rig.data("air", T0 + 7, size=100)
    # Shutdown closes what is still open (the runner does this before its final cut).
    before = time.time_ns() // 1000
    rig.intake.close_spool_gaps()
    after = time.time_ns() // 1000
    assert [(g.subscription, g.start_us, g.reason) for g in rig.gaps] == [
        ("new", T0 + 5, "spool_full"),
        ("air", T0, "spool_full"),
    ]
    assert all(before <= g.end_us <= after for g in rig.gaps)
    rig.intake.close_spool_gaps()
    assert len(rig.gaps) == 2  # closed once only


def test_a_gap_opened_by_a_full_spool_is_kept_in_the_gap_state(tmp_path: Path, rigs: Rigs) -> None:
    """Intake reports through Gaps: the same typed state the checkpoint holds."""
    gaps = Gaps({})
    record = _record_size(tmp_path / "probe", RecordMeta(sub="air", id="S1", n=1), b"x" * 100)
    rig = rigs(tmp_path / "spool", max_spool_bytes=record, segment_bytes=1, gaps=gaps)
    assert rig.data("air", T0, size=100)
    assert not rig.data("air", T0 + 1, size=100)
    assert gaps.close_spool_gaps(T0 + 2) == [Gap("air", T0, T0 + 2, "spool_full")]


# -- durability marks ---------------------------------------------------------------------------
async def test_sync_advances_synced_frame_us_to_the_last_frame(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path)
    assert rig.intake.synced_frame_us == 0
    rig.data("air", T0)
    rig.data("sea", T0 + 5)
    assert rig.intake.synced_frame_us == 0  # written, not yet known to be on disk
    await rig.intake.sync()
    assert rig.intake.synced_frame_us == T0 + 5
    rig.intake.record({"event": "note"})  # ledger records are not frames
    rig.data("air", T0 + 9)
    assert rig.intake.synced_frame_us == T0 + 5
    await rig.intake.sync()
    assert rig.intake.synced_frame_us == T0 + 9


class GatedSpool(Spool):
    """A real Spool whose sync() counts its calls and can be held (while the test appends)."""

    def __init__(self, directory: Path, *, segment_bytes: int, max_bytes: int) -> None:
        super().__init__(directory, segment_bytes=segment_bytes, max_bytes=max_bytes)
        self.syncs = 0
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def sync(self) -> None:
        self.syncs += 1
        self.entered.set()
        self.gate.wait(10)
        super().sync()


async def test_the_syncer_with_fsync_seconds_zero_coalesces_bursts(
    tmp_path: Path, rigs: Rigs
) -> None:
    rig = rigs(tmp_path, fsync_seconds=0, spool_type=GatedSpool)
    spool = rig.spool
    assert isinstance(spool, GatedSpool)
    try:
        async with running(rig.intake):
            for i in range(50):  # a burst: one loop turn, many frames
                rig.data("air", T0 + i)
            await until(lambda: rig.intake.synced_frame_us == T0 + 49)
            assert spool.syncs == 1

            # Frames written while a sync runs are not covered by it: they get one more.
            spool.gate.clear()
            spool.entered.clear()
            rig.data("air", T0 + 100)
            await until(spool.entered.is_set, what="the syncer's fsync")
            for i in range(101, 120):
                rig.data("air", T0 + i)
            spool.gate.set()
            await until(lambda: rig.intake.synced_frame_us == T0 + 119)
            assert spool.syncs == 3
    finally:
        spool.gate.set()


async def test_the_syncer_ticks_every_fsync_seconds(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path, fsync_seconds=0.05)
    async with running(rig.intake):
        rig.data("air", T0)
        await until(lambda: rig.intake.synced_frame_us == T0)
        rig.data("air", T0 + 1)
        await until(lambda: rig.intake.synced_frame_us == T0 + 1)


def test_ledger_records_land_in_the_spool_as_written(tmp_path: Path, rigs: Rigs) -> None:
    rig = rigs(tmp_path)
    rig.intake.record({"event": "gap", "subscription": "air", "n": 1})
    [record] = spool_records(rig.spool)
    assert record.kind == LEDGER
    assert msgspec.json.decode(record.payload) == {"event": "gap", "subscription": "air", "n": 1}
    assert spool_records(rig.spool, DEAD) == []
