"""Stats agree with what the client received; the thread wrapper, control endpoint and CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from connector.simulator import Simulator, SimulatorOptions, SimulatorThread, cli, matches

from .wire import WS_PATH, open_ws, recv_json

WEST = [
    {"longitude": -77.5, "latitude": 38.5},
    {"longitude": -77.0, "latitude": 38.5},
    {"longitude": -77.0, "latitude": 39.3},
    {"longitude": -77.5, "latitude": 39.3},
    {"longitude": -77.5, "latitude": 38.5},
]


async def test_stats_equal_what_the_client_received(sim: Simulator) -> None:
    received: dict[str, list[dict[str, Any]]] = {}
    messages = 0
    queries = {"all": {}, "west": {"location": WEST}}
    async with open_ws(sim) as ws:
        for q in queries.values():
            await ws.send(json.dumps({"type": "subscribe", "query": q}))
        order: list[str] = []
        loop = asyncio.get_running_loop()
        pause_at = loop.time() + 0.4
        paused = False
        # Receive for a while, pause generation, then drain until the connection is quiet.
        while True:
            if not paused and loop.time() >= pause_at:
                sim.inject({"action": "pause"})
                paused = True
            try:
                message = await recv_json(ws, 0.3)
            except TimeoutError:
                if paused:
                    break
                continue
            if message["type"] == "subscribed":
                order.append(message["id"])
            elif message["type"] == "data":
                messages += 1
                received.setdefault(message["id"], []).extend(message["observations"])
        ids = dict(zip(queries, order, strict=True))
        stats = sim.stats()
        assert stats["connections"] == 1
        assert stats["messages_sent"] == messages
        assert stats["sent_total"] == sum(len(v) for v in received.values())
        for name, sub_id in ids.items():
            sub = stats["subscriptions"][sub_id]
            assert sub["sent"] == len(received[sub_id]) and sub["active"]
            assert sub["query"] == queries[name]
            # Nothing lost: everything generated after subscribing that matches was received.
            got = {json.dumps(o, sort_keys=True) for o in received[sub_id]}
            first = received[sub_id][0]
            history = sim.observations()
            start = next(i for i, o in enumerate(history) if o == first)
            expected = [o for o in history[start:] if matches(queries[name], o)]
            assert {json.dumps(o, sort_keys=True) for o in expected} == got
        assert stats["generated"] >= len(received[ids["all"]])


async def test_control_endpoint_and_stats_endpoint(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.rest_url + "/_sim/control", json={"action": "pause"}) as resp:
            assert resp.status == 200
        assert sim.faults.paused
        async with http.post(sim.rest_url + "/_sim/control", json={"action": "nope"}) as resp:
            assert resp.status == 400
        async with http.get(sim.rest_url + "/_sim/stats") as resp:
            stats = await resp.json()
    assert set(stats) == {
        "generated",
        "connections",
        "subscriptions",
        "sent_total",
        "messages_sent",
        "rest_calls",
    }


def test_simulator_thread_serves_and_stops() -> None:
    with SimulatorThread(SimulatorOptions(rate=1000.0, spec_ids=("a", "b"))) as thread:
        assert thread.ws_url == f"ws://127.0.0.1:{thread.port}"
        assert thread.rest_url == f"http://127.0.0.1:{thread.port}"

        async def client() -> dict[str, Any]:
            url = thread.ws_url + WS_PATH.format(spec="b")
            async with connect(url, subprotocols=["Bearer-sim-token"], proxy=None) as ws:  # type: ignore[list-item]
                await ws.send('{"type": "subscribe", "query": {}}')
                await recv_json(ws)
                return await recv_json(ws)

        data = asyncio.run(client())
        assert {o["observationSpecId"] for o in data["observations"]} == {"b"}
        thread.inject({"action": "pause"})
        assert thread.stats()["connections"] == 0
        assert thread.observations()
    with pytest.raises(RuntimeError):
        thread.stats()


def test_cli_options(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    monkeypatch.setenv("GOTHAM_TOKEN", "from-env")
    args = parser.parse_args(
        ["--spec", "a", "--spec", "b", "--rate", "0", "--drop-mode", "reset", "--no-compression"]
    )
    options = cli.options_from(args)
    assert options.token == "from-env" and options.spec_ids == ("a", "b")
    assert options.rate == 0 and options.drop_mode == "reset" and not options.compression
    monkeypatch.delenv("GOTHAM_TOKEN")
    assert cli.options_from(parser.parse_args([])).token == "sim-token"
