"""Metrics, readiness and the heartbeat line, without a network: the `[metrics]` and
`log.heartbeat_seconds` keys, what each Metrics call does to the exposition (read back with
prometheus_client's own parser), the readiness reasons, and the JSON heartbeat record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connector import __version__
from connector.config import Config, load_config
from connector.errors import ConfigError, TransientSinkError
from connector.health import problems, stats_line
from connector.jobs import FlushResult
from connector.logs import JsonFormatter
from connector.metrics import PREFIX, Metrics

BASE = """
[source]
url = "ws://127.0.0.1:9"
observation_spec_id = "baz"

[[subscriptions]]
name = "dc"
query = {}
"""

# The list, with each family's type as a scrape declares it.
REQUIRED = {
    "observations_received_total": "counter",
    "rows_written_total": "counter",
    "files_written_total": "counter",
    "bytes_written_total": "counter",
    "dead_letters_total": "counter",
    "reconnects_total": "counter",
    "gaps_total": "counter",
    "gaps_open": "gauge",
    "backfill_rows_total": "counter",
    "spool_bytes": "gauge",
    "spool_frames": "gauge",
    "last_data_timestamp_seconds": "gauge",
    "flush_duration_seconds": "histogram",
    "sink_errors_total": "counter",
    "token_refreshes_total": "counter",
    "build_info": "gauge",
}


def load(tmp_path: Path, extra: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "connector.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return load_config(path, environ or {})


def problems_of(tmp_path: Path, extra: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    assert info.value.exit_code == 2
    return dict(info.value.problems)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape carries, parsed by prometheus_client's parser: (name, labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name.removeprefix(PREFIX), tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


# -- configuration ----------------------------------------------------------------------------
def test_metrics_are_off_and_on_loopback_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (False, "127.0.0.1", 9108)
    assert cfg.log.heartbeat_seconds == 60.0


def test_metrics_section_and_heartbeat_load(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[metrics]\nenabled = true\nhost = "0.0.0.0"\nport = 9200\n[log]\nheartbeat_seconds = 0\n',
    )
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (True, "0.0.0.0", 9200)
    assert cfg.log.heartbeat_seconds == 0.0


def test_metrics_keys_come_from_the_environment(tmp_path: Path) -> None:
    env = {"GOTHAM_CONNECTOR__METRICS__ENABLED": "true", "GOTHAM_CONNECTOR__METRICS__PORT": "0"}
    cfg = load(tmp_path, "", env)
    assert cfg.metrics.enabled and cfg.metrics.port == 0


def test_every_metrics_problem_names_its_key(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        '[metrics]\nenabled = "yes"\nhost = ""\nport = 70000\ncolour = 1\n'
        "[log]\nheartbeat_seconds = -1\n",
    )
    assert found == {
        "metrics.enabled": "expected bool, got str 'yes'",
        "metrics.host": "expected string, got str ''",
        "metrics.port": "expected port (0-65535), got int 70000",
        "metrics.colour": "unknown key",
        "log.heartbeat_seconds": "expected non-negative number, got int -1",
    }
    assert problems_of(tmp_path, "[metrics]\nport = true\n") == {
        "metrics.port": "expected port (0-65535), got bool True"
    }


# -- the metrics object -----------------------------------------------------------------------
def test_every_documented_name_is_exposed_from_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()  # a global registry would refuse the second
    text = generate_latest(first.registry).decode()
    declared = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert {PREFIX + name: kind for name, kind in REQUIRED.items()}.items() <= declared.items()
    assert value(first, "build_info", version=__version__) == 1
    assert "_created" not in text
    first.reconnects.inc()
    assert value(first, "reconnects_total") == 1 and value(second, "reconnects_total") == 0


def test_known_subscriptions_start_at_zero() -> None:
    metrics = Metrics()
    metrics.known(["dc", "everything"])
    for name in ("dc", "everything"):
        assert value(metrics, "observations_received_total", subscription=name) == 0
        for origin in ("stream", "backfill"):
            assert value(metrics, "rows_written_total", subscription=name, origin=origin) == 0
        for reason in ("disconnected", "spool_full"):
            assert value(metrics, "gaps_total", subscription=name, reason=reason) == 0
    for reason in ("malformed", "unknown_subscription", "schema"):
        assert value(metrics, "dead_letters_total", reason=reason) == 0


def test_received_frames_count_observations_and_the_last_arrival() -> None:
    metrics = Metrics()
    metrics.received("dc", 3, 1_700_000_000_000_000)
    metrics.received("dc", 2, 1_700_000_001_500_000)
    assert value(metrics, "observations_received_total", subscription="dc") == 5
    assert value(metrics, "last_data_timestamp_seconds", subscription="dc") == 1_700_000_001.5


def test_a_landed_cut_counts_rows_by_origin_files_bytes_and_schema_rejects() -> None:
    metrics = Metrics()
    result = FlushResult(
        files=[("a.parquet", 7, 100), ("b.parquet", 3, 50)],
        rows=10,
        bytes=150,
        rejected=4,
        dead_frames=1,  # counted when it arrived; the other 3 are the converter's
        rows_by_subscription={"dc": 10},
        rows_by_origin={("dc", "stream"): 6, ("dc", "backfill"): 4},
    )
    metrics.sink_failed(TransientSinkError("slow down"))
    metrics.landed(result, 0.3)
    assert value(metrics, "rows_written_total", subscription="dc", origin="stream") == 6
    assert value(metrics, "rows_written_total", subscription="dc", origin="backfill") == 4
    assert value(metrics, "files_written_total") == 2
    assert value(metrics, "bytes_written_total") == 150
    assert value(metrics, "dead_letters_total", reason="schema") == 3
    assert value(metrics, "flush_duration_seconds_count") == 1
    assert value(metrics, "flush_duration_seconds_bucket", le="0.5") == 1
    assert value(metrics, "flush_duration_seconds_bucket", le="0.25") == 0
    assert metrics.sink_problem is None  # a landed cut proves the sink writable again


def test_a_sink_failure_is_counted_by_kind_and_remembered() -> None:
    metrics = Metrics()
    metrics.sink_ok()
    metrics.sink_failed(TransientSinkError("sink s3://x: timeout"))
    metrics.sink_failed(TransientSinkError("again"))
    assert value(metrics, "sink_errors_total", kind="TransientSinkError") == 2
    assert metrics.sink_problem == "TransientSinkError: again"
    metrics.sink_ok()
    assert metrics.sink_problem is None


def test_sampled_series_read_the_sources_at_scrape_time() -> None:
    metrics = Metrics()
    assert value(metrics, "ready") == 0  # nothing started yet
    held = {"bytes": 10}
    metrics.sources.spool_bytes = lambda: held["bytes"]
    metrics.sources.spool_frames = lambda: 4
    metrics.sources.gaps_open = lambda: {"dc": 2, "everything": 0}
    metrics.sources.not_ready = lambda: []
    held["bytes"] = 2048
    assert value(metrics, "spool_bytes") == 2048
    assert value(metrics, "spool_frames") == 4
    assert value(metrics, "gaps_open", subscription="dc") == 2
    assert value(metrics, "gaps_open", subscription="everything") == 0
    assert value(metrics, "ready") == 1


def test_the_snapshot_sums_over_labels() -> None:
    metrics = Metrics()
    metrics.received("dc", 3, 1)
    metrics.received("everything", 4, 2)
    metrics.gaps.labels("dc", "disconnected").inc()
    metrics.gaps.labels("everything", "spool_full").inc(2)
    snap = metrics.snapshot()
    assert snap["observations_received"] == 7
    assert snap["gaps"] == 3
    assert snap["sink_errors"] == 0  # present before the first error
    assert list(snap)[:2] == ["observations_received", "rows_written"]
    assert "build_info" not in snap and "ready" not in snap


# -- readiness and the heartbeat ------------------------------------------------------------
def test_ready_only_when_connected_subscribed_and_the_sink_writable() -> None:
    ok = {
        "stopping": False,
        "connected": True,
        "configured": {"dc", "everything"},
        "active": {"dc", "everything"},
        "sink_problem": None,
    }
    assert problems(**ok) == []  # type: ignore[arg-type]
    assert problems(**{**ok, "connected": False, "active": set()}) == [  # type: ignore[arg-type]
        "not connected to Gotham"
    ]
    assert problems(**{**ok, "active": {"dc"}}) == [  # type: ignore[arg-type]
        "subscriptions not active: everything"
    ]
    assert problems(**{**ok, "sink_problem": "not checked yet"}) == [  # type: ignore[arg-type]
        "sink not writable: not checked yet"
    ]
    assert problems(**{**ok, "stopping": True}) == ["stopping"]  # type: ignore[arg-type]


def test_the_stats_line_is_one_line_with_rates() -> None:
    line = stats_line(
        {"observations_received": 300.0, "spool_bytes": 12_345_678.0, "age": 0.25},
        {"observations_received": 100.0},
        2.0,
        [],
    )
    assert line == "ready=yes observations_received=300 (+100.0/s) spool_bytes=12345678 age=0.250"
    assert stats_line({}, {}, 1.0, ["not connected to Gotham", "stopping"]) == (
        "ready=no (not connected to Gotham; stopping)"
    )


def test_the_json_heartbeat_carries_its_numbers() -> None:
    record = logging.LogRecord(
        "connector.health", logging.INFO, __file__, 1, "stats %s", ("x",), None
    )
    record.stats = {"ready": True, "observations_received": 3.0}
    item = json.loads(JsonFormatter().format(record))
    assert item["message"] == "stats x"
    assert item["stats"] == {"ready": True, "observations_received": 3.0}
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert "stats" not in json.loads(JsonFormatter().format(plain))
