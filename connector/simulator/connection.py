"""One websocket client: its subscriptions, ordered replies and a single writer.

Every outgoing frame goes through one queue drained by one writer task, so frames never
interleave and data for a subscription can only follow its `subscribed` reply. Replies pass
through a second, sequential queue first: an injected delay postpones a reply (and everything
replied after it) without holding up data for subscriptions that already exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from connector.simulator.filters import CompiledQuery, validate_query
from connector.simulator.generator import Generated

DROP_CLOSE_CODE = 1011
GOING_AWAY_CODE = 1001


@dataclass
class Subscription:
    id: str
    query: dict[str, Any]
    compiled: CompiledQuery
    connection: int
    spec: str
    active: bool = False
    sent: int = 0

    def stats(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "sent": self.sent,
            "connection": self.connection,
            "active": self.active,
        }


@dataclass
class Hooks:
    """What a connection needs from the server, kept narrow so this module stands alone."""

    subscribe_delay: Callable[[], float]
    take_reject: Callable[[], str | None]
    register: Callable[[Subscription], None]
    data_sent: Callable[[Subscription, int], None]
    should_drop: Callable[[int], bool]
    drop_mode: str


@dataclass
class _Reply:
    due: float
    payload: dict[str, Any]
    activates: Subscription | None = None


@dataclass
class _Frame:
    text: str | bytes  # bytes: injected verbatim, not necessarily UTF-8
    sub: Subscription | None = None
    count: int = 0
    binary: bool = False
    on_sent: Callable[[], None] | None = None


def malformed(reason: str) -> dict[str, Any]:
    return {
        "type": "error",
        "errors": [{"error": "MalformedMessage", "args": [{"name": "message", "value": reason}]}],
    }


@dataclass
class Connection:
    id: int
    spec: str
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    hooks: Hooks
    subs: dict[str, Subscription] = field(default_factory=dict)
    data_messages: int = 0
    _out: asyncio.Queue[_Frame] = field(default_factory=asyncio.Queue)
    _replies: asyncio.Queue[_Reply] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _dropping: bool = False
    _drop_task: asyncio.Task[None] | None = None

    def backlog(self) -> int:
        return self._out.qsize()

    def active_subs(self) -> list[Subscription]:
        return [s for s in self.subs.values() if s.active]

    async def serve(self) -> None:
        """Read client messages until the socket closes; then tidy up."""
        self._tasks = [
            asyncio.create_task(self._write_loop()),
            asyncio.create_task(self._reply_loop()),
        ]
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._reply(malformed("binary frames are not supported"))
                else:
                    break
        finally:
            for sub in self.subs.values():
                sub.active = False
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def send_data(self, sub: Subscription, items: list[Generated]) -> None:
        obs = ",".join(g.text for g in items)
        text = f'{{"type":"data","id":"{sub.id}","observations":[{obs}]}}'
        self._out.put_nowait(_Frame(text, sub, len(items)))

    def send_raw(self, text: str) -> None:
        self._out.put_nowait(_Frame(text))

    def send_bytes(
        self, data: bytes, binary: bool = False, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Queue `data` as one frame, byte for byte: a text frame's bytes are not checked to be
        UTF-8 (what a hostile or broken server may send). `on_sent` runs once it is written."""
        self._out.put_nowait(_Frame(data, binary=binary, on_sent=on_sent))

    async def drop(
        self, mode: str, code: int = DROP_CLOSE_CODE, reason: str = "simulated drop"
    ) -> None:
        """End the connection now: a close frame ("clean") or a TCP reset ("reset")."""
        if self._dropping:
            return
        self._dropping = True
        for task in self._tasks:
            task.cancel()
        if mode == "reset":
            self._reset()
            return
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), 2.0)
        except (TimeoutError, ConnectionError):
            self._reset()

    def _reset(self) -> None:
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # Zero linger turns close() into an RST: the peer sees no close frame, no FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        else:
            self.transport.close()

    def _reply(
        self, payload: dict[str, Any], delay: float = 0.0, sub: Subscription | None = None
    ) -> None:
        self._replies.put_nowait(_Reply(time.monotonic() + delay, payload, sub))

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            self._reply(malformed(f"invalid JSON: {exc}"[:200]))
            return
        if not isinstance(message, dict):
            self._reply(malformed("message must be a JSON object"))
            return
        kind = message.get("type")
        if kind == "subscribe":
            self._on_subscribe(message)
        elif kind == "unsubscribe":
            sub_id = message.get("id")
            if not isinstance(sub_id, str):
                self._reply(malformed("unsubscribe needs a string id"))
                return
            # Unknown ids are ignored silently, like a repeated unsubscribe; there is no reply.
            sub = self.subs.get(sub_id)
            if sub is not None:
                sub.active = False
        else:
            self._reply(malformed(f"unknown message type {kind!r}"[:200]))

    def _on_subscribe(self, message: dict[str, Any]) -> None:
        delay = self.hooks.subscribe_delay()
        rejected = self.hooks.take_reject()
        if rejected is not None:
            errors: list[dict[str, Any]] = [{"error": rejected, "args": []}]
        elif "query" not in message:
            errors = [
                {"error": "InvalidQuery", "args": [{"name": "query", "value": "query is missing"}]}
            ]
        else:
            errors = validate_query(message["query"])
        if errors:
            self._reply({"type": "subscribed", "errors": errors}, delay)
            return
        query = message["query"]
        sub = Subscription(
            id=str(uuid.uuid4()),
            query=query,
            compiled=CompiledQuery.of(query),
            connection=self.id,
            spec=self.spec,
        )
        self.hooks.register(sub)
        self._reply({"type": "subscribed", "id": sub.id, "errors": []}, delay, sub)

    async def _reply_loop(self) -> None:
        while True:
            reply = await self._replies.get()
            wait = reply.due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if reply.activates is not None:
                # Active from the moment its reply is queued, so its data can only follow it.
                self.subs[reply.activates.id] = reply.activates
                reply.activates.active = True
            self._out.put_nowait(_Frame(json.dumps(reply.payload)))

    async def _write_loop(self) -> None:
        while True:
            frame = await self._out.get()
            if frame.sub is not None and not frame.sub.active:
                continue
            try:
                if isinstance(frame.text, bytes):
                    opcode = WSMsgType.BINARY if frame.binary else WSMsgType.TEXT
                    await self.ws.send_frame(frame.text, opcode)
                else:
                    await self.ws.send_str(frame.text)
            except ConnectionError:
                return
            if frame.on_sent is not None:
                frame.on_sent()
            if frame.sub is None:
                continue
            self.data_messages += 1
            self.hooks.data_sent(frame.sub, frame.count)
            if self.hooks.should_drop(self.data_messages):
                # A task of its own: drop() cancels this writer.
                self._drop_task = asyncio.create_task(self.drop(self.hooks.drop_mode))
                return
