"""Prometheus metrics of the receiving process: one registry, its metric objects, and what is
read at scrape time. The stages that count get this object from the runner (constructor
injection); `connector.health` serves the registry over HTTP and logs the heartbeat from it.

A registry per object, never prometheus_client's global one: tests run several connectors in
one process, and a process-wide registry would refuse the second set of names.

What counts when:
* `observations_received_total`, `last_data_timestamp_seconds`: a stream data frame spooled.
* `rows_written_total`, `files_written_total`, `bytes_written_total`, `dead_letters_total
  {reason="schema"}`, `flush_duration_seconds`: a cut's files are visible and the checkpoint
  saying so is on disk. So once everything is flushed, `rows_written_total` is what a reader
  of the landing zone sees.
* `spool_bytes`, `spool_frames`, `gaps_open`, `ready`: sampled from the stages' own state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from connector import __version__
from connector.jobs import FlushResult

PREFIX = "gotham_connector_"
ORIGINS = ("stream", "backfill")
GAP_REASONS = ("disconnected", "spool_full")
DEAD_REASONS = ("malformed", "unknown_subscription", "schema")
# A cut takes from tens of milliseconds (a timer cut of a few frames) to a minute (64 MiB of
# JSON on a busy machine); retries are not in it (they count in sink_errors_total).
FLUSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
NOT_STARTED = "not started"
# The heartbeat's order: what flows first, then trouble, then internals.
SNAPSHOT_ORDER = (
    "observations_received",
    "rows_written",
    "files_written",
    "bytes_written",
    "gaps_open",
    "gaps",
    "backfill_rows",
    "dead_letters",
    "reconnects",
    "sink_errors",
    "token_refreshes",
    "spool_bytes",
    "spool_frames",
    "flush_duration_seconds_count",
    "flush_duration_seconds_sum",
)
# A sum over subscriptions means nothing for these (ready: the heartbeat says it in words).
_NOT_SUMMED = {"build_info", "last_data_timestamp_seconds", "ready"}

# `<name>_created` series double what a scrape carries and no dashboard of ours reads them.
# Process-wide in prometheus_client; this process serves no other registry.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass
class Sources:
    """State the stages already hold, read at scrape time instead of being counted twice."""

    spool_bytes: Callable[[], int] = lambda: 0
    spool_frames: Callable[[], int] = lambda: 0
    gaps_open: Callable[[], Mapping[str, int]] = dict
    not_ready: Callable[[], list[str]] = lambda: [NOT_STARTED]


@dataclass
class _Received:
    observations: int = 0
    last_us: int = 0


class Metrics:
    def __init__(self, version: str = __version__) -> None:
        self.registry = CollectorRegistry()
        self.sources = Sources()  # the runner points these at the stages
        # Why the sink is not known to be writable; None after the last sink call succeeded.
        self.sink_problem: str | None = "not checked yet"

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=self.registry)

        self.rows_written = counter(
            "rows_written", "Rows in visible, checkpointed files.", ("subscription", "origin")
        )
        self.files_written = counter("files_written", "Parquet files made visible.")
        self.bytes_written = counter("bytes_written", "Bytes of Parquet files made visible.")
        self.dead_letters = counter(
            "dead_letters", "Frames or observations set aside in _dead_letter/.", ("reason",)
        )
        self.reconnects = counter("reconnects", "Connections lost (each followed by a retry).")
        self.gaps = counter("gaps", "Gaps recorded in the ledger.", ("subscription", "reason"))
        self.backfill_rows = counter(
            "backfill_rows", "Rows backfill spooled (not yet landed).", ("subscription",)
        )
        self.sink_errors = counter(
            "sink_errors", "Failed sink or converter calls (the cut waits and retries).", ("kind",)
        )
        self.token_refreshes = counter(
            "token_refreshes", "OAuth2 access tokens fetched (0 with a static token)."
        )
        self.flush_duration = Histogram(
            PREFIX + "flush_duration_seconds",
            "Time to convert and land one cut (successful attempts).",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            PREFIX + "build_info",
            "1, labelled with the version.",
            ("version",),
            registry=self.registry,
        )
        info.labels(version).set(1)
        self._received: dict[str, _Received] = {}
        self.registry.register(_Sampled(self))

    # -- what the stages call -------------------------------------------------------------
    def known(self, names: Iterable[str]) -> None:
        """Start every series of these subscriptions at 0: `rate()` and `absent()` work from
        the first scrape, not from the first event."""
        for name in names:
            self._received.setdefault(name, _Received())
            for origin in ORIGINS:
                self.rows_written.labels(name, origin)
            for reason in GAP_REASONS:
                self.gaps.labels(name, reason)
            self.backfill_rows.labels(name)
        for reason in DEAD_REASONS:
            self.dead_letters.labels(reason)

    def received(self, name: str, count: int, at_us: int) -> None:
        """A stream data frame was spooled. The hot path (every frame): plain numbers read at
        scrape time; a prometheus_client child takes a lock per update (measured 1.7 us per
        frame for the two series, against 0.2 us here)."""
        seen = self._received.get(name)
        if seen is None:
            seen = self._received[name] = _Received()
        seen.observations += count
        seen.last_us = at_us

    def landed(self, result: FlushResult, seconds: float) -> None:
        """A cut's files are visible and checkpointed."""
        for (name, origin), rows in result.rows_by_origin.items():
            self.rows_written.labels(name, origin).inc(rows)
        self.files_written.inc(len(result.files))
        self.bytes_written.inc(result.bytes)
        # Whole frames were counted when they arrived; the converter's own rejects count here.
        self.dead_letters.labels("schema").inc(result.rejected - result.dead_frames)
        self.flush_duration.observe(seconds)
        self.sink_problem = None

    def sink_ok(self) -> None:
        self.sink_problem = None

    def sink_failed(self, exc: BaseException) -> None:
        # The class name: a small, fixed set (the message varies with paths and hosts).
        self.sink_errors.labels(type(exc).__name__).inc()
        self.sink_problem = f"{type(exc).__name__}: {exc}"[:200]

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, float]:
        """Every family summed over its labels (a histogram: its count and sum), by name
        without prefix or `_total`: the heartbeat's numbers, the same ones a scrape sees."""
        values = dict.fromkeys(SNAPSHOT_ORDER, 0.0)
        for family in self.registry.collect():
            if family.name.removeprefix(PREFIX) in _NOT_SUMMED:
                continue
            for sample in family.samples:
                key = sample.name.removeprefix(PREFIX).removesuffix("_total")
                if not sample.name.endswith("_bucket"):
                    values[key] = values.get(key, 0.0) + sample.value
        last = max((r.last_us for r in self._received.values()), default=0)
        if last:
            values["last_data_age_seconds"] = round(max(0.0, time.time() - last / 1e6), 3)
        return values


