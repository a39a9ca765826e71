"""REST history and latest search: auth, paging, filtering, injected statuses."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from connector.simulator import Simulator, SimulatorOptions, matches

HISTORY = "/api/gotham/v1/observations/history/{spec}/search?preview=true"
LATEST = "/api/gotham/v1/observations/latest/{spec}/search?preview=true"
AUTH = {"Authorization": "Bearer sim-token"}


async def post(
    http: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    spec: str = "baz",
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(
        sim.rest_url + path.format(spec=spec),
        json=body,
        headers=AUTH if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json(), resp


@pytest.fixture
def options() -> SimulatorOptions:
    return SimulatorOptions(rate=2000.0, tracks=30, seed=3)


async def walk(
    http: aiohttp.ClientSession, sim: Simulator, path: str, body: dict[str, Any]
) -> list[list[Any]]:
    pages = []
    token = None
    while True:
        status, page, _ = await post(
            http, sim, path, body | ({"pageToken": token} if token else {})
        )
        assert status == 200, page
        pages.append(page["data"])
        token = page.get("nextPageToken")
        if token is None:
            return pages


async def test_history_paging_returns_each_track_once_with_all_observations(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    await asyncio.sleep(0.3)
    sim.inject({"action": "pause"})
    await asyncio.sleep(0.1)
    snapshot = sim.observations()
    sim.inject({"action": "resume"})
    pages = await walk(http, sim, HISTORY, {"query": {}, "pageSize": 7})
    assert all(len(p) <= 7 for p in pages) and len(pages) == 5
    entries = [e for p in pages for e in p]
    rids = [e["trackRid"] for e in entries]
    assert len(rids) == len(set(rids)) == 30
    assert all(r.startswith("ri.gotham.") for r in rids)
    landed = {(o["trackId"], o["timestamp"]) for e in entries for o in e["observations"]}
    assert {(o["trackId"], o["timestamp"]) for o in snapshot} <= landed
    for e in entries:
        stamps = [o["timestamp"] for o in e["observations"]]
        assert len({o["trackId"] for o in e["observations"]}) == 1
        assert len(stamps) == len(set(stamps))


async def test_history_window_and_query_filter(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await asyncio.sleep(0.3)
    empty = await walk(
        http,
        sim,
        HISTORY,
        {
            "query": {},
            "historyWindow": {"start": "2019-01-01T00:00:00Z", "end": "2020-01-01T00:00:00Z"},
        },
    )
    assert empty == [[]]
    query = {"property": {"property": "crew", "values": [12]}}
    pages = await walk(http, sim, HISTORY, {"query": query})
    entries = [e for p in pages for e in p]
    assert entries and len(entries) < 30
    for e in entries:
        assert matches(query, e["observations"][-1])


async def test_latest_search(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await asyncio.sleep(0.2)
    pages = await walk(http, sim, LATEST, {"query": {}, "pageSize": 100})
    assert len(pages) == 1 and len(pages[0]) == 30
    assert len({o["trackId"] for o in pages[0]}) == 30
    west = {"time": {"start": "2000-01-01T00:00:00Z"}}
    assert len((await walk(http, sim, LATEST, {"query": west}))[0]) == 30


@pytest.mark.parametrize(
    ("headers", "path", "spec", "body", "status"),
    [
        ({}, HISTORY, "baz", {"query": {}}, 401),
        ({"Authorization": "Bearer nope"}, LATEST, "baz", {"query": {}}, 401),
        (AUTH, HISTORY.replace("?preview=true", ""), "baz", {"query": {}}, 400),
        (AUTH, HISTORY, "nope", {"query": {}}, 404),
        (AUTH, HISTORY, "baz", {"query": {"time": {}}}, 400),
        (AUTH, HISTORY, "baz", {"query": {}, "pageSize": 101}, 400),
        (AUTH, HISTORY, "baz", {"query": {}, "pageToken": "bogus"}, 400),
        (AUTH, HISTORY, "baz", {"query": {}, "historyWindow": {"start": "x"}}, 400),
    ],
)
async def test_rest_errors(
    sim: Simulator,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    path: str,
    spec: str,
    body: Any,
    status: int,
) -> None:
    got, payload, _ = await post(http, sim, path, body, headers, spec)
    assert got == status
    assert isinstance(payload["errorCode"], str) and isinstance(payload["errorName"], str)
    if body.get("query") == {"time": {}}:
        assert payload["errorName"] == "InvalidQuery" and payload["errorCode"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("status", [401, 429, 503])
async def test_injected_rest_status(
    sim: Simulator, http: aiohttp.ClientSession, status: int
) -> None:
    sim.inject({"action": "rest_status", "status": status, "count": 2})
    for _ in range(2):
        got, _, resp = await post(http, sim, LATEST, {"query": {}})
        assert got == status
        assert (resp.headers.get("Retry-After") == "1") is (status != 401)
    got, _, _ = await post(http, sim, LATEST, {"query": {}})
    assert got == 200
    assert sim.stats()["rest_calls"] == 3


async def test_page_token_can_be_retried(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await asyncio.sleep(0.2)
    _, first, _ = await post(http, sim, LATEST, {"query": {}, "pageSize": 10})
    token = first["nextPageToken"]
    _, again1, _ = await post(http, sim, LATEST, {"query": {}, "pageToken": token, "pageSize": 10})
    _, again2, _ = await post(http, sim, LATEST, {"query": {}, "pageToken": token, "pageSize": 10})
    assert again1["data"] == again2["data"]
