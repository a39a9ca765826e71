"""A Gotham-like websocket server that feeds one client as fast as it reads, in its own process.

Why a separate process: on a two-core machine the generator must not share an event loop or a
GIL with the program being measured, and its CPU must not be counted. Why pre-serialized
frames: generating JSON is the server's cost, not the client's, so every frame exists before
the port is reported and sending is one `await ws.send` per frame.

Two modes:
- `blast`: `--observations` observations, `--per-message` per frame, timestamps 1 ms apart
  from 2026-11-29T10:00:00Z (all within a few hours: few partitions), sent back to back.
- `rate`: `--rate` observations/s for `--seconds`, each frame's timestamps set to its send time
  (UTC, microseconds), so a reader of the landed files can compute landing latency. Frames are
  made from templates generated up front; `--distinct N` caps them at N observations' worth,
  reused in turn (long soaks: ten minutes at 30,000/s would otherwise be gigabytes of them).

After the last frame the server either closes normally (`--close`; clients that stop on close)
or holds the socket open until the client leaves (the connector runs until it is stopped).
One connection only: a second one means the client reconnected, which would resend everything.

Stdout, one flushed line per event, times from time.monotonic() (CLOCK_MONOTONIC is system-wide
on Linux, so the harness can compare them with its own clock):
  port P | first T | sent FRAMES | done FRAMES OBSERVATIONS T | reconnect | aborted REASON
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

TRACKS = 2000
START_S = int(datetime(2026, 11, 29, 10, tzinfo=UTC).timestamp())
SUBSCRIBED = '{"type":"subscribed","id":"sub-1","errors":[]}'
FRAME_HEAD = b'{"type":"data","id":"sub-1","observations":['
FRAME_TAIL = b"]}"


def emit(*words: object) -> None:
    print(*words, flush=True)


def _tracks(rng: random.Random) -> list[tuple[bytes, float, float]]:
    """Per track: the fixed leading JSON (ids) and a centre around which it moves."""
    tracks = []
    for i in range(TRACKS):
        source, collection = (
            ("ais-feed-east", "maritime") if i % 2 else ("ais-feed-west", "coastal")
        )
        head = (
            f'{{"sourceSystemId":"{source}","collectionId":"{collection}",'
            f'"observationSpecId":"baz","trackId":"track-{i:04d}",'
        ).encode()
        tracks.append((head, rng.uniform(-78.0, -76.0), rng.uniform(38.0, 39.5)))
    return tracks


def observation_parts(count: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """Each observation's JSON split around its timestamp value: (before, after)."""
    rng = random.Random(seed)
    tracks = _tracks(rng)
    draw = rng.random
    for i in range(count):
        track = i % TRACKS
        head, lon, lat = tracks[track]
        before = (
            head
            + f'"position":{{"longitude":{lon + draw() / 10:.6f},'
            f'"latitude":{lat + draw() / 10:.6f}}},"timestamp":"'.encode()
        )
        after = (
            f'","name":"VESSEL {track:04d}",'
            f'"staticProperties":[{{"propertyType":"mmsi","value":"36600{track:04d}"}}],'
            f'"liveProperties":[{{"propertyType":"speed","value":{draw() * 30:.1f}}},'
            f'{{"propertyType":"heading","value":{int(draw() * 360)}}}]}}'
        ).encode()
        yield before, after


class _Seconds:
    """Formats 'YYYY-MM-DDTHH:MM:SS' once per second instead of once per observation."""

    def __init__(self) -> None:
        self._second = -1
        self._text = b""

    def __call__(self, second: int) -> bytes:
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()
        return self._text