class _Sampled:
    """The series read from state at scrape time (a prometheus_client custom collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m, src = self._m, self._m.sources
        received = CounterMetricFamily(
            PREFIX + "observations_received",
            "Observations received on the stream and spooled.",
            labels=("subscription",),
        )
        last = GaugeMetricFamily(
            PREFIX + "last_data_timestamp_seconds",
            "Unix time the last data frame of the subscription arrived.",
            labels=("subscription",),
        )
        for name, seen in sorted(m._received.items()):
            received.add_metric((name,), seen.observations)
            if seen.last_us:
                last.add_metric((name,), seen.last_us / 1e6)
        yield received
        yield last
        yield GaugeMetricFamily(
            PREFIX + "spool_bytes", "Bytes in spool segments on disk.", value=src.spool_bytes()
        )
        yield GaugeMetricFamily(
            PREFIX + "spool_frames",
            "Records spooled and not yet landed (data, dead letters, ledger events).",
            value=src.spool_frames(),
        )
        gaps = GaugeMetricFamily(
            PREFIX + "gaps_open",
            "Gaps not healed yet: the stream is missing now, or backfill has not settled it.",
            labels=("subscription",),
        )
        for name, count in sorted(src.gaps_open().items()):
            gaps.add_metric((name,), count)
        yield gaps
        yield GaugeMetricFamily(
            PREFIX + "ready", "1 while /readyz answers 200.", value=0 if src.not_ready() else 1
        )
