"""Side-by-side benchmark of the connector against the obvious script, printed as ratios.

Why side by side, alternating programs within each repetition: the machines here are noisy, so
absolute figures drift from minute to minute and only ratios of neighbouring runs mean much.
Why subprocesses: each program is measured as a user runs it, over its whole process tree
(`connector run` converts in a worker process), without the harness in its address space.

Programs, each fed by a fresh load server process (loadserver.py) with pre-serialized frames:
- ours: `python -m connector run --config CONFIG.toml`, stopped by SIGTERM once every row is
  visible as Parquet (the stream never ends for it: the server keeps the socket open);
- obvious: obvious.py, json.loads + dict rows + pq.write_table every 100,000 rows;
- ceiling: ceiling.py, receive and discard.

Per program and observations-per-message: observations/s from the first data frame sent to
every row landed (ours, including the wait for the batch timer to cut the tail) or to exit
(obvious, ceiling); "drain" observations/s from first to last frame sent (how fast the program
took the stream); CPU seconds per million observations of the whole tree over its life
(interpreter start-up included); peak RSS summed over the tree. Medians over `--repeat`.
For ours, the same CPU and peak RSS split between the receiving process and its converter child
(per-process figures from the /proc samples: peaks of each process, not of their sum).
Then a steady-rate run of ours gives landing latency: each observation is stamped with its
send time, each file with the time it was first seen.

Every run is checked: rows landed == rows sent, no duplicate (track_id, timestamp) (DuckDB),
exit code 0. Anything else stops the benchmark with the reason.

Run: python benchmarks/bench.py [--quick] [--per-message 100] [--repeat 2] [--default-batch]
Results: stdout, benchmarks/results/latest.json and latest.md (a README table fragment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from procstats import ProcessTree, Reaper, die_with_parent

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
TOKEN = "bench-token"
OURS, OURS_DEFAULT, OBVIOUS, CEILING = "ours", "ours-default", "obvious", "ceiling"
# The headline configuration is 100 per message: 2,000,000 compact observations.
DEFAULT_OBSERVATIONS = {1: 100_000, 10: 500_000, 100: 2_000_000, 1000: 2_000_000}
# Repetitions of a default run, per observations-per-message (--repeat sets them all). One at
# 1 and 10 per message: with two, `--default-batch` took 13 min 20 s on the shared 2-core
# machine (load ~5); with one, 7 min 54 s (load ~2), ~11.5 min estimated at load ~5. 100 and
# 1000 per message take ~85% of the time.
DEFAULT_REPEAT = {1: 1, 10: 1, 100: 2, 1000: 2}
QUICK_OBSERVATIONS = {1: 2_000, 10: 10_000, 100: 50_000, 1000: 100_000}
MAX_ROWS = 100_000
TICK_S = 0.05  # process-tree sampling
LANDING_POLL_S = 0.1  # throughput runs; the latency run polls every tick
PORT_TIMEOUT_S = 300.0  # the server generates up to millions of observations first
STOP_TIMEOUT_S = 60.0
HELPER_GRACE_S = 5.0
# With the connector's default batch settings the tail waits for its own timer (60 s when this
# was written); the stall allowance grows by this much for that variant.
DEFAULT_BATCH_ALLOWANCE_S = 120.0


class BenchFailure(Exception):
    """A run that did not do what it must (wrong row count, bad exit, stall): stop loudly."""


@dataclass(frozen=True)
class Settings:
    per_message: list[int]
    observations: dict[int, int]
    repeat: dict[int, int]  # per observations-per-message
    max_seconds: float
    default_batch: bool
    latency_rate: float
    latency_seconds: float
    latency_per_message: int
    stall_s: float
    quick: bool


# --- processes ---------------------------------------------------------------------------------


def _popen(
    argv: list[str], cwd: Path, env: dict[str, str], out: IO[bytes] | int, err: IO[bytes]
) -> subprocess.Popen[bytes]:
    # A new session: Ctrl-C in the terminal reaches only the harness (which then cleans up),
    # and the program's process group id is its pid (ProcessTree relies on it).
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


class LoadServer:
    """loadserver.py in its own process; its stdout events arrive through a reader thread."""

    def __init__(self, args: list[str], run_dir: Path) -> None:
        self.stderr_path = run_dir / "server.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = _popen(
                [sys.executable, str(HERE / "loadserver.py"), "--token", TOKEN, *args],
                run_dir,
                dict(os.environ),
                subprocess.PIPE,
                err,
            )
        self._lines: queue.Queue[list[str]] = queue.Queue()
        threading.Thread(target=self._read, name="loadserver-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.decode().split())
        self._lines.put(["exited"])

    def port(self) -> int:
        deadline = time.monotonic() + PORT_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if event[0] == "port":
                return int(event[1])
            if event[0] == "exited":
                raise BenchFailure(f"load server died before listening:\n{_tail(self.stderr_path)}")
        raise BenchFailure(f"load server did not report its port within {PORT_TIMEOUT_S:.0f} s")

    def events(self) -> Iterator[list[str]]:
        while True:
            try:
                event = self._lines.get_nowait()
            except queue.Empty:
                return
            if event[0] in ("reconnect", "aborted", "exited"):
                raise BenchFailure(f"load server: {' '.join(event)}\n{_tail(self.stderr_path)}")
            yield event

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Program:
    """One measured program: its process tree sampled, its exit reaped with wait4."""

    def __init__(self, name: str, argv: list[str], run_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.stdout_path, self.stderr_path = run_dir / f"{name}.stdout", run_dir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = _popen(argv, run_dir, env, out, err)
        self.tree = ProcessTree(self.proc.pid)
        self.reaper = Reaper(self.proc.pid)

    def fail(self, message: str) -> BenchFailure:
        return BenchFailure(f"{self.name}: {message}\n  stderr tail:\n{_tail(self.stderr_path)}")

    def exited(self) -> bool:
        if self.reaper.exited():
            self.proc.returncode = self.reaper.exit_code  # reaped by wait4, not by Popen
            return True
        return False

    def stop(self) -> int:
        """SIGTERM, then wait (sampling) for a clean exit; returns the exit code."""
        # Not reaped yet, so the pid is still ours (if it is reaped meanwhile: nothing to stop).
        if not self.exited():
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not self.exited():
            if time.monotonic() > deadline:
                raise self.fail(f"still running {STOP_TIMEOUT_S:.0f} s after SIGTERM")
            self.tree.sample()
            self.reaper.wait(TICK_S)
        return self.reaper.exit_code or 0

    def cpu_s(self) -> float:
        return max(self.reaper.cpu_s, self.tree.sampled_cpu_s)

    def close(self) -> None:
        """Kill whatever of the tree is left. Leftovers after a clean exit are reported."""
        exited_alone = self.exited()
        if exited_alone:  # helpers (multiprocessing's resource tracker) exit a moment later
            deadline = time.monotonic() + HELPER_GRACE_S
            while self.tree.running() and time.monotonic() < deadline:
                time.sleep(TICK_S)
        killed = self.tree.kill()
        if self.reaper.wait(10):
            self.exited()
        if exited_alone and killed:
            print(
                f"  warning: {self.name} left {len(killed)} process(es) running after it exited; killed {killed}",
                file=sys.stderr,
            )


# --- what landed -------------------------------------------------------------------------------


class Landing:
    """Parquet files visible under a folder; row counts read once per file from the footer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: dict[Path, int] = {}
        self.first_seen: dict[Path, float] = {}  # wall clock (time.time)

    def poll(self) -> int:
        seen_at = time.time()
        for directory, subdirs, names in os.walk(self.root):
            # Hidden names are temporary files; _ledger and _dead_letter hold no rows.
            subdirs[:] = [d for d in subdirs if not d.startswith((".", "_"))]
            for name in names:
                path = Path(directory, name)
                if (
                    name.startswith((".", "_"))
                    or not name.endswith(".parquet")
                    or path in self.rows
                ):
                    continue
                try:
                    self.rows[path] = pq.read_metadata(path).num_rows
                except (OSError, pa.ArrowInvalid):
                    continue  # vanished, or not complete: next poll
                self.first_seen[path] = seen_at
        return sum(self.rows.values())


