"""The receiving process's readiness (the reasons `/readyz` gives) and its stats heartbeat (one
log line every `log.heartbeat_seconds`). The HTTP endpoints themselves are `endpoints`."""

from __future__ import annotations

import asyncio
import logging
import time

from connector.metrics import Metrics

log = logging.getLogger(__name__)


def problems(
    *,
    stopping: bool,
    connected: bool,
    configured: set[str],
    active: set[str],
    sink_problem: str | None,
) -> list[str]:
    """Why the connector is not ready; empty when it is. Pure: the runner gathers the facts."""
    found = []
    if stopping:
        found.append("stopping")
    if not connected:
        found.append("not connected to Gotham")
    elif configured - active:
        found.append("subscriptions not active: " + ", ".join(sorted(configured - active)))
    if sink_problem is not None:
        found.append(f"sink not writable: {sink_problem}")
    return found


async def heartbeat(metrics: Metrics, seconds: float) -> None:
    """Every `seconds`, one INFO line with the totals and the rates since the last line; with
    `log.format = "json"` the numbers are also a `stats` object. Cancelled at shutdown."""
    before, at = metrics.snapshot(), time.monotonic()
    while True:
        await asyncio.sleep(seconds)
        now, values = time.monotonic(), metrics.snapshot()
        not_ready = metrics.sources.not_ready()
        line = stats_line(values, before, now - at, not_ready)
        log.info("stats %s", line, extra={"stats": {"ready": not not_ready, **values}})
        before, at = values, now


def stats_line(
    values: dict[str, float], before: dict[str, float], seconds: float, not_ready: list[str]
) -> str:
    """`ready=yes observations_received=1200 (+40.0/s) rows_written=...`: one line, key=value."""
    parts = ["ready=yes" if not not_ready else f"ready=no ({'; '.join(not_ready)})"]
    for key, value in values.items():
        # Whole numbers in full (`:g` would print 1.23457e+06 for a row count).
        text = f"{key}={int(value)}" if value.is_integer() else f"{key}={value:.3f}"
        if key in _RATES and seconds > 0:
            text += f" (+{(value - before.get(key, 0.0)) / seconds:.1f}/s)"
        parts.append(text)
    return " ".join(parts)


_RATES = {"observations_received", "rows_written", "bytes_written"}
