"""The websocket handshake: auth, preview flag, spec, paths, subprotocol, refusal."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from connector.simulator import Simulator, SimulatorOptions

from .wire import open_ws, recv_json, subscribe


async def test_right_token_selects_bearer_subprotocol(sim: Simulator) -> None:
    async with open_ws(sim) as ws:
        assert ws.subprotocol == "Bearer-sim-token"


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_missing_or_wrong_token_is_401(sim: Simulator, token: str | None) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(sim, token=token):
            pass
    assert info.value.response.status_code == 401


async def test_preview_flag_is_required(sim: Simulator) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(sim, path="/api/ws/gotham/v1/observations/{spec}"):
            pass
    assert info.value.response.status_code == 400


async def test_unknown_spec_is_404(sim: Simulator) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(sim, spec="nope"):
            pass
    assert info.value.response.status_code == 404


async def test_older_path_spelling_works(sim: Simulator) -> None:
    async with open_ws(sim, path="/api/gotham/ws/v1/observations/{spec}?preview=true") as ws:
        await subscribe(ws, {})
        assert (await recv_json(ws))["type"] == "data"


async def test_refuse_window_then_accepts() -> None:
    async with Simulator(SimulatorOptions(refuse_seconds=0.5)) as sim:
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(sim):
                pass
        assert info.value.response.status_code == 503
        sim.inject({"action": "refuse", "seconds": 0})
        async with open_ws(sim) as ws:
            assert ws.subprotocol == "Bearer-sim-token"


async def test_compression_is_negotiated_unless_disabled() -> None:
    for enabled in (True, False):
        async with Simulator(SimulatorOptions(compression=enabled)) as sim, open_ws(sim) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            assert ("permessage-deflate" in extensions) is enabled
