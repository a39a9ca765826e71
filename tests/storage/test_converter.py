"""connector.converter + connector.worker: a real spawned converter process lands real cuts from
a real spool in a real sink (read back with DuckDB), answers lookups, sends its exceptions back
as themselves, and is replaced when it dies. Nothing is mocked: processes are killed for real,
and a request is held in flight by an S3 endpoint that accepts the connection and never answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connector.converter import Converter, ConverterDied
from connector.errors import SinkError, is_transient
from connector.jobs import CutJob, FlushResult, FlushSettings, Identity, SinkSpec
from connector.layout import hour_dirs
from connector.spool import DATA, DEAD, RecordMeta, Spool
from tests.oracle import row_to_observation

WRITER = "edge-1a2b3c4d"
DEADLINE = 20.0  # seconds: the most any bounded wait here may take (each takes far less)


def us(ts: str) -> int:
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def observation(track: str, ts: str, spec: str = "baz", **more: Any) -> dict[str, Any]:
    return {
        "sourceSystemId": "adsb-feed",
        "collectionId": "air",
        "observationSpecId": spec,
        "trackId": track,
        "position": {"longitude": -77.01, "latitude": 38.89, "elevation": 120.5},
        "timestamp": ts,
        "liveProperties": [{"propertyType": "speed", "value": 412.5}],
        **more,
    }


@dataclass
class Spooled:
    spool: Spool
    first: int
    last: int
    originals: dict[tuple[int, str, str], dict[str, Any]]  # (seq, track, timestamp) -> obs

    def job(self) -> CutJob:
        return CutJob(self.first, self.last, tuple(self.spool.ranges(self.first, self.last)))

    def identities(self) -> set[Identity]:
        return {
            (o["sourceSystemId"], o["collectionId"], o["observationSpecId"], o["trackId"], us(t))
            for (_, _, t), o in self.originals.items()
        }


@pytest.fixture
def spooled(tmp_path: Path) -> Iterator[Spooled]:
    spool = Spool(tmp_path / "spool", segment_bytes=1024, max_bytes=1 << 30)
    spool.open(0)
    originals: dict[tuple[int, str, str], dict[str, Any]] = {}
    first = spool.next_seq
    for f in range(6):
        batch = [
            observation(f"t{f}", f"2024-06-24T17:{10 * f:02d}:00Z"),
            observation(f"t{f}", f"2024-06-24T18:{10 * f:02d}:00.25Z", spec="foo"),
            observation(f"u{f}", f"2024-06-24T17:{f:02d}:30Z", name=None, note="odd"),
        ]
        body = json.dumps({"type": "data", "id": "3255ebeb", "observations": batch}).encode()
        meta = RecordMeta(sub="air", id="3255ebeb", n=len(batch))
        seq = spool.append(DATA, meta, body, us("2024-06-24T18:59:00Z"))
        originals |= {(seq, o["trackId"], o["timestamp"]): o for o in batch}
    spool.append(DEAD, RecordMeta(reason="malformed message"), b"{", us("2024-06-24T18:59:01Z"))
    last = spool.next_seq - 1
    spool.append_cut(first, last, us("2024-06-24T18:59:02Z"))
    yield Spooled(spool, first, last, originals)
    spool.close()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def converter(lake: Path) -> Iterator[Converter]:
    conv = Converter(SinkSpec(str(lake), max_attempts=2), FlushSettings(WRITER))
    yield conv
    conv.close()


def live(converter: Converter) -> list[subprocess.Popen[bytes]]:
    """The converter's process, if one is running (a list, to assert on "exactly one")."""
    proc = converter.process
    return [proc] if proc is not None and proc.poll() is None else []


def parquet_files(lake: Path) -> list[Path]:
    return sorted(lake.rglob("*.parquet"))


