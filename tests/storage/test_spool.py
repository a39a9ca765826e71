"""connector.spool on real files: byte ranges and reading them back, sequence numbers, cuts,
recovery of the tail, torn tails, rotation, the sparse index, release, the size limit, a failed
write, syncing from another thread, and survival of a SIGKILL."""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from connector.spool import (
    CUT,
    DATA,
    DEAD,
    INDEX_BYTES,
    LEDGER,
    Record,
    RecordMeta,
    Recovered,
    Spool,
    SpoolFull,
    read_ranges,
)

BIG = 1 << 30
T0 = 1_719_248_400_000_000  # 2024-06-24T17:00:00Z in microseconds


def payload(seq: int, size: int = 40) -> bytes:
    return f"frame-{seq:06d}-".encode().ljust(size, b"#")


def opened(directory: Path, committed: int = 0, **kwargs: int) -> tuple[Spool, Recovered]:
    spool = Spool(
        directory,
        segment_bytes=kwargs.get("segment_bytes", BIG),
        max_bytes=kwargs.get("max_bytes", BIG),
    )
    return spool, spool.open(committed)


AIR = RecordMeta(sub="air", id="s-1")


def fill(spool: Spool, count: int, *, size: int = 40) -> list[int]:
    return [spool.append(DATA, AIR, payload(spool.next_seq, size), T0 + i) for i in range(count)]


def read(spool: Spool, first: int, last: int) -> list[Record]:
    """What the converter process does: byte ranges from the spool, read with read_ranges."""
    return list(read_ranges(spool.ranges(first, last), first, last))


