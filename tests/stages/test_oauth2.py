"""connector.oauth2 in-process against the simulator's real token endpoint (aiohttp on
127.0.0.1:0): what is requested, caching, renewal before expiry, the endpoint's failures, and
the one retry with a fresh token after a 401 on REST (backfill) and on the websocket handshake
(session). Assertions are on what the simulator received and issued and on what the callers
got, not on the token cache's internals."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from connector.backfill import Backfiller, BackfillPort
from connector.config import Config, SourceConfig, Subscription
from connector.coverage import Coverage
from connector.credentials import OAuth2Config
from connector.errors import AuthError, ConnectorError
from connector.gaps import Gaps
from connector.metrics import Metrics
from connector.oauth2 import OAuth2Tokens, TokenUnavailable
from connector.session import Session
from connector.simulator import Simulator, SimulatorOptions
from tests.stages.helpers import DEADLINE, IntakeRig, until

CLIENT = "stage-client"
SECRET = "stage-client-secret-5d1e"
SECRET_ENV = "STAGE_CLIENT_SECRET"


def options(**overrides: Any) -> SimulatorOptions:
    base: dict[str, Any] = {
        "token": "static-not-used-here",
        "rate": 400.0,
        "tracks": 10,
        "seed": 5,
        "client_id": CLIENT,
        "client_secret": SECRET,
    }
    return SimulatorOptions(**(base | overrides))


@pytest.fixture
def sim_options() -> SimulatorOptions:
    return options()


@pytest.fixture
async def sim(
    sim_options: SimulatorOptions, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Simulator]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with Simulator(sim_options) as simulator:
        yield simulator


def source(sim: Simulator, scopes: tuple[str, ...] = (), reconnect: float = 0.05) -> SourceConfig:
    return SourceConfig(
        url=sim.ws_url,
        observation_spec_id="baz",
        token=OAuth2Config(CLIENT, SECRET_ENV, scopes=scopes),
        open_timeout=DEADLINE,
        reconnect_min_seconds=reconnect,
        reconnect_max_seconds=reconnect * 4,
    )


@pytest.fixture
async def tokens(sim: Simulator) -> AsyncIterator[Callable[..., OAuth2Tokens]]:
    made: list[OAuth2Tokens] = []

    def build(
        metrics: Metrics | None = None, scopes: tuple[str, ...] = (), **kwargs: Any
    ) -> OAuth2Tokens:
        src = source(sim, scopes)
        assert isinstance(src.token, OAuth2Config)
        built = OAuth2Tokens(src, src.token, metrics, **kwargs)
        made.append(built)
        return built

    yield build
    for built in made:
        await built.close()


def session_for(
    src: SourceConfig, cache: OAuth2Tokens, rig: IntakeRig, stopping: asyncio.Event
) -> tuple[Session, list[ConnectorError]]:
    failures: list[ConnectorError] = []
    session = Session(
        src,
        {"all": Subscription("all", {})},
        rig.intake,
        Coverage(Gaps({}), rig.intake, lambda: None),
        stopping,
        failures.append,
        tokens=cache,
    )
    return session, failures


def refreshes(metrics: Metrics) -> float:
    return metrics.snapshot()["token_refreshes"]


# -- fetching and caching -------------------------------------------------------------------------
async def test_a_token_is_fetched_once_then_served_from_the_cache(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    metrics = Metrics()
    cache = tokens(metrics)
    first = await asyncio.gather(*(cache.get() for _ in range(5)))  # concurrent callers
    again = await cache.get()
    assert len({*first, again}) == 1
    [issued] = sim.oauth.issued
    assert first[0].reveal() == issued.token
    assert sim.oauth.stats()["requests"] == 1 and refreshes(metrics) == 1
    assert not cache.superseded(again)


async def test_scopes_travel_space_separated(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    await tokens(scopes=("api:read-data", "api:use-gotham")).get()
    assert sim.oauth.stats()["scopes"] == ["api:read-data api:use-gotham"]


@pytest.mark.parametrize("sim_options", [options(token_expires_in=2.0)])
async def test_the_background_task_renews_before_expiry(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    metrics = Metrics()
    cache = tokens(metrics)
    first = await cache.get()
    upkeep = asyncio.create_task(cache.run())
    try:
        # A 2 s token is renewed after 1.6 s (80%): three more within ~5 s.
        await until(lambda: len(sim.oauth.issued) >= 4, within=8.0, what="three renewals")
    finally:
        upkeep.cancel()
        await asyncio.gather(upkeep, return_exceptions=True)
    issued = sim.oauth.issued
    for old, new in itertools.pairwise(issued):
        # Each one was asked for before the previous one expired, with time to spare.
        asked_at = new.expires - new.lifetime
        assert asked_at < old.expires - 0.2, (asked_at, old.expires)
    assert cache.superseded(first)
    assert (await cache.get()).reveal() == issued[-1].token
    assert refreshes(metrics) == len(issued)


# -- the token endpoint's failures ----------------------------------------------------------------
async def test_a_wrong_secret_is_an_auth_error_naming_the_client_never_the_secret(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-secret-71c2")
    with pytest.raises(AuthError) as info:
        await tokens().get()
    message = str(info.value)
    assert f"refused client id '{CLIENT}' (HTTP 401: invalid_client)" in message
    assert "not-the-secret-71c2" not in message and SECRET not in message
    assert info.value.exit_code == 3
    assert sim.oauth.stats()["refused"] == 1  # refused at once: not retried


@pytest.mark.parametrize("sim_options", [options(token_failures=3)])
async def test_503s_are_retried_with_backoff_until_a_token_comes(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    metrics = Metrics()
    token = await tokens(metrics).get()
    assert token.reveal() == sim.oauth.issued[0].token
    assert sim.oauth.stats()["unavailable"] == 3 and sim.oauth.stats()["requests"] == 4
    assert refreshes(metrics) == 1  # failed attempts fetch nothing


@pytest.mark.parametrize("sim_options", [options(token_failures=1000)])
async def test_an_endpoint_that_stays_down_is_transient(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    started = time.monotonic()
    with pytest.raises(TokenUnavailable, match="HTTP 503 from the token endpoint"):
        await tokens(retry_seconds=1.0).get()
    assert time.monotonic() - started < DEADLINE
    assert sim.oauth.stats()["unavailable"] >= 2


async def test_an_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    unused = SourceConfig("ws://127.0.0.1:9", "baz", token=OAuth2Config(CLIENT, SECRET_ENV))
    cache = OAuth2Tokens(unused, OAuth2Config(CLIENT, SECRET_ENV), retry_seconds=0.5)
    try:
        with pytest.raises(TokenUnavailable, match="cannot reach the token endpoint"):
            await cache.get()
    finally:
        await cache.close()


# -- 401: one retry with a fresh token ------------------------------------------------------------
async def test_rest_401_renews_the_token_once_and_the_call_succeeds(
    sim: Simulator, tokens: Callable[..., OAuth2Tokens]
) -> None:
    await asyncio.sleep(1.0)  # some history to search
    cache = tokens()
    await cache.get()
    sim.oauth.revoke_all()  # the cached token is refused from now on, as if expired early
    cfg = Config(source=source(sim), subscriptions=(Subscription("all", {}),))
    backfiller = Backfiller(cfg, cast(BackfillPort, None), cache)
    now = time.time_ns() // 1000
    async with aiohttp.ClientSession() as session:
        found = await backfiller._fetch(session, {}, now - 60_000_000, now)
    assert found
    assert len(sim.oauth.issued) == 2  # one renewal, not one per retry
    assert sim.stats()["rest_calls"] == 2  # the 401 and the retry (one page of 100)


async def test_handshake_401_renews_the_token_once_and_connects(
    sim: Simulator,
    tokens: Callable[..., OAuth2Tokens],
    rigs: Callable[..., IntakeRig],
    tmp_path: Path,
) -> None:
    cache = tokens()
    stopping = asyncio.Event()
    session, failures = session_for(source(sim), cache, rigs(tmp_path / "spool"), stopping)
    await cache.get()
    sim.oauth.revoke_all()  # the first handshake is refused
    task = asyncio.create_task(session.run())
    try:
        await until(lambda: session.active == {"all"}, what="subscribed on the second try")
        assert failures == [] and len(sim.oauth.issued) == 2
        assert sim.stats()["connections"] == 1
    finally:
        stopping.set()
        await asyncio.wait_for(task, DEADLINE * 3)
        await session.close()


@pytest.mark.parametrize("sim_options", [options(token_expires_in=1.5)])
async def test_a_socket_closed_at_token_expiry_reconnects_at_once_with_a_new_token(
    sim: Simulator,
    tokens: Callable[..., OAuth2Tokens],
    rigs: Callable[..., IntakeRig],
    tmp_path: Path,
) -> None:
    cache = tokens()
    stopping = asyncio.Event()
    slow = source(sim, reconnect=20.0)  # an ordinary reconnect would wait 10-20 s
    session, failures = session_for(slow, cache, rigs(tmp_path / "spool"), stopping)
    upkeep = asyncio.create_task(cache.run())
    task = asyncio.create_task(session.run())
    try:
        # Three reconnects within 12 s, each after a socket closed at expiry: each was at once,
        # on a token that had not expired (an ordinary reconnect here waits 10-20 s).
        await until(lambda: session.reconnects >= 3, within=12.0, what="three reconnects")
        await until(lambda: session.active == {"all"}, what="resubscribed")
        assert sim.oauth.expired_closes >= 3 and failures == []
    finally:
        stopping.set()
        upkeep.cancel()
        await asyncio.wait_for(task, DEADLINE * 3)
        await asyncio.gather(upkeep, return_exceptions=True)
        await session.close()
