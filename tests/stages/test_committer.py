"""connector.committer in-process: a real Intake on a real Spool, a real CheckpointStore, and a
real Converter (a spawned process) landing in a real sink: a local folder read back with DuckDB,
or S3 served over HTTP by moto's ThreadedMotoServer, stopped and started again for an outage.

The checkpoint store is a CheckpointStore subclass that, at each write, takes a snapshot of what
the lake and the spool files hold at that moment (it writes exactly as the real one does): so
"the checkpoint on disk says committed" can be checked against "the files were visible" and
"the spool still held the records" at that very instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import duckdb
import msgspec
import pytest
from moto.server import ThreadedMotoServer

from connector.checkpoint import Checkpoint, CheckpointStore
from connector.committer import Committer
from connector.config import BatchConfig
from connector.converter import Converter
from connector.errors import SinkError
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.jobs import FlushSettings, SinkSpec
from connector.layout import file_stem
from connector.metrics import Metrics
from connector.spool import DATA, RecordMeta, Spool, SpoolRange, read_ranges
from tests.stages.helpers import DEADLINE, T0, data_frame, spool_records, until

PARTITION = "observation_spec_id=baz/date=2024-06-24/hour=17"
# Waits that include a converter's first call include spawning it (a fresh interpreter that
# imports pyarrow, and s3fs for S3): well under a second on an idle machine, several on a
# loaded one. Bounded all the same; a passing test never waits for the bound.
LANDED = 20.0


@dataclass
class Write:
    """One checkpoint write, and what was true when it happened."""

    data: bytes
    committed: int
    visible: set[str]  # file names in the (local) lake
    spooled: set[int]  # seqs of the records in the spool files
    rows_metric: float  # rows_written_total (all labels) just before this write


class RecordingStore(CheckpointStore):
    def __init__(self, directory: Path, lake: Path | None, spool_dir: Path | None) -> None:
        super().__init__(directory)
        self.lake = lake
        self.spool_dir = spool_dir
        self.writes: list[Write] = []
        self.metrics = Metrics()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        committed = msgspec.json.decode(data)["committed_seq"]
        visible = set()
        if self.lake is not None and self.lake.is_dir():
            visible = {p.name for p in self.lake.rglob("*") if p.is_file()}
        spooled = set()
        if self.spool_dir is not None:
            ranges = [
                SpoolRange(str(p), 0, p.stat().st_size) for p in sorted(self.spool_dir.glob("*"))
            ]
            spooled = {r.seq for r in read_ranges(ranges, 1, 1 << 62)}
        rows_metric = self.metrics.snapshot()["rows_written"]
        super().write(data)
        with self._lock:
            self.writes.append(Write(data, committed, visible, spooled, rows_metric))

    def last_written(self) -> int | None:
        with self._lock:
            return self.writes[-1].committed if self.writes else None

    def on_disk(self) -> int:
        committed: int = msgspec.json.decode(self.path.read_bytes())["committed_seq"]
        return committed


@dataclass
class Line:
    """intake -> committer -> converter -> sink, as the runner wires them."""

    lake: Path
    intake: Intake
    committer: Committer
    converter: Converter
    store: RecordingStore
    cp: Checkpoint
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def spool(self) -> Spool:
        return self.intake.spool

    def stem(self, first: int, last: int) -> str:
        return file_stem(self.cp.writer_id, first, last)

    def frames(self, count: int, sub: str = "air") -> list[int]:
        """Spool `count` data frames of one observation each; returns their seqs."""
        seqs = []
        for _ in range(count):
            seq = self.intake.last_seq + 1
            payload = data_frame("S1", 1, track=sub, start=seq)
            meta = RecordMeta(sub=sub, id="S1", n=1)
            assert self.intake.frame(DATA, meta, payload, 1, T0 + seq, sub)
            seqs.append(seq)
        return seqs

    def start(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self.committer.run())
        self.tasks.append(task)
        return task

    def rows(self) -> list[tuple[Any, ...]]:
        return parquet_rows(self.lake)


def parquet_rows(lake: Path) -> list[tuple[Any, ...]]:
    return (
        duckdb.connect()
        .sql(
            "SELECT seq, subscription, subscription_id, track_id FROM read_parquet("
            f"'{lake}/**/*.parquet', hive_partitioning = true) ORDER BY seq"
        )
        .fetchall()
    )


LineFactory = Callable[..., Line]


@pytest.fixture
async def lines(tmp_path: Path) -> AsyncIterator[LineFactory]:
    made: list[Line] = []

    def build(
        *,
        state: Path | None = None,
        url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        max_rows: int = 1_000_000,
        segment_bytes: int = 1 << 20,
        watch_spool: bool = True,
        converter: Converter | None = None,
    ) -> Line:
        state = state or tmp_path / "state"
        lake = tmp_path / "lake"
        local = url is None
        store = RecordingStore(
            state, lake if local else None, state / "spool" if watch_spool else None
        )
        cp = store.load("stage")
        spool = Spool(state / "spool", segment_bytes=segment_bytes, max_bytes=1 << 40)
        gaps: list[Gap] = []
        intake = Intake(
            spool, BatchConfig(max_rows=max_rows), 3600.0, Gaps(cp.subscriptions), gaps.append
        )
        sink = SinkSpec(url or str(lake), storage_options or {}, max_attempts=1)
        converter = converter or Converter(sink, FlushSettings(cp.writer_id))
        committer = Committer(intake, converter, store, cp, store.metrics)
        intake.connect(committer.submit)
        intake.recover(cp.committed_seq)
        line = Line(lake, intake, committer, converter, store, cp)
        made.append(line)
        return line

    yield build
    for line in made:
        for task in line.tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        line.converter.close()
        line.intake.close()


# -- order, visibility, release ---------------------------------------------------------------
async def test_cuts_land_in_order_and_the_checkpoint_follows_their_files(
    lines: LineFactory,
) -> None:
    line = lines(max_rows=2)
    line.frames(6)
    line.start()
    await until(lambda: line.store.last_written() == 6, LANDED, "everything committed")

    writes = line.store.writes[1:]  # the first is the new checkpoint written by load()
    assert [w.committed for w in writes] == [2, 4, 6]
    cuts = [(1, 2), (3, 4), (5, 6)]
    for w in writes:
        # Exactly the cuts through `committed` are visible when the checkpoint says so: the
        # earlier ones landed first, the next one has not started.
        landed = {f"{line.stem(a, b)}.parquet" for a, b in cuts if b <= w.committed}
        assert {n for n in w.visible if n.endswith(".parquet")} == landed

    assert line.rows() == [(seq, "air", "S1", f"air-{seq}") for seq in range(1, 7)]
    assert sorted(p.name for p in line.lake.rglob("*.parquet")) == [
        f"{line.stem(a, b)}.parquet" for a, b in cuts
    ]
    totals = line.committer.totals
    assert (totals.files, totals.rows_written, totals.sink_errors) == (3, 6, 0)
    assert dict(line.committer.rows_by_subscription) == {"air": 6}
    # rows_written_total moves after the checkpoint naming the cut: at each write it still
    # holds the rows of the cuts before.
    assert [w.rows_metric for w in writes] == [0, 2, 4]
    metrics = line.committer.metrics
    await until(lambda: metrics.snapshot()["rows_written"] == 6, what="counted after the save")
    snap = metrics.snapshot()
    assert snap["files_written"] == 3
    assert snap["flush_duration_seconds_count"] == 3
    assert CheckpointStore(line.store.dir).load(None).committed_seq == 6


async def test_segments_are_released_only_after_the_checkpoint(lines: LineFactory) -> None:
    line = lines(max_rows=2, segment_bytes=1)  # one record per segment file
    line.frames(4)
    line.start()
    await until(lambda: line.store.last_written() == 4, LANDED)
    await until(lambda: spool_records(line.spool) == [], what="segments released")

    first, second = line.store.writes[1:]
    # When the checkpoint for a cut was written, the cut's records were all still spooled.
    assert {1, 2} <= first.spooled and first.committed == 2
    assert {3, 4} <= second.spooled and second.committed == 4
    assert 1 not in second.spooled  # released after the first checkpoint, before the second
    assert len(list((line.store.dir / "spool").glob("*.seg"))) == 1  # the one being written


async def test_a_barrier_returns_once_everything_spooled_before_it_is_committed(
    lines: LineFactory,
) -> None:
    line = lines()  # no size limit: nothing would be cut without the barrier
    line.frames(4)
    line.intake.record({"event": "note", "subscription": "air"})
    line.start()
    await asyncio.wait_for(line.committer.barrier(line.stopping), LANDED)

    assert line.cp.committed_seq == 5
    stem = line.stem(1, 5)
    assert (line.lake / PARTITION / f"{stem}.parquet").is_file()
    ledger = (line.lake / "_ledger" / f"{stem}.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in ledger] == [{"event": "note", "subscription": "air"}]
    assert [row[0] for row in line.rows()] == [1, 2, 3, 4]

    # Nothing new: returns at once, and cuts nothing.
    await asyncio.wait_for(line.committer.barrier(line.stopping), DEADLINE)
    assert line.committer.totals.files == 1


async def test_a_barrier_gives_up_when_stopping(lines: LineFactory) -> None:
    line = lines()
    line.frames(2)  # the committer is not running: this would never commit
    barrier = asyncio.ensure_future(line.committer.barrier(line.stopping))
    await asyncio.sleep(0)
    assert not barrier.done()
    line.stopping.set()
    await asyncio.wait_for(barrier, DEADLINE)
    assert line.cp.committed_seq == 0


# -- failures -----------------------------------------------------------------------------------
async def test_a_terminal_sink_error_stops_the_committer_and_keeps_the_rows(
    tmp_path: Path, lines: LineFactory
) -> None:
    (tmp_path / "lake").write_bytes(b"a regular file where the landing folder must be")
    line = lines(max_rows=2)
    line.frames(2)
    with pytest.raises(SinkError, match=r"NotADirectoryError|FileExistsError"):
        await asyncio.wait_for(line.start(), LANDED)
    assert line.cp.committed_seq == 0
    assert line.store.on_disk() == 0 and len(line.store.writes) == 1
    assert line.committer.totals.sink_errors == 0  # not retried
    assert [r.seq for r in spool_records(line.spool, DATA)] == [1, 2]  # kept for the next start


AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


@dataclass
class Moto:
    host: str
    port: int
    server: ThreadedMotoServer

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the listening socket: new connections are refused."""
        self.server.stop()
        listener = self.server._server
        if listener is not None:
            listener.server_close()

    def start_again(self) -> None:
        """On the same port; moto's backend state lives in this process, so buckets survive."""
        self.server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """One S3 endpoint for the module, warmed up (moto loads its S3 backend on first use)."""
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)  # before any converter is spawned: it inherits them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    running = Moto(host, port, server)
    boto3.client("s3", endpoint_url=running.endpoint).list_buckets()
    yield running
    with contextlib.suppress(Exception):
        running.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


