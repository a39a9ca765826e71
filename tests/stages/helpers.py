"""Shared by the in-process stage tests: bounded waits, wire frames, spool read-back.

Nothing here replaces a connector component: intakes are built from a real `Spool` in a real
folder, and what a stage did is read back from the spool files (the same bytes a restart or
the converter would read), not from the stage's internals.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.batcher import Cut
from connector.config import BatchConfig
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.spool import DATA, DEAD, LEDGER, Record, RecordMeta, Spool

DEADLINE = 5.0  # seconds: the most any bounded wait may take (each takes far less)
T0 = 1_719_248_400_000_000  # 2024-06-24T17:00:00Z in microseconds
SECOND = 1_000_000


async def until(cond: Callable[[], bool], within: float = DEADLINE, what: str = "") -> float:
    """Poll `cond` until it holds; fail after `within` seconds. Returns the seconds it took."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > within:
            raise AssertionError(f"not reached within {within}s: {what or cond}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- what the wire carries --------------------------------------------------------------------
def observation(track: str, second: int = 0) -> dict[str, Any]:
    """An observation exactly as documented (timestamps within one hour: one partition)."""
    return {
        "sourceSystemId": "adsb-feed",
        "collectionId": "air",
        "observationSpecId": "baz",
        "trackId": track,
        "position": {"longitude": -77.01, "latitude": 38.89},
        "timestamp": f"2024-06-24T17:{second // 60 % 60:02d}:{second % 60:02d}Z",
        "liveProperties": [{"propertyType": "speed", "value": 412.5}],
    }


def data_message(sid: str, count: int = 1, track: str = "t", start: int = 0) -> dict[str, Any]:
    return {
        "type": "data",
        "id": sid,
        "observations": [observation(f"{track}-{start + i}", start + i) for i in range(count)],
    }


def data_frame(sid: str, count: int = 1, track: str = "t", start: int = 0) -> bytes:
    return json.dumps(data_message(sid, count, track, start)).encode()


# -- reading the spool back -------------------------------------------------------------------
def spool_records(spool: Spool, kind: int | None = None) -> list[Record]:
    """DATA, DEAD and LEDGER records still in the spool files, in order."""
    found = list(spool.read(1, spool.next_seq - 1))
    return [r for r in found if kind is None or r.kind == kind]


def ledger_events(spool: Spool) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in spool_records(spool, LEDGER)]


def events_of(spool: Spool, event: str) -> list[dict[str, Any]]:
    return [e for e in ledger_events(spool) if e["event"] == event]


def recorded_cuts(directory: Path) -> list[tuple[int, int]]:
    """The CUT records on disk, as a restart would find them (a fresh scan of the files)."""
    return Spool(directory, segment_bytes=1 << 30, max_bytes=1 << 40).open(0).cuts


def assert_partition(ranges: list[tuple[int, int]], first: int, last: int) -> None:
    """The ranges are contiguous, in order, and cover first..last: no seq twice, none missing."""
    expected = first
    for lo, hi in ranges:
        assert lo == expected, f"ranges {ranges}: expected one starting at {expected}"
        assert hi >= lo, f"empty range in {ranges}"
        expected = hi + 1
    assert expected == last + 1, f"ranges {ranges} do not reach {last}"


# -- an intake on a real spool ----------------------------------------------------------------
@dataclass
class IntakeRig:
    """An Intake on a real Spool; collects cuts and gaps and checks, at each cut, that the cut
    was already recorded on disk and every record it covers was already spooled."""

    directory: Path
    intake: Intake
    cuts: list[Cut] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    unrecorded: list[Cut] = field(default_factory=list)  # handed on before being on disk

    @property
    def spool(self) -> Spool:
        return self.intake.spool

    def on_cut(self, cut: Cut) -> None:
        on_disk = (cut.first, cut.last) in recorded_cuts(self.directory)
        seqs = {r.seq for r in self.intake.spool.read(cut.first, cut.last)}
        if not on_disk or seqs != set(range(cut.first, cut.last + 1)):
            self.unrecorded.append(cut)
        self.cuts.append(cut)

    def ranges(self) -> list[tuple[int, int]]:
        return [(c.first, c.last) for c in self.cuts]

    def data(self, sub: str, at: int, rows: int = 1, size: int = 40, sid: str = "S1") -> bool:
        payload = b"x" * size
        meta = RecordMeta(sub=sub, id=sid, n=rows)
        return self.intake.frame(DATA, meta, payload, rows, at, sub)

    def dead(self, at: int, payload: bytes = b"{not json") -> bool:
        return self.intake.frame(DEAD, RecordMeta(reason="test"), payload, 0, at, None)


def make_rig(
    directory: Path,
    *,
    committed: int | None = 0,
    max_rows: int = 1_000_000,
    max_bytes: int = 1 << 40,
    max_seconds: float = 3600.0,
    fsync_seconds: float = 3600.0,
    max_spool_bytes: int = 1 << 40,
    segment_bytes: int = 1 << 20,
    spool_type: type[Spool] = Spool,
    gaps: Gaps | None = None,
) -> IntakeRig:
    """Build an intake; `committed` not None: open (recover) its spool at once."""
    spool = spool_type(directory, segment_bytes=segment_bytes, max_bytes=max_spool_bytes)
    collected: list[Gap] = []
    intake = Intake(
        spool,
        BatchConfig(max_rows=max_rows, max_bytes=max_bytes, max_seconds=max_seconds),
        fsync_seconds,
        gaps if gaps is not None else Gaps({}),
        collected.append,
    )
    rig = IntakeRig(directory, intake, gaps=collected)
    intake.connect(rig.on_cut)
    if committed is not None:
        intake.recover(committed)
    return rig
