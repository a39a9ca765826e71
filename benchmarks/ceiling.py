"""Receive-and-discard: the fastest any Python websockets client can drain the stream, so the
connector's throughput can be read as a fraction of what the transport allows.

Same connect and subscribe as obvious.py, no decoding (recv(decode=False)), no compression.
Stops when the server closes normally and prints the number of frames received.

Run: BENCH_TOKEN=... python benchmarks/ceiling.py ws://127.0.0.1:PORT/baz
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import websockets


async def main(url: str) -> None:
    token = os.environ["BENCH_TOKEN"]
    frames = 0
    async with websockets.connect(
        url,
        subprotocols=["Bearer-" + token],  # type: ignore[list-item]
        max_size=2**31,
        compression=None,
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "query": {}}))
        try:
            while True:
                await ws.recv(decode=False)
                frames += 1
        except websockets.ConnectionClosedOK:
            pass
    print(frames)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
