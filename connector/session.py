"""Speaks to Gotham over the websocket: connect, auth window, subscribe and resubscribe, read,
unsubscribe-and-drain at stop, and the subscription diff of a reload.

Frames go to the intake as they are read (nothing else happens on the read path); subscription
replies go to the coverage. Each subscribe carries a token (a per-name generation): a reply to
a subscribe that a reload has since superseded is unsubscribed at once, so one name never has
two live server subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from connector.backoff import Backoff
from connector.config import SourceConfig, Subscription
from connector.coverage import Coverage
from connector.errors import AuthError, ConnectorError, QueryError, describe
from connector.intake import Intake, now_us
from connector.metrics import Metrics
from connector.oauth2 import Tokens, TokenUnavailable, tokens_for
from connector.protocol import (
    Data,
    Malformed,
    Protocol,
    ServerError,
    Subscribed,
    SubscribeFailed,
    UnknownData,
)
from connector.secret import Secret
from connector.source import HandshakeFailed, open_stream
from connector.spool import DATA, DEAD, RecordMeta

log = logging.getLogger(__name__)
T = TypeVar("T")

HEALTHY_SESSION_SECONDS = 30.0
DRAIN_SECONDS = 3.0  # at most, reading what was sent before our unsubscribe arrived
DRAIN_QUIET_SECONDS = 0.3
# A subscribe unanswered this long is taken as lost: replies are matched by order only, so
# waiting on forever would leave that name unsubscribed and every later reply unmatched.
REPLY_SECONDS = 30.0


class Session:
    def __init__(
        self,
        source: SourceConfig,
        subscriptions: dict[str, Subscription],
        intake: Intake,
        coverage: Coverage,
        stopping: asyncio.Event,
        fail: Callable[[ConnectorError], None],
        metrics: Metrics | None = None,
        reply_seconds: float = REPLY_SECONDS,
        tokens: Tokens | None = None,
    ) -> None:
        self.source = source
        self._credentials = tokens or tokens_for(source, metrics)
        self.subscriptions = dict(subscriptions)
        self.reconnects = 0
        self.connected = False
        self._intake = intake
        self._coverage = coverage
        self._stopping = stopping
        self._fail = fail
        self._metrics = metrics or Metrics()
        self._startup = set(subscriptions)  # refused at the first start: a config error
        self._protocol = Protocol()
        self._ws: ClientConnection | None = None
        self._first = True
        self._tokens: dict[str, int] = {}  # name -> generation of its newest subscribe
        self._retry: dict[str, Backoff] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._unknown_ids: set[str] = set()
        self._noted: dict[str, Any] = {}  # name -> the query whose config notes were logged
        self._reply_seconds = reply_seconds
        self._resyncing: ClientConnection | None = None

    # -- the connection loop ----------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(self.source.reconnect_min_seconds, self.source.reconnect_max_seconds)
        auth_failing_since: float | None = None
        while not self._stopping.is_set():
            try:
                opened = await self._open()
            except AuthError as exc:
                now = time.monotonic()
                auth_failing_since = auth_failing_since or now
                if self._first or now - auth_failing_since > self.source.auth_retry_seconds:
                    self._fail(exc)
                    return
                await self._pause(backoff.next(), f"{exc}; retrying")
                continue
            except (HandshakeFailed, TokenUnavailable) as exc:
                await self._pause(backoff.next(), f"{exc}; reconnecting")
                continue
            except ConnectorError as exc:  # token missing/unreadable: a config problem
                self._fail(exc)
                return
            if opened is None:  # stopped while connecting
                return
            ws, token = opened
            auth_failing_since = None
            started = time.monotonic()
            log.info("connected to %s", self.source.ws_url)
            await self._session(ws)
            self._first = False
            # A socket the server closed because its token expired is expected (hourly with
            # OAuth2): reconnect at once with the fresh token, the gap goes to backfill.
            expired = self._credentials.superseded(token)
            if expired or time.monotonic() - started > HEALTHY_SESSION_SECONDS:
                backoff.reset()
            if not self._stopping.is_set():
                self.reconnects += 1
                self._metrics.reconnects.inc()
                if expired:
                    log.info("the socket's access token expired or was renewed: reconnecting now")
                else:
                    await self._pause(backoff.next(), "reconnecting")

    async def _open(self) -> tuple[ClientConnection, Secret] | None:
        """Connect with the current token; None when a stop came while waiting for one."""
        token = await self._unless_stopping(self._credentials.get())
        if token is None:
            return None
        try:
            return await open_stream(self.source, token), token
        except AuthError:
            # Expired or revoked in flight: one try with a fresh token before it counts.
            renewed = await self._unless_stopping(self._credentials.refused(token))
            if renewed is None:
                return None
            if not renewed:
                raise
        log.info("the server refused the access token: trying once more with a new one")
        token = await self._unless_stopping(self._credentials.get())
        if token is None:
            return None
        return await open_stream(self.source, token), token

    async def _unless_stopping(self, step: Awaitable[T]) -> T | None:
        """`step`'s result, or None when a stop comes first: a token endpoint outage is
        retried for a minute, and a stop must not wait for that."""
        task = asyncio.ensure_future(step)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return None if task.cancelled() else task.result()

    @property
    def active(self) -> set[str]:
        """Names with a live server subscription on the open connection."""
        return set(self._protocol.ids) if self.connected else set()

    async def _pause(self, seconds: float, why: str) -> None:
        log.warning("%s in %.1fs", why, seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(self, ws: ClientConnection) -> None:
        self._protocol = Protocol()
        self._unknown_ids = set()
        self._ws = ws
        self.connected = True
        try:
            for sub in self.subscriptions.values():
                await ws.send(self._subscribe(sub))
            reader = asyncio.create_task(self._read(ws))
            stopper = asyncio.create_task(self._stopping.wait())
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
                detail = f"code {rcvd.code} {rcvd.reason!r}" if rcvd else "no close frame"
                log.warning("connection lost (%s)", detail)
        except ConnectionClosed:
            log.warning("connection lost while subscribing")
        finally:
            self.connected = False
            self._ws = None
        # Also those streaming before and waiting for a (reloaded) subscribe's answer now.
        streamed = [n for n in self.subscriptions if self._coverage.streamed(n)]
        names = sorted(set(self._protocol.ids) | set(streamed))
        self._coverage.stream_lost(names, self._intake.last_frame_us or now_us())

    async def _unsubscribe_and_close(self, ws: ClientConnection) -> None:
        """Unsubscribe, then keep reading what the server sent before it saw the unsubscribe:
        frames already on the wire are spooled, not dropped."""
        names = list(self._protocol.ids)
        try:
            for name in names:
                message = self._protocol.unsubscribe(name)
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
        self._coverage.stream_stopped(names, now_us())

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            self._on_frame(await ws.recv(decode=False))

    # -- what arrives -------------------------------------------------------------------------
    def _on_frame(self, frame: bytes | str) -> None:
        at = now_us()
        event = self._protocol.receive(frame)
        if type(event) is Data:  # the hot path: one frame, straight to the spool
            meta = RecordMeta(sub=event.name, id=event.id, n=event.count)
            if self._intake.frame(DATA, meta, event.raw, event.count, at, event.name):
                counts = self._intake.counts  # spooled, then counted (dropped ones apart)
                counts.frames += 1
                counts.observations += event.count
                self._metrics.received(event.name, event.count, at)
        elif isinstance(event, Malformed):
            self._intake.counts.malformed += 1
            log.warning(
                "malformed frame (%d bytes) kept in the dead-letter area: %s",
                len(event.raw),
                event.reason,
            )
            if self._intake.frame(DEAD, RecordMeta(reason=event.reason), event.raw, 0, at, None):
                self._metrics.dead_letters.labels("malformed").inc()
        elif isinstance(event, Subscribed):
            self._on_subscribed(event, at)
        elif isinstance(event, SubscribeFailed):
            self._on_refused(event, at)
        elif isinstance(event, UnknownData):
            self._intake.counts.malformed += 1
            reason = f"data for unknown subscription id {event.id}"
            if self._intake.frame(DEAD, RecordMeta(reason=reason), event.raw, 0, at, None):
                self._metrics.dead_letters.labels("unknown_subscription").inc()
            if event.id not in self._unknown_ids:  # logged and recorded once per id and connection
                self._unknown_ids.add(event.id)
                log.warning(
                    "malformed frame (%d bytes) kept in the dead-letter area: %s",
                    len(event.raw),
                    reason,
                )
                self._coverage.unknown_data(event.id, at)
        elif isinstance(event, ServerError):
            log.warning("server reported an error: %s", describe(event.errors))
            self._coverage.server_error(event.errors, at)
            if self._protocol.awaiting:  # it may answer a subscribe: the order is lost
                self._resync(f"an error frame while {self._protocol.awaiting} subscribe(s) wait")

    def _on_subscribed(self, event: Subscribed, at: int) -> None:
        if event.name not in self.subscriptions or self._tokens.get(event.name) != event.token:
            # Removed or re-queried by a reload while this subscribe was on its way.
            log.info("dropping superseded subscription %s (%s)", event.name, event.id)
            self._send_soon(self._protocol.unsubscribe_id(event.id))
            return
        log.info("subscribed %s -> %s", event.name, event.id)
        self._retry.pop(event.name, None)
        self._coverage.subscribed(event.name, event.id, at)
        if self._stopping.is_set():  # answered during the stop's drain: end it like the rest
            self._send_soon(self._protocol.unsubscribe_id(event.id))
            self._coverage.stream_stopped([event.name], now_us())

    def _on_refused(self, event: SubscribeFailed, at: int) -> None:
        if event.name not in self.subscriptions or self._tokens.get(event.name) != event.token:
            return  # superseded: its successor's reply is what counts
        accepted = self._coverage.streamed(event.name)
        if self._first and event.name in self._startup and not accepted:
            self._fail(QueryError(event.name, event.errors))
            return
        log.error("subscription %s refused: %s; retrying", event.name, describe(event.errors))
        self._coverage.refused(event.name, event.errors, at)
        backoff = self._retry.setdefault(event.name, Backoff(2.0, 300.0))
        self._later(backoff.next(), event.name)

    # -- subscribing ----------------------------------------------------------------------
    def _subscribe(self, sub: Subscription) -> str:
        token = self._tokens.get(sub.name, 0) + 1
        self._tokens[sub.name] = token
        if sub.notes and self._noted.get(sub.name) != sub.query:
            # Once per subscription (again only if a reload changes its query), not per reconnect.
            self._noted[sub.name] = sub.query
            for note in sub.notes:
                log.warning("subscription %s: %s", sub.name, note)
        message = self._protocol.subscribe(sub.name, dict(sub.query), token)
        self._expect_reply(sub.name, token)
        return message

    def _expect_reply(self, name: str, token: int) -> None:
        ws = self._ws

        async def deadline() -> None:
            await asyncio.sleep(self._reply_seconds)
            if ws is self._ws and self._protocol.waits_for(name, token):
                self._resync(f"no reply to the subscribe of {name} in {self._reply_seconds:g}s")

        task = asyncio.get_running_loop().create_task(deadline(), name=f"reply-{name}")
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _resync(self, why: str) -> None:
        """Replies carry no request id: once one may be missing or foreign, none after it can be
        trusted to its subscribe. A new connection starts a fresh order: every subscription is
        sent again, and the moments in between are a recorded gap that backfill heals."""
        ws = self._ws
        if ws is None or self._resyncing is ws:
            return
        self._resyncing = ws
        log.warning("%s: reconnecting so that subscribe replies match again", why)
        task = asyncio.get_running_loop().create_task(ws.close(1000, "resynchronizing"))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _later(self, seconds: float, name: str) -> None:
        """Resubscribe `name` after a refusal, on this socket, unless something changed."""
        ws, token = self._ws, self._tokens.get(name)

        async def resubscribe() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
            sub = self.subscriptions.get(name)
            fresh = ws is self._ws and self._tokens.get(name) == token
            if sub is not None and fresh and not self._stopping.is_set():
                await _send(ws, self._subscribe(sub))

        task = asyncio.get_running_loop().create_task(resubscribe(), name=f"resubscribe-{name}")
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _send_soon(self, message: str) -> None:
        task = asyncio.get_running_loop().create_task(_send(self._ws, message))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def reload(self, subscriptions: dict[str, Subscription]) -> None:
        """Apply a new subscription list on the open socket, without reconnecting."""
        old, self.subscriptions = self.subscriptions, dict(subscriptions)
        ws = self._ws
        at = now_us()
        for name in old.keys() - subscriptions.keys():
            log.info("reload: unsubscribing %s", name)
            self._tokens[name] = self._tokens.get(name, 0) + 1  # a pending reply is superseded
            await _send(ws, self._protocol.unsubscribe(name))
            self._coverage.ended(name, at)
        for name, sub in subscriptions.items():
            if name in old and old[name].query == sub.query:
                continue
            if name in old:
                await _send(ws, self._protocol.unsubscribe(name))
            log.info("reload: subscribing %s", name)
            if ws is not None:
                await _send(ws, self._subscribe(sub))
            else:
                self._tokens[name] = self._tokens.get(name, 0) + 1

    async def close(self) -> None:
        for task in list(self._timers):
            task.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)


async def _send(ws: ClientConnection | None, message: str | None) -> Any:
    """Send on the live socket; a socket closing meanwhile is the reconnect loop's business."""
    if ws is not None and message is not None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)