def check_landing(program: Program, landing: Path, expected: int) -> None:
    glob = str(landing / "**" / "*.parquet")
    query = "select count(*), count(distinct (track_id, timestamp)) from read_parquet(?, hive_partitioning=true)"
    with duckdb.connect() as con:
        row = con.execute(query, [glob]).fetchone()
    count, distinct = row if row is not None else (0, 0)
    if count != expected or distinct != expected:
        raise program.fail(
            f"DuckDB sees {count:,} rows, {distinct:,} distinct (track_id, timestamp); {expected:,} were sent"
        )


CONVERTER_MODULE = "connector.worker"  # the converter child's argv: python -m connector.worker


def process_split(program: Program, observations: int) -> dict[str, Any]:
    """CPU and peak RSS of ours split between the receiving process (the program itself) and
    its converter child (every process running connector.worker: more than one if it was
    restarted). From the /proc samples, so each process misses its last sampling interval."""
    tree, root = program.tree, program.proc.pid
    cpu = tree.cpu_s_by_pid()
    converters = [pid for pid, argv in tree.cmdlines.items() if CONVERTER_MODULE in argv]
    others = [pid for pid in cpu if pid != root and pid not in converters]
    receiver_cpu = cpu.get(root, 0.0)
    converter_cpu = sum(cpu.get(pid, 0.0) for pid in converters)
    split = {
        "receiver_cpu_s": receiver_cpu,
        "converter_cpu_s": converter_cpu,
        "receiver_cpu_s_per_million": receiver_cpu / observations * 1e6,
        "converter_cpu_s_per_million": converter_cpu / observations * 1e6,
        "receiver_peak_rss_mib": tree.peak_rss_by_pid.get(root, 0) / 2**20,
        "converter_peak_rss_mib": max((tree.peak_rss_by_pid[p] for p in converters), default=0)
        / 2**20,
        "converter_processes": len(converters),
    }
    if others:  # nothing else is expected in the tree: say so if something was
        split["other_processes"] = len(others)
        split["other_cpu_s"] = sum(cpu[pid] for pid in others)
    return split


