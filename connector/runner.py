"""The composition root: builds the stages, runs their tasks, shuts them down in order.

```
session --frames--> intake (spool, cuts) --cuts--> committer --jobs--> converter process
   |                   ^                              |               (decode, Parquet, sink)
   +--replies--> coverage (gaps, ledger) <-- backfill + checkpoint, release
```
Every frame is spooled before it is counted; every cut is recorded before its files are
written; the checkpoint advances only after they are visible. So a SIGKILL anywhere loses
nothing that was read and duplicates nothing that was written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from connector.backfill import Backfiller, BackfillPort
from connector.checkpoint import CheckpointStore
from connector.committer import Committer
from connector.config import Config
from connector.converter import Converter
from connector.coverage import Coverage
from connector.errors import ConnectorError, Crashed, is_transient
from connector.gaps import Gap, Gaps
from connector.health import heartbeat, problems
from connector.icebergspec import spec_for
from connector.identity import frame_identities
from connector.intake import Intake, now_us
from connector.jobs import FlushSettings, Identity, SinkSpec
from connector.layout import hour_dirs
from connector.metrics import Metrics
from connector.oauth2 import tokens_for
from connector.session import Session
from connector.spool import DATA, RecordMeta, Spool
from connector.statedir import StateDirLock

if TYPE_CHECKING:
    from connector.endpoints import HealthServer

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 12.0


@dataclass
class Totals:
    frames: int = 0
    observations: int = 0
    malformed: int = 0
    rejected: int = 0
    files: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    spool_dropped_frames: int = 0
    reconnects: int = 0
    backfilled: int = 0
    slow_rows: int = 0


class Runner:
    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.stopping = asyncio.Event()
        self.backfilled = 0
        # Two processes on one state dir would append to one spool under one writer id.
        self.lock = StateDirLock(cfg.state.dir)
        self.lock.acquire()
        self._store = CheckpointStore(cfg.state.dir)
        self.cp = self._store.load(cfg.state.writer_id)
        self.gaps = Gaps(self.cp.subscriptions)
        spool = Spool(
            cfg.state.dir / "spool",
            segment_bytes=cfg.state.segment_bytes,
            max_bytes=cfg.state.max_spool_bytes,
        )
        self.intake = Intake(
            spool, cfg.batch, cfg.state.fsync_seconds, self.gaps, self._gap, self._save_soon
        )
        self.coverage = Coverage(
            self.gaps, self.intake, self._save_soon, self.metrics, save_now=self._save_now
        )
        sink = SinkSpec(
            cfg.sink.url, dict(cfg.sink.storage_options), max_attempts=cfg.sink.max_attempts
        )
        settings = FlushSettings(
            self.cp.writer_id,
            cfg.sink.compression,
            cfg.sink.compression_level,
            cfg.sink.row_group_rows,
            spec_for(cfg.iceberg, cfg.state.dir),
        )
        self.converter = Converter(sink, settings, cfg.log.level, cfg.log.format)
        self.committer = Committer(self.intake, self.converter, self._store, self.cp, self.metrics)
        self.intake.connect(self.committer.submit)
        subscriptions = {s.name: s for s in cfg.subscriptions}
        # One token source for the socket and REST: an OAuth2 token is fetched once for both.
        self.tokens = tokens_for(cfg.source, self.metrics)
        self.session = Session(
            cfg.source,
            subscriptions,
            self.intake,
            self.coverage,
            self.stopping,
            self._fail,
            self.metrics,
            tokens=self.tokens,
        )
        self._watch_state()
        self.health: HealthServer | None = None
        self.backfiller = (
            Backfiller(cfg, self._backfill_port(), self.tokens) if cfg.backfill.enabled else None
        )
        if self.backfiller is not None:
            self.coverage.hooks.append(self.backfiller.on_gap)
        self._fatal: ConnectorError | None = None
        self._stop_requested_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def totals(self) -> Totals:
        c, t = self.intake.counts, self.committer.totals
        return Totals(
            frames=c.frames,
            observations=c.observations,
            malformed=c.malformed,
            rejected=t.rejected,
            files=t.files,
            rows_written=t.rows_written,
            bytes_written=t.bytes_written,
            spool_dropped_frames=c.dropped_frames,
            reconnects=self.session.reconnects,
            backfilled=self.backfilled,
            slow_rows=t.slow_rows,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First signal: stop gracefully. Second: leave at once; the spool keeps what was read."""
        if self._stop_requested_at is not None:
            log.warning("second stop signal: exiting now; unflushed data waits in the spool")
            os._exit(130)
        self._stop_requested_at = time.monotonic()
        log.info("stop requested: unsubscribing and flushing")
        self.stopping.set()

    async def run(self) -> Totals:
        await self._serve_health()
        recovered = self.intake.recover(self.cp.committed_seq)
        log.info(
            "writer %s: committed through seq %d, replaying %d cut(s) and %d record(s)",
            self.cp.writer_id,
            self.cp.committed_seq,
            len(recovered.cuts),
            recovered.tail_records,
        )
        # Not awaited before subscribing: starting the converter takes a second or two, and a
        # connector that restarts often must not spend that before it reads the stream.
        self.watch(self._check_sink(), "sink-check")
        if self.backfiller is not None:
            self.watch(self.backfiller.run(), "backfill")
        last_seen = max(recovered.last_received_us, self.cp.last_seen_us)
        self.coverage.restarted(set(self.session.subscriptions), last_seen, now_us())
        committer = self.watch(self.committer.run(), "committer")
        if self.cfg.log.heartbeat_seconds:
            self.watch(heartbeat(self.metrics, self.cfg.log.heartbeat_seconds), "heartbeat")
        self.watch(self.intake.run(), "intake")
        self.watch(self.tokens.run(), "tokens")
        try:
            await self.session.run()
        finally:
            await self._shutdown(committer)
        if self._fatal is not None:
            raise self._fatal
        return self.totals

    async def _shutdown(self, committer: asyncio.Task[None]) -> None:
        self.stopping.set()
        await self.session.close()
        self.intake.close_spool_gaps()
        self.intake.cut("stop")
        self.committer.finish()
        started = self._stop_requested_at or time.monotonic()
        remaining = max(1.0, SHUTDOWN_SECONDS - (time.monotonic() - started))
        done, _ = await asyncio.wait({committer}, timeout=remaining)
        if not done:
            log.warning("final flush did not finish in time: the rest waits in the spool")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.tokens.close()
        self.converter.close()
        self.intake.close()
        self.cp.last_seen_us = max(self.cp.last_seen_us, self.intake.last_frame_us)
        await self.committer.save()
        if self.health is not None:  # last: a scrape during the stop still sees the final flush
            await self.health.close()
        self.lock.release()
        log.info(
            "stopped: %s, rows by subscription %s",
            asdict(self.totals),
            dict(self.committer.rows_by_subscription),
        )

    async def _check_sink(self) -> None:
        """Fail fast (exit 4) when the sink refuses writes for good; transient trouble warns."""
        try:
            swept = await self.converter.check_sink()
            self.metrics.sink_ok()
            if swept:
                log.info("removed %d temp file(s) left in the landing zone by a kill", swept)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.metrics.sink_failed(exc)
            log.warning("sink not reachable yet (%s); data waits in the spool meanwhile", exc)

    async def _serve_health(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        from connector.endpoints import HealthServer  # aiohttp: imported only when enabled

        self.health = HealthServer(self.metrics)
        try:
            await self.health.start(self.cfg.metrics.host, self.cfg.metrics.port)
        except ConnectorError:
            self.lock.release()
            raise

    def _watch_state(self) -> None:
        """Point the sampled metrics and readiness at the stages' own state."""
        src = self.metrics.sources
        src.spool_bytes = lambda: self.intake.spool.size_bytes
        src.spool_frames = lambda: max(0, self.intake.last_seq - self.cp.committed_seq)
        src.gaps_open = lambda: self.coverage.open_gaps(set(self.session.subscriptions))
        src.not_ready = lambda: problems(
            stopping=self.stopping.is_set(),
            connected=self.session.connected,
            configured=set(self.session.subscriptions),
            active=self.session.active,
            sink_problem=self.metrics.sink_problem,
        )
        self.metrics.known(self.session.subscriptions)

    def _fail(self, exc: ConnectorError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.stopping.set()

    def watch(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A background task that dies must stop the connector, never leave it half-working."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)
        self._fail(
            exc if isinstance(exc, ConnectorError) else Crashed(f"{task.get_name()}: {exc!r}")
        )

    # -- glue between stages --------------------------------------------------------------
    def _gap(self, gap: Gap) -> None:
        self.coverage.gap(gap)

    def _backfill_port(self) -> BackfillPort:
        def ingest(meta: RecordMeta, payload: bytes, rows: int) -> bool:
            return self.intake.frame(DATA, meta, payload, rows, now_us(), None)

        async def spooled(name: str) -> tuple[set[Identity], int]:
            first, last = self.cp.committed_seq + 1, self.intake.last_seq
            ranges = self.intake.spool.ranges(first, last)
            return await self.converter.spooled_identities(ranges, first, last, name), last

        def since(name: str, after: int) -> tuple[set[Identity], int]:
            last = self.intake.last_seq
            found: set[Identity] = set()
            for rec in self.intake.spool.read(after + 1, last):
                if rec.kind == DATA and rec.meta.sub == name and rec.meta.origin == "stream":
                    found |= frame_identities(rec.payload)
            return found, last

        async def landed(name: str, start: int, end: int) -> set[Identity]:
            return await self.converter.landed_identities(hour_dirs(start, end), name, start, end)

        def counted(name: str, rows: int) -> None:
            self.backfilled += rows
            self.metrics.backfill_rows.labels(name).inc(rows)

        return BackfillPort(
            subscriptions=lambda: self.session.subscriptions,
            stopping=self.stopping,
            ingest=ingest,
            record=self.intake.record,
            barrier=lambda: self.committer.barrier(self.stopping),
            gate=self.committer.gate,
            spooled_identities=spooled,
            identities_since=since,
            landed_identities=landed,
            settle=self.coverage.settle,
            counted=counted,
        )

    def _save_soon(self) -> None:
        self.watch(self.committer.save(), "checkpoint")

    def _save_now(self) -> None:
        self.committer.save_now()

    async def reload(self, cfg: Config) -> None:
        """Apply a new subscription list on the open socket, without reconnecting."""
        if (cfg.source, cfg.sink, cfg.state, cfg.batch, cfg.metrics, cfg.iceberg) != (
            self.cfg.source,
            self.cfg.sink,
            self.cfg.state,
            self.cfg.batch,
            self.cfg.metrics,
            self.cfg.iceberg,
        ):
            log.warning("reload applies [[subscriptions]] only; restart to apply other changes")
        await self.session.reload({s.name: s for s in cfg.subscriptions})
        self.metrics.known(self.session.subscriptions)
