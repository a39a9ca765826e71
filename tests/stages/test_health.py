"""connector.health in-process: the real aiohttp server on loopback, asked over HTTP by an
aiohttp client; the heartbeat task on a short period; and coverage's gap gauges on real Gaps
and a real Intake on a real Spool."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.coverage import Coverage
from connector.errors import ConfigError
from connector.gaps import Gaps
from connector.health import HealthServer, heartbeat
from connector.metrics import Metrics
from tests.stages.helpers import SECOND, T0, IntakeRig, until

Rigs = Callable[..., IntakeRig]


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


async def test_the_heartbeat_logs_one_stats_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    metrics.sources.not_ready = list  # ready
    caplog.set_level(logging.INFO, logger="connector.health")
    task = asyncio.get_running_loop().create_task(heartbeat(metrics, 0.05))
    try:
        metrics.received("dc", 10, T0)
        await until(lambda: len(heartbeats(caplog)) >= 2, what="two heartbeats")
    finally:
        task.cancel()
    first = heartbeats(caplog)[0]
    assert first.getMessage().startswith("stats ready=yes observations_received=10 (+")
    assert "\n" not in first.getMessage()
    assert first.stats["observations_received"] == 10  # type: ignore[attr-defined]
    assert first.stats["ready"] is True  # type: ignore[attr-defined]


def heartbeats(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("stats ")]


def test_open_gaps_follow_the_stream_and_backfill(tmp_path: Path, rigs: Rigs) -> None:
    gaps = Gaps({})
    rig = rigs(tmp_path, gaps=gaps)
    metrics = Metrics()
    coverage = Coverage(gaps, rig.intake, lambda: None, metrics)
    healed: list[object] = []
    coverage.hooks.append(healed.append)  # as backfill does: gaps wait until settled
    names = {"dc", "everything"}
    assert coverage.open_gaps(names) == {"dc": 0, "everything": 0}
    coverage.subscribed("dc", "S1", T0)
    coverage.stream_lost(["dc"], T0 + SECOND)
    assert coverage.open_gaps(names) == {"dc": 1, "everything": 0}  # the stream is missing
    coverage.subscribed("dc", "S2", T0 + 5 * SECOND)
    assert coverage.open_gaps(names) == {"dc": 1, "everything": 0}  # now waiting for backfill
    labels = {"subscription": "dc", "reason": "disconnected"}
    assert metrics.registry.get_sample_value("gotham_connector_gaps_total", labels) == 1
    [gap] = healed
    coverage.settle(gap)  # type: ignore[arg-type]
    assert coverage.open_gaps(names) == {"dc": 0, "everything": 0}
    assert coverage.open_gaps({"dc"}) == {"dc": 0}  # only configured names are reported