def split_text(figures: dict[str, Any]) -> str:
    return (
        f"receiver {figures['receiver_cpu_s_per_million']:.2f} CPU-s/M, "
        f"converter {figures['converter_cpu_s_per_million']:.2f} CPU-s/M; "
        f"RSS receiver {figures['receiver_peak_rss_mib']:.0f} MiB, "
        f"converter {figures['converter_peak_rss_mib']:.0f} MiB"
    )


# --- one run -----------------------------------------------------------------------------------


def connector_config(run_dir: Path, port: int, batch: dict[str, float] | None) -> Path:
    lines = [
        "[source]",
        f'url = "ws://127.0.0.1:{port}"',
        'observation_spec_id = "baz"',
        'path = "/{observation_spec_id}"',
        'token_env = "BENCH_TOKEN"',
        "permessage_deflate = false",
        "[[subscriptions]]",
        'name = "everything"',
        "query = {}",
    ]
    if batch is not None:
        lines += ["[batch]", *(f"{key} = {value}" for key, value in batch.items())]
    lines += [
        "[sink]",
        f"url = {json.dumps(str(run_dir / 'landing'))}",
        "[state]",
        f"dir = {json.dumps(str(run_dir / 'state'))}",
        "[backfill]",
        "enabled = false",
    ]
    path = run_dir / "connector.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def program_env() -> dict[str, str]:
    # GOTHAM_CONNECTOR__* would silently override the config under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOTHAM_CONNECTOR__")}
    env["BENCH_TOKEN"] = TOKEN
    return env