def tail(spool: Spool, rec: Recovered) -> list[Record]:
    records = list(spool.tail(rec.tail_first))
    assert rec.tail_records == len(records)
    assert all(r.payload == b"" for r in records)  # sizes only: recovery keeps memory flat
    return records


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_and_read_ranges(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    seqs = fill(spool, 5)
    seqs.append(spool.append(DEAD, RecordMeta(reason="bad data frame"), b"{oops", T0 + 5))
    seqs.append(spool.append(LEDGER, RecordMeta(), b'{"event":"gap"}', T0 + 6, force=True))
    backfill = RecordMeta(sub="sea", origin="backfill", n=200)
    seqs.append(spool.append(DATA, backfill, b'{"observations":[]}', T0 + 7))
    seqs += fill(spool, 2)
    assert seqs == list(range(1, 11))

    middle = read(spool, 3, 8)
    assert [r.seq for r in middle] == [3, 4, 5, 6, 7, 8]
    assert [r.kind for r in middle] == [DATA, DATA, DATA, DEAD, LEDGER, DATA]
    assert middle[0].payload == payload(3)
    assert middle[0].meta == AIR
    assert middle[0].received_at_us == T0 + 2
    assert middle[3].payload == b"{oops"
    assert middle[3].meta == RecordMeta(reason="bad data frame")
    assert middle[3].meta.sub is None and middle[3].meta.origin == "stream"
    assert middle[4].payload == b'{"event":"gap"}' and middle[4].meta == RecordMeta()
    assert middle[5].meta == backfill and middle[5].meta.id is None
    assert [r.size for r in middle] == [len(r.payload) for r in middle]

    assert [r.seq for r in read(spool, 1, 10)] == list(range(1, 11))
    assert [r.seq for r in read(spool, 10, 10)] == [10]
    assert read(spool, 11, 20) == []
    # The convenience reader on the object agrees with the cross-process path.
    assert list(spool.read(3, 8)) == middle
    spool.close()


def test_cut_records_are_not_read_as_data(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    fill(spool, 3)
    spool.append_cut(1, 3, T0)
    fill(spool, 2)
    spool.append_cut(4, 5, T0)
    assert [r.seq for r in read(spool, 1, 3)] == [1, 2, 3]
    assert [r.seq for r in read(spool, 4, 5)] == [4, 5]
    assert all(r.kind != CUT for r in read(spool, 1, 5))
    spool.close()


def test_sequence_numbers_stay_monotonic_across_reopen(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    assert fill(spool, 4) == [1, 2, 3, 4]
    spool.append_cut(1, 4, T0)
    spool.close()

    spool, _ = opened(tmp_path, committed=0)
    assert spool.next_seq == 5
    assert fill(spool, 2) == [5, 6]
    spool.close()

    # Everything committed and released: the checkpoint alone carries the sequence forward.
    spool, _ = opened(tmp_path, committed=6)
    on_disk = len(segments(tmp_path))
    assert on_disk == 2
    assert spool.release(6) == on_disk
    assert segments(tmp_path) == []
    spool.close()
    spool, _ = opened(tmp_path, committed=6)
    assert fill(spool, 1) == [7]
    spool.close()

    # A wiped spool folder never reuses sequence numbers below the checkpoint.
    spool, _ = opened(tmp_path / "wiped", committed=41)
    assert fill(spool, 1) == [42]
    spool.close()


def test_recorded_cuts_and_tail_are_recovered(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    fill(spool, 4)  # 1..4
    spool.append_cut(1, 4, T0)
    fill(spool, 2)  # 5, 6
    spool.append_cut(5, 6, T0)
    fill(spool, 1)  # 7
    spool.append(DEAD, RecordMeta(reason="r"), b"xx", T0 + 100)  # 8
    spool.append(LEDGER, RecordMeta(), b"{}", T0 + 200, force=True)  # 9
    spool.close()

    spool, rec = opened(tmp_path, committed=0)
    assert rec.cuts == [(1, 4), (5, 6)]
    assert rec.tail_first == 7
    records = tail(spool, rec)
    assert [r.seq for r in records] == [7, 8, 9]
    assert [r.kind for r in records] == [DATA, DEAD, LEDGER]
    assert [r.size for r in records] == [len(payload(7)), 2, 2]
    assert [r.meta for r in records] == [AIR, RecordMeta(reason="r"), RecordMeta()]
    assert rec.torn_bytes == 0
    # DATA only (fill() stamps T0+0.. per call): where a crash's gap begins.
    assert rec.last_received_us == T0 + 3
    spool.close()

    spool, rec = opened(tmp_path, committed=4)
    assert rec.cuts == [(5, 6)]
    assert [r.seq for r in tail(spool, rec)] == [7, 8, 9]
    spool.close()

    spool, rec = opened(tmp_path, committed=6)
    assert rec.cuts == []
    assert [r.seq for r in tail(spool, rec)] == [7, 8, 9]
    spool.close()

    spool, rec = opened(tmp_path, committed=9)
    assert rec.cuts == [] and tail(spool, rec) == []
    spool.close()


def test_torn_last_record_is_truncated_and_earlier_records_survive(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    fill(spool, 5, size=100)
    spool.close()
    [seg] = segments(tmp_path)
    intact = seg.stat().st_size
    with open(seg, "r+b") as fh:
        fh.truncate(intact - 60)  # the last record loses its end

    spool, rec = opened(tmp_path)
    assert rec.torn_bytes > 0
    assert [r.seq for r in tail(spool, rec)] == [1, 2, 3, 4]
    assert seg.stat().st_size == intact - 60 - rec.torn_bytes
    assert [r.payload for r in read(spool, 1, 4)] == [payload(s, 100) for s in range(1, 5)]
    assert fill(spool, 2, size=100) == [5, 6]  # the lost record's number was never durable
    spool.close()

    spool, rec = opened(tmp_path)
    assert rec.torn_bytes == 0
    assert [r.seq for r in tail(spool, rec)] == [1, 2, 3, 4, 5, 6]
    assert [r.payload for r in read(spool, 1, 6)] == [payload(s, 100) for s in range(1, 7)]
    spool.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 7,  # shorter than a header
        b"\xff" * 64,  # a header claiming a huge body
        bytes.fromhex("20000000") + b"\x00" * 5 + b"z" * 32,  # plausible length, bad crc
    ],
)
def test_garbage_after_the_last_record_is_truncated(tmp_path: Path, garbage: bytes) -> None:
    spool, _ = opened(tmp_path)
    fill(spool, 3)
    spool.close()
    [seg] = segments(tmp_path)
    intact = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(garbage)

    spool, rec = opened(tmp_path)
    assert rec.torn_bytes == len(garbage)
    assert seg.stat().st_size == intact
    assert [r.payload for r in read(spool, 1, 3)] == [payload(s) for s in (1, 2, 3)]
    assert fill(spool, 1) == [4]
    spool.close()


def test_segments_rotate_at_segment_bytes(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path, segment_bytes=250)
    fill(spool, 10, size=100)  # ~130 bytes a record: two records a segment
    spool.close()
    segs = segments(tmp_path)
    assert len(segs) == 5
    # Each segment is named by the first sequence number it holds.
    assert [int(p.stem) for p in segs] == [1, 3, 5, 7, 9]
    assert all(len(p.stem) == 20 for p in segs)
    assert all(p.stat().st_size >= 250 for p in segs[:-1])
    spool, rec = opened(tmp_path, segment_bytes=250)
    assert [r.seq for r in tail(spool, rec)] == list(range(1, 11))
    # Ranges that cross segment boundaries read whole.
    assert [r.payload for r in read(spool, 2, 9)] == [payload(s, 100) for s in range(2, 10)]
    # Only the segments holding the range are named, each up to its end.
    ranges = spool.ranges(3, 6)
    assert [Path(r.path).name for r in ranges] == [segs[1].name, segs[2].name]
    assert [r.end for r in ranges] == [segs[1].stat().st_size, segs[2].stat().st_size]
    assert all(r.start == 0 for r in ranges)  # small segments: one index entry each
    assert spool.ranges(11, 20) == []
    spool.close()


def test_release_deletes_only_wholly_committed_segments(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path, segment_bytes=250)
    fill(spool, 7, size=100)  # segments [1,2] [3,4] [5,6] [7]
    assert [int(p.stem) for p in segments(tmp_path)] == [1, 3, 5, 7]

    assert spool.release(0) == 0
    assert spool.release(3) == 1  # [3,4] still holds 4
    assert [int(p.stem) for p in segments(tmp_path)] == [3, 5, 7]
    assert spool.release(5) == 1
    assert [int(p.stem) for p in segments(tmp_path)] == [5, 7]
    # Everything committed: the segment being written stays.
    assert spool.release(7) == 1
    assert [int(p.stem) for p in segments(tmp_path)] == [7]
    assert spool.release(10**9) == 0
    assert [r.seq for r in read(spool, 7, 7)] == [7]
    assert fill(spool, 1) == [8]
    assert [r.seq for r in read(spool, 7, 8)] == [7, 8]
    spool.close()


def test_spool_full_refuses_but_force_still_appends(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path, max_bytes=1000)
    appended = 0
    with pytest.raises(SpoolFull, match="limit 1000"):
        for _ in range(100):
            fill(spool, 1, size=100)
            appended += 1
    assert 0 < appended < 10
    size = spool.size_bytes
    assert size + 100 > 1000
    assert size <= 1000
    # A refused append consumes no sequence number and writes nothing.
    assert spool.next_seq == appended + 1
    assert sum(p.stat().st_size for p in segments(tmp_path)) == size
    event = b'{"event":"gap","reason":"spool_full"}'
    ledger_seq = spool.append(LEDGER, RecordMeta(), event, T0, force=True)
    assert ledger_seq == appended + 1
    assert spool.size_bytes > size
    assert [r.kind for r in read(spool, ledger_seq, ledger_seq)] == [LEDGER]
    spool.close()


def test_release_makes_room_again(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path, segment_bytes=250, max_bytes=600)
    fill(spool, 4, size=100)
    with pytest.raises(SpoolFull):
        fill(spool, 1, size=100)
    assert spool.release(4) >= 1
    assert fill(spool, 1, size=100) == [5]
    spool.close()


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from connector.spool import DATA, RecordMeta, Spool

    spool = Spool(Path(sys.argv[1]), segment_bytes=4096, max_bytes=1 << 30)
    spool.open(0)
    for i in range(int(sys.argv[2])):
        spool.append(DATA, RecordMeta(sub="air", n=i), b"frame-%06d" % i, 1_000_000 + i)
    # No close(), no sync(): the kernel's page cache is all that holds the records.
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_records_survive_sigkill_of_the_appending_process(tmp_path: Path) -> None:
    count = 500
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "spool"), str(count)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(segments(tmp_path / "spool")) > 1  # rotation happened on the way

    spool, rec = opened(tmp_path / "spool", segment_bytes=4096)
    assert rec.torn_bytes == 0
    assert [r.seq for r in tail(spool, rec)] == list(range(1, count + 1))
    records = read(spool, 1, count)
    assert [r.payload for r in records] == [b"frame-%06d" % i for i in range(count)]
    assert [r.meta.n for r in records] == list(range(count))
    assert {r.meta.sub for r in records} == {"air"}
    assert fill(spool, 1) == [count + 1]
    spool.close()
    assert os.listdir(tmp_path) == ["spool"]


# -- the byte ranges and the sparse index -----------------------------------------------------
def record_offsets(path: Path) -> dict[int, int]:
    """seq -> file offset of each DATA/DEAD/LEDGER record, read with the record format the
    module documents (header <IIB: body length, crc32, kind; body <QqH + meta + payload),
    independently of the spool's own reader."""
    data = path.read_bytes()
    offsets: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        length, crc, kind = struct.unpack_from("<IIB", data, pos)
        body = data[pos + 9 : pos + 9 + length]
        assert len(body) == length and zlib.crc32(body) == crc
        seq = struct.unpack_from("<Q", body)[0]
        if kind != CUT:
            offsets[seq] = pos
        pos += 9 + length
    return offsets


def test_the_sparse_index_starts_a_range_near_its_first_record(tmp_path: Path) -> None:
    """A segment several INDEX_BYTES long: a range deep inside it is read from an index point
    at most INDEX_BYTES (plus a record) before its first record, not from the segment start,
    and reads exactly the records asked for; the same after a restart rebuilds the index."""
    size = 1000
    spool, _ = opened(tmp_path)
    count = (3 * INDEX_BYTES + INDEX_BYTES // 2) // size
    fill(spool, count, size=size)
    spool.append_cut(1, count, T0)
    [segment] = segments(tmp_path)
    offsets = record_offsets(segment)
    assert sorted(offsets) == list(range(1, count + 1))
    record_bytes = offsets[2] - offsets[1]
    # Records on both sides of each index point, and the ends.
    firsts = {1, 2, count - 1, count}
    for k in (1, 2, 3):
        near = min(s for s, o in offsets.items() if o >= k * INDEX_BYTES)
        firsts |= {near - 1, near, near + 1}

    def check(spool: Spool) -> None:
        for first in sorted(firsts):
            last = min(first + 4, count)
            [r] = spool.ranges(first, last)
            assert Path(r.path) == segment and r.end == segment.stat().st_size
            assert r.start in offsets.values()  # a record boundary
            assert offsets[first] - record_bytes - INDEX_BYTES < r.start <= offsets[first]
            got = list(read_ranges([r], first, last))
            assert [g.seq for g in got] == list(range(first, last + 1))
            assert [g.payload for g in got] == [payload(s, size) for s in range(first, last + 1)]
        assert spool.ranges(count - 1, count)[0].start > 0  # sparse, yet not from the start

    check(spool)  # the index built while appending
    spool.close()
    spool, _ = opened(tmp_path)
    check(spool)  # the index rebuilt by the scan at open
    spool.close()


def test_ranges_are_a_snapshot_of_what_was_written(tmp_path: Path) -> None:
    """The converter reads a cut while the loop keeps appending to the same segment: it never
    reads past the end its ranges were taken at."""
    spool, _ = opened(tmp_path)
    fill(spool, 5)
    ranges = spool.ranges(1, 100)
    fill(spool, 5)
    assert [r.seq for r in read_ranges(ranges, 1, 100)] == [1, 2, 3, 4, 5]
    assert [r.seq for r in read(spool, 1, 100)] == list(range(1, 11))
    spool.close()


def test_records_read_back_in_another_process(tmp_path: Path) -> None:
    """read_ranges needs only the files and the ranges: what the converter process does."""
    spool, _ = opened(tmp_path, segment_bytes=250)
    fill(spool, 9, size=100)
    ranges = [[r.path, r.start, r.end] for r in spool.ranges(3, 7)]
    script = textwrap.dedent(
        """
        import json, sys
        from connector.spool import SpoolRange, read_ranges
        ranges = [SpoolRange(*r) for r in json.loads(sys.argv[1])]
        print(json.dumps([[r.seq, r.payload.decode()] for r in read_ranges(ranges, 3, 7)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(ranges)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[s, payload(s, 100).decode()] for s in range(3, 8)]
    spool.close()


# -- a failed write ---------------------------------------------------------------------------
EFBIG_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    from connector.spool import DATA, RecordMeta, Spool

    directory, room = Path(sys.argv[1]), int(sys.argv[2])
    spool = Spool(directory, segment_bytes=1 << 30, max_bytes=1 << 30)
    spool.open(0)
    for i in range(3):
        spool.append(DATA, RecordMeta(sub="air", n=1), b"x" * 100, 1_000 + i)
    [segment] = sorted(directory.glob("*.seg"))
    before = segment.stat().st_size
    # The disk refuses the write after `room` more bytes (EFBIG, like ENOSPC: an OSError).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (before + room, hard))
    try:
        spool.append(DATA, RecordMeta(sub="air", n=1), b"y" * 4000, 2_000)
        error = None
    except OSError as exc:
        error = exc.errno
    failed = {"errno": error, "size": segment.stat().st_size, "next_seq": spool.next_seq}
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    seq = spool.append(DATA, RecordMeta(sub="air", n=1), b"z" * 100, 3_000)
    spool.close()
    print(json.dumps({"before": before, "failed": failed, "seq": seq}))
    """
)


@pytest.mark.parametrize("room", [0, 1500], ids=["nothing-written", "partly-written"])
def test_a_failed_write_leaves_no_half_record(tmp_path: Path, room: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EFBIG_CHILD, str(tmp_path), str(room)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["failed"]["errno"] == errno.EFBIG
    assert out["failed"]["size"] == out["before"]  # truncated back: nothing of it stays
    assert out["failed"]["next_seq"] == 4  # and it took no sequence number
    assert out["seq"] == 4  # the next record that fits gets it

    spool, rec = opened(tmp_path)
    assert rec.torn_bytes == 0
    got = read(spool, 1, 4)
    assert [r.payload for r in got] == [b"x" * 100] * 3 + [b"z" * 100]
    assert [r.received_at_us for r in got] == [1_000, 1_001, 1_002, 3_000]
    spool.close()


# -- sync from another thread -----------------------------------------------------------------
def spool_fds(directory: Path) -> list[str]:
    """Open file descriptors of this process that point into `directory`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_sync_runs_in_a_thread_while_appends_rotate_segments(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool, _ = opened(directory, segment_bytes=1024)
    errors: list[BaseException] = []
    syncs = 0
    first_sync = threading.Event()
    stop = threading.Event()

    def syncer() -> None:
        nonlocal syncs
        while not stop.is_set():
            try:
                spool.sync()
            except BaseException as exc:
                errors.append(exc)
                return
            syncs += 1
            first_sync.set()

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        assert first_sync.wait(10)
        assert fill(spool, 600, size=100) == list(range(1, 601))  # ~8 records a segment
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    assert syncs >= 1
    spool.close()
    assert spool_fds(directory) == []  # every dup and every retired descriptor was closed

    spool, rec = opened(directory, segment_bytes=1024)
    assert len(segments(directory)) > 50
    assert rec.torn_bytes == 0
    assert [r.payload for r in read(spool, 1, 600)] == [payload(s, 100) for s in range(1, 601)]
    spool.close()


def test_sync_covers_records_written_before_it_even_if_a_rotation_races_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake.sync promises: everything spooled before the call is on disk when it returns.
    The interleaving is forced with a line tracer (no connector code is replaced): the sync
    thread stops just before `with self._lock:`, the loop appends a record that rotates the
    segment, then the sync thread goes on."""
    real_fsync = os.fsync
    fsynced: set[int] = set()  # inode numbers
    sync_returned = threading.Event()

    def recording_fsync(fd: int) -> None:
        if threading.current_thread().name == "spool-fsync":
            sync_returned.wait(1)  # a slow disk: the retired segment's fsync takes a while
        real_fsync(fd)
        fsynced.add(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    lines, start = inspect.getsourcelines(Spool.sync)
    lock_lines = [start + i for i, text in enumerate(lines) if "with self._lock" in text]
    if not lock_lines:
        raise LookupError("Spool.sync no longer takes self._lock: rewrite this test")
    at_lock, go = threading.Event(), threading.Event()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == lock_lines[0] and not at_lock.is_set():
            at_lock.set()
            go.wait(5)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is Spool.sync.__code__ else None

    spool, _ = opened(tmp_path, segment_bytes=100)
    spool.append(DATA, AIR, payload(1, 200), T0)  # fills the first segment
    [first_segment] = segments(tmp_path)
    written_before = first_segment.stat().st_ino

    def run_sync() -> None:
        sys.settrace(tracer)
        try:
            spool.sync()
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run_sync)
    thread.start()
    try:
        if not at_lock.wait(5):
            raise RuntimeError("the sync thread never reached its lock")
        spool.append(DATA, AIR, payload(2, 200), T0 + 1)  # rotates: a new segment
        assert len(segments(tmp_path)) == 2
    finally:
        go.set()
        thread.join(10)
    durable = written_before in fsynced
    sync_returned.set()
    spool.close()
    assert durable, "sync() returned before the segment written before it was fsynced"
