"""Fixtures: a running simulator per test and an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from connector.simulator import Simulator, SimulatorOptions


@pytest.fixture
def options() -> SimulatorOptions:
    return SimulatorOptions(rate=2000.0, tracks=40, seed=7)


@pytest.fixture
async def sim(options: SimulatorOptions) -> AsyncIterator[Simulator]:
    async with Simulator(options) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
