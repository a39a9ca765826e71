"""S3 that misbehaves, end to end: the real connector (a subprocess) lands on moto's S3 server
through a fault-injecting proxy (503 SlowDown, responses cut mid-body, delays, a 20-second full
outage), while the simulator streams steadily. Landed rows are read from moto directly (DuckDB
over s3fs), never through the proxy, and compared with what the simulator sent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import duckdb
import pytest
import s3fs

from connector.simulator import SimulatorOptions, SimulatorThread
from connector.timeparse import parse_timestamp_us
from tests.e2e.conftest import (
    TIME_FACTOR,
    TOKEN,
    Deployment,
    identity,
    landed_observations,
    wait_for,
)
from tests.e2e.test_durability import MARGIN_US, assert_complete, assert_no_duplicates, expected
from tests.e2e.test_metrics import by, free_port, get, scrape
from tests.storage.conftest import AWS_ENV, MotoS3, start_moto, stop_moto
from tests.storage.s3proxy import FaultyS3Proxy, allow_small_parts

PREFIX = "lake"
# What the connector itself may leave beside the data: the start-up probe (written empty and
# deleted; a failed delete leaves it) is not data and no reader's glob matches it.
PROBE = f"{PREFIX}/_connector_probe/"
OUTAGE_SECONDS = 20.0
# After the outage, the first file must land within this (see the README's retry policy: the
# longest sleep a 20 s outage can leave pending is tenacity's 3.2 s or botocore's 2 s, plus a
# conversion and a put through the still-faulty proxy).
RECOVERY_BOUND = 10.0 * TIME_FACTOR
PART_SIZE = 1 << 20


@dataclass
class S3Lake:
    """A bucket on moto's server, the proxy in front of it, and a direct view behind its back."""

    moto: MotoS3
    proxy: FaultyS3Proxy
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(
            endpoint_url=self.moto.endpoint_url,
            key="testing",
            secret="testing",
            skip_instance_cache=True,
        )

    def objects(self) -> dict[str, int]:
        """Every object in the bucket (key -> size), listed on moto directly."""
        client = boto3.client("s3", endpoint_url=self.moto.endpoint_url)
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return found

    def uploads(self) -> list[dict[str, Any]]:
        client = boto3.client("s3", endpoint_url=self.moto.endpoint_url)
        listed: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=self.bucket).get(
            "Uploads", []
        )
        return listed


@dataclass
class S3Deployment(Deployment):
    """A deployment whose sink is the bucket behind the proxy; reads go to moto directly."""

    lake: S3Lake | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    con: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)

    def write_config(self) -> Path:
        assert self.lake is not None
        options = {
            "endpoint_url": self.lake.proxy.url,
            "key": "testing",
            "secret": "testing",
            **self.storage_options,
        }
        self.sections.setdefault("sink", {}).update(url=self.lake.url, storage_options=options)
        return super().write_config()

    def snapshot(self) -> dict[str, int]:
        """Read everything landed, once, from moto directly (DuckDB over s3fs, not through the
        proxy); `rows` and `sql` then query that. Returns the rows of each Parquet object."""
        assert self.lake is not None
        con = duckdb.connect()
        con.execute("SET autoinstall_known_extensions = false")
        con.register_filesystem(self.lake.fs())
        con.execute(
            f"CREATE TABLE landed AS SELECT * FROM read_parquet('{self.lake.url}/**/*.parquet',"
            " hive_partitioning = true, filename = true)"
        )
        con.execute("CREATE VIEW obs AS SELECT * EXCLUDE (filename) FROM landed")
        self.con = con
        files = con.sql("SELECT filename, count(*) FROM landed GROUP BY ALL").fetchall()
        return {name.removeprefix(f"s3://{self.lake.bucket}/"): n for name, n in files}

    def rows(self, where: str = "true") -> list[dict[str, Any]]:
        assert self.con is not None, "snapshot() first"
        rel = self.con.sql(f"SELECT * FROM obs WHERE {where}")
        names = rel.columns
        return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        assert self.con is not None, "snapshot() first"
        return self.con.sql(query).fetchall()

    def ledger(self) -> list[dict[str, Any]]:
        assert self.lake is not None
        fs = self.lake.fs()
        events = []
        for path in sorted(fs.glob(f"{self.lake.url}/_ledger/*.jsonl")):
            text = fs.cat_file(path).decode()
            events += [json.loads(line) for line in text.splitlines() if line]
        return events


@pytest.fixture
def lake(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Lake]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    moto = start_moto()
    proxy = FaultyS3Proxy(moto.endpoint_url, seed=5).start()
    try:
        yield S3Lake(moto, proxy, moto.create_bucket())
    finally:
        proxy.stop()
        stop_moto(moto)


@pytest.fixture
def s3dep(tmp_path: Path, sim: SimulatorThread, lake: S3Lake) -> Iterator[S3Deployment]:
    dep = S3Deployment(tmp_path, sim.ws_url, lake=lake)
    dep.env = {**dep.env, **AWS_ENV}
    yield dep
    for proc in dep.procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def parse_us(text: str) -> int:
    value = parse_timestamp_us(text)
    assert value is not None
    return value


