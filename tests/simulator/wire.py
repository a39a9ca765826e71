"""Helpers for talking to the simulator the way a client would: over real sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from connector.simulator import Simulator

CASES = Path(__file__).resolve().parent.parent / "cases"
WS_PATH = "/api/ws/gotham/v1/observations/{spec}?preview=true"
TOKEN = "sim-token"


def case_text(name: str) -> str:
    return (CASES / name).read_text(encoding="utf-8")


def case(name: str) -> Any:
    return json.loads(case_text(name))


def ws_url(sim: Simulator, spec: str = "baz", path: str = WS_PATH) -> str:
    return sim.ws_url + path.format(spec=spec)


def open_ws(
    sim: Simulator,
    spec: str = "baz",
    token: str | None = TOKEN,
    path: str = WS_PATH,
    **kwargs: Any,
) -> Any:
    protocols = [f"Bearer-{token}"] if token is not None else None
    return connect(
        ws_url(sim, spec, path),
        subprotocols=protocols,  # type: ignore[arg-type]
        proxy=None,
        open_timeout=5,
        close_timeout=2,
        **kwargs,
    )


async def recv_json(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), within)
    message = json.loads(raw)
    assert isinstance(message, dict)
    return message


async def recv_until(ws: ClientConnection, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next message of type `kind`, skipping data that arrives in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        message = await recv_json(ws, max(0.01, deadline - loop.time()))
        if message["type"] == kind:
            return message


async def subscribe(ws: ClientConnection, query: dict[str, Any]) -> str:
    await ws.send(json.dumps({"type": "subscribe", "query": query}))
    reply = await recv_until(ws, "subscribed")
    assert reply["errors"] == [], reply
    sub_id = reply["id"]
    assert isinstance(sub_id, str)
    return sub_id


async def collect(
    ws: ClientConnection, seconds: float, sub_id: str | None = None
) -> list[dict[str, Any]]:
    """Observations of data messages received for `seconds` (all subscriptions unless given)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    out: list[dict[str, Any]] = []
    while (left := deadline - loop.time()) > 0:
        try:
            message = await recv_json(ws, left)
        except TimeoutError:
            break
        if message["type"] == "data" and (sub_id is None or message["id"] == sub_id):
            out.extend(message["observations"])
    return out
