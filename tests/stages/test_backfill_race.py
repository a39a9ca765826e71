"""Backfill dedupe under the race a streamed frame can win: the frame arrives after backfill's
snapshot of spooled identities, but before backfill spools what REST returned. The real
runner's stages and its backfill port are used; the scenario only chooses when the streamed
frame arrives (during the snapshot's round trip to the converter process)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from connector.backfill import Backfiller
from connector.config import Config, SinkConfig, SourceConfig, StateConfig, Subscription
from connector.identity import frame_identities, identity
from connector.runner import Runner
from connector.spool import DATA, RecordMeta
from tests.stages.helpers import data_message, observation

NAME = "air"


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    cfg = Config(
        source=SourceConfig("ws://127.0.0.1:9", "baz", path="/{observation_spec_id}"),
        subscriptions=(Subscription(NAME, {}),),
        sink=SinkConfig(url=str(tmp_path / "lake")),
        state=StateConfig(dir=tmp_path / "state"),
    )
    built = Runner(cfg)
    yield built
    built.converter.close()
    built.intake.close()
    built.lock.release()


def stream(runner: Runner, message: dict[str, Any]) -> None:
    """A data frame arriving from the socket, through the intake as the session hands it."""
    payload = msgspec.json.encode(message)
    meta = RecordMeta(sub=NAME, id="sub-1", n=len(message["observations"]))
    runner.intake.frame(DATA, meta, payload, meta.n, 1, NAME)


async def test_a_frame_streamed_during_the_snapshot_is_not_backfilled_again(
    runner: Runner, tmp_path: Path
) -> None:
    runner.intake.recover(0)
    tasks = [asyncio.create_task(runner.committer.run()), asyncio.create_task(runner.intake.run())]
    assert runner.backfiller is not None
    backfiller: Backfiller = runner.backfiller
    wanted = [observation(f"t-{i}", i) for i in range(6)]
    late = {"type": "data", "id": "sub-1", "observations": wanted[2:4]}

    real_snapshot = backfiller.port.spooled_identities

    async def snapshot_then_the_stream_delivers(name: str) -> tuple[set[Any], int]:
        found = await real_snapshot(name)  # the snapshot is taken...
        stream(runner, late)  # ...and only then do these two arrive on the stream
        return found

    backfiller.port.spooled_identities = snapshot_then_the_stream_delivers
    try:
        hour = 1_719_248_400_000_000  # 2024-06-24T17:00:00Z, the observations' hour
        spooled = await backfiller._spool_fresh(NAME, wanted, hour, hour + 3_599_999_999)
        assert spooled == 4  # t-2 and t-3 came by the stream
        await runner.committer.barrier(runner.stopping)
    finally:
        runner.committer.finish()
        await asyncio.wait_for(tasks[0], 30)
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)

    rows = duckdb.sql(
        f"SELECT track_id, origin FROM read_parquet('{tmp_path}/lake/**/*.parquet') ORDER BY 1"
    ).fetchall()
    assert [t for t, _ in rows] == [f"t-{i}" for i in range(6)]  # each exactly once
    assert dict(rows) == {
        "t-0": "backfill",
        "t-1": "backfill",
        "t-2": "stream",
        "t-3": "stream",
        "t-4": "backfill",
        "t-5": "backfill",
    }


def test_frame_identities_match_backfills_identity() -> None:
    message = data_message("sub-1", count=3, track="x")
    expected = {identity(o) for o in message["observations"]}
    assert frame_identities(msgspec.json.encode(message)) == expected
    odd = b'{"type":"data","id":"s","observations":[{"trackId":1},"x",{"timestamp":"bad"}]}'
    assert frame_identities(odd) == set()
    assert frame_identities(b"\xff not json") == set()
    # One odd observation does not hide its neighbours.
    good = observation("t-9", 9)
    mixed = msgspec.json.encode({"observations": ["x", good, {"trackId": []}]})
    assert frame_identities(mixed) == {identity(good)}
