"""Makes received frames durable and decides cuts. The only owner of the spool's writes, its
fsync and the batcher; runs on the event loop and never blocks it (fsync runs in a thread).

Every frame is spooled before it is counted; every cut is recorded in the spool before it is
handed on (`on_cut`): a replay after a kill cuts exactly the same ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from connector.batcher import Batcher, Cut
from connector.config import BatchConfig
from connector.gaps import Gap, Gaps
from connector.jobs import CutJob
from connector.spool import DATA, LEDGER, RecordMeta, Recovered, Spool, SpoolFull

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class IntakeCounts:
    frames: int = 0
    observations: int = 0
    malformed: int = 0
    dropped_frames: int = 0  # refused by a full spool (recorded as gaps)


class Intake:
    def __init__(
        self,
        spool: Spool,
        batch: BatchConfig,
        fsync_seconds: float,
        gaps: Gaps,
        on_gap: Callable[[Gap], None],
        on_state_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.spool = spool
        self.counts = IntakeCounts()
        self._batcher = Batcher(batch.max_rows, batch.max_bytes, batch.max_seconds)
        self._fsync_seconds = fsync_seconds
        self._gaps = gaps
        self._on_gap = on_gap
        self._on_state_change = on_state_change  # gap state changed: save the checkpoint
        self._on_cut: Callable[[Cut], None] = lambda cut: None
        self._sync_lock = asyncio.Lock()
        self._sync_wanted = asyncio.Event()
        self._batch_opened = asyncio.Event()
        self._last_spooled: dict[str, int] = {}
        self.last_frame_us = 0
        self.synced_frame_us = 0  # every frame received up to here is on disk

    def connect(self, on_cut: Callable[[Cut], None]) -> None:
        self._on_cut = on_cut

    # -- start-up -------------------------------------------------------------------------
    def recover(self, committed_seq: int) -> Recovered:
        """Open the spool; hand on the recorded cuts, then cut what came after them."""
        recovered = self.spool.open(committed_seq)
        for first, last in recovered.cuts:
            self._on_cut(Cut(first, last, 0, 0, "replay"))
        for record in self.spool.tail(recovered.tail_first):
            rows = record.meta.n if record.kind == DATA else 0
            self._account(record.seq, rows, record.size)
        self.cut("replay")
        return recovered

    # -- intake -----------------------------------------------------------------------------
    def frame(
        self, kind: int, meta: RecordMeta, payload: bytes, rows: int, at: int, sub: str | None
    ) -> bool:
        """Spool one record and account it; False when it could not be spooled (full spool or
        disk): a gap is then opened for its subscription and closed by the next frame that fits."""
        try:
            seq = self.spool.append(kind, meta, payload, at)
        except (SpoolFull, OSError) as exc:  # OSError: the state disk itself is full
            self.counts.dropped_frames += 1
            if sub is not None and self._gaps.spool_full(sub, self._last_spooled.get(sub, at)):
                log.error("%s: dropping frames for %s and recording a gap", exc, sub)
                self._on_state_change()
            return False
        if meta.origin == "stream":
            # Evidence the stream was alive then; backfill's records are not (they are spooled
            # when fetched, and would move a restart's gap past stream time never received).
            self.last_frame_us = at
        if self._fsync_seconds == 0:
            self._sync_wanted.set()
        self._account(seq, rows, len(payload))
        if sub is not None:
            self._last_spooled[sub] = at
            gap = self._gaps.spooled(sub, at)
            if gap is not None:
                self._on_gap(gap)
        return True

    def record(self, item: dict[str, object]) -> None:
        """Append a ledger event; it lands with the next cut as `_ledger/<cut>.jsonl`."""
        payload = msgspec.json.encode(item)
        # Ledger records bypass the spool limit: they are tiny and say what was lost.
        seq = self.spool.append(LEDGER, RecordMeta(), payload, now_us(), force=True)
        self._account(seq, 0, len(payload))

    def cut(self, reason: str) -> None:
        """Cut whatever is pending now (stop, a flush barrier, the end of a replay)."""
        cut = self._batcher.force(reason)
        if cut is not None:
            self._emit(cut)

    @property
    def last_seq(self) -> int:
        return self.spool.next_seq - 1

    def job(self, cut: Cut) -> CutJob:
        return CutJob(cut.first, cut.last, tuple(self.spool.ranges(cut.first, cut.last)))

    def release(self, committed_seq: int) -> None:
        self.spool.release(committed_seq)

    def close_spool_gaps(self) -> None:
        for gap in self._gaps.close_spool_gaps(now_us()):
            self._on_gap(gap)

    def _account(self, seq: int, rows: int, nbytes: int) -> None:
        if self._batcher.deadline() is None:
            self._batch_opened.set()  # the timer may be sleeping with no deadline to watch
        cut = self._batcher.add(seq, rows, nbytes, time.monotonic())
        if cut is not None:
            self._emit(cut)

    def _emit(self, cut: Cut) -> None:
        self.spool.append_cut(cut.first, cut.last, now_us())
        self._on_cut(cut)

    # -- background work ------------------------------------------------------------------
    async def run(self) -> None:
        """The cut timer and the fsync ticker; cancelled at shutdown."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._timer())
            group.create_task(self._syncer())

    async def _timer(self) -> None:
        while True:
            deadline = self._batcher.deadline()
            if deadline is None:
                self._batch_opened.clear()
                await self._batch_opened.wait()
                continue
            await asyncio.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
            cut = self._batcher.poll(time.monotonic())
            if cut is not None:
                self._emit(cut)

    async def _syncer(self) -> None:
        """Every `fsync_seconds`, or as soon as a frame arrives when it is 0 (coalesced: one
        fsync covers every frame written before it starts)."""
        while True:
            if self._fsync_seconds == 0:
                await self._sync_wanted.wait()
                self._sync_wanted.clear()
            else:
                await asyncio.sleep(self._fsync_seconds)
            await self.sync()

    async def sync(self) -> None:
        """Everything spooled before the call is on disk when this returns."""
        async with self._sync_lock:
            mark = self.last_frame_us
            await asyncio.to_thread(self.spool.sync)
            self.synced_frame_us = max(self.synced_frame_us, mark)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.spool.close()
