"""A Simulator on its own event loop in a daemon thread, for tests that drive subprocesses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from connector.simulator.options import SimulatorOptions
from connector.simulator.server import Simulator

T = TypeVar("T")


class SimulatorThread:
    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.simulator = Simulator(options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> None:
        """Start serving; returns once the port is listening (or raises what start raised)."""
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="gotham-simulator", daemon=True
        )
        self._thread.start()
        ready.result(timeout=30)

    def _run(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: Future[None]) -> None:
        self._stopped = asyncio.Event()
        try:
            await self.simulator.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        await self._stopped.wait()
        await self.simulator.stop()

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stopped is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None or self._thread is None:
            raise RuntimeError("simulator thread is not running")

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    @property
    def port(self) -> int:
        return self.simulator.port

    @property
    def ws_url(self) -> str:
        return self.simulator.ws_url

    @property
    def rest_url(self) -> str:
        return self.simulator.rest_url

    def stats(self) -> dict[str, Any]:
        return self._call(self.simulator.stats)

    def observations(self) -> list[dict[str, Any]]:
        return self._call(self.simulator.observations)

    def inject(self, action: dict[str, Any]) -> None:
        self._call(lambda: self.simulator.inject(action))

    def injected_sent(self) -> int:
        """Frames of `send_frames` actions written to a socket so far."""
        return self._call(lambda: self.simulator.injected_sent)
