"""The batcher decides cuts from counts and an explicit clock: no test sleeps."""

from __future__ import annotations

import itertools
import random

import pytest

from connector.batcher import Batcher, Cut


def test_cuts_at_max_rows_including_the_frame_that_reaches_it() -> None:
    b = Batcher(max_rows=10, max_bytes=10**9, max_seconds=60)
    assert b.add(1, 4, 100, now=0.0) is None
    assert b.add(2, 5, 100, now=1.0) is None
    assert b.add(3, 2, 100, now=2.0) == Cut(1, 3, 11, 300, "rows")
    # Nothing is left pending, and the next batch starts counting from zero.
    assert b.deadline() is None and b.force() is None
    assert b.add(4, 1, 10, now=3.0) is None
    assert b.force() == Cut(4, 4, 1, 10, "stop")


def test_cuts_at_max_bytes() -> None:
    b = Batcher(max_rows=10**6, max_bytes=1000, max_seconds=60)
    assert b.add(5, 1, 999, now=0.0) is None
    assert b.add(6, 1, 1, now=0.0) == Cut(5, 6, 2, 1000, "bytes")


def test_rows_win_when_both_limits_are_reached() -> None:
    b = Batcher(max_rows=1, max_bytes=1, max_seconds=60)
    assert b.add(1, 1, 1, now=0.0) == Cut(1, 1, 1, 1, "rows")


def test_age_is_measured_from_the_first_pending_frame() -> None:
    b = Batcher(max_rows=100, max_bytes=10**6, max_seconds=60)
    assert b.poll(now=1e9) is None  # nothing pending: nothing to cut
    b.add(1, 1, 10, now=100.0)
    b.add(2, 1, 10, now=150.0)
    assert b.deadline() == 160.0
    assert b.poll(now=159.999) is None
    # The idle timer fires with no new data: poll alone cuts.
    assert b.poll(now=160.0) == Cut(1, 2, 2, 20, "seconds")
    assert b.poll(now=1000.0) is None


def test_the_clock_restarts_with_the_next_batch() -> None:
    b = Batcher(max_rows=2, max_bytes=10**6, max_seconds=10)
    b.add(1, 1, 1, now=0.0)
    assert b.add(2, 1, 1, now=5.0) is not None
    b.add(3, 1, 1, now=50.0)
    assert b.deadline() == 60.0
    assert b.poll(now=59.0) is None
    assert b.poll(now=60.0) == Cut(3, 3, 1, 1, "seconds")


def test_force_cuts_whatever_is_pending() -> None:
    b = Batcher(max_rows=100, max_bytes=10**6, max_seconds=60)
    assert b.force() is None
    b.add(7, 3, 30, now=0.0)
    assert b.force("barrier") == Cut(7, 7, 3, 30, "barrier")
    assert b.force() is None
    b.add(8, 0, 5, now=1.0)  # a zero-row record (a ledger event) is still in a cut
    assert b.force() == Cut(8, 8, 0, 5, "stop")


def test_a_sequence_gap_inside_a_batch_raises() -> None:
    b = Batcher(max_rows=100, max_bytes=10**6, max_seconds=60)
    b.add(1, 1, 1, now=0.0)
    with pytest.raises(ValueError, match="sequence gap in batcher: 1 -> 3"):
        b.add(3, 1, 1, now=0.0)
    with pytest.raises(ValueError, match="1 -> 1"):
        b.add(1, 1, 1, now=0.0)


def test_cuts_are_contiguous_ranges_covering_every_sequence() -> None:
    rng = random.Random(7)
    b = Batcher(max_rows=20, max_bytes=60, max_seconds=3)
    cuts: list[Cut] = []
    now, total_rows = 0.0, 0
    for seq in range(1, 400):
        now += rng.choice([0.1, 0.1, 0.2, 5.0])
        polled = b.poll(now)
        if polled:
            cuts.append(polled)
        rows = rng.randint(0, 6)
        total_rows += rows
        cut = b.add(seq, rows, rng.choice([1, 2, 3, 3, 45]), now)
        if cut:
            cuts.append(cut)
    last = b.force()
    assert last is not None
    cuts.append(last)
    assert cuts[0].first == 1 and cuts[-1].last == 399
    for before, after in itertools.pairwise(cuts):
        assert after.first == before.last + 1
    assert sum(c.rows for c in cuts) == total_rows
    assert {c.reason for c in cuts} == {"rows", "bytes", "seconds", "stop"}
    for c in cuts:
        assert c.reason != "rows" or c.rows >= 20
        assert c.reason != "bytes" or (c.bytes >= 60 and c.rows < 20)
        assert c.reason != "seconds" or (c.rows < 20 and c.bytes < 60)