async def test_a_transient_sink_outage_makes_the_cut_wait_then_land_exactly_once(
    tmp_path: Path, lines: LineFactory, moto: Moto
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint)
    s3.create_bucket(Bucket="stage-landing")
    options = {
        "endpoint_url": moto.endpoint,
        "key": "testing",
        "secret": "testing",
        # botocore's own retries would spend seconds per attempt: the committer's are tested.
        "config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 2},
    }
    line = lines(url="s3://stage-landing/lake", storage_options=options, max_rows=2)
    line.start()
    line.frames(2)
    await until(lambda: line.cp.committed_seq == 2, LANDED, "the first cut, sink up")

    moto.stop()
    line.frames(2)
    await until(lambda: line.committer.totals.sink_errors >= 1, what="a failed attempt")
    # The cut waits in the spool: nothing committed, nothing released.
    assert line.cp.committed_seq == 2 and line.store.on_disk() == 2
    metrics = line.committer.metrics  # readiness sees the sink down
    assert (metrics.sink_problem or "").startswith("TransientSinkError: sink s3://stage-landing")
    assert metrics.snapshot()["sink_errors"] >= 1 and metrics.snapshot()["rows_written"] == 2
    assert [r.seq for r in spool_records(line.spool, DATA)] == [1, 2, 3, 4]

    moto.start_again()
    await until(lambda: line.store.on_disk() == 4, LANDED, "the retried cut")
    await until(lambda: metrics.snapshot()["rows_written"] == 4, what="counted after the save")
    assert metrics.sink_problem is None

    listed = s3.list_objects_v2(Bucket="stage-landing", Prefix="lake/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys == [f"lake/{PARTITION}/{line.stem(a, b)}.parquet" for a, b in [(1, 2), (3, 4)]]
    local = tmp_path / "downloaded"
    for key in keys:
        target = local / key
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("stage-landing", key, str(target))
    assert parquet_rows(local) == [(seq, "air", "S1", f"air-{seq}") for seq in range(1, 5)]
    assert line.committer.totals.files == 2


async def test_a_replay_after_a_crash_before_the_checkpoint_rewrites_the_same_files(
    tmp_path: Path, lines: LineFactory
) -> None:
    first = lines(max_rows=3)
    before = first.store.writes[0].data  # the checkpoint as it was before the cut landed
    first.frames(3)
    run = first.start()
    first.committer.finish()  # run() returns once the cut is landed, saved and released
    await asyncio.wait_for(run, LANDED)
    assert first.store.on_disk() == 3
    # A kill after the files became visible, before the checkpoint did: roll the file back.
    first.store.write(before)
    first.intake.close()

    # The same converter process lands the replay (it holds nothing of the first run).
    second = lines(max_rows=3, converter=first.converter)
    assert second.cp.committed_seq == 0
    second.start()
    await until(lambda: second.store.on_disk() == 3, LANDED, "the replayed cut")
    assert sorted(p.name for p in second.lake.rglob("*.parquet")) == [
        f"{second.stem(1, 3)}.parquet"
    ]
    assert second.rows() == [(seq, "air", "S1", f"air-{seq}") for seq in range(1, 4)]


# -- checkpoint snapshots -------------------------------------------------------------------------
async def test_save_now_is_on_disk_when_it_returns(lines: LineFactory) -> None:
    line = lines(watch_spool=False)
    line.cp.committed_seq = 7
    line.committer.save_now()  # no await: nothing else runs before the next statement
    assert CheckpointStore(line.store.dir).load(None).committed_seq == 7


async def test_save_never_lets_an_older_snapshot_overwrite_a_newer_one(
    lines: LineFactory,
) -> None:
    line = lines(watch_spool=False)
    saves = []
    for seq in range(1, 101):
        line.cp.committed_seq = seq
        saves.append(asyncio.ensure_future(line.committer.save()))
        if seq % 3:
            await asyncio.sleep(0)  # let this one take its snapshot now; others batch up
    await asyncio.wait_for(asyncio.gather(*saves), DEADLINE)

    assert line.store.on_disk() == 100
    written = [w.committed for w in line.store.writes[1:]]
    assert written == sorted(written) and written[-1] == 100
    assert CheckpointStore(line.store.dir).load(None).committed_seq == 100