def assert_objects_whole(dep: S3Deployment, leftover: str | None = None) -> dict[str, int]:
    """No zero-byte or partial object: every Parquet object was read back with rows (a cut
    one fails the snapshot); nothing but data, ledger and dead letters (and the probe); no
    incomplete multipart upload but `leftover`'s. Returns the Parquet objects' rows."""
    assert dep.lake is not None
    files = dep.snapshot()
    objects = {k: v for k, v in dep.lake.objects().items() if not k.startswith(PROBE)}
    assert objects, "nothing landed"
    for key, size in objects.items():
        assert size > 0, f"zero-byte object {key}"
        kind = key.removeprefix(f"{PREFIX}/").split("/", 1)[0]
        assert kind in ("_ledger", "_dead_letter") or kind.startswith("observation_spec_id="), key
    parquet = {k for k in objects if k.endswith(".parquet")}
    assert set(files) == parquet and all(files.values())
    assert [u["Key"] for u in dep.lake.uploads()] == ([leftover] if leftover else [])
    return files


def sent_total(sim: SimulatorThread) -> int:
    return sum(int(s["sent"]) for s in sim.stats()["subscriptions"].values())


@pytest.fixture
def sim_options() -> SimulatorOptions:
    return SimulatorOptions(token=TOKEN, tracks=40, rate=300.0, batch=30, seed=23)


@pytest.mark.slow
def test_faults_and_a_20s_outage_lose_and_duplicate_nothing(
    s3dep: S3Deployment, sim: SimulatorThread, lake: S3Lake
) -> None:
    proxy = lake.proxy
    # ~23% of requests fail (15% SlowDown, 8% cut mid-response), 10% more are delayed.
    proxy.configure(slowdown=0.15, reset=0.08, delay=0.10, delay_seconds=(0.05, 0.5))
    port = free_port()
    s3dep.sections["metrics"] = {"enabled": True, "port": port}
    proc = s3dep.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=30)
    wait_for(lambda: scrape(port).get(("files_written_total", ()), 0) >= 3, timeout=30)

    samples: list[tuple[float, dict[Any, float]]] = []

    def received(s: dict[Any, float]) -> float:
        return sum(by(s, "observations_received_total", "subscription").values())

    def sample_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append((time.monotonic(), scrape(port)))
            time.sleep(0.5)

    started = time.monotonic()
    before = scrape(port)
    proxy.outage("503")
    sample_for(OUTAGE_SECONDS / 2)
    proxy.outage("refuse")  # the second half: nothing listens, connections are refused
    sample_for(OUTAGE_SECONDS / 2)
    ended = time.monotonic()
    proxy.outage(None)
    at_end = scrape(port)
    assert proc.poll() is None, proc.communicate()[1][-3000:]

    def landed_since_end() -> bool:
        return any(
            r.at >= ended and r.method == "PUT" and r.status == 200 and ".parquet" in r.path
            for r in proxy.requests(ended)
        )

    wait_for(landed_since_end, timeout=RECOVERY_BOUND + 5)
    recovered = min(
        r.at
        for r in proxy.requests(ended)
        if r.method == "PUT" and r.status == 200 and ".parquet" in r.path
    )
    recovery = recovered - ended

    # The backlog (one cut per second of outage) drains while streaming goes on under faults,
    # the same process throughout.
    def written(s: dict[Any, float]) -> float:
        return sum(by(s, "rows_written_total", "subscription").values())

    wait_for(lambda: written(scrape(port)) >= received(at_end), timeout=30)
    drained = time.monotonic() - ended
    final = scrape(port)
    assert proc.poll() is None
    code, err = s3dep.stop(proc, timeout=30)
    assert code == 0, err[-3000:]

    # The socket was read throughout the outage: observations kept arriving (every 2 s), the
    # spool grew, nothing landed, and the simulator never saw us leave.
    outage_samples = [(t, s) for t, s in samples if started <= t <= ended]
    for (t0, s0), (_, s1) in zip(outage_samples, outage_samples[4:], strict=False):
        assert received(s1) > received(s0), f"no observations between {t0 - started:.1f}s"
    grew = at_end[("spool_bytes", ())] - before[("spool_bytes", ())]
    during = received(at_end) - received(before)
    assert grew > 0 and during > 0.5 * 300 * OUTAGE_SECONDS
    outage_requests = [r for r in proxy.requests(started) if r.at < ended]
    assert outage_requests and all(r.fault == "outage" for r in outage_requests)
    stats = sim.stats()
    assert len(stats["subscriptions"]) == 2  # subscribed once: no reconnect, no resubscribe
    assert final[("reconnects_total", ())] == 0
    assert not [e for e in s3dep.ledger() if e["event"] == "gap"]

    # Nothing lost, nothing duplicated, nothing partial.
    files = assert_objects_whole(s3dep)
    assert_no_duplicates(s3dep)
    assert_complete(s3dep, sim)
    landed = s3dep.sql("SELECT count(*) FROM obs")[0][0]
    sent = sent_total(sim)
    assert landed == sent

    normal = [r for r in proxy.log if r.fault != "outage"]
    failed = sum(1 for r in normal if r.fault in ("slowdown", "reset"))
    share = failed / len(normal)
    # A few hundred requests at most: the shares themselves are the proxy's own test.
    assert proxy.faults["slowdown"] >= 2 and proxy.faults["reset"] >= 1
    assert proxy.faults["delayed"] >= 1 and 0.05 < share < 0.6
    sink_errors = sum(by(final, "sink_errors_total", "kind").values())
    print(
        f"\nS3 faults: {len(proxy.log)} requests, {failed} failed ({share:.0%}: "
        f"{proxy.faults['slowdown']} SlowDown, {proxy.faults['reset']} cut), "
        f"{proxy.faults['delayed']} delayed; outage {ended - started:.1f}s "
        f"({len(outage_requests)} requests 503, rest refused); first landing "
        f"{recovery:.2f}s after it ended, backlog landed after {drained:.1f}s; sent {sent}, "
        f"landed {landed}, 0 duplicates, {len(files)} files; received during the outage "
        f"{during:.0f}, spool grew {grew:.0f} B; "
        f"cut retries (sink_errors_total) {sink_errors:.0f}"
    )
    assert recovery < RECOVERY_BOUND, f"first landing {recovery:.1f}s after the outage"


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def upload_part(number: int) -> Any:
    def match(method: str, target: str) -> bool:
        return method == "PUT" and f"partNumber={number}&" in target + "&" and "uploadId=" in target

    return match


