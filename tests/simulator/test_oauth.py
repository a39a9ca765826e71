"""The simulator's OAuth2 token endpoint (Palantir multipass, client credentials) over raw HTTP,
and what token expiry means on the websocket and REST: 401 after expiry, sockets closed with
1008 "token expired" when their token expires, the static token unaffected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from connector.simulator import Simulator, SimulatorOptions
from connector.simulator.oauth import EXPIRED_CLOSE_CODE, TOKEN_PATH

from .wire import open_ws, subscribe

CLIENT, SECRET = "sim-client", "sim-client-secret"
FORM = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}
HISTORY = "/api/gotham/v1/observations/history/baz/search?preview=true"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    options = SimulatorOptions(
        rate=500.0, client_id=CLIENT, client_secret=SECRET, token_expires_in=1.0
    )
    async with Simulator(options) as simulator:
        yield simulator


async def token_request(
    sim: Simulator, http: aiohttp.ClientSession, form: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(sim.rest_url + TOKEN_PATH, data=form or FORM, **kw) as resp:
        return resp.status, await resp.json()


async def test_client_credentials_grant_answers_a_bearer_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body = await token_request(sim, http, FORM | {"scope": "api:a api:b"})
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("bearer", 1, "api:a api:b")
    assert sim.oauth.valid(body["access_token"])


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (FORM | {"client_secret": "wrong"}, 401, "invalid_client"),
        (FORM | {"client_id": "someone-else"}, 401, "invalid_client"),
        (FORM | {"grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
async def test_bad_requests_get_oauth2_errors(
    sim: Simulator, http: aiohttp.ClientSession, form: dict[str, str], status: int, error: str
) -> None:
    assert await token_request(sim, http, form) == (
        status,
        {"error": error, "error_description": error},
    )
    assert sim.oauth.issued == []


async def test_a_json_body_is_not_a_form(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.rest_url + TOKEN_PATH, json=FORM) as resp:
        assert resp.status == 400
    assert sim.oauth.stats()["refused"] == 1


async def test_issued_tokens_open_sockets_and_rest_until_they_expire(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    _, body = await token_request(sim, http)
    token = body["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(sim.rest_url + HISTORY, json={"query": {}}, headers=headers) as resp:
        assert resp.status == 200
    async with open_ws(sim, token=token) as ws:
        assert ws.subprotocol == f"Bearer-{token}"
        await subscribe(ws, {})
        # The server closes the socket when the token expires (1 s), whatever flows.
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 3.0)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (EXPIRED_CLOSE_CODE, "token expired")
    assert sim.oauth.stats()["expired_closes"] == 1
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(sim, token=token):
            pass
    assert refused.value.response.status_code == 401
    async with http.post(sim.rest_url + HISTORY, json={"query": {}}, headers=headers) as resp:
        assert resp.status == 401


async def test_the_static_token_keeps_working_beside_oauth2(sim: Simulator) -> None:
    async with open_ws(sim) as ws:  # "sim-token"
        await subscribe(ws, {})
        await asyncio.sleep(1.5)  # longer than an issued token lives: never closed for it
        assert (await ws.recv()) and sim.oauth.stats()["expired_closes"] == 0


async def test_no_token_endpoint_without_a_client(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorOptions()) as plain:
        async with http.post(plain.rest_url + TOKEN_PATH, data=FORM) as resp:
            assert resp.status in (404, 405)
        assert "oauth" not in plain.stats()
