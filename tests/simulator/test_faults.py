"""Injected faults as a client experiences them."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from connector.simulator import Simulator, SimulatorOptions

from .wire import collect, open_ws, recv_json, recv_until, subscribe


async def wait_closed(ws: object) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await ws.recv()  # type: ignore[attr-defined]
    return info.value


async def test_drop_clean_closes_with_1011(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        await subscribe(ws, {})
        sim.inject({"action": "drop", "mode": "clean"})
        closed = await wait_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1011


async def test_drop_reset_closes_without_close_frame(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        await subscribe(ws, {})
        sim.inject({"action": "drop", "mode": "reset"})
        closed = await wait_closed(ws)
        assert closed.rcvd is None


@pytest.mark.parametrize("mode", ["clean", "reset"])
async def test_drop_every_n_data_messages(mode: str) -> None:
    options = SimulatorOptions(rate=2000.0, drop_every=3, drop_mode=mode)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await subscribe(ws, {})
        data = 0
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5):
                while True:
                    if (await recv_json(ws))["type"] == "data":
                        data += 1
        assert data == 3
        assert (info.value.rcvd is None) is (mode == "reset")


async def test_drop_random_eventually_drops() -> None:
    async with Simulator(SimulatorOptions(rate=2000.0, drop_random=0.3)) as sim, open_ws(sim) as ws:
        await subscribe(ws, {})
        await wait_closed(ws)


async def test_refuse_action_gives_503(sim: Simulator) -> None:
    sim.inject({"action": "refuse", "seconds": 5})
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(sim):
            pass
    assert info.value.response.status_code == 503


async def test_odd_frames_arrive_and_connection_continues(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        sub_id = await subscribe(ws, {})
        await recv_until(ws, "data")
        sim.inject({"action": "pause"})
        await asyncio.sleep(0.1)
        await collect(ws, 0.1)
        sim.inject({"action": "malformed"})
        raw = await asyncio.wait_for(ws.recv(), 5)
        with pytest.raises(ValueError):
            json.loads(raw)
        sim.inject({"action": "unknown_type"})
        assert (await recv_json(ws))["type"] == "mystery"
        sim.inject({"action": "unknown_subscription"})
        orphan = await recv_json(ws)
        assert orphan["type"] == "data" and orphan["id"] != sub_id and orphan["observations"]
        sim.inject({"action": "resume"})
        assert (await recv_until(ws, "data"))["id"] == sub_id


async def test_large_message_arrives(sim: Simulator) -> None:
    async with open_ws(sim, max_size=2**31) as ws:
        sub_id = await subscribe(ws, {})
        sim.inject({"action": "large", "bytes": 3_000_000})
        async with asyncio.timeout(15):
            while True:
                raw = await ws.recv()
                if len(raw.encode()) >= 3_000_000:
                    break
        message = json.loads(raw)
        assert message["id"] == sub_id
        history = {(o["trackId"], o["timestamp"]) for o in sim.observations()}
        assert {(o["trackId"], o["timestamp"]) for o in message["observations"]} <= history


async def test_reject_subscribe(sim: Simulator) -> None:
    sim.inject({"action": "reject_subscribe", "count": 2, "error": "TooManySubscriptions"})
    async with open_ws(sim) as ws:
        for _ in range(2):
            await ws.send('{"type": "subscribe", "query": {}}')
            reply = await recv_json(ws)
            assert "id" not in reply and reply["errors"][0]["error"] == "TooManySubscriptions"
        await subscribe(ws, {})


async def test_pause_and_resume(sim: Simulator) -> None:
    sim.inject({"action": "pause"})
    await asyncio.sleep(0.1)
    before = sim.stats()["generated"]
    await asyncio.sleep(0.3)
    assert sim.stats()["generated"] == before
    sim.inject({"action": "resume"})
    await asyncio.sleep(0.3)
    assert sim.stats()["generated"] > before


def test_bad_actions_are_refused() -> None:
    sim = Simulator()
    for bad in (
        {},
        {"action": "explode"},
        {"action": "drop", "mode": "gentle"},
        {"action": "rest_status", "status": 500},
    ):
        with pytest.raises(ValueError):
            sim.inject(bad)