@dataclass
class Progress:
    """Server events and the stall watchdog shared by every kind of run."""

    stall_s: float
    first: float | None = None  # monotonic time of the first data frame sent
    done: float | None = None  # ... of the last one
    frames: int = 0
    observations: int = 0
    _marker: tuple[int, int] = (0, 0)
    _moved: float = field(default_factory=time.monotonic)

    def update(self, server: LoadServer, landed: int) -> None:
        for event in server.events():
            if event[0] == "first":
                self.first = float(event[1])
            elif event[0] == "sent":
                self.frames = int(event[1])
            elif event[0] == "done":
                self.frames, self.observations, self.done = (
                    int(event[1]),
                    int(event[2]),
                    float(event[3]),
                )
        now = time.monotonic()
        if (self.frames, landed) != self._marker:
            self._marker, self._moved = (self.frames, landed), now
        elif now - self._moved > self.stall_s:
            where = (
                "before the first frame"
                if self.first is None
                else f"after {self.frames:,} frames sent, {landed:,} rows landed"
            )
            raise BenchFailure(f"no progress for {self.stall_s:.0f} s ({where})")

    def finish(self, server: LoadServer, expected: int | None) -> tuple[float, float]:
        """(first, last) frame times, once the server's `done` line is read: the program may
        finish before that line crosses the pipe, so wait for it a little."""
        deadline = time.monotonic() + 10.0
        while self.done is None and time.monotonic() < deadline:
            self.update(server, self._marker[1])
            time.sleep(TICK_S)
        if self.first is None or self.done is None:
            raise BenchFailure("the load server never reported its last frame sent")
        if expected is not None and self.observations != expected:
            raise BenchFailure(
                f"the load server sent {self.observations:,} observations, not {expected:,}"
            )
        return self.first, self.done


def run_once(
    kind: str, per_message: int, total: int, settings: Settings, session: Path, index: int
) -> dict[str, Any]:
    run_dir = session / f"run-{index:03d}-{kind}-{per_message}"
    run_dir.mkdir()
    lands = kind in (OURS, OURS_DEFAULT)
    server_args = [
        "--mode",
        "blast",
        "--observations",
        str(total),
        "--per-message",
        str(per_message),
    ]
    server_args += ["--cache", str(session / f"frames-{total}-{per_message}.txt")]
    if not lands:
        server_args.append("--close")
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, run_dir, ignore_errors=True)
        server = LoadServer(server_args, run_dir)
        cleanup.callback(server.close)
        port = server.port()
        url = f"ws://127.0.0.1:{port}/baz"
        if lands:
            batch = (
                None
                if kind == OURS_DEFAULT
                else {"max_rows": MAX_ROWS, "max_seconds": settings.max_seconds}
            )
            config = connector_config(run_dir, port, batch)
            argv = [sys.executable, "-m", "connector", "run", "--config", str(config)]
        elif kind == OBVIOUS:
            argv = [sys.executable, str(HERE / "obvious.py"), url, str(run_dir / "out")]
        else:
            argv = [sys.executable, str(HERE / "ceiling.py"), url]
        program = Program(kind, argv, run_dir, program_env())
        cleanup.callback(program.close)
        stall = settings.stall_s + (DEFAULT_BATCH_ALLOWANCE_S if kind == OURS_DEFAULT else 0.0)
        progress = Progress(stall)
        landing = Landing(run_dir / ("landing" if lands else "out"))
        landed, next_poll, end = 0, 0.0, 0.0
        while True:
            program.tree.sample()
            progress.update(server, landed)
            now = time.monotonic()
            if lands and now >= next_poll:
                landed, next_poll = landing.poll(), now + LANDING_POLL_S
                if landed > total:
                    raise program.fail(f"{landed:,} rows landed, only {total:,} were sent")
                if landed == total:
                    end = now
                    break
            if program.exited():
                if lands:
                    raise program.fail(
                        f"exited with code {program.reaper.exit_code} after landing {landed:,} of {total:,} rows"
                    )
                if program.reaper.exit_code != 0:
                    raise program.fail(f"exited with code {program.reaper.exit_code}")
                end = program.reaper.exit_time
                break
            program.reaper.wait(TICK_S)
        if lands:
            code = program.stop()
            if code != 0:
                raise program.fail(f"exit code {code} after SIGTERM (expected 0)")
            check_landing(program, run_dir / "landing", total)
        first, done = progress.finish(server, total)
        if kind == OBVIOUS and (rows := landing.poll()) != total:
            raise program.fail(f"wrote {rows:,} rows, {total:,} were sent")
        if kind == CEILING:
            received = int(program.stdout_path.read_text().strip() or 0)
            if received != progress.frames + 1:  # + the subscribed reply
                raise program.fail(
                    f"received {received:,} frames, {progress.frames + 1:,} were sent"
                )
        return {
            "program": kind,
            "per_message": per_message,
            "observations": total,
            "seconds": end - first,
            "obs_per_s": total / (end - first),
            "drain_obs_per_s": total / max(done - first, 1e-9),
            "cpu_s": program.cpu_s(),
            "cpu_s_per_million": program.cpu_s() / total * 1e6,
            "peak_rss_mib": program.tree.peak_rss_bytes / 2**20,
            **(process_split(program, total) if lands else {}),
        }


