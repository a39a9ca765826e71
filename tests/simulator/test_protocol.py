"""Subscribe/subscribed/data/unsubscribe as a client sees them, checked against golden frames."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from connector.simulator import Simulator, matches

from .wire import case, case_text, collect, open_ws, recv_json, recv_until, subscribe

# Western half of the simulator's region, counter-clockwise.
WEST = [
    {"longitude": -77.5, "latitude": 38.5},
    {"longitude": -77.0, "latitude": 38.5},
    {"longitude": -77.0, "latitude": 39.3},
    {"longitude": -77.5, "latitude": 39.3},
    {"longitude": -77.5, "latitude": 38.5},
]


def shape(value: Any) -> Any:
    """Keys and JSON types, not values: what a golden frame pins down."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


async def test_golden_subscribe_gets_golden_reply(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        await ws.send(case_text("subscribe_everything.json"))
        reply = await recv_json(ws)
        assert shape(reply) == shape(case("subscribed_ok.json"))
        uuid.UUID(reply["id"], version=4)


async def test_seed_polygon_is_clockwise_so_rejected(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        await ws.send(case_text("subscribe_seed_polygon.json"))
        reply = await recv_json(ws)
        assert reply == case("subscribed_error.json")
        await ws.send(case_text("subscribe_polygon.json"))
        assert (await recv_json(ws))["errors"] == []


async def test_data_frames_have_golden_shape(sim: Simulator) -> None:
    seed = case("data_seed_example.json")
    rich = case("data_rich.json")
    required = set(seed["observations"][0]) - {"name"}
    async with open_ws(sim) as ws:
        await ws.send(case_text("subscribe_everything.json"))
        sub_id = (await recv_json(ws))["id"]
        message = await recv_until(ws, "data")
        assert set(message) == set(seed) and message["id"] == sub_id
        for obs in message["observations"] + await collect(ws, 0.3):
            assert required <= set(obs)
            known = set(rich["observations"][0]) | set(rich["observations"][1])
            assert set(obs) <= known
            assert isinstance(obs["position"]["longitude"], float)
            assert isinstance(obs["timestamp"], str) and obs["timestamp"].endswith("Z")
            for field in obs["staticProperties"] + obs["liveProperties"]:
                assert set(field) == {"propertyType", "value"}


async def test_malformed_seed_subscribe_gets_error_and_connection_survives(
    sim: Simulator,
) -> None:
    async with open_ws(sim) as ws:
        await ws.send(case_text("malformed_seed_subscribe.txt"))
        reply = await recv_json(ws)
        golden = case("error_malformed.json")
        assert shape(reply) == shape(golden)
        assert reply["errors"][0]["error"] == "MalformedMessage"
        for bad in ("[1, 2]", '{"type": "bogus"}', '{"no": "type"}', '{"type": "unsubscribe"}'):
            await ws.send(bad)
            assert (await recv_json(ws))["errors"][0]["error"] == "MalformedMessage"
        await ws.send(b"\x00binary")
        assert (await recv_json(ws))["type"] == "error"
        await subscribe(ws, {})


INVALID_QUERIES: list[Any] = [
    [],
    {"colour": "red"},
    {"location": WEST[:-1]},  # not closed
    {"location": [WEST[0], WEST[1], WEST[0]]},  # too few points
    {"location": list(reversed(WEST))},  # clockwise
    {"location": [{**p, "longitude": p["longitude"] - 200} for p in WEST]},
    {"location": [{**p, "latitude": p["latitude"] + 60} for p in WEST]},
    {"location": [{"longitude": "x", "latitude": 1}] * 4},
    {"time": {}},
    {"time": {"start": "yesterday"}},
    {"time": {"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"}},
    {"time": {"start": "2024-01-02T00:00:00Z", "until": "2024-01-03T00:00:00Z"}},
    {"property": {"property": "", "values": ["a"]}},
    {"property": {"property": "flag", "values": []}},
    {"property": {"property": "flag", "values": "US"}},
]


@pytest.mark.parametrize("query", INVALID_QUERIES)
async def test_invalid_query_errors_without_id(sim: Simulator, query: Any) -> None:
    async with open_ws(sim) as ws:
        await ws.send(json.dumps({"type": "subscribe", "query": query}))
        reply = await recv_json(ws)
        assert reply["type"] == "subscribed" and "id" not in reply
        assert reply["errors"] and reply["errors"][0]["error"] == "InvalidQuery"
        assert all(isinstance(a["value"], str) for a in reply["errors"][0]["args"])
        await subscribe(ws, {})


async def test_missing_query_is_invalid(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        await ws.send('{"type": "subscribe"}')
        assert "id" not in await recv_json(ws)


async def test_replies_keep_request_order_under_delay(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        first = await subscribe(ws, {})
        sim.inject({"action": "delay_subscribed", "seconds": 0.4})
        await ws.send(json.dumps({"type": "subscribe", "query": {"location": WEST}}))
        await asyncio.sleep(0.1)  # let the server read it while the delay is in force
        sim.inject({"action": "delay_subscribed", "seconds": 0})
        await ws.send(json.dumps({"type": "subscribe", "query": {"time": {}}}))  # invalid
        await ws.send(json.dumps({"type": "subscribe", "query": {}}))
        replies: list[dict[str, Any]] = []
        data_for_first_meanwhile = 0
        while len(replies) < 3:
            message = await recv_json(ws)
            if message["type"] == "subscribed":
                replies.append(message)
            elif not replies and message["id"] == first:
                data_for_first_meanwhile += 1
        assert [("id" in r) for r in replies] == [True, False, True]
        assert len({first, replies[0]["id"], replies[2]["id"]}) == 3
        # The delayed reply held back neither existing subscriptions' data.
        assert data_for_first_meanwhile > 0


async def test_polygon_subscription_gets_only_inside_points(sim: Simulator) -> None:
    query = {"location": WEST}
    async with open_ws(sim) as ws:
        sub_id = await subscribe(ws, query)
        got = await collect(ws, 0.5, sub_id)
    assert got and all(-77.5 <= o["position"]["longitude"] <= -77.0 for o in got)
    inside = [o for o in sim.observations() if matches(query, o)]
    assert len(inside) < len(sim.observations())


async def test_property_subscription_uses_exact_json_equality(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        numeric = await subscribe(ws, {"property": {"property": "crew", "values": [12]}})
        text = await subscribe(ws, {"property": {"property": "crew", "values": ["12"]}})
        status = await subscribe(
            ws, {"property": {"property": "status", "values": ["airborne", "moored"]}}
        )
        by_sub: dict[str, list[dict[str, Any]]] = {numeric: [], text: [], status: []}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.6
        while loop.time() < deadline:
            message = await recv_json(ws)
            by_sub[message["id"]].extend(message["observations"])

    def crew(o: dict[str, Any]) -> Any:
        return next(p["value"] for p in o["staticProperties"] if p["propertyType"] == "crew")

    assert by_sub[numeric] and all(crew(o) == 12 and crew(o) != "12" for o in by_sub[numeric])
    assert by_sub[text] and all(crew(o) == "12" for o in by_sub[text])
    statuses = {
        p["value"]
        for o in by_sub[status]
        for p in o["liveProperties"]
        if p["propertyType"] == "status"
    }
    assert statuses and statuses <= {"airborne", "moored"}


async def test_time_subscription_in_the_past_gets_nothing(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        past = await subscribe(ws, {"time": {"end": "2020-01-01T00:00:00Z"}})
        future = await subscribe(ws, {"time": {"start": "2020-01-01T00:00:00.5+00:00"}})
        got = await collect(ws, 0.4)
    ids = {o["trackId"] for o in got}
    assert ids
    stats = sim.stats()["subscriptions"]
    assert stats[past]["sent"] == 0 and stats[future]["sent"] > 0


async def test_unsubscribe_stops_data(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        sub_id = await subscribe(ws, {})
        await recv_until(ws, "data")
        frame = case("unsubscribe.json") | {"id": sub_id}
        await ws.send(json.dumps(frame))
        await asyncio.sleep(0.2)  # frames already in flight may still arrive
        while True:
            try:
                await recv_json(ws, 0.05)
            except TimeoutError:
                break
        assert await collect(ws, 0.3) == []
        assert sim.stats()["subscriptions"][sub_id]["active"] is False
        # Unknown ids are ignored without a reply.
        await ws.send(json.dumps({"type": "unsubscribe", "id": str(uuid.uuid4())}))
        assert await collect(ws, 0.1) == []
