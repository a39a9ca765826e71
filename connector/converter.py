"""The receiving process's handle on the converter process (`connector.worker`).

One request at a time over a pipe; the reply is awaited in a thread so the event loop keeps
reading the socket. A converter that dies (killed, out of memory) is restarted on the next
call and the call fails as `ConverterDied` (transient: the cut is still in the spool and is
retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from connector.errors import Transient
from connector.jobs import CutJob, FlushResult, FlushSettings, Identity, SinkSpec
from connector.spool import SpoolRange

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


class ConverterDied(Transient):
    """The converter process ended while working on a request."""


class Converter:
    def __init__(
        self,
        sink: SinkSpec,
        settings: FlushSettings,
        log_level: str = "INFO",
        log_format: str = "text",
    ) -> None:
        self.sink = sink
        self.settings = settings
        self._log = (log_level, log_format)
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The converter process while one is started (for operators and tests)."""
        return self._proc

    def _start(self) -> None:
        # A fresh interpreter, not a fork: a fork would copy the event loop, the socket and the
        # spool's fd. Not multiprocessing either: its spawn adds a resource-tracker process.
        parent, child = socket.socketpair()
        with child:
            argv = [sys.executable, "-m", "connector.worker", str(child.fileno()), str(os.getpid())]
            argv += list(self._log)
            # Our own interpreter and module with numbers and the configured log settings.
            proc = subprocess.Popen(  # noqa: S603
                argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=_worker_env()
            )
        self._proc, self._conn = proc, Connection(parent.detach())

    async def call(self, name: str, *args: Any) -> Any:
        async with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                    code = self._proc.returncode
                    log.warning("converter exited (code %s); starting a new one", code)
                    self._discard()
                await asyncio.to_thread(self._start)
            conn, proc = self._conn, self._proc
            assert conn is not None and proc is not None
            try:
                conn.send((name, args))
                ok, value = await asyncio.to_thread(_receive, conn, proc)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ConverterDied(f"converter process lost: {type(exc).__name__}") from None
            except asyncio.CancelledError:
                # Its reply would answer the next request: end this converter instead.
                self._discard()
                raise
        if not ok:
            raise value
        return value

    async def flush(self, job: CutJob, ahead: CutJob | None = None) -> FlushResult:
        """Land `job`. `ahead` (the cut expected next, if one is waiting) is read and converted
        while `job` is written; nothing of it is written until it is asked for."""
        result: FlushResult = await self.call("flush", job, self.sink, self.settings, ahead)
        return result

    async def check_sink(self) -> int:
        """Fail fast when the sink refuses writes; returns the leftover temp files swept."""
        swept: int = await self.call("check_sink", self.sink)
        return swept

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
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1.0)
        self._discard()

    def _discard(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5.0)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None


def _worker_env() -> dict[str, str]:
    """The converter's allocator settings, unless the operator set them.

    The converter holds up to two cuts at once (one prepared on a thread while the previous one
    is written), in buffers that change hands between Python bytes and Arrow. Measured with
    `make bench` at 100,000-row cuts, each setting lowering the converter's peak:
    - Arrow on the system allocator (not mimalloc): memory freed by one side is reused by the
      other instead of each allocator keeping its own;
    - one glibc arena, not one per thread, for the same reason between the two threads;
    - a fixed mmap threshold of 128 KiB: column buffers are mapped and unmapped, so a freed cut
      goes back to the system instead of staying in the heap (glibc's sliding threshold would
      grow to 32 MiB and keep them).
    Together ~50 MiB lower at the peak, for no CPU measured.
    """
    env = dict(os.environ)
    env.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    env.setdefault("MALLOC_ARENA_MAX", "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def _receive(conn: Connection, proc: subprocess.Popen[bytes]) -> tuple[bool, Any]:
    try:
        while not conn.poll(_POLL_SECONDS):
            if proc.poll() is not None:
                raise ConverterDied(f"converter process exited with code {proc.returncode}")
        reply: tuple[bool, Any] = conn.recv()
    except (EOFError, OSError) as exc:
        raise ConverterDied(f"converter process lost: {type(exc).__name__}") from None
    return reply