# --- latency -----------------------------------------------------------------------------------


def latency_run(settings: Settings, session: Path) -> dict[str, Any]:
    """Steady rate into ours; latency of a row = its file's first-seen time - its timestamp."""
    run_dir = session / "run-latency"
    run_dir.mkdir()
    per_message = settings.latency_per_message
    server_args = [
        "--mode",
        "rate",
        "--rate",
        str(settings.latency_rate),
        "--seconds",
        str(settings.latency_seconds),
    ]
    server_args += ["--per-message", str(per_message)]
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, run_dir, ignore_errors=True)
        server = LoadServer(server_args, run_dir)
        cleanup.callback(server.close)
        batch = {"max_rows": MAX_ROWS, "max_seconds": settings.max_seconds}
        config = connector_config(run_dir, server.port(), batch)
        argv = [sys.executable, "-m", "connector", "run", "--config", str(config)]
        program = Program(OURS, argv, run_dir, program_env())
        cleanup.callback(program.close)
        progress = Progress(settings.stall_s)
        landing = Landing(run_dir / "landing")
        landed = 0
        while progress.done is None or landed < progress.observations:
            program.tree.sample()
            progress.update(server, landed)
            landed = landing.poll()
            if progress.done is not None and landed > progress.observations:
                raise program.fail(
                    f"{landed:,} rows landed, only {progress.observations:,} were sent"
                )
            if program.exited():
                raise program.fail(
                    f"exited with code {program.reaper.exit_code} after landing {landed:,} rows"
                )
            program.reaper.wait(TICK_S)
        code = program.stop()
        if code != 0:
            raise program.fail(f"exit code {code} after SIGTERM (expected 0)")
        check_landing(program, run_dir / "landing", progress.observations)
        first, done = progress.finish(server, None)
        # Read after the run, so the harness does not compete with the connector for CPU.
        chunks: list[pa.Array] = []
        for path, seen in landing.first_seen.items():
            stamps = pq.read_table(path, columns=["timestamp"]).column("timestamp")
            micros = stamps.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            chunks += pc.subtract(pa.scalar(int(seen * 1e6), pa.int64()), micros).chunks
        p50, p99 = pc.quantile(pa.chunked_array(chunks, pa.int64()), q=[0.5, 0.99]).to_pylist()
        return {
            "target_obs_per_s": settings.latency_rate,
            "sent_obs_per_s": progress.observations / (done - first),
            "seconds": settings.latency_seconds,
            "per_message": per_message,
            "observations": progress.observations,
            "files": len(landing.first_seen),
            "max_rows": MAX_ROWS,
            "max_seconds": settings.max_seconds,
            "p50_s": p50 / 1e6,
            "p99_s": p99 / 1e6,
            "target_p99_s": settings.max_seconds + 2.0,
            "met": p99 / 1e6 <= settings.max_seconds + 2.0,
            **process_split(program, progress.observations),
        }


# --- the whole benchmark -----------------------------------------------------------------------


def programs(settings: Settings) -> list[str]:
    return [OURS, *([OURS_DEFAULT] if settings.default_batch else []), OBVIOUS, CEILING]