def landed_rows(lake: Path) -> list[dict[str, Any]]:
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    con.execute("SET TimeZone = 'UTC'")
    rel = con.sql(f"SELECT * FROM read_parquet('{lake}/**/*.parquet', hive_partitioning=true)")
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def check_landed(spooled: Spooled, lake: Path, result: FlushResult) -> None:
    rows = landed_rows(lake)
    assert result.rows == len(rows) == len(spooled.originals)
    got = {}
    for row in rows:
        obs = row_to_observation(row)
        got[(row["seq"], obs["trackId"], obs["timestamp"])] = obs
    assert got == spooled.originals


# -- landing a cut ------------------------------------------------------------------------------
async def test_a_cut_is_landed_by_the_converter_process(
    converter: Converter, spooled: Spooled, lake: Path
) -> None:
    result = await converter.flush(spooled.job())
    [proc] = live(converter)
    assert proc.pid != os.getpid()
    assert isinstance(result, FlushResult)
    check_landed(spooled, lake, result)
    assert result.rejected == 1  # the DEAD record, kept in the dead-letter area
    assert result.rows_by_subscription == {"air": result.rows}
    stem = f"{WRITER}-{spooled.first:012d}-{spooled.last:012d}"
    assert sorted(p for p, _, _ in result.files) == [
        f"observation_spec_id=baz/date=2024-06-24/hour=17/{stem}.parquet",
        f"observation_spec_id=foo/date=2024-06-24/hour=18/{stem}.parquet",
    ]
    assert (
        sum(size for _, _, size in result.files)
        == result.bytes
        == sum((lake / p).stat().st_size for p, _, _ in result.files)
    )
    assert (lake / "_dead_letter" / f"{stem}.jsonl").is_file()
    # The same process serves the next request.
    await converter.check_sink()
    assert live(converter) == [proc] and converter.restarts == 0


async def test_lookups_are_answered_by_the_converter_process(
    converter: Converter, spooled: Spooled
) -> None:
    start, end = us("2024-06-24T17:00:00Z"), us("2024-06-24T18:59:59Z")
    assert await converter.landed_identities(hour_dirs(start, end), "air", start, end) == set()
    ranges = list(spooled.job().ranges)
    spooled_now = await converter.spooled_identities(ranges, spooled.first, spooled.last, "air")
    assert spooled_now == spooled.identities()
    await converter.flush(spooled.job())
    landed = await converter.landed_identities(hour_dirs(start, end), "air", start, end)
    assert landed == spooled.identities()
    assert await converter.landed_identities(hour_dirs(start, end), "sea", start, end) == set()


# -- errors cross the process boundary as themselves ------------------------------------------
async def test_a_sink_error_in_the_worker_is_raised_as_a_sink_error(
    tmp_path: Path, spooled: Spooled
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"I am a file")
    conv = Converter(SinkSpec(str(blocker), max_attempts=2), FlushSettings(WRITER))
    try:
        with pytest.raises(SinkError) as info:
            await conv.check_sink()
        assert not is_transient(info.value) and info.value.exit_code == 4
        assert str(blocker) in str(info.value)
        with pytest.raises(SinkError):
            await conv.flush(spooled.job())
        # Raising is an answer, not a death: the same process is still serving.
        assert len(live(conv)) == 1 and conv.restarts == 0
    finally:
        conv.close()
    assert blocker.read_bytes() == b"I am a file"


async def test_a_cut_with_unreadable_records_reports_them(
    converter: Converter, spooled: Spooled, lake: Path
) -> None:
    job = spooled.job()
    assert len(job.ranges) > 1
    result = await converter.flush(CutJob(job.first, job.last, job.ranges[1:]))
    assert result.missing and result.missing[0][0] == job.first


async def test_calling_an_unknown_handler_raises(converter: Converter) -> None:
    await converter.check_sink()
    [proc] = live(converter)
    with pytest.raises(KeyError, match="no-such-handler"):
        await converter.call("no-such-handler", 1, 2)
    await converter.check_sink()
    assert live(converter) == [proc] and converter.restarts == 0


# -- a converter that dies ---------------------------------------------------------------------
def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(DEADLINE)
    assert proc.returncode == -signal.SIGKILL


