"""The obvious way to land the stream, the yardstick for the connector: the Gotham example client
(connect with the token as subprotocol, subscribe, recv in a loop, json.loads) plus flattened
dict rows written with pa.Table.from_pylist + pq.write_table every 100,000 rows.

It keeps nothing durable and has no guarantees (a crash loses up to 100,000 rows, a reconnect is
not handled); that is what the comparison prices. It stops, writing the last partial batch, when
the server closes the socket normally.

Run: BENCH_TOKEN=... python benchmarks/obvious.py ws://127.0.0.1:PORT/baz OUT_DIR
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import websockets

MAX_ROWS = 100_000


async def main(url: str, out_dir: Path) -> None:
    token = os.environ["BENCH_TOKEN"]
    rows: list[dict[str, Any]] = []
    files = 0

    def write() -> None:
        nonlocal rows, files
        if rows:
            pq.write_table(pa.Table.from_pylist(rows), out_dir / f"part-{files:05d}.parquet")
            files += 1
            rows = []

    async with websockets.connect(url, subprotocols=["Bearer-" + token], max_size=2**31) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "subscribe", "query": {}}))
        try:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] != "data":
                    continue
                for o in message["observations"]:
                    position = o["position"]
                    rows.append(
                        {
                            "source_system_id": o["sourceSystemId"],
                            "collection_id": o["collectionId"],
                            "observation_spec_id": o["observationSpecId"],
                            "track_id": o["trackId"],
                            "timestamp": o["timestamp"],
                            "longitude": position["longitude"],
                            "latitude": position["latitude"],
                            "elevation": position.get("elevation"),
                            "name": o.get("name"),
                            "static_properties": json.dumps(o.get("staticProperties")),
                            "live_properties": json.dumps(o.get("liveProperties")),
                            "style": json.dumps(o.get("style")),
                        }
                    )
                if len(rows) >= MAX_ROWS:
                    write()
        except websockets.ConnectionClosedOK:
            write()


if __name__ == "__main__":
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