def blast_frames(observations: int, per_message: int, seed: int) -> list[bytes]:
    seconds = _Seconds()
    frames: list[bytes] = []
    batch: list[bytes] = []
    for i, (before, after) in enumerate(observation_parts(observations, seed)):
        stamp = seconds(START_S + i // 1000) + b".%03dZ" % (i % 1000)
        batch.append(before + stamp + after)
        if len(batch) == per_message:
            frames.append(FRAME_HEAD + b",".join(batch) + FRAME_TAIL)
            batch = []
    if batch:
        frames.append(FRAME_HEAD + b",".join(batch) + FRAME_TAIL)
    return frames


def cached_blast_frames(args: argparse.Namespace) -> list[bytes]:
    """Generating a million observations takes seconds; runs with equal settings share a file.

    Frames hold no raw newline (JSON escapes it), so the file is the frames, one per line.
    """
    cache: Path | None = args.cache
    if cache is not None and cache.exists():
        return cache.read_bytes().split(b"\n")
    frames = blast_frames(args.observations, args.per_message, args.seed)
    if cache is not None:
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        partial.write_bytes(b"\n".join(frames))
        partial.replace(cache)
    return frames


def rate_templates(frames: int, per_message: int, seed: int) -> list[list[bytes]]:
    """Each frame as the pieces between its timestamps: `stamp.join(pieces)` is the frame.

    A frame's observations are distinct tracks (per_message <= TRACKS) and stamps strictly
    increase between frames, so (track, timestamp) stays unique.
    """
    parts = observation_parts(frames * per_message, seed)
    templates = []
    for _ in range(frames):
        pieces = [FRAME_HEAD]
        for n in range(per_message):
            before, after = next(parts)
            pieces[-1] += (b"," if n else b"") + before
            pieces.append(after)
        pieces[-1] += FRAME_TAIL
        templates.append(pieces)
    return templates


class Feed:
    """Sends the frames to the first client; later connections are refused and reported."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connections = 0
        if args.mode == "blast":
            self.frames = cached_blast_frames(args)
            self.templates: list[list[bytes]] = []
            self.count = len(self.frames)
        else:
            if args.per_message > TRACKS:
                raise SystemExit(f"--per-message must be at most {TRACKS} in rate mode")
            self.count = max(1, round(args.rate * args.seconds / args.per_message))
            distinct = self.count
            if args.distinct > 0:  # whole frames: a frame's tracks stay distinct
                distinct = min(distinct, -(-args.distinct // args.per_message))
            self.frames = []
            self.templates = rate_templates(distinct, args.per_message, args.seed)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self.connections > 1:
            emit("reconnect")
            await ws.close(1011, "the benchmark serves one connection")
            return
        try:
            await ws.recv()  # the subscribe request; its query is not interpreted
            await ws.send(SUBSCRIBED)
            # Later requests (unsubscribe) are read and ignored, so they never fill the queue.
            drain = asyncio.create_task(self._ignore_incoming(ws))
            sent, observations = await (self._blast(ws) if not self.templates else self._pace(ws))
            emit("done", sent, observations, time.monotonic())
            if self.args.close:
                await ws.close()
            else:
                await ws.wait_closed()
            drain.cancel()
        except ConnectionClosed as exc:
            emit("aborted", f"client went away: {exc}".replace("\n", " "))

    async def _ignore_incoming(self, ws: ServerConnection) -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass  # reported by the sending side

    async def _blast(self, ws: ServerConnection) -> tuple[int, int]:
        emit("first", time.monotonic())
        every = self.args.progress_seconds
        report = time.monotonic() + every
        for sent, frame in enumerate(self.frames, 1):
            await ws.send(frame, text=True)
            if time.monotonic() >= report:
                emit("sent", sent)
                report += every
        return len(self.frames), self.args.observations

    async def _pace(self, ws: ServerConnection) -> tuple[int, int]:
        seconds = _Seconds()
        interval = self.args.per_message / self.args.rate
        loop = asyncio.get_running_loop()
        start = loop.time()
        emit("first", time.monotonic())
        every = self.args.progress_seconds
        report = time.monotonic() + every
        last_us = 0
        templates = self.templates
        for sent in range(self.count):
            # Reused templates stay unique: the stamps of a later frame are later.
            pieces = templates[sent % len(templates)]
            delay = start + sent * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            last_us = max(time.time_ns() // 1000, last_us + 1)
            stamp = seconds(last_us // 1_000_000) + b".%06dZ" % (last_us % 1_000_000)
            await ws.send(stamp.join(pieces), text=True)
            if time.monotonic() >= report:
                emit("sent", sent + 1)
                report += every
        return self.count, self.count * self.args.per_message


async def main(args: argparse.Namespace) -> None:
    feed = Feed(args)
    async with serve(
        feed.handler,
        "127.0.0.1",
        0,
        compression=None,
        max_size=None,
        subprotocols=[Subprotocol(f"Bearer-{args.token}")],
        # A client busy converting may answer pings late; that must not end the run.
        ping_interval=None,
    ) as server:
        emit("port", server.sockets[0].getsockname()[1])
        await asyncio.Future()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("blast", "rate"), default="blast")
    parser.add_argument("--observations", type=int, default=100_000, help="blast mode")
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50_000, help="rate mode: observations/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="rate mode: duration")
    parser.add_argument(
        "--distinct",
        type=int,
        default=0,
        help="rate mode: generate at most this many observations' worth of frames and reuse "
        "them in turn (0: every frame distinct)",
    )
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--close", action="store_true", help="close after the last frame")
    parser.add_argument(
        "--progress-seconds", type=float, default=1.0, help="interval of the `sent` lines"
    )
    parser.add_argument(
        "--cache", type=Path, help="blast mode: frames file, read if present, else written"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
