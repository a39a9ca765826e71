"""Makes cuts visible and advances state: convert -> sink -> checkpoint -> release.

Cuts are landed one at a time, in order, by the converter process; the checkpoint advances
only after a cut's files are visible, and spool segments are released only after the
checkpoint is on disk. One retry policy: `is_transient` errors wait (the rows stay in the
spool) and retry with backoff; anything else stops the connector (exit code of the error).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from connector import ledger
from connector.backoff import Backoff
from connector.batcher import Cut
from connector.checkpoint import Checkpoint, CheckpointStore
from connector.converter import Converter
from connector.errors import is_transient
from connector.intake import Intake, now_us
from connector.jobs import CutJob, FlushResult
from connector.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class CommitTotals:
    files: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    rejected: int = 0
    slow_rows: int = 0
    sink_errors: int = 0


class Committer:
    def __init__(
        self,
        intake: Intake,
        converter: Converter,
        store: CheckpointStore,
        cp: Checkpoint,
        metrics: Metrics | None = None,
    ) -> None:
        self.intake = intake
        self.metrics = metrics or Metrics()
        self.converter = converter
        self.cp = cp
        self.totals = CommitTotals()
        self.rows_by_subscription: Counter[str] = Counter()
        # Held while a cut lands; backfill holds it while it looks at what is landed.
        self.gate = asyncio.Lock()
        self._store = store
        # A deque, not an asyncio.Queue: landing a cut looks at the one after it (lookahead).
        self._cuts: deque[Cut | None] = deque()
        self._arrived = asyncio.Event()
        self._committed = asyncio.Event()  # pulsed after each checkpoint save
        self._stopping = False
        self._saves = 0  # snapshots taken; a thread never writes an older one over a newer
        self._written = 0
        self._write_lock = threading.Lock()

    def submit(self, cut: Cut) -> None:
        self._cuts.append(cut)
        self._arrived.set()

    def finish(self) -> None:
        """No more cuts: `run` returns once the queue is drained (or at the first transient
        failure: the rest waits in the spool for the next start)."""
        self._stopping = True
        self._cuts.append(None)
        self._arrived.set()

    @property
    def backlog(self) -> int:
        return len(self._cuts)

    async def run(self) -> None:
        while (cut := await self._next()) is not None:
            if not await self._land(cut):
                return

    async def _next(self) -> Cut | None:
        while not self._cuts:
            self._arrived.clear()
            await self._arrived.wait()
        return self._cuts.popleft()

    def _ahead(self) -> CutJob | None:
        """The next cut's job when one already waits: the converter prepares it meanwhile."""
        cut = self._cuts[0] if self._cuts else None
        return None if cut is None else self.intake.job(cut)

    async def _land(self, cut: Cut) -> bool:
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                # The cut record and its frames must be on disk before files named after them
                # exist: after a power loss a replay must find the same cut, not re-cut.
                await self.intake.sync()
                async with self.gate:
                    started = time.monotonic()
                    job, ahead = self.intake.job(cut), self._ahead()
                    result = await self.converter.flush(job, ahead)
                    seconds = time.monotonic() - started
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.totals.sink_errors += 1
                self.metrics.sink_failed(exc)
                delay = backoff.next()
                log.warning(
                    "cut %d-%d waits in the spool (retry in %.1fs): %s",
                    cut.first,
                    cut.last,
                    delay,
                    exc,
                )
                if self._stopping:
                    return False
                await asyncio.sleep(delay)
        self._account(result)
        for first, last in result.missing:
            log.error("spool records %d-%d are damaged on disk: lost, recorded", first, last)
            self.intake.record(
                ledger.event(ledger.SPOOL_DAMAGED, "", now_us(), seq_first=first, seq_last=last)
            )
        self.cp.committed_seq = cut.last
        self.cp.last_seen_us = max(self.cp.last_seen_us, self.intake.synced_frame_us)
        await self.save()
        self.metrics.landed(result, seconds)  # after the save: counts what readers can see
        self.intake.release(cut.last)
        self._committed.set()
        return True

    def _account(self, result: FlushResult) -> None:
        for path, rows, size in result.files:
            log.info("file written %s rows=%d bytes=%d", path, rows, size)
        t = self.totals
        t.files += len(result.files)
        t.rows_written += result.rows
        t.bytes_written += result.bytes
        t.rejected += result.rejected
        t.slow_rows += result.slow_rows
        self.rows_by_subscription.update(result.rows_by_subscription)
        if result.rejected:
            log.warning(
                "%d observation(s) did not fit the schema: kept in _dead_letter/", result.rejected
            )

    async def barrier(self, stopping: asyncio.Event) -> None:
        """Return once everything spooled before the call is visible in the sink."""
        target = self.intake.last_seq
        self.intake.cut("barrier")
        while self.cp.committed_seq < target and not stopping.is_set():
            self._committed.clear()
            try:
                await asyncio.wait_for(self._committed.wait(), 0.5)
            except TimeoutError:
                continue

    async def save(self) -> None:
        """Write a snapshot of the checkpoint taken now (fsync in a thread)."""
        self._saves += 1
        await asyncio.to_thread(self._write, self._saves, self._store.encode(self.cp))

    def save_now(self) -> None:
        """Write a snapshot before returning, on the caller's thread (the event loop waits for
        one fsync): for state that must be on disk before the next frame is spooled."""
        self._saves += 1
        self._write(self._saves, self._store.encode(self.cp))

    def _write(self, number: int, data: bytes) -> None:
        with self._write_lock:
            if number < self._written:
                return  # a save cancelled at shutdown must not overwrite the final one
            self._store.write(data)
            self._written = number
