"""connector.endpoints in-process: the real aiohttp server on loopback, asked over HTTP by an
aiohttp client."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.endpoints import HealthServer
from connector.errors import ConfigError
from connector.metrics import Metrics
from tests.stages.helpers import T0


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, str]]:
    metrics = Metrics()
    server = HealthServer(metrics)
    await server.start("127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def get(url: str, accept: str = "") -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_are_served_in_the_prometheus_text_format(
    served: tuple[Metrics, str],
) -> None:
    metrics, base = served
    metrics.known(["dc"])
    metrics.received("dc", 5, T0)
    status, content_type, body = await get(f"{base}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    [sample] = families["gotham_connector_observations_received"].samples
    assert (sample.labels, sample.value) == ({"subscription": "dc"}, 5)
    # A Prometheus that asks for OpenMetrics gets it (negotiated by prometheus_client).
    status, content_type, body = await get(
        f"{base}/metrics", "application/openmetrics-text; version=1.0.0"
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


async def test_readyz_says_why_until_ready_and_healthz_answers_throughout(
    served: tuple[Metrics, str],
) -> None:
    metrics, base = served
    status, _, body = await get(f"{base}/readyz")
    assert status == 503 and json.loads(body) == {"status": "not ready", "reasons": ["not started"]}
    assert (await get(f"{base}/healthz"))[0] == 200
    reasons = ["not connected to Gotham"]
    metrics.sources.not_ready = lambda: reasons
    status, content_type, body = await get(f"{base}/readyz")
    assert status == 503 and content_type.startswith("application/json")
    assert json.loads(body)["reasons"] == ["not connected to Gotham"]
    reasons.clear()
    status, _, body = await get(f"{base}/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, _, body = await get(f"{base}/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}


async def test_a_port_in_use_or_a_bad_host_is_a_config_error_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            await HealthServer(Metrics()).start("127.0.0.1", port)
        [(key, message)] = info.value.problems
        assert key == "metrics.port" and f"cannot listen on 127.0.0.1:{port}" in message
    with pytest.raises(ConfigError) as info:
        await HealthServer(Metrics()).start("192.0.2.1", 0)  # TEST-NET-1: not ours
    assert info.value.problems[0][0] == "metrics.host"