@pytest.mark.slow
def test_a_kill_mid_multipart_upload_leaves_no_object_and_the_restart_lands_it_once(
    s3dep: S3Deployment, sim: SimulatorThread, lake: S3Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parts of 1 MiB (moto's minimum lowered from S3's 5 MiB: the same protocol, a file a
    # fifth the size), so a ~3 MiB file is uploaded in 4 parts.
    allow_small_parts(monkeypatch, PART_SIZE)
    s3dep.subscriptions = {"everything": {}}
    s3dep.storage_options = {"default_block_size": PART_SIZE}
    s3dep.sections["sink"] = {"compression": "none"}
    proxy = lake.proxy
    held = proxy.hold(upload_part(2))  # part 1 is stored, part 2 never arrives
    proc = s3dep.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 1)
    sim.inject({"action": "large", "bytes": 12_000_000})
    assert held.wait(30 * TIME_FACTOR), "no multipart upload reached part 2"
    for pid in children(proc.pid):  # the converter uploads: it dies first, mid-upload
        os.kill(pid, signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    killed_us = time.time_ns() // 1000

    (create,) = [r for r in proxy.log if r.method == "POST" and r.query == "uploads"]
    key = unquote(create.path).removeprefix(f"/{lake.bucket}/")
    assert key.endswith(".parquet")
    assert key not in lake.objects()  # nothing visible under the name
    assert [u["Key"] for u in lake.uploads()] == [key]  # an incomplete upload, as documented
    # s3fs sends parts concurrently: the others were stored, part 2 never arrived.
    parts = [r for r in proxy.log if r.method == "PUT" and "uploadId=" in r.query]
    assert parts and all(r.status == 200 for r in parts)

    proxy.release()
    restarted = time.monotonic()
    proc = s3dep.start()
    wait_for(lambda: key in lake.objects(), timeout=30)
    code, err = s3dep.stop(proc, timeout=30)
    assert code == 0, err[-3000:]

    # The restart replayed the same cut under the same name, as a new multipart upload.
    size = lake.objects()[key]
    assert size > 2 * PART_SIZE
    completes = [
        r
        for r in proxy.requests(restarted)
        if r.method == "POST" and "uploadId=" in r.query and unquote(r.path).endswith(key)
    ]
    assert [r.status for r in completes] == [200]
    files = assert_objects_whole(s3dep, leftover=key)  # the killed upload stays incomplete
    assert_no_duplicates(s3dep)
    stem = key.rsplit("/", 1)[1].removesuffix(".parquet")
    first, last = (int(x) for x in stem.rsplit("-", 2)[1:])
    file_rows = files[key]
    in_range = s3dep.sql(f"SELECT count(*) FROM obs WHERE seq BETWEEN {first} AND {last}")
    assert in_range == [(file_rows,)] and file_rows > 10_000  # landed once, in that file only
    # Everything received before the kill landed (the stream went on around the large frame).
    started = min(
        parse_us(e["recorded_at"]) for e in s3dep.ledger() if e["event"] == "stream_started"
    )
    want = expected(sim, {}, (started + MARGIN_US, killed_us - 1_000_000))
    have = {identity(o) for o in landed_observations(s3dep, "everything")}
    assert want and not want - have, f"{len(want - have)} of {len(want)} missing"
    print(
        f"\nmultipart: {key.rsplit('/', 1)[1]} ({size} B, parts of {PART_SIZE} B) killed with "
        f"{len(parts)} parts stored and part 2 in flight; no object, 1 incomplete upload; "
        f"after the restart {file_rows} rows landed "
        f"once; {len(want)} observations received before the kill all landed"
    )