def run_all(
    settings: Settings, session: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    kinds = programs(settings)
    plan = [
        (per_message, rep, kinds[(i + rep) % len(kinds)])  # rotated: no program always goes first
        for per_message in settings.per_message
        for rep in range(settings.repeat[per_message])
        for i in range(len(kinds))
    ]
    runs = []
    for index, (per_message, rep, kind) in enumerate(plan, 1):
        total = settings.observations[per_message]
        if index > 1 and plan[index - 2][0] != per_message:
            for cached in session.glob("frames-*.txt"):  # hundreds of MB each: keep one at a time
                cached.unlink()
        began = time.monotonic()
        run = run_once(kind, per_message, total, settings, session, index)
        run["repetition"] = rep
        run["wall_s"] = time.monotonic() - began  # with server start-up and the checks
        runs.append(run)
        print(
            f"  [{index}/{len(plan)}] {per_message:>4}/msg {kind:<12} {run['obs_per_s']:>10,.0f} obs/s"
            f"  {run['cpu_s_per_million']:6.2f} CPU-s/M  {run['peak_rss_mib']:7.1f} MiB"
            f"  ({run['wall_s']:.0f} s)",
            file=sys.stderr,
        )
        if "receiver_cpu_s" in run:
            print(f"        {kind}: {split_text(run)}", file=sys.stderr)
    latency = None
    if settings.latency_seconds > 0:
        print(
            f"  latency run: {settings.latency_rate:,.0f} obs/s for {settings.latency_seconds:g} s",
            file=sys.stderr,
        )
        latency = latency_run(settings, session)
        print(f"        {OURS}: {split_text(latency)}", file=sys.stderr)
    return runs, latency


def summarize(runs: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    metrics = ("obs_per_s", "drain_obs_per_s", "cpu_s_per_million", "peak_rss_mib")
    rows = []
    for per_message in settings.per_message:
        medians = {}
        for kind in programs(settings):
            mine = [r for r in runs if r["per_message"] == per_message and r["program"] == kind]
            medians[kind] = {m: statistics.median(r[m] for r in mine) for m in metrics}
            if kind in (OURS, OURS_DEFAULT):
                medians[kind].update(
                    {m: statistics.median(r[m] for r in mine) for m in SPLIT_METRICS}
                )
        for kind, figures in medians.items():
            row: dict[str, Any] = {
                "per_message": per_message,
                "program": kind,
                "observations": settings.observations[per_message],
                **figures,
            }
            if kind in (OURS, OURS_DEFAULT):
                obvious, ceiling = medians[OBVIOUS], medians[CEILING]
                row["throughput_vs_obvious"] = figures["obs_per_s"] / obvious["obs_per_s"]
                row["cpu_per_obs_vs_obvious"] = (
                    figures["cpu_s_per_million"] / obvious["cpu_s_per_million"]
                )
                row["rss_vs_obvious"] = figures["peak_rss_mib"] / obvious["peak_rss_mib"]
                row["throughput_vs_ceiling"] = figures["obs_per_s"] / ceiling["obs_per_s"]
            rows.append(row)
    return rows


SPLIT_METRICS = (
    "receiver_cpu_s_per_million",
    "converter_cpu_s_per_million",
    "receiver_peak_rss_mib",
    "converter_peak_rss_mib",
)

HEADER = (
    "obs/msg",
    "program",
    "obs/s",
    "drain obs/s",
    "CPU-s/M",
    "peak RSS MiB",
    "thr vs obvious",
    "CPU/obs vs obvious",
    "RSS vs obvious",
    "thr vs ceiling",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    ratios = [
        f"{row[key]:.2f}x" if key in row else ""
        for key in (
            "throughput_vs_obvious",
            "cpu_per_obs_vs_obvious",
            "rss_vs_obvious",
            "throughput_vs_ceiling",
        )
    ]
    return [
        str(row["per_message"]),
        row["program"],
        f"{row['obs_per_s']:,.0f}",
        f"{row['drain_obs_per_s']:,.0f}",
        f"{row['cpu_s_per_million']:.2f}",
        f"{row['peak_rss_mib']:.0f}",
        *ratios,
    ]


def latency_text(latency: dict[str, Any] | None) -> str:
    if latency is None:
        return "landing latency: not measured (--latency-seconds 0)"
    verdict = "met" if latency["met"] else "MISSED"
    return (
        f"landing latency (ours, {latency['target_obs_per_s']:,.0f} obs/s target, {latency['sent_obs_per_s']:,.0f} sent, "
        f"{latency['per_message']}/msg, {latency['seconds']:g} s; batch.max_rows = {latency['max_rows']:,}, "
        f"batch.max_seconds = {latency['max_seconds']:g}): p50 {latency['p50_s']:.2f} s, p99 {latency['p99_s']:.2f} s; "
        f"target p99 <= max_seconds + 2 s = {latency['target_p99_s']:g} s: {verdict}"
    )


LEGEND = (
    "obs/s: first data frame sent -> every row visible as Parquet (ours; includes the wait for "
    "batch.max_seconds to cut the tail) or -> exit (obvious, ceiling). drain obs/s: first -> last "
    "frame sent. CPU-s/M: CPU of the whole process tree over its life (start-up included) per "
    "million observations. Peak RSS: summed over the tree. Ratios: ours / obvious script "
    "(throughput: higher is better; CPU and RSS: lower is better) and ours / receive-and-discard."
)


def render_text(
    summary: list[dict[str, Any]], latency: dict[str, Any] | None, settings: Settings
) -> str:
    cells = [list(HEADER), *(table_cells(row) for row in summary)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = []
    for n, line in enumerate(cells):
        if n and line[0] != cells[n - 1][0]:
            lines.append("")
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    return "\n".join(
        [
            *lines,
            "",
            *split_lines(summary),
            "",
            textwrap.fill(LEGEND, 100),
            "",
            latency_text(latency),
            *(["", textwrap.fill(note, 100)] if (note := repeat_note(settings)) else []),
        ]
    )


def split_lines(summary: list[dict[str, Any]]) -> list[str]:
    """Where ours spends its CPU and memory (medians): one line per configuration."""
    return [
        f"{row['per_message']:>4}/msg {row['program']}: {split_text(row)}"
        for row in summary
        if "receiver_cpu_s_per_million" in row
    ]


def repeat_note(settings: Settings) -> str:
    counts = {settings.repeat[k] for k in settings.per_message}
    if len(counts) == 1:
        return ""
    each = ", ".join(f"{k}/msg: {settings.repeat[k]}" for k in settings.per_message)
    return (
        f"Repetitions differ by configuration ({each}): fewer at 1 and 10 per message keep the "
        "default run under ~12 minutes on a 2-core machine (--repeat N sets them all)."
    )


def render_markdown(
    summary: list[dict[str, Any]],
    latency: dict[str, Any] | None,
    machine: dict[str, Any],
    settings: Settings,
) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * 2 + "---:|" * (len(HEADER) - 2),
        *("| " + " | ".join(table_cells(row)) + " |" for row in summary),
        "",
        "CPU and peak RSS of ours, receiving process vs converter process (medians):",
        "",
        *(f"- {line.strip()}" for line in split_lines(summary)),
        "",
        latency_text(latency),
        "",
        (
            f"Medians of {repetitions(settings)} alternating repetition(s) on {machine['nproc']} core(s), Python {machine['python']}, "
            f"pyarrow {machine['pyarrow']}, websockets {machine['websockets']}, {machine['date'][:10]}; "
            f"`{command()}`." + (f" {note}" if (note := repeat_note(settings)) else "")
        ),
        "",
        LEGEND,
    ]
    return "\n".join(lines) + "\n"


def repetitions(settings: Settings) -> str:
    counts = [settings.repeat[k] for k in settings.per_message]
    if len(set(counts)) == 1:
        return str(counts[0])
    return (
        "/".join(map(str, counts))
        + " ("
        + "/".join(map(str, settings.per_message))
        + " per message)"
    )


def command() -> str:
    return " ".join(["python benchmarks/bench.py", *sys.argv[1:]])


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    probe = subprocess.run(
        [sys.executable, "-c", "import connector; print(connector.__file__)"],
        cwd=tempfile.gettempdir(),
        env=program_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("pyarrow", "websockets", "duckdb", "msgspec")},
        "git_commit": git("rev-parse", "HEAD"),
        "connector_uncommitted_changes": bool(git("status", "--porcelain", "--", "connector")),
        "connector_module": probe.stdout.strip() or probe.stderr.strip()[-200:],
        "load_average_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (< 1 min): small counts, 1 repetition, max_seconds 1, short latency run",
    )
    parser.add_argument(
        "--per-message",
        type=int,
        nargs="+",
        choices=sorted(DEFAULT_OBSERVATIONS),
        help="observations per message to run (default: all)",
    )
    parser.add_argument(
        "--observations",
        nargs="+",
        default=[],
        metavar="PER_MESSAGE=COUNT",
        help="total observations per configuration, e.g. 100=500000 (defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_OBSERVATIONS.items())
        + ")",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions, programs alternating in each (default: "
        + ", ".join(f"{v} at {k}/msg" for k, v in DEFAULT_REPEAT.items())
        + "; 1 with --quick)",
    )
    parser.add_argument(
        "--default-batch",
        action="store_true",
        help="also run ours with the connector's default [batch] settings",
    )
    parser.add_argument(
        "--max-seconds", type=float, help="batch.max_seconds for ours (default 5.0)"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="observations/s of the latency run (default 50000; 0 skips it)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, help="duration of the latency run (default 20; 0 skips it)"
    )
    parser.add_argument("--latency-per-message", type=int, default=100)
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="fail a run that makes no progress for this long",
    )
    args = parser.parse_args(argv)
    observations = dict(QUICK_OBSERVATIONS if args.quick else DEFAULT_OBSERVATIONS)
    for item in args.observations:
        key, _, value = item.partition("=")
        try:
            observations[int(key)] = int(value.replace("_", ""))
        except ValueError:
            parser.error(f"--observations expects PER_MESSAGE=COUNT, got {item!r}")

    def given(value: float | None, quick: float, normal: float) -> float:
        if value is not None:
            return value
        return quick if args.quick else normal

    latency_rate = given(args.latency_rate, 20_000.0, 50_000.0)
    latency_seconds = given(args.latency_seconds, 3.0, 20.0)
    settings = Settings(
        per_message=args.per_message or sorted(DEFAULT_OBSERVATIONS),
        observations=observations,
        repeat={
            k: args.repeat if args.repeat is not None else 1 if args.quick else DEFAULT_REPEAT[k]
            for k in DEFAULT_OBSERVATIONS
        },
        max_seconds=given(args.max_seconds, 1.0, 5.0),
        default_batch=args.default_batch,
        latency_rate=latency_rate,
        latency_seconds=latency_seconds if latency_rate > 0 else 0.0,
        latency_per_message=args.latency_per_message,
        stall_s=args.stall_timeout,
        quick=args.quick,
    )
    if any(settings.repeat[k] < 1 or settings.observations[k] < 1 for k in settings.per_message):
        parser.error("--repeat and every observation count must be at least 1")
    return settings


@contextmanager
def session_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gotham-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    settings = parse_args()
    # SIGTERM unwinds like Ctrl-C, so every `finally` kills its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    machine = machine_info()
    started = time.monotonic()
    try:
        with session_dir() as session:
            runs, latency = run_all(settings, session)
    except BenchFailure as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    summary = summarize(runs, settings)
    print(render_text(summary, latency, settings))
    RESULTS.mkdir(exist_ok=True)
    document = {
        "machine": machine,
        "command": command(),
        "settings": asdict(settings),
        "elapsed_s": time.monotonic() - started,
        "summary": summary,
        "latency": latency,
        "runs": runs,
    }
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(render_markdown(summary, latency, machine, settings))
    print(
        f"\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'} ({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
