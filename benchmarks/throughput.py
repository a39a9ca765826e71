"""Quick throughput figures, measured side by side in one run (machines here are noisy).

1. Decode + convert to Arrow: the obvious script (json.loads, dicts, pa.Table.from_pylist)
   against connector.records, on the same frames. Printed as a ratio.
2. The whole pipeline with every guarantee on (spool, cuts, Parquet, atomic files, checkpoint):
   a websocket server in another process blasts pre-encoded frames over loopback; the
   connector runs in this process. Printed as observations/s, CPU-s per million, peak RSS.

Run: `make bench` (or `python benchmarks/throughput.py --observations 200000`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from connector.config import (
    BatchConfig,
    Config,
    SinkConfig,
    SourceConfig,
    StateConfig,
    Subscription,
)
from connector.records import Columns, FrameMeta
from connector.secret import TokenSource
from connector.simulator import SimulatorOptions
from connector.simulator.generator import Generator

TOKEN = "bench-token"


def make_frames(observations: int, per_frame: int) -> list[bytes]:
    gen = Generator(SimulatorOptions(tracks=max(1000, observations // 20), seed=1))
    texts: list[str] = []
    while len(texts) < observations:
        texts += [g.text for g in gen.generate(min(5000, observations - len(texts)))]
    return [
        (
            '{"type":"data","id":"sub-1","observations":['
            + ",".join(texts[i : i + per_frame])
            + "]}"
        ).encode()
        for i in range(0, len(texts), per_frame)
    ]


def obvious(frames: list[bytes]) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for frame in frames:
        for o in json.loads(frame)["observations"]:
            pos = o["position"]
            rows.append(
                {
                    "source_system_id": o["sourceSystemId"],
                    "collection_id": o["collectionId"],
                    "observation_spec_id": o["observationSpecId"],
                    "track_id": o["trackId"],
                    "timestamp": o["timestamp"],
                    "longitude": pos["longitude"],
                    "latitude": pos["latitude"],
                    "elevation": pos.get("elevation"),
                    "name": o.get("name"),
                    "static_properties": json.dumps(o.get("staticProperties")),
                    "live_properties": json.dumps(o.get("liveProperties")),
                    "style": json.dumps(o.get("style")),
                }
            )
    return pa.Table.from_pylist(rows)


def ours(frames: list[bytes]) -> pa.Table:
    columns = Columns()
    for seq, frame in enumerate(frames, 1):
        columns.add_frame(FrameMeta(seq, 0, "bench", "sub-1", "stream"), frame)
    return columns.to_table()


def timed(fn: Any, frames: list[bytes], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - start)
    return best


def blaster(port_queue: Any, frames: list[bytes], deflate: bool) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send('{"type":"subscribed","id":"sub-1","errors":[]}')
        for frame in frames:
            await ws.send(frame.decode())
        await ws.wait_closed()

    async def main() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            0,
            compression=None,
            max_size=None,
            subprotocols=[f"Bearer-{TOKEN}"],
        ) as server:  # type: ignore[list-item]
            port_queue.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


async def pipeline(port: int, total: int, root: Path, deflate: bool) -> dict[str, float]:
    from connector.runner import Runner

    os.environ["BENCH_TOKEN"] = TOKEN
    cfg = Config(
        source=SourceConfig(
            url=f"ws://127.0.0.1:{port}",
            observation_spec_id="baz",
            path="/{observation_spec_id}",
            token=TokenSource("BENCH_TOKEN"),
        ),
        subscriptions=(Subscription("everything", {}),),
        batch=BatchConfig(max_rows=100_000, max_seconds=5.0),
        sink=SinkConfig(url=str(root / "landing")),
        state=StateConfig(dir=root / "state"),
    )
    runner = Runner(cfg)
    cpu0 = time.process_time()
    task = asyncio.create_task(runner.run())
    while runner.totals.observations == 0:
        await asyncio.sleep(0.001)
    start = time.perf_counter()
    while runner.totals.observations < total and not task.done():
        await asyncio.sleep(0.01)
    received = time.perf_counter() - start
    runner.request_stop()
    await task
    landed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    assert runner.totals.rows_written >= total, runner.totals
    return {"received_s": received, "landed_s": landed, "cpu_s": cpu}


def main() -> None:
    gc.set_threshold(50_000, 20, 20)  # as `gotham-connector run` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--per-frame", type=int, default=100)
    args = parser.parse_args()
    frames = make_frames(args.observations, args.per_frame)
    n = args.observations
    mb = sum(map(len, frames)) / 1e6
    print(f"{n:,} observations in {len(frames):,} frames ({mb:.1f} MB JSON)")

    t_obvious, t_ours = timed(obvious, frames), timed(ours, frames)
    print(f"decode+convert  obvious script: {n / t_obvious:>10,.0f} obs/s")
    print(
        f"decode+convert  connector:      {n / t_ours:>10,.0f} obs/s   ratio {t_obvious / t_ours:.2f}x"
    )

    results = {}
    for deflate in (False, True):
        results[deflate] = run_pipeline(frames, n, deflate)
    r = results[False]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pipeline        received:       {n / r['received_s']:>10,.0f} obs/s (spooled)")
    print(
        f"pipeline        landed:         {n / r['landed_s']:>10,.0f} obs/s (Parquet visible, checkpointed)"
    )
    print(
        f"pipeline        CPU:            {r['cpu_s'] / n * 1e6:>10.2f} CPU-s per million observations"
    )
    d = results[True]
    print(
        f"with deflate    landed:         {n / d['landed_s']:>10,.0f} obs/s   CPU {d['cpu_s'] / n * 1e6:.2f} s/M   "
        f"cost {d['cpu_s'] / r['cpu_s']:.2f}x CPU of deflate off"
    )
    print(
        f"peak RSS                        {rss_mib:>10.0f} MiB (this process, incl. the frames held for the comparison)"
    )


def run_pipeline(frames: list[bytes], n: int, deflate: bool) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=blaster, args=(ports, frames, deflate), daemon=True)
    server.start()
    root = Path(tempfile.mkdtemp(prefix="gotham-bench-"))
    try:
        return asyncio.run(pipeline(ports.get(timeout=60), n, root, deflate))
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