async def test_a_converter_killed_while_idle_is_restarted_by_the_next_call(
    converter: Converter, spooled: Spooled, lake: Path
) -> None:
    await converter.check_sink()
    [dead] = live(converter)
    kill(dead)

    result = await converter.flush(spooled.job())
    assert converter.restarts == 1
    [fresh] = live(converter)
    assert fresh.pid != dead.pid
    check_landed(spooled, lake, result)
    # And the call after that is served by the new process, with no further restart.
    again = await converter.flush(spooled.job())
    assert (again.rows, again.files) == (result.rows, result.files)
    assert live(converter) == [fresh] and converter.restarts == 1


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An HTTP endpoint that accepts connections and never answers: a request to it is in
    flight for as long as the test wants. Yields its URL and an event set on the first accept."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", accepted
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def hanging_sink(endpoint: str) -> SinkSpec:
    options = {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "config_kwargs": {"retries": {"total_max_attempts": 1}, "read_timeout": 60},
    }
    return SinkSpec("s3://bucket/lake", options, max_attempts=1)


async def test_a_converter_killed_mid_request_fails_the_call_as_transient(
    aws_env: None,
    converter: Converter,
    spooled: Spooled,
    lake: Path,
    silent_endpoint: tuple[str, asyncio.Event],
) -> None:
    endpoint, accepted = silent_endpoint
    call = asyncio.create_task(converter.call("check_sink", hanging_sink(endpoint)))
    await asyncio.wait_for(accepted.wait(), DEADLINE)  # the worker is inside the request
    [proc] = live(converter)
    kill(proc)
    with pytest.raises(ConverterDied) as info:
        await asyncio.wait_for(call, DEADLINE)
    assert is_transient(info.value)  # the committer retries: the cut is still in the spool

    result = await converter.flush(spooled.job())
    assert converter.restarts == 1
    check_landed(spooled, lake, result)


async def test_a_cancelled_call_never_hands_its_reply_to_the_next_one(
    aws_env: None,
    converter: Converter,
    spooled: Spooled,
    lake: Path,
    silent_endpoint: tuple[str, asyncio.Event],
) -> None:
    endpoint, accepted = silent_endpoint
    call = asyncio.create_task(converter.call("check_sink", hanging_sink(endpoint)))
    await asyncio.wait_for(accepted.wait(), DEADLINE)
    [busy] = live(converter)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert busy.poll() is not None  # ended, so its late reply cannot answer another request

    result = await converter.flush(spooled.job())
    assert isinstance(result, FlushResult)
    check_landed(spooled, lake, result)
    [fresh] = live(converter)
    assert fresh.pid != busy.pid


# -- the converter's lifetime -----------------------------------------------------------------
async def test_close_lets_an_idle_converter_leave_on_its_own(lake: Path) -> None:
    conv = Converter(SinkSpec(str(lake)), FlushSettings(WRITER))
    await conv.check_sink()
    [proc] = live(conv)
    conv.close()
    assert proc.returncode == 0  # it left on EOF; it was not killed
    assert live(conv) == []


ORPHANING_PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from connector.converter import Converter
    from connector.jobs import FlushSettings, SinkSpec

    async def main() -> None:
        conv = Converter(SinkSpec(sys.argv[1]), FlushSettings("w-1"))
        await conv.check_sink()
        print(conv.process.pid, flush=True)
        await asyncio.sleep(3600)  # until SIGKILLed

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody has reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def test_a_converter_leaves_when_its_parent_is_sigkilled(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(ORPHANING_PARENT)
    with subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "lake")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        try:
            ready, _, _ = select.select([parent.stdout], [], [], DEADLINE)
            assert ready, "the parent never reported its converter"
            line = parent.stdout.readline()
            assert line.strip().isdigit(), f"the parent said {line!r}"
            child = int(line)
            assert not gone(child)
        finally:
            parent.kill()
            parent.wait(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling another process's end: there is nothing to await
    assert gone(child), f"converter {child} outlived its SIGKILLed parent"
