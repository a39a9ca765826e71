"""A long sink outage with small frames (issue 8, item 14): memory stays flat, nothing is lost.

The simulator streams as fast as the connector reads, one observation per message, while the
local landing zone cannot be written (its partition folder is a symlink loop: every put fails
with ELOOP, an error the sink retries). Well over 100,000 frames pile up in the spool; the RSS
of the receiving process and of the converter is sampled from /proc meanwhile. The connector
is then killed and started again on that spool (recovery walks every record of it), the sink
comes back, and every observation must land exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.simulator import SimulatorOptions, SimulatorThread
from tests.e2e.conftest import TIME_FACTOR, TOKEN, Deployment, wait_for
from tests.e2e.test_durability import assert_no_duplicates

FRAMES = 150_000  # waiting in the spool by the end of the outage
MiB = 1024 * 1024
# Receiver growth allowed per 100,000 frames. Measured on 2 cores: +0.02 to +0.9 MiB from a
# quarter of the outage to its end (allocator steps; the spool index is one entry per MiB of
# spool). One Python int kept per frame is ~3.8 MiB per 100,000, and a (seq, offset) index
# entry per frame measured +7.7 MiB: either fails here.
RECEIVER_MIB_PER_100K = 3.0
# The converter only ever holds the cut it retries and the one prepared after it (at most
# batch.max_rows each), whatever waits behind them. Measured: +4 to +8 MiB from half the
# outage to its end, in steps at retries (allocator reuse, not frames). The frames that arrive
# meanwhile hold ~35 MiB of JSON: keeping even half of them would fail here.
CONVERTER_GROWTH_MIB = 16.0
# A restart scans every waiting record (spool index, recorded cuts, the tail to cut again).
# Measured: the recovered receiver is 0.2 to 1.3 MiB *below* the killed one. An index entry
# kept per record (~80 bytes) would add ~12 MiB for 150,000.
RESTART_GROWTH_MIB = 6.0


@dataclass
class Sample:
    frames: int
    receiver: int  # RSS, bytes
    converter: int


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def converter_pid(receiver: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == receiver and b"connector.worker" in cmdline:
            return int(entry)
    return None


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    # As fast as the connector reads (rate 0), one observation per message; no history kept:
    # nothing here asks REST for it.
    options = SimulatorOptions(token=TOKEN, tracks=50, rate=0.0, batch=1, seed=3, history_max=1000)
    with SimulatorThread(options) as server:
        server.inject({"action": "pause"})  # nothing generated for nobody before the subscribe
        yield server


@pytest.mark.slow
def test_a_long_sink_outage_keeps_memory_flat_and_loses_nothing(
    tmp_path: Path, sim: SimulatorThread
) -> None:
    dep = Deployment(tmp_path, sim.ws_url, subscriptions={"everything": {}})
    dep.sections = {
        "sink": {"max_attempts": 1},  # the committer's own backoff is the retry that matters
        "batch": {"max_seconds": 1.0, "max_rows": 5000},
        "state": {"fsync_seconds": 1.0},
    }
    dep.landing.mkdir()
    partition = dep.landing / "observation_spec_id=baz"
    partition.symlink_to(partition.name)  # the outage: ELOOP on every data file
    proc = dep.start()
    try:
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 1)
        sim.inject({"action": "resume"})
        samples = sample_until(proc.pid, sim, FRAMES)
        sim.inject({"action": "pause"})
        sent = sim.stats()["messages_sent"]
        time.sleep(0.5)  # the last frames in flight reach the spool
        before = rss(proc.pid)
        proc.kill()
        _, killed_err = proc.communicate(timeout=10)
        proc = dep.start()
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)  # subscribes after recovery
        time.sleep(0.5)
        restarted = rss(proc.pid)
        assert not list(dep.landing.rglob("*.parquet"))  # the outage was real
        partition.unlink()
        # After the committer's backoff (full jitter, up to 16 s after ~10 s of failures).
        wait_for(lambda: landed(dep) >= sent, timeout=60)
        code, err = dep.stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "waits in the spool" in killed_err and "dropping frames" not in killed_err + err

    quarter = next(s for s in samples if s.frames >= FRAMES // 4)
    half = next(s for s in samples if s.frames >= FRAMES // 2)
    end = samples[-1]
    per_100k = (end.receiver - quarter.receiver) / MiB / ((end.frames - quarter.frames) / 1e5)
    converter = (end.converter - half.converter) / MiB
    print(
        f"outage: {end.frames} frames; receiver RSS {quarter.receiver / MiB:.1f} -> "
        f"{end.receiver / MiB:.1f} MiB ({per_100k:+.2f} MiB per 100k frames), converter "
        f"{half.converter / MiB:.1f} -> {end.converter / MiB:.1f} MiB "
        f"(peak {max(s.converter for s in samples) / MiB:.1f}); after a restart on that "
        f"spool: receiver {before / MiB:.1f} -> {restarted / MiB:.1f} MiB"
    )
    assert per_100k < RECEIVER_MIB_PER_100K
    assert converter < CONVERTER_GROWTH_MIB
    assert (restarted - before) / MiB < RESTART_GROWTH_MIB

    # Every observation exactly once: as many rows as one-observation messages, none twice.
    assert landed(dep) == sent
    assert_no_duplicates(dep)


def sample_until(receiver: int, sim: SimulatorThread, frames: int) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + 60 * TIME_FACTOR
    while not samples or samples[-1].frames < frames:
        assert time.monotonic() < deadline, f"only {samples[-1:]} frames in time"
        time.sleep(0.2)
        converter = converter_pid(receiver)
        if converter is None:
            continue  # not started yet: the first cut starts it
        sent = sim.stats()["messages_sent"]
        samples.append(Sample(sent, rss(receiver), rss(converter)))
    return samples


def landed(dep: Deployment) -> int:
    if not list(dep.landing.rglob("*.parquet")):
        return 0
    return int(dep.sql("SELECT count(*) FROM obs")[0][0])
