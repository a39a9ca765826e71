"""End-to-end fixtures: a real simulator on loopback, the connector as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connector.demo import DC_POLYGON
from connector.simulator import SimulatorOptions, SimulatorThread
from tests.oracle import row_to_observation

TOKEN = "e2e-token-0123456789"
# Every bound a test waits within is multiplied by this (like websockets' MS): a slow or busy
# machine sets GOTHAM_TEST_TIME_FACTOR=3 instead of editing timeouts. Durations the tests
# stream for on purpose are not scaled: they are what the test measures against.
TIME_FACTOR = float(os.environ.get("GOTHAM_TEST_TIME_FACTOR", "1"))
SUBSCRIPTIONS = {"dc": {"location": DC_POLYGON}, "everything": {}}


@pytest.fixture
def sim_options() -> SimulatorOptions:
    return SimulatorOptions(token=TOKEN, tracks=40, rate=400.0, batch=40, seed=7)


@pytest.fixture
def sim(sim_options: SimulatorOptions) -> Iterator[SimulatorThread]:
    with SimulatorThread(sim_options) as server:
        yield server


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


@dataclass
class Deployment:
    """One connector deployment: its config file, landing zone and state dir."""

    root: Path
    ws_url: str
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(SUBSCRIPTIONS))
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: {"GOTHAM_TOKEN": TOKEN})
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "connector.toml"

    def write_config(self) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "source": {"url": self.ws_url, "observation_spec_id": "baz"},
            "batch": {"max_seconds": 1.0},
            "sink": {"url": str(self.landing)},
            "state": {"dir": str(self.state), "fsync_seconds": 0.2},
            "backfill": {"enabled": False},
        }
        for name, values in self.sections.items():
            sections.setdefault(name, {}).update(values)
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        for name, query in self.subscriptions.items():
            lines += [
                "[[subscriptions]]",
                f"name = {json.dumps(name)}",
                f"query = {toml_value(query)}",
            ]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def start(self, *args: str) -> subprocess.Popen[str]:
        self.write_config()
        env = {k: v for k, v in os.environ.items() if k != "GOTHAM_TOKEN"} | self.env
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector", *(args or ("run",)), "--config", str(self.config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str]:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=timeout * TIME_FACTOR)
        return proc.returncode, err

    def rows(self, where: str = "true") -> list[dict[str, Any]]:
        files = list(self.landing.rglob("*.parquet"))
        if not files:
            return []
        con = duckdb.connect()
        rel = con.sql(
            f"SELECT * FROM read_parquet('{self.landing}/**/*.parquet', hive_partitioning = true)"
            f" WHERE {where}"
        )
        names = rel.columns
        return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect()
        con.execute(
            "CREATE VIEW obs AS SELECT * FROM read_parquet("
            f"'{self.landing}/**/*.parquet', hive_partitioning = true)"
        )
        return con.sql(query).fetchall()

    def ledger(self) -> list[dict[str, Any]]:
        events = []
        for path in sorted((self.landing / "_ledger").glob("*.jsonl")):
            events += [json.loads(line) for line in path.read_text().splitlines() if line]
        return events


@pytest.fixture
def deployment(tmp_path: Path, sim: SimulatorThread) -> Iterator[Deployment]:
    dep = Deployment(tmp_path, sim.ws_url)
    yield dep
    for proc in dep.procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def identity(obs: dict[str, Any]) -> tuple[str, ...]:
    return (
        obs["sourceSystemId"],
        obs["collectionId"],
        obs["observationSpecId"],
        obs["trackId"],
        obs["timestamp"],
    )


def landed_observations(dep: Deployment, subscription: str) -> list[dict[str, Any]]:
    return [row_to_observation(row) for row in dep.rows(f"subscription = '{subscription}'")]


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout * TIME_FACTOR
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
