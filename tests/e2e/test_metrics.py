"""Metrics and health of the real connector process, scraped over HTTP while it streams from
the simulator: counters move, readiness follows the connection, and once everything is landed
`rows_written_total` is exactly what DuckDB reads, per subscription and origin."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.simulator import SimulatorThread
from tests.e2e.conftest import SUBSCRIPTIONS, Deployment, wait_for

PREFIX = "gotham_connector_"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening (yet)


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name.removeprefix(PREFIX), tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def by(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """One metric's values grouped by some of its labels, zeros left out."""
    out: Counter[tuple[str, ...]] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name and value:
            found = dict(labels)
            out[tuple(found[k] for k in keys)] += value
    return dict(out)


def landed(dep: Deployment) -> dict[tuple[str, ...], float]:
    if not list(dep.landing.rglob("*.parquet")):
        return {}
    rows = dep.sql("SELECT subscription, origin, count(*) FROM obs GROUP BY ALL")
    return {(sub, origin): float(n) for sub, origin, n in rows}


@pytest.mark.slow
def test_metrics_follow_a_run_with_a_refused_reconnect(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    port = free_port()
    deployment.sections["metrics"] = {"enabled": True, "port": port}
    deployment.sections["log"] = {"format": "json", "heartbeat_seconds": 1.0}
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    proc = deployment.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200)
    assert get(port, "/healthz") == (200, '{"status": "ok"}')
    counters_move(port)
    readiness_follows_a_refused_reconnect(port, sim)
    # Quiet: once backfill has healed the gap and every cut has landed, the counters are what
    # DuckDB reads, per subscription and origin (backfilled rows included).
    sim.inject({"action": "pause"})
    rows_written_is_what_duckdb_reads(port, deployment)

    code, err = deployment.stop(proc)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    beats = [r for r in records if r["message"].startswith("stats ")]
    assert beats and all("\n" not in r["message"] for r in beats)
    assert beats[-1]["stats"]["observations_received"] > 0
    assert get(port, "/healthz")[0] == 0  # the server is closed with the process


def counters_move(port: int) -> None:
    """Observations per subscription, then rows, files and flushes once a cut has landed."""
    first = scrape(port)
    wait_for(lambda: sum(by(scrape(port), "rows_written_total", "subscription").values()) > 0)
    time.sleep(0.5)
    later = scrape(port)
    received = by(later, "observations_received_total", "subscription")
    assert set(received) == {(name,) for name in SUBSCRIPTIONS}
    before = by(first, "observations_received_total", "subscription")
    assert all(received[key] > before.get(key, 0) for key in received)
    last_data = by(later, "last_data_timestamp_seconds", "subscription")
    assert all(abs(time.time() - t) < 10 for t in last_data.values()) and len(last_data) == 2
    assert later[("files_written_total", ())] > 0 and later[("bytes_written_total", ())] > 0
    assert later[("flush_duration_seconds_count", ())] > 0
    assert later[("ready", ())] == 1


def readiness_follows_a_refused_reconnect(port: int, sim: SimulatorThread) -> None:
    """The simulator drops us and refuses handshakes for a while: 503, then 200 again."""
    sim.inject({"action": "refuse", "seconds": 3})
    sim.inject({"action": "drop", "mode": "reset"})
    wait_for(lambda: get(port, "/readyz")[0] == 503, timeout=5)
    status, body = get(port, "/readyz")
    assert status == 503 and "not connected to Gotham" in json.loads(body)["reasons"]
    assert scrape(port)[("ready", ())] == 0
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=20)
    after = scrape(port)
    assert after[("reconnects_total", ())] >= 1
    assert set(by(after, "gaps_total", "subscription", "reason")) == {
        (name, "disconnected") for name in SUBSCRIPTIONS
    }


def rows_written_is_what_duckdb_reads(port: int, dep: Deployment) -> None:
    def settled() -> bool:
        now = scrape(port)
        open_gaps = sum(by(now, "gaps_open", "subscription").values())
        written = by(now, "rows_written_total", "subscription", "origin")
        return open_gaps == 0 and now[("spool_frames", ())] == 0 and written == landed(dep)

    wait_for(settled, timeout=30)
    final = scrape(port)
    written = by(final, "rows_written_total", "subscription", "origin")
    assert ("everything", "backfill") in written and ("everything", "stream") in written
    backfilled = by(final, "backfill_rows_total", "subscription")
    assert backfilled[("everything",)] == written[("everything", "backfill")]
    assert sum(written.values()) == len(dep.rows())


def test_a_metrics_port_in_use_is_exit_2_naming_the_key(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        deployment.sections["metrics"] = {"enabled": True, "port": taken.getsockname()[1]}
        proc = deployment.start()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "metrics.port: cannot listen on 127.0.0.1:" in err
    assert sim.stats()["subscriptions"] == {}  # refused before connecting
