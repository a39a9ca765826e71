"""A fault-injecting HTTP proxy for S3 tests: sits in front of moto's server and misbehaves like
S3 under load. Test infrastructure only; nothing of the connector is imported here.

Per request (decided with a seeded RNG):
- `slowdown`: answered `503 SlowDown` with S3's XML error body, never forwarded;
- `reset`: forwarded (moto applies it), then the response is cut: the status line, the headers
  and half the body are sent and the connection is reset (RST); an empty body is reset before
  anything is sent. The client cannot know whether its request took effect;
- `delay`: held for a random `delay_seconds` before it is forwarded.

`outage("503")` answers every request `503 SlowDown`; `outage("refuse")` closes the listening
socket and every open connection (new connections are refused) until `outage(None)` listens
again on the same port. `hold(predicate)` parks matching requests until `release()` (used to
freeze a multipart upload half-way). Everything runs on one event loop in a daemon thread;
the control methods are called from the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SLOWDOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<RequestId>{rid}</RequestId><HostId>{hid}</HostId></Error>"
)
# Hop-by-hop and framing headers: the proxy frames each message itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}
_REASONS = {200: "OK", 204: "No Content", 404: "Not Found", 503: "Slow Down"}


@dataclass(frozen=True)
class Request:
    """What the proxy saw: one HTTP request from the client."""

    at: float  # time.monotonic() when its head was read
    method: str
    target: str  # path and query, as sent
    fault: str  # "", "slowdown", "reset", "outage"
    status: int  # what the client got (0: reset / nothing)
    delayed: float  # seconds held before forwarding (delay faults and holds)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class FaultyS3Proxy:
    def __init__(
        self,
        upstream: str,
        *,
        slowdown: float = 0.0,
        reset: float = 0.0,
        delay: float = 0.0,
        delay_seconds: tuple[float, float] = (0.1, 1.0),
        seed: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.slowdown, self.reset, self.delay = slowdown, reset, delay
        self.delay_seconds = delay_seconds
        self.faults: Counter[str] = Counter()  # slowdown, reset, delayed, outage_503
        self.log: list[Request] = []
        self.port = 0
        self._rng = random.Random(seed)
        self._mode: str | None = None
        self._hold: Callable[[str, str], bool] | None = None
        self._held = threading.Event()  # set once a request matched the hold
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._session: aiohttp.ClientSession | None = None
        self._release: asyncio.Event | None = None

    # -- control (from the test's thread) -------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyS3Proxy:
        self._thread.start()
        self._call(self._open())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultyS3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, **settings: Any) -> None:
        """Change `slowdown`, `reset`, `delay` (shares) or `delay_seconds` while running."""
        for name, value in settings.items():
            if name not in ("slowdown", "reset", "delay", "delay_seconds"):
                raise TypeError(name)
            setattr(self, name, value)

    def outage(self, mode: str | None) -> None:
        """`"503"`: every request answered 503 SlowDown; `"refuse"`: nothing listens and open
        connections are reset; `None`: back to normal (same port)."""
        if mode not in (None, "503", "refuse"):
            raise ValueError(mode)
        self._call(self._set_mode(mode))

    def hold(self, predicate: Callable[[str, str], bool]) -> threading.Event:
        """Park requests for which predicate(method, target) is true until `release()`;
        returns an event set when the first one arrives."""
        self._held.clear()
        self._call(self._new_gate())
        self._hold = predicate
        return self._held

    def release(self) -> None:
        self._hold = None
        release = self._release
        if release is not None:
            self._loop.call_soon_threadsafe(release.set)

    def requests(self, since: float = 0.0) -> list[Request]:
        """Requests that arrived at `since` or later, in the order they arrived (`log` is in
        the order they were answered)."""
        return sorted((r for r in list(self.log) if r.at >= since), key=lambda r: r.at)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the loop's side ---------------------------------------------------------------------
    async def _new_gate(self) -> None:
        self._release = asyncio.Event()

    async def _open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=60),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        await self._stop_listening()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _set_mode(self, mode: str | None) -> None:
        if mode == "refuse" and self._mode != "refuse":
            await self._stop_listening()
        if mode != "refuse" and self._mode == "refuse":
            await self._open()
        self._mode = mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while not writer.is_closing():
                head = await _read_head(reader)
                if head is None:
                    return
                if (head.get("expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, head)
                if not await self._answer(head, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except aiohttp.ClientError:  # moto unreachable: the client sees a dropped connection
            _reset(writer)
            return
        except asyncio.CancelledError:  # stop(): end quietly (asyncio logs a cancelled handler)
            return
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _answer(self, head: _Head, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        at = time.monotonic()
        delayed = 0.0
        if self._mode == "refuse":  # a request that raced the outage
            self._record(at, head, "outage", 0, 0.0)
            _reset(writer)
            return False
        if self._mode == "503":
            self.faults["outage_503"] += 1
            self._record(at, head, "outage", 503, 0.0)
            await _send_slowdown(writer, head)
            return True
        hold = self._hold
        gate = self._release
        if hold is not None and gate is not None and hold(head.method, head.target):
            self._held.set()
            await gate.wait()
            delayed = time.monotonic() - at
        roll = self._rng.random()
        if roll < self.slowdown:
            self.faults["slowdown"] += 1
            self._record(at, head, "slowdown", 503, delayed)
            await _send_slowdown(writer, head)
            return True
        cut = roll < self.slowdown + self.reset
        if self._rng.random() < self.delay:
            pause = self._rng.uniform(*self.delay_seconds)
            self.faults["delayed"] += 1
            await asyncio.sleep(pause)
            delayed += pause
        status, headers, payload = await self._forward(head, body)
        if cut:
            self.faults["reset"] += 1
            self._record(at, head, "reset", 0, delayed)
            if payload:
                writer.write(_head_bytes(status, headers, len(payload), head.method))
                writer.write(payload[: len(payload) // 2])
                await writer.drain()
                await asyncio.sleep(0.05)  # the client reads the half before the reset
            _reset(writer)
            return False
        self._record(at, head, "", status, delayed)
        writer.write(_head_bytes(status, headers, len(payload), head.method) + payload)
        await writer.drain()
        return True

    async def _forward(self, head: _Head, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._session is not None
        headers = [(k, v) for k, v in head.headers if k.lower() not in _HOP]
        async with self._session.request(
            head.method,
            self.upstream + head.target,
            headers=headers,
            data=body if body or head.method in ("PUT", "POST") else None,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = [(k, v) for k, v in _raw_headers(resp) if k.lower() not in _HOP]
            if head.method == "HEAD" and resp.headers.get("Content-Length") is not None:
                out.append(("Content-Length", resp.headers["Content-Length"]))
            return resp.status, out, payload

    def _record(self, at: float, head: _Head, fault: str, status: int, delayed: float) -> None:
        # Before the answer is sent: a client that has its answer finds the request logged.
        self.log.append(Request(at, head.method, head.target, fault, status, delayed))


def allow_small_parts(monkeypatch: Any, size: int = 1 << 20) -> int:
    """Lower moto's minimum multipart part size (S3's is 5 MiB; moto's own setting for this,
    S3_UPLOAD_PART_MIN_SIZE, is read at import): the same protocol with smaller files."""
    import moto.s3.models

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", size)
    return size


def _raw_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    head = _Head(method, target, version)
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return head
        key, _, value = line.decode("latin-1").partition(":")
        head.headers.append((key.strip(), value.strip()))


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    if (head.get("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readline()
    length = int(head.get("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def _head_bytes(status: int, headers: list[tuple[str, str]], length: int, method: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if method != "HEAD":
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_slowdown(writer: asyncio.StreamWriter, head: _Head) -> None:
    rid = uuid.uuid4().hex[:16].upper()
    body = SLOWDOWN_BODY.format(rid=rid, hid=uuid.uuid4().hex).encode()
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", rid)]
    if head.method == "HEAD":  # a HEAD answer has no body
        headers.append(("Content-Length", str(len(body))))
        writer.write(_head_bytes(503, headers, 0, "HEAD"))
    else:
        writer.write(_head_bytes(503, headers, len(body), head.method) + body)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a dropped connection looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
