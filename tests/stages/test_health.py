"""connector.health in-process: the heartbeat task on a short period, and coverage's gap gauges
on real Gaps and a real Intake on a real Spool. (The HTTP endpoints: test_endpoints.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from connector.coverage import Coverage
from connector.gaps import Gaps
from connector.health import heartbeat
from connector.metrics import Metrics
from tests.stages.helpers import SECOND, T0, IntakeRig, until

Rigs = Callable[..., IntakeRig]


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
