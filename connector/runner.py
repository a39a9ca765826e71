"""Wires the stages: stream -> spool -> batcher -> flush worker -> checkpoint. Owns no parsing.

Every frame is spooled before it is counted; every cut is recorded before its files are
written; the checkpoint advances only after they are visible. So a SIGKILL anywhere loses
nothing that was read and duplicates nothing that was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from connector import ledger
from connector.backoff import Backoff
from connector.batcher import Batcher, Cut
from connector.checkpoint import CheckpointStore
from connector.config import Config, Subscription
from connector.errors import (
    AuthError,
    ConnectorError,
    Crashed,
    QueryError,
    SinkError,
    TransientSinkError,
    describe,
)
from connector.flush import FlushSettings, flush_cut
from connector.protocol import Data, Malformed, Protocol, ServerError, Subscribed, SubscribeFailed
from connector.records import Columns, FrameMeta, Identity, identities
from connector.sink import Sink
from connector.source import HandshakeFailed, open_stream
from connector.spool import DATA, DEAD, LEDGER, Spool, SpoolFull
from connector.timeparse import format_us

log = logging.getLogger(__name__)

HEALTHY_SESSION_SECONDS = 30.0
SHUTDOWN_SECONDS = 12.0
DRAIN_SECONDS = 3.0  # at most, reading what was sent before our unsubscribe arrived
DRAIN_QUIET_SECONDS = 0.3


def now_us() -> int:
    return time.time_ns() // 1000


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


class Runner:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.totals = Totals()
        # Summed from what each flush returns: the seed of per-subscription metrics.
        self.rows_by_subscription: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self.protocol = Protocol()
        self._store = CheckpointStore(cfg.state.dir)
        self._spool = Spool(
            cfg.state.dir / "spool",
            segment_bytes=cfg.state.segment_bytes,
            max_bytes=cfg.state.max_spool_bytes,
        )
        self._batcher = Batcher(cfg.batch.max_rows, cfg.batch.max_bytes, cfg.batch.max_seconds)
        self._queue: asyncio.Queue[Cut | None] = asyncio.Queue()
        self._fatal: ConnectorError | None = None
        self._ws: ClientConnection | None = None
        self._last_frame_us = 0
        self._spool_gaps: dict[str, int] = {}  # subscription -> start of an open spool-full gap
        self._last_spooled: dict[str, int] = {}
        self._resubscribe_backoff: dict[str, Backoff] = {}
        self.commit_gate = asyncio.Lock()  # held while backfill reads what is landed
        self._tasks: list[asyncio.Task[Any]] = []
        self._committed = asyncio.Event()  # pulsed after each checkpoint save
        self._save_lock = asyncio.Lock()
        self._stop_requested_at: float | None = None
        self.subscriptions: dict[str, Subscription] = {s.name: s for s in cfg.subscriptions}
        self.hooks: list[Callable[[str, int, int], None]] = []  # called on each gap (backfill)

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
        cp = self._store.load(self.cfg.state.writer_id)
        self._cp = cp
        recovered = self._spool.open(cp.committed_seq)
        self.sink = Sink(
            self.cfg.sink.url,
            self.cfg.sink.storage_options,
            max_attempts=self.cfg.sink.max_attempts,
        )
        self._settings = FlushSettings(
            cp.writer_id,
            self.cfg.sink.compression,
            self.cfg.sink.compression_level,
            self.cfg.sink.row_group_rows,
        )
        try:
            await asyncio.to_thread(self.sink.check)
        except TransientSinkError as exc:
            log.warning("sink not reachable yet (%s); data waits in the spool meanwhile", exc)
        log.info(
            "writer %s: committed through seq %d, replaying %d cut(s) and %d record(s)",
            cp.writer_id,
            cp.committed_seq,
            len(recovered.cuts),
            len(recovered.tail),
        )
        for first, last in recovered.cuts:
            self._queue.put_nowait(Cut(first, last, 0, 0, "replay"))
        for rec in recovered.tail:
            rows = int(rec.meta.get("n", 0)) if rec.kind == DATA else 0
            self._account(rec.seq, rows, rec.size)
        self._start_gaps(max(recovered.last_received_us, int(cp.totals.get("last_seen_us", 0))))
        for name, state in cp.subscriptions.items():
            for start, end in list(state.get("pending_gaps", [])):
                for hook in self.hooks:
                    hook(name, start, end)
        self._flush_task = self._watch(asyncio.create_task(self._flush_worker(), name="flush"))
        self._watch(asyncio.create_task(self._timer(), name="timer"))
        self._watch(asyncio.create_task(self._fsync_ticker(), name="fsync"))
        try:
            await self._connection_loop()
        finally:
            await self._shutdown()
        if self._fatal is not None:
            raise self._fatal
        return self.totals

    def _start_gaps(self, last_seen_us: int) -> None:
        """Subscriptions that streamed in an earlier run have a gap from then until resubscribed."""
        at = now_us()
        for name, state in list(self._cp.subscriptions.items()):
            if name not in self.subscriptions:
                self.record(ledger.event(ledger.SUBSCRIPTION_ENDED, name, at))
                del self._cp.subscriptions[name]
            elif state.get("accepted") and state.get("gap_from_us") is None and last_seen_us:
                state["gap_from_us"] = last_seen_us

    async def _shutdown(self) -> None:
        self.stopping.set()
        if self._ws is not None:
            await self._unsubscribe_and_close(self._ws)
        at = now_us()
        for name, start in self._spool_gaps.items():  # still open: record it for the next start
            self.on_gap(name, start, at, "spool_full")
        self._spool_gaps.clear()
        cut = self._batcher.force()
        if cut is not None:
            self._emit(cut)
        self._queue.put_nowait(None)
        flush_task = getattr(self, "_flush_task", None)
        if flush_task is not None:
            started = self._stop_requested_at or time.monotonic()
            remaining = max(1.0, SHUTDOWN_SECONDS - (time.monotonic() - started))
            done, _ = await asyncio.wait({flush_task}, timeout=remaining)
            if not done:
                log.warning("final flush did not finish in time: the rest waits in the spool")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._spool.close()
        self._cp.totals["last_seen_us"] = now_us()
        await self._save_checkpoint()
        log.info(
            "stopped: %s, rows by subscription %s",
            asdict(self.totals),
            dict(self.rows_by_subscription),
        )

    async def _save_checkpoint(self) -> None:
        snapshot = self._store.encode(self._cp)
        async with self._save_lock:
            await asyncio.to_thread(self._store.write, snapshot)

    def _fail(self, exc: ConnectorError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.stopping.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # -- the stream ---------------------------------------------------------------------------
    async def _connection_loop(self) -> None:
        source = self.cfg.source
        backoff = Backoff(source.reconnect_min_seconds, source.reconnect_max_seconds)
        auth_failing_since: float | None = None
        first = True
        while not self.stopping.is_set():
            try:
                ws = await open_stream(source, source.token.load())
            except AuthError as exc:
                now = time.monotonic()
                auth_failing_since = auth_failing_since or now
                if first or now - auth_failing_since > source.auth_retry_seconds:
                    self._fail(exc)
                    return
                delay = backoff.next()
                log.warning("%s; retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            except HandshakeFailed as exc:
                delay = backoff.next()
                log.warning("%s; reconnecting in %.1fs", exc, delay)
                await self._sleep(delay)
                continue
            except ConnectorError as exc:  # token missing/unreadable: a config problem
                self._fail(exc)
                return
            auth_failing_since = None
            started = time.monotonic()
            log.info("connected to %s", source.ws_url)
            await self._session(ws, first)
            first = False
            if time.monotonic() - started > HEALTHY_SESSION_SECONDS:
                backoff.reset()
            if not self.stopping.is_set():
                self.totals.reconnects += 1
                delay = backoff.next()
                log.info("reconnecting in %.1fs", delay)
                await self._sleep(delay)

    async def _session(self, ws: ClientConnection, first: bool) -> None:
        self.protocol = Protocol()
        self._ws = ws
        self._first_session = first
        try:
            for sub in self.subscriptions.values():
                await ws.send(self.protocol.subscribe(sub.name, dict(sub.query)))
            reader = asyncio.create_task(self._read(ws))
            stopper = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not reader.done():
                reader.cancel()  # websockets' recv() is cancellation-safe
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await self._unsubscribe_and_close(ws)
                return
            exc = reader.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                raise exc
            if isinstance(exc, ConnectionClosed):
                rcvd = exc.rcvd
                log.warning(
                    "connection lost (%s)",
                    f"code {rcvd.code} {rcvd.reason!r}" if rcvd else "no close frame",
                )
        except ConnectionClosed:
            log.warning("connection lost while subscribing")
        self._end_session(self._last_frame_us or now_us())
        self._ws = None

    async def _unsubscribe_and_close(self, ws: ClientConnection) -> None:
        """Unsubscribe, then keep reading what the server sent before it saw the unsubscribe:
        frames already on the wire are spooled, not dropped."""
        names = list(self.protocol.ids)
        try:
            for name in names:
                message = self.protocol.unsubscribe(name)
                if message is not None:
                    await ws.send(message)
            deadline = time.monotonic() + DRAIN_SECONDS
            while time.monotonic() < deadline:
                frame = await asyncio.wait_for(ws.recv(decode=False), DRAIN_QUIET_SECONDS)
                self._on_frame(frame)
        except (ConnectionClosed, TimeoutError):
            pass
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(1000, "connector stopping"), 3)
        at = now_us()
        for name in names:
            state = self._cp.subscriptions.setdefault(name, {})
            state.setdefault("gap_from_us", at)
            self.record(ledger.event(ledger.STREAM_STOPPED, name, at))
        self._ws = None

    def _end_session(self, at_us: int) -> None:
        """Everything after the last frame we read is unknown to us: open a gap per subscription."""
        for name in self.protocol.ids:
            state = self._cp.subscriptions.setdefault(name, {})
            if state.get("gap_from_us") is None:
                state["gap_from_us"] = at_us
        self._ws = None

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            frame = await ws.recv(decode=False)
            self._on_frame(frame)

    def _on_frame(self, frame: bytes | str) -> None:
        at = now_us()
        self._last_frame_us = at
        event = self.protocol.receive(frame)
        if isinstance(event, Data):
            self.totals.frames += 1
            self.totals.observations += event.count
            meta = {"sub": event.name, "id": event.id, "origin": "stream", "n": event.count}
            self.ingest(DATA, meta, event.raw, event.count, at, event.name)
        elif isinstance(event, Malformed):
            self.totals.malformed += 1
            log.warning(
                "malformed frame (%d bytes) kept in the dead-letter area: %s",
                len(event.raw),
                event.reason,
            )
            self.ingest(DEAD, {"reason": event.reason, "sub": None}, event.raw, 0, at, None)
        elif isinstance(event, Subscribed):
            self._on_subscribed(event, at)
        elif isinstance(event, SubscribeFailed):
            self._on_subscribe_failed(event, at)
        elif isinstance(event, ServerError):
            log.warning("server reported an error: %s", describe(event.errors))

    def _on_subscribed(self, event: Subscribed, at: int) -> None:
        log.info("subscribed %s -> %s", event.name, event.id)
        state = self._cp.subscriptions.setdefault(event.name, {})
        first_time = not state.get("accepted")
        state["accepted"] = True
        gap_from = state.pop("gap_from_us", None)
        if first_time:
            # Persist at once: after a SIGKILL the next start must know this one was streaming.
            self._background(self._save_checkpoint())
        self.record(ledger.event(ledger.STREAM_STARTED, event.name, at, id=event.id))
        self._resubscribe_backoff.pop(event.name, None)
        if gap_from is not None:
            self.on_gap(event.name, gap_from, at, "disconnected")

    def _on_subscribe_failed(self, event: SubscribeFailed, at: int) -> None:
        detail = describe(event.errors)
        accepted_before = self._cp.subscriptions.get(event.name, {}).get("accepted")
        if self._first_session and not accepted_before:
            self._fail(QueryError(event.name, event.errors))
            return
        log.error("subscription %s refused on resubscribe: %s; retrying", event.name, detail)
        self.record(ledger.event(ledger.SUBSCRIBE_REJECTED, event.name, at, errors=event.errors))
        self._background(self._resubscribe_later(event.name))

    def _background(self, coro: Any) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._watch(asyncio.get_running_loop().create_task(coro))

    def _watch(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """A background task that dies must stop the connector, never leave it half-working."""
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)
        self._fail(
            exc if isinstance(exc, ConnectorError) else Crashed(f"{task.get_name()}: {exc!r}")
        )

    async def _resubscribe_later(self, name: str) -> None:
        # Grows with each rejection of this subscription, reset once it is accepted again.
        backoff = self._resubscribe_backoff.setdefault(name, Backoff(2.0, 300.0))
        ws = self._ws
        await self._sleep(backoff.next())
        sub = self.subscriptions.get(name)
        if ws is not None and ws is self._ws and sub is not None and not self.stopping.is_set():
            await self._send(ws, self.protocol.subscribe(name, dict(sub.query)))

    @staticmethod
    async def _send(ws: ClientConnection | None, message: str | None) -> None:
        """Send on the live socket; a socket closing meanwhile is the reconnect loop's business."""
        if ws is not None and message is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message)

    # -- intake: everything enters through the spool ----------------------------------------
    def ingest(
        self, kind: int, meta: dict[str, Any], payload: bytes, rows: int, at: int, sub: str | None
    ) -> bool:
        """Spool one record and account it; False when the spool is full (a gap is opened)."""
        try:
            seq = self._spool.append(kind, meta, payload, at)
        except (SpoolFull, OSError) as exc:  # OSError: the state disk itself is full
            self.totals.spool_dropped_frames += 1
            if sub is not None and sub not in self._spool_gaps:
                log.error("%s: dropping frames for %s and recording a gap", exc, sub)
                self._spool_gaps[sub] = self._last_spooled.get(sub, at)
            return False
        if self.cfg.state.fsync_seconds == 0:
            self._spool.sync()
        self._account(seq, rows, len(payload))
        if sub is not None:
            self._last_spooled[sub] = at
        if sub is not None and sub in self._spool_gaps:
            start = self._spool_gaps.pop(sub)
            self.on_gap(sub, start, at, "spool_full")
        return True

    def record(self, item: dict[str, Any]) -> None:
        """Append a ledger event; it lands with the next cut as `_ledger/<cut>.jsonl`."""
        payload = msgspec.json.encode(item)
        # Ledger records bypass the spool limit: they are tiny and say what was lost.
        seq = self._spool.append(LEDGER, {}, payload, now_us(), force=True)
        self._account(seq, 0, len(payload))

    def on_gap(self, name: str, start_us: int, end_us: int, reason: str) -> None:
        log.warning(
            "gap in %s from %s to %s (%s)", name, format_us(start_us), format_us(end_us), reason
        )
        self.record(
            ledger.event(
                ledger.GAP, name, end_us, gap_start=start_us, gap_end=end_us, reason=reason
            )
        )
        if self.hooks:
            # Kept in the checkpoint until healed: a kill mid-backfill retries it on the next start.
            state = self._cp.subscriptions.setdefault(name, {})
            state.setdefault("pending_gaps", []).append([start_us, end_us])
            self._background(self._save_checkpoint())
        for hook in self.hooks:
            hook(name, start_us, end_us)

    def gap_done(self, name: str, start_us: int, end_us: int) -> None:
        """A backfill finished (whatever its outcome, which the ledger holds): forget the gap."""
        pending = self._cp.subscriptions.get(name, {}).get("pending_gaps", [])
        if [start_us, end_us] in pending:
            pending.remove([start_us, end_us])
            self._background(self._save_checkpoint())

    async def flush_barrier(self) -> None:
        """Return once everything spooled before the call is visible in the sink."""
        target = self._spool.next_seq - 1
        cut = self._batcher.force("barrier")
        if cut is not None:
            self._emit(cut)
        while self._cp.committed_seq < target and not self.stopping.is_set():
            self._committed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), 0.5)

    def spooled_identities(self, name: str) -> set[Identity]:
        """Identities of this subscription's rows in the spool and not yet committed."""
        columns = Columns()
        for rec in self._spool.read(self._cp.committed_seq + 1, self._spool.next_seq - 1):
            if rec.kind == DATA and rec.meta.get("sub") == name:
                columns.add_frame(
                    FrameMeta(rec.seq, rec.received_at_us, name, None, ""), rec.payload
                )
        return identities(columns.to_table())

    def _account(self, seq: int, rows: int, nbytes: int) -> None:
        cut = self._batcher.add(seq, rows, nbytes, time.monotonic())
        if cut is not None:
            self._emit(cut)

    def _emit(self, cut: Cut) -> None:
        self._spool.append_cut(cut.first, cut.last, now_us())
        self._queue.put_nowait(cut)

    # -- background work ------------------------------------------------------------------------
    async def _timer(self) -> None:
        while True:
            deadline = self._batcher.deadline()
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            cut = self._batcher.poll(time.monotonic())
            if cut is not None:
                self._emit(cut)

    async def _fsync_ticker(self) -> None:
        interval = self.cfg.state.fsync_seconds or 1.0
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self._spool.sync)

    async def _flush_worker(self) -> None:
        while True:
            cut = await self._queue.get()
            if cut is None:
                return
            backoff = Backoff(0.5, 30.0)
            while True:
                try:
                    async with self.commit_gate:
                        result = await asyncio.to_thread(
                            flush_cut, self._spool, cut.first, cut.last, self.sink, self._settings
                        )
                    break
                except TransientSinkError as exc:
                    delay = backoff.next()
                    log.warning(
                        "sink unavailable, seq %d-%d waits in the spool (retry in %.1fs): %s",
                        cut.first,
                        cut.last,
                        delay,
                        exc,
                    )
                    if self._stop_requested_at is not None:
                        return
                    await asyncio.sleep(delay)
                except SinkError as exc:
                    log.error("%s; unflushed rows stay in the spool for the next start", exc)
                    self._fail(exc)
                    return
            for path, rows, size in result.files:
                log.info("file written %s rows=%d bytes=%d", path, rows, size)
            t = self.totals
            t.files += len(result.files)
            t.rows_written += result.rows
            t.bytes_written += result.bytes
            t.rejected += result.rejected
            for sub, rows in result.rows_by_subscription.items():
                self.rows_by_subscription[sub] += rows
            if result.rejected:
                log.warning(
                    "%d observation(s) did not fit the schema: kept in _dead_letter/",
                    result.rejected,
                )
            self._cp.committed_seq = cut.last
            self._cp.totals["last_seen_us"] = self._last_frame_us
            await self._save_checkpoint()
            self._spool.release(cut.last)
            self._committed.set()

    # -- live reconfiguration -----------------------------------------------------------------
    async def reload(self, cfg: Config) -> None:
        """Apply a new subscription list on the open socket, without reconnecting."""
        if (cfg.source, cfg.sink, cfg.state, cfg.batch) != (
            self.cfg.source,
            self.cfg.sink,
            self.cfg.state,
            self.cfg.batch,
        ):
            log.warning("reload applies [[subscriptions]] only; restart to apply other changes")
        new = {s.name: s for s in cfg.subscriptions}
        old = self.subscriptions
        self.subscriptions = new
        ws = self._ws
        at = now_us()
        for name in old.keys() - new.keys():
            log.info("reload: unsubscribing %s", name)
            await self._send(ws, self.protocol.unsubscribe(name))
            self._cp.subscriptions.pop(name, None)
            self.record(ledger.event(ledger.SUBSCRIPTION_ENDED, name, at))
        for name, sub in new.items():
            changed = name in old and old[name].query != sub.query
            if name in old and not changed:
                continue
            if changed:
                await self._send(ws, self.protocol.unsubscribe(name))
            log.info("reload: subscribing %s", name)
            if ws is not None:
                await self._send(ws, self.protocol.subscribe(name, dict(sub.query)))
