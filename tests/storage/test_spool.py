"""connector.spool on real files: ranges, sequence numbers, cuts, torn tails, rotation, release,
the size limit, and survival of a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connector.spool import CUT, DATA, DEAD, LEDGER, Recovered, Spool, SpoolFull

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


def fill(spool: Spool, count: int, *, size: int = 40) -> list[int]:
    return [
        spool.append(DATA, {"sub": "air", "id": "s-1"}, payload(spool.next_seq, size), T0 + i)
        for i in range(count)
    ]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_and_read_ranges(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    seqs = fill(spool, 5)
    seqs.append(spool.append(DEAD, {"reason": "bad data frame", "sub": None}, b"{oops", T0 + 5))
    seqs.append(spool.append(LEDGER, {}, b'{"event":"gap"}', T0 + 6, force=True))
    seqs += fill(spool, 3)
    assert seqs == list(range(1, 11))

    middle = list(spool.read(3, 7))
    assert [r.seq for r in middle] == [3, 4, 5, 6, 7]
    assert [r.kind for r in middle] == [DATA, DATA, DATA, DEAD, LEDGER]
    assert middle[0].payload == payload(3)
    assert middle[0].meta == {"sub": "air", "id": "s-1"}
    assert middle[0].received_at_us == T0 + 2
    assert middle[3].payload == b"{oops" and middle[3].meta["reason"] == "bad data frame"
    assert middle[4].payload == b'{"event":"gap"}'
    assert [r.size for r in middle] == [len(r.payload) for r in middle]

    assert [r.seq for r in spool.read(1, 10)] == list(range(1, 11))
    assert [r.seq for r in spool.read(10, 10)] == [10]
    assert list(spool.read(11, 20)) == []
    spool.close()


def test_cut_records_are_not_read_as_data(tmp_path: Path) -> None:
    spool, _ = opened(tmp_path)
    fill(spool, 3)
    spool.append_cut(1, 3, T0)
    fill(spool, 2)
    spool.append_cut(4, 5, T0)
    assert [r.seq for r in spool.read(1, 3)] == [1, 2, 3]
    assert [r.seq for r in spool.read(4, 5)] == [4, 5]
    assert all(r.kind != CUT for r in spool.read(1, 5))
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
    spool.append(DEAD, {"reason": "r", "sub": None}, b"xx", T0 + 100)  # 8
    spool.append(LEDGER, {}, b"{}", T0 + 200, force=True)  # 9
    spool.close()

    _, rec = opened(tmp_path, committed=0)
    assert rec.cuts == [(1, 4), (5, 6)]
    assert [r.seq for r in rec.tail] == [7, 8, 9]
    assert [r.kind for r in rec.tail] == [DATA, DEAD, LEDGER]
    assert [r.size for r in rec.tail] == [len(payload(7)), 2, 2]
    assert rec.torn_bytes == 0
    # DATA only (fill() stamps T0+0.. per call): where a crash's gap begins.
    assert rec.last_received_us == T0 + 3

    _, rec = opened(tmp_path, committed=4)
    assert rec.cuts == [(5, 6)]
    assert [r.seq for r in rec.tail] == [7, 8, 9]

    _, rec = opened(tmp_path, committed=6)
    assert rec.cuts == []
    assert [r.seq for r in rec.tail] == [7, 8, 9]

    _, rec = opened(tmp_path, committed=9)
    assert rec.cuts == [] and rec.tail == []


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
    assert [r.seq for r in rec.tail] == [1, 2, 3, 4]
    assert seg.stat().st_size == intact - 60 - rec.torn_bytes
    assert [r.payload for r in spool.read(1, 4)] == [payload(s, 100) for s in range(1, 5)]
    assert fill(spool, 2, size=100) == [5, 6]  # the lost record's number was never durable
    spool.close()

    spool, rec = opened(tmp_path)
    assert rec.torn_bytes == 0
    assert [r.seq for r in rec.tail] == [1, 2, 3, 4, 5, 6]
    assert [r.payload for r in spool.read(1, 6)] == [payload(s, 100) for s in range(1, 7)]
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
    assert [r.payload for r in spool.read(1, 3)] == [payload(s) for s in (1, 2, 3)]
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
    assert [r.seq for r in rec.tail] == list(range(1, 11))
    # Ranges that cross segment boundaries read whole.
    assert [r.payload for r in spool.read(2, 9)] == [payload(s, 100) for s in range(2, 10)]
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
    assert [r.seq for r in spool.read(7, 7)] == [7]
    assert fill(spool, 1) == [8]
    assert [r.seq for r in spool.read(7, 8)] == [7, 8]
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
    ledger_seq = spool.append(LEDGER, {}, b'{"event":"gap","reason":"spool_full"}', T0, force=True)
    assert ledger_seq == appended + 1
    assert spool.size_bytes > size
    assert [r.kind for r in spool.read(ledger_seq, ledger_seq)] == [LEDGER]
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
    from connector.spool import DATA, Spool

    spool = Spool(Path(sys.argv[1]), segment_bytes=4096, max_bytes=1 << 30)
    spool.open(0)
    for i in range(int(sys.argv[2])):
        spool.append(DATA, {"sub": "air", "n": i}, b"frame-%06d" % i, 1_000_000 + i)
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
    assert [r.seq for r in rec.tail] == list(range(1, count + 1))
    records = list(spool.read(1, count))
    assert [r.payload for r in records] == [b"frame-%06d" % i for i in range(count)]
    assert [r.meta["n"] for r in records] == list(range(count))
    assert fill(spool, 1) == [count + 1]
    spool.close()
    assert os.listdir(tmp_path) == ["spool"]
