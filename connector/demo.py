"""`gotham-connector demo`: the embedded simulator, the connector, and a DuckDB summary.

No network beyond loopback and no credentials: the simulator runs in a thread of this process
with a throwaway token, and the connector lands into ./landing (state in ./landing/../.demo-state).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from connector import logs
from connector.config import (
    BatchConfig,
    Config,
    LogConfig,
    SinkConfig,
    SourceConfig,
    StateConfig,
    Subscription,
)
from connector.errors import ConnectorError
from connector.secret import TokenSource

MARKER = ".gotham-demo"
TOKEN_ENV = "GOTHAM_DEMO_TOKEN"  # noqa: S105 - a variable name, not a secret
# Counter-clockwise around central Washington DC: matches a subset of the simulated tracks.
DC_POLYGON = [
    {"longitude": -77.20, "latitude": 38.80},
    {"longitude": -76.90, "latitude": 38.80},
    {"longitude": -76.90, "latitude": 39.00},
    {"longitude": -77.20, "latitude": 39.00},
    {"longitude": -77.20, "latitude": 38.80},
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to stream")
    parser.add_argument("--landing", type=Path, default=Path("landing"))
    parser.add_argument("--rate", type=float, default=2000.0, help="observations/s simulated")
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--flush-seconds", type=float, default=5.0)


def demo_config(ws_url: str, landing: Path, state: Path, flush_seconds: float) -> Config:
    return Config(
        source=SourceConfig(url=ws_url, observation_spec_id="baz", token=TokenSource(TOKEN_ENV)),
        subscriptions=(
            Subscription("dc_polygon", {"location": DC_POLYGON}),
            Subscription("everything", {}),
        ),
        batch=BatchConfig(max_rows=50_000, max_seconds=flush_seconds),
        sink=SinkConfig(url=str(landing)),
        state=StateConfig(dir=state, writer_id="demo", fsync_seconds=1.0),
        log=LogConfig(level="WARNING"),
    )


def run(args: argparse.Namespace) -> int:
    from connector.simulator import SimulatorOptions, SimulatorThread

    landing: Path = args.landing.resolve()
    state = landing.parent / ".demo-state"
    for folder in (landing, state):
        if folder.exists() and (folder / MARKER).exists():
            shutil.rmtree(folder)  # only ever a folder an earlier demo made
        elif folder.exists() and any(folder.iterdir()):
            print(
                f"{folder} exists and was not made by the demo; choose --landing", file=sys.stderr
            )
            return 2
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("made by gotham-connector demo\n")
    logs.setup("WARNING")
    os.environ[TOKEN_ENV] = "demo-token"
    options = SimulatorOptions(
        token="demo-token",  # noqa: S106 - loopback-only throwaway
        tracks=args.tracks,
        rate=args.rate,
    )
    out = sys.stdout
    with SimulatorThread(options) as sim:
        print(f"simulator listening on {sim.ws_url}; landing into {landing}", file=out)
        cfg = demo_config(sim.ws_url, landing, state, args.flush_seconds)
        try:
            totals = asyncio.run(_stream(cfg, args.seconds, out))
        except ConnectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        generated = sim.stats()["generated"]
    print(
        f"stopped cleanly: {totals['observations']} observations received, "
        f"{totals['rows_written']} rows in {totals['files']} files "
        f"(the simulator generated {generated}; 'everything' also holds the polygon's rows)",
        file=out,
    )
    summarize(landing, out)
    return 0


async def _stream(cfg: Config, seconds: float, out: TextIO) -> dict[str, Any]:
    from dataclasses import asdict

    from connector.runner import Runner

    runner = Runner(cfg)
    task = asyncio.create_task(runner.run())
    tty = out.isatty()
    started = last_time = time.monotonic()
    last_obs = 0
    while not task.done() and time.monotonic() - started < seconds:
        await asyncio.wait({task}, timeout=1.0 if tty else 5.0)
        now, t = time.monotonic(), runner.totals
        rate = (t.observations - last_obs) / max(now - last_time, 1e-6)
        last_obs, last_time = t.observations, now
        line = (
            f"{now - started:5.1f}s  {rate:9,.0f} obs/s  received {t.observations:,}  "
            f"written {t.rows_written:,} rows in {t.files} files"
        )
        print("\r" + line if tty else line, end="" if tty else "\n", file=out, flush=True)
    if tty:
        print(file=out)
    runner.request_stop()
    await task
    return asdict(runner.totals)


def summarize(landing: Path, out: TextIO) -> None:
    import duckdb

    glob = f"{landing}/**/*.parquet"
    con = duckdb.connect()
    # The path is the demo's own folder; views cannot take bound parameters.
    view = f"CREATE VIEW obs AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"  # noqa: S608
    con.execute(view)

    def show(title: str, sql: str) -> None:
        print(f"\n-- {title}\n{sql.strip()}", file=out)
        print(con.sql(sql), file=out)

    files = list(landing.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"\nlanding zone: {len(files)} Parquet files, {size:,} bytes", file=out)
    show(
        "rows per subscription",
        """
SELECT subscription, count(*) AS rows, count(DISTINCT track_id) AS tracks,
       min(timestamp) AS first, max(timestamp) AS last
FROM obs GROUP BY subscription ORDER BY subscription""",
    )
    show(
        "a few sample rows",
        """
SELECT track_id, timestamp, round(longitude, 4) AS lon, round(latitude, 4) AS lat,
       name, live_properties['speed'] AS speed, live_properties['status'] ->> '$' AS status
FROM obs ORDER BY timestamp DESC LIMIT 5""",
    )
    print(
        "\nExplore further (duckdb CLI or Python):\n"  # noqa: S608
        f"  SELECT * FROM read_parquet('{glob}', hive_partitioning = true) LIMIT 10;\n"
        "  Ledger (streaming intervals and gaps): "
        f"SELECT * FROM read_json_auto('{landing}/_ledger/*.jsonl');",
        file=out,
    )
    logging.getLogger(__name__).debug("summary printed")
