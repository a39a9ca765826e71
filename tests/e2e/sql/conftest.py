"""Landed data for the `sql` command's tests: the simulator through the real connector, once.

Answers are checked against the files themselves, read with pyarrow and json (not DuckDB).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from connector.cli import main
from connector.simulator import SimulatorOptions, SimulatorThread
from tests.e2e.conftest import TIME_FACTOR, TOKEN, Deployment, toml_value, wait_for

# Seed 19 puts ship-0000, ground-0008, ground-0026 and ground-0038 inside the dc polygon for
# their whole orbit: those tracks land in both subscriptions (duplicate rows to dedupe).
SEED = 19
DC_TRACKS = ("ship-0000", "ground-0008", "ground-0026", "ground-0038")


@dataclass
class Landed:
    dep: Deployment
    rows: list[dict[str, Any]]  # every row of every Parquet file, read with pyarrow
    ledger: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]

    @property
    def config(self) -> Path:
        return self.dep.config

    @property
    def landing(self) -> Path:
        return self.dep.landing


def parquet_rows(landing: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(landing.rglob("*.parquet")):
        # ParquetFile: the file's own columns, no partition discovery from the path.
        for row in pq.ParquetFile(path).read().to_pylist():
            row["_path"] = str(path.relative_to(landing))
            rows.append(row)
    return rows


def json_lines(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="package")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    options = SimulatorOptions(
        token=TOKEN, tracks=40, rate=400.0, batch=40, seed=SEED, late_fraction=0.03
    )
    with SimulatorThread(options) as sim:
        dep = Deployment(tmp_path_factory.mktemp("sql"), sim.ws_url)
        dep.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
        dep.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
        proc = dep.start()
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
        time.sleep(1.5)
        for action in ("malformed", "unknown_subscription"):
            sim.inject({"action": action})
        sim.inject({"action": "drop", "mode": "reset"})
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 4)
        time.sleep(2.5)
        code, err = dep.stop(proc)
        assert code == 0, err
    yield Landed(
        dep,
        parquet_rows(dep.landing),
        json_lines(dep.landing / "_ledger"),
        json_lines(dep.landing / "_dead_letter"),
    )


def query(config: Path, sql: str, *extra: str) -> list[dict[str, Any]]:
    """The command run in this process (its real code path), the result read back as Parquet."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.parquet"
        argv = ["sql", "--config", str(config), "-c", sql, "--output", "parquet", "--out"]
        code = main([*argv, str(out), *extra])
        assert code == 0, sql
        return pq.ParquetFile(out).read().to_pylist()


def run_cli(
    config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "connector", "sql", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60 * TIME_FACTOR,
        env=env,
        check=False,
    )


def write_config(path: Path, url: str, storage_options: dict[str, Any] | None = None) -> Path:
    """A config whose only part that matters here is [sink]: what an analyst is handed."""
    lines = [
        "[source]",
        'url = "ws://127.0.0.1:9"',
        'observation_spec_id = "baz"',
        "[sink]",
        f"url = {json.dumps(url)}",
    ]
    if storage_options:
        lines.append(f"storage_options = {toml_value(storage_options)}")
    lines += ["[[subscriptions]]", 'name = "everything"', "query = {}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def identity(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["source_system_id"],
        row["collection_id"],
        row["observation_spec_id"],
        row["track_id"],
        row["timestamp"],
    )


DOC = Path(__file__).resolve().parents[3] / "docs" / "analysts.md"


def recipes(language: str = "sql") -> dict[str, str]:
    """The recipes of docs/analysts.md by name: the tests run the text the analysts read."""
    marker = "--" if language == "sql" else "#"
    pattern = rf"```{language}\n{marker} recipe: (\S+)\n(.*?)```"
    return dict(re.findall(pattern, DOC.read_text(encoding="utf-8"), flags=re.S))


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Swap a recipe's example values for ones this data holds; each must be in the text."""
    for old, new in replacements.items():
        assert old in text, f"the recipe no longer contains {old!r}"
        text = text.replace(old, new)
    return text
