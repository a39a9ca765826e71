"""The `send_frames` control action: raw frame bytes pushed to every connection, as a client
sees them (the fuzzer's way of sending what no well-behaved server would)."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from connector.simulator import Simulator

from .wire import collect, open_ws, subscribe

FRAMES = [
    b'{"type": "data", "id": "x", "observations": [{"name": "\xff\xfe"}]}',  # not UTF-8
    b'{"type": "data", "observations": [NaN, "\\ud800"]',  # cut short, NaN, a lone surrogate
    b"",
]


def b64(frames: list[bytes]) -> list[str]:
    return [base64.b64encode(f).decode() for f in frames]


async def test_frames_arrive_byte_for_byte_in_order_after_the_reply(sim: Simulator) -> None:
    sim.inject({"action": "pause"})
    async with open_ws(sim) as ws:
        await subscribe(ws, {})
        await collect(ws, 0.2)  # whatever was generated before the pause
        sim.inject({"action": "send_frames", "frames": b64(FRAMES)})
        got = [await asyncio.wait_for(ws.recv(decode=False), 5) for _ in FRAMES]
        assert got == FRAMES
        assert sim.injected_sent == len(FRAMES)
        sim.inject({"action": "send_frames", "frames": b64(FRAMES[:1]), "binary": True})
        assert await asyncio.wait_for(ws.recv(), 5) == FRAMES[0]  # binary: bytes, not str
        assert sim.injected_sent == len(FRAMES) + 1


async def test_control_endpoint_takes_the_action(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.inject({"action": "pause"})
    async with open_ws(sim) as ws:
        await subscribe(ws, {})
        await collect(ws, 0.2)
        action = {"action": "send_frames", "frames": b64([b'{"type": "mystery"}'])}
        async with http.post(sim.rest_url + "/_sim/control", data=json.dumps(action)) as resp:
            assert resp.status == 200
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "mystery"}


async def test_without_connections_nothing_is_sent(sim: Simulator) -> None:
    sim.inject({"action": "send_frames", "frames": b64(FRAMES)})
    await asyncio.sleep(0.05)
    assert sim.injected_sent == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "send_frames"},
        {"action": "send_frames", "frames": "e30="},
        {"action": "send_frames", "frames": [5]},
        {"action": "send_frames", "frames": ["not base64!"]},
        {"action": "send_frames", "frames": ["e30="], "binary": "yes"},
    ],
)
def test_bad_send_frames_actions_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Simulator().inject(bad)
