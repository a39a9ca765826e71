"""The receiving process's handle on the converter process (`connector.worker`).

One request at a time over a pipe; the reply is awaited in a thread so the event loop keeps
reading the socket. A converter that dies (killed, out of memory) is restarted on the next
call and the call fails as `ConverterDied` (transient: the cut is still in the spool and is
retried).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from connector import worker
from connector.errors import Transient
from connector.jobs import CutJob, FlushResult, FlushSettings, Identity, SinkSpec
from connector.spool import SpoolRange

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


class ConverterDied(Transient):
    """The converter process ended while working on a request."""


class Converter:
    def __init__(self, sink: SinkSpec, settings: FlushSettings) -> None:
        self.sink = sink
        self.settings = settings
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    def _start(self) -> None:
        # spawn, not fork: a fork of this process would copy the event loop, the socket and
        # the spool's file descriptor into the child.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=worker.serve, args=(child, os.getpid()), name="gotham-converter", daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    async def call(self, name: str, *args: Any) -> Any:
        async with self._lock:
            if self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self.restarts += 1
                    log.warning(
                        "converter exited (code %s); starting a new one", self._proc.exitcode
                    )
                    self._discard()
                await asyncio.to_thread(self._start)
            conn, proc = self._conn, self._proc
            assert conn is not None and proc is not None
            conn.send((name, args))
            try:
                ok, value = await asyncio.to_thread(_receive, conn, proc)
            except asyncio.CancelledError:
                # Its reply would answer the next request: end this converter instead.
                self._discard()
                raise
        if not ok:
            raise value
        return value

    async def flush(self, job: CutJob) -> FlushResult:
        result: FlushResult = await self.call("flush", job, self.sink, self.settings)
        return result

    async def check_sink(self) -> None:
        await self.call("check_sink", self.sink)

    async def landed_identities(
        self, hours: list[str], name: str, start: int, end: int
    ) -> set[Identity]:
        found: set[Identity] = await self.call(
            "landed_identities", self.sink, hours, name, start, end
        )
        return found

    async def spooled_identities(
        self, ranges: list[SpoolRange], first: int, last: int, name: str
    ) -> set[Identity]:
        found: set[Identity] = await self.call("spooled_identities", ranges, first, last, name)
        return found

    def close(self) -> None:
        """Stop the converter: at once (a flush still running is redone from the spool)."""
        if self._proc is not None and self._conn is not None:
            self._conn.close()  # an idle converter leaves on EOF
            self._proc.join(1.0)
        self._discard()

    def _discard(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None


def _receive(conn: Connection, proc: BaseProcess) -> tuple[bool, Any]:
    try:
        while not conn.poll(_POLL_SECONDS):
            if not proc.is_alive():
                raise ConverterDied(f"converter process exited with code {proc.exitcode}")
        reply: tuple[bool, Any] = conn.recv()
    except (EOFError, OSError) as exc:
        raise ConverterDied(f"converter process lost: {type(exc).__name__}") from None
    return reply
