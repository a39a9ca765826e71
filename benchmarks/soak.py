"""Soak test: the connector fed a steady stream for minutes, its memory and spool watched.

Why: a throughput run lasts seconds, too short to show a leak or a spool that never shrinks.
Here `python -m connector run` (bench.py's "ours" config, but the connector's default [batch]
settings unless --max-rows/--max-seconds/--max-bytes are given) is fed by loadserver.py in
`rate` mode (default 30,000 observations/s at 100 per message for 10 minutes). Every second:
RSS of the connector's process tree (sum and per process: receiver, converter), the spool's
size on disk (every file under state/spool), rows landed so far (Parquet footers, read once per
file) and so the landing lag, sent - landed.

At the end: rows all landed, SIGTERM, exit code 0, landed == sent, no duplicate (track_id,
timestamp) (DuckDB). Anything else fails the run (exit code 1).

Reported, not enforced: the RSS slope over the second half of the sending (least squares, in
MiB per minute: the first half includes warm-up, the first cuts and the converter's imports),
RSS min/max, the spool's largest size against two bounds, and the largest landing lag.

The spool bounds. A cut holds cut_bytes = min(batch.max_bytes, rows_per_cut x 460 B), with
rows_per_cut = min(batch.max_rows, rate x batch.max_seconds) (460 B: a generous figure for an
observation's JSON, ~390 B in these frames, plus the spool's per-record overhead). With one cut
filling and one in flight, unlanded data is at most 2 x cut_bytes: that is the first bound.
But the spool deletes whole segments, and only once every record in them is committed: the
segment being written (up to state.segment_bytes) always stays on disk and so does the oldest
segment holding an uncommitted record, from its start. So the spool can reach
state.segment_bytes + 2 x cut_bytes while nothing is wrong: the second bound, the one a
healthy connector keeps to. Beyond it, cuts are queueing (the converter falls behind) or
segments are not released.

Run: python benchmarks/soak.py [--minutes 10] [--rate 30000] [--per-message 100]
     [--max-rows N] [--max-seconds S] [--max-bytes B]
Results: stdout, benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import (
    CONVERTER_MODULE,
    OURS,
    RESULTS,
    BenchFailure,
    Landing,
    LoadServer,
    Program,
    Progress,
    check_landing,
    connector_config,
    machine_info,
    process_split,
    program_env,
    session_dir,
)

TICK_S = 0.1  # process tree (per-process peaks between samples), server events, exit
SAMPLE_S = 1.0  # the recorded series: RSS, spool, landed
PROGRESS_S = 0.25  # the load server's `sent` lines: sent - landed is at most this stale
BYTES_PER_OBSERVATION = 460
MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="sending time (default 10)")
    parser.add_argument("--rate", type=float, default=30_000.0, help="observations/s")
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--max-rows", type=int, help="batch.max_rows (default: the connector's)")
    parser.add_argument(
        "--max-seconds", type=float, help="batch.max_seconds (default: the connector's)"
    )
    parser.add_argument("--max-bytes", type=int, help="batch.max_bytes (default: the connector's)")
    parser.add_argument(
        "--distinct",
        type=int,
        default=200_000,
        help="observations' worth of frames the load server generates and reuses in turn "
        "(timestamps are set at send time, so rows stay unique)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="fail when nothing moves for this long (plus batch.max_seconds at the end)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.per_message < 1:
        parser.error("--minutes, --rate and --per-message must be positive")
    return args


def batch_table(args: argparse.Namespace) -> dict[str, float] | None:
    given = {
        "max_rows": args.max_rows,
        "max_seconds": args.max_seconds,
        "max_bytes": args.max_bytes,
    }
    batch = {key: value for key, value in given.items() if value is not None}
    return batch or None


def effective_settings(config: Path) -> dict[str, Any]:
    """The batch and state settings the connector will use: its own loader reads the file
    (the environment is left out, as program_env() leaves GOTHAM_CONNECTOR__* out)."""
    from connector.config import load_config

    cfg = load_config(config, environ={})
    return {
        "max_rows": cfg.batch.max_rows,
        "max_bytes": cfg.batch.max_bytes,
        "max_seconds": cfg.batch.max_seconds,
        "segment_bytes": cfg.state.segment_bytes,
        "max_spool_bytes": cfg.state.max_spool_bytes,
    }


def spool_bounds(effective: dict[str, Any], rate: float) -> dict[str, Any]:
    rows_per_cut = min(effective["max_rows"], math.ceil(rate * effective["max_seconds"]))
    cut_bytes = min(effective["max_bytes"], rows_per_cut * BYTES_PER_OBSERVATION)
    limit = (
        "max_bytes"
        if cut_bytes == effective["max_bytes"]
        else "max_rows"
        if rows_per_cut == effective["max_rows"]
        else "max_seconds"
    )
    return {
        "rows_per_cut": rows_per_cut,
        "cut_bytes": cut_bytes,
        "cut_limited_by": limit,
        "bytes_per_observation": BYTES_PER_OBSERVATION,
        "two_cuts_bytes": 2 * cut_bytes,
        "segment_plus_two_cuts_bytes": effective["segment_bytes"] + 2 * cut_bytes,
        "formula": (
            "cut_bytes = min(batch.max_bytes, min(batch.max_rows, rate x batch.max_seconds) x "
            f"{BYTES_PER_OBSERVATION} B); bound 1 = 2 x cut_bytes (one cut filling, one in "
            "flight); bound 2 = state.segment_bytes + 2 x cut_bytes (the spool deletes whole "
            "segments once committed, and never the one being written)"
        ),
    }


def spool_bytes(directory: Path) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # released between listing and stat
    return total


def roles(program: Program) -> dict[int, str]:
    root = program.proc.pid
    return {
        pid: "receiver" if pid == root else "converter" if CONVERTER_MODULE in argv else "other"
        for pid, argv in program.tree.cmdlines.items()
    }


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return None
    slope, _ = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return slope * 60.0


def run(args: argparse.Namespace, session: Path) -> dict[str, Any]:
    run_dir = session / "soak"
    run_dir.mkdir()
    seconds = args.minutes * 60.0
    server_args = ["--mode", "rate", "--rate", str(args.rate), "--seconds", str(seconds)]
    server_args += ["--per-message", str(args.per_message), "--distinct", str(args.distinct)]
    server_args += ["--progress-seconds", str(PROGRESS_S)]
    with ExitStack() as cleanup:
        server = LoadServer(server_args, run_dir)
        cleanup.callback(server.close)
        config = connector_config(run_dir, server.port(), batch_table(args))
        effective = effective_settings(config)
        bounds = spool_bounds(effective, args.rate)
        argv = [sys.executable, "-m", "connector", "run", "--config", str(config)]
        program = Program(OURS, argv, run_dir, program_env())
        cleanup.callback(program.close)
        started = time.monotonic()
        progress = Progress(args.stall_timeout + effective["max_seconds"])
        landing = Landing(run_dir / "landing")
        spool_dir = run_dir / "state" / "spool"
        samples: list[dict[str, Any]] = []
        landed, next_sample, next_report = 0, started, started + 60.0
        while True:
            program.tree.sample()
            progress.update(server, landed)
            now = time.monotonic()
            if now >= next_sample:
                next_sample = max(next_sample + SAMPLE_S, now)
                landed = landing.poll()
                sent = (
                    progress.observations if progress.done else progress.frames * args.per_message
                )
                by_role: dict[str, int] = {}
                pid_roles = roles(program)
                for pid, rss in program.tree.rss_by_pid.items():
                    role = pid_roles.get(pid, "other")
                    by_role[role] = by_role.get(role, 0) + rss
                samples.append(
                    {
                        "t": now - started,
                        "sending": progress.first is not None and progress.done is None,
                        "sent": sent,
                        "landed": landed,
                        "lag": sent - landed,
                        "rss_mib": program.tree.rss_bytes / MiB,
                        **{f"{role}_rss_mib": rss / MiB for role, rss in by_role.items()},
                        "rss_mib_by_pid": {
                            str(pid): rss / MiB for pid, rss in program.tree.rss_by_pid.items()
                        },
                        "spool_mib": spool_bytes(spool_dir) / MiB,
                    }
                )
                if now >= next_report:
                    next_report += 60.0
                    last = samples[-1]
                    print(
                        f"  {last['t'] / 60:4.1f} min: sent {sent:,}, landed {landed:,}, "
                        f"RSS {last['rss_mib']:.0f} MiB, spool {last['spool_mib']:.0f} MiB",
                        file=sys.stderr,
                    )
                if progress.done is not None:
                    if landed > progress.observations:
                        raise program.fail(
                            f"{landed:,} rows landed, only {progress.observations:,} were sent"
                        )
                    if landed == progress.observations:
                        break
            if program.exited():
                raise program.fail(
                    f"exited with code {program.reaper.exit_code} after landing {landed:,} rows"
                )
            program.reaper.wait(TICK_S)
        all_landed = time.monotonic()
        code = program.stop()
        if code != 0:
            raise program.fail(f"exit code {code} after SIGTERM (expected 0)")
        spool_after_stop = spool_bytes(spool_dir)
        if (rows := landing.poll()) != progress.observations:
            raise program.fail(f"{rows:,} rows landed, {progress.observations:,} were sent")
        check_landing(program, run_dir / "landing", progress.observations)
        first, done = progress.finish(server, None)
        return summarize(
            args,
            effective,
            bounds,
            samples,
            program,
            landing,
            started=started,
            first=first,
            done=done,
            all_landed=all_landed,
            sent=progress.observations,
            exit_code=code,
            spool_after_stop=spool_after_stop,
        )
    raise AssertionError("unreachable")


def rss_figures(
    samples: list[dict[str, Any]], key: str, start: float, half: float, end: float
) -> dict[str, Any]:
    """Min and max from the first frame sent (not the interpreter's start-up) to the end;
    min, max and least-squares slope over the second half of the sending."""
    values = [s[key] for s in samples if key in s and s["t"] >= start]
    late = [(s["t"], s[key]) for s in samples if key in s and half <= s["t"] <= end]
    return {
        "min_mib": min(values, default=0.0),
        "max_mib": max(values, default=0.0),
        "second_half_min_mib": min((v for _, v in late), default=0.0),
        "second_half_max_mib": max((v for _, v in late), default=0.0),
        "second_half_slope_mib_per_min": slope_per_minute(late),
    }


def summarize(
    args: argparse.Namespace,
    effective: dict[str, Any],
    bounds: dict[str, Any],
    samples: list[dict[str, Any]],
    program: Program,
    landing: Landing,
    *,
    started: float,
    first: float,
    done: float,
    all_landed: float,
    sent: int,
    exit_code: int,
    spool_after_stop: int,
) -> dict[str, Any]:
    # Sample times are from the connector's start; the second half is of the sending period.
    send_start, send_end = first - started, done - started
    half = send_start + (send_end - send_start) / 2
    spool_max = max((s["spool_mib"] for s in samples), default=0.0) * MiB
    lags = [s["lag"] for s in samples if s["t"] >= send_start]
    return {
        "minutes": args.minutes,
        "target_obs_per_s": args.rate,
        "sent_obs_per_s": sent / max(done - first, 1e-9),
        "per_message": args.per_message,
        "batch": effective,
        "batch_given": batch_table(args) or "connector defaults",
        "sent": sent,
        "landed": sum(landing.rows.values()),
        "files": len(landing.rows),
        "duplicates": 0,  # check_landing passed
        "exit_code": exit_code,
        "drain_s": all_landed - done,  # last frame sent -> every row landed
        "cpu_s": program.cpu_s(),
        "cpu_s_per_million": program.cpu_s() / sent * 1e6,
        **process_split(program, sent),
        "rss": {
            "tree": rss_figures(samples, "rss_mib", send_start, half, send_end),
            "receiver": rss_figures(samples, "receiver_rss_mib", send_start, half, send_end),
            "converter": rss_figures(samples, "converter_rss_mib", send_start, half, send_end),
            "window_s": [half, send_end],
            # Every TICK_S, not every second: peaks between the recorded samples.
            "tree_peak_mib": program.tree.peak_rss_bytes / MiB,
        },
        "spool": {
            "max_bytes": spool_max,
            "after_stop_bytes": spool_after_stop,
            **bounds,
            "within_two_cuts": spool_max <= bounds["two_cuts_bytes"],
            "within_segment_plus_two_cuts": spool_max <= bounds["segment_plus_two_cuts_bytes"],
        },
        "lag": {
            "max_observations": max(lags, default=0),
            "median_observations": statistics.median(lags) if lags else 0,
            "max_seconds_at_rate": max(lags, default=0) / args.rate,
        },
        "samples": samples,
    }


def mib(value: float) -> str:
    return f"{value / MiB:,.0f} MiB"


def slope_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} MiB/min"


def report_lines(result: dict[str, Any]) -> list[str]:
    b, rss, spool, lag = result["batch"], result["rss"], result["spool"], result["lag"]
    given = "given" if isinstance(result["batch_given"], dict) else "connector defaults"
    t0, t1 = rss["window_s"]
    lines = [
        f"soak: {result['target_obs_per_s']:,.0f} obs/s target ({result['sent_obs_per_s']:,.0f} sent), "
        f"{result['per_message']}/msg, {result['minutes']:g} min; batch.max_rows {b['max_rows']:,}, "
        f"max_bytes {mib(b['max_bytes'])}, max_seconds {b['max_seconds']:g} ({given}); "
        f"state.segment_bytes {mib(b['segment_bytes'])}",
        f"correctness: sent {result['sent']:,}, landed {result['landed']:,} in {result['files']:,} files, "
        f"no duplicates, exit code {result['exit_code']} after SIGTERM; every row landed "
        f"{result['drain_s']:.1f} s after the last frame",
        f"RSS, tree, from the first frame: min {rss['tree']['min_mib']:.0f} MiB, max {rss['tree']['max_mib']:.0f} MiB "
        f"(peak {rss['tree_peak_mib']:.0f} MiB sampled every {TICK_S:g} s); "
        f"second half ({t0:.0f}-{t1:.0f} s): {rss['tree']['second_half_min_mib']:.0f}-"
        f"{rss['tree']['second_half_max_mib']:.0f} MiB, slope "
        f"{slope_text(rss['tree']['second_half_slope_mib_per_min'])} (least squares)",
    ]
    for role in ("receiver", "converter"):
        r = rss[role]
        lines.append(
            f"  {role}: min {r['min_mib']:.0f} MiB, max {r['max_mib']:.0f} MiB; second half "
            f"{r['second_half_min_mib']:.0f}-{r['second_half_max_mib']:.0f} MiB, slope "
            f"{slope_text(r['second_half_slope_mib_per_min'])}"
        )
    lines += [
        f"CPU: {result['cpu_s_per_million']:.2f} CPU-s/M over the tree; receiver "
        f"{result['receiver_cpu_s_per_million']:.2f}, converter {result['converter_cpu_s_per_million']:.2f} CPU-s/M"
        + (
            f" ({result['converter_processes']} converter processes: it was restarted)"
            if result["converter_processes"] > 1
            else ""
        ),
        f"spool: max {mib(spool['max_bytes'])} ({spool['max_bytes']:,.0f} B), {mib(spool['after_stop_bytes'])} after stop; "
        f"a cut is {spool['rows_per_cut']:,} rows (limited by {spool['cut_limited_by']}) = {mib(spool['cut_bytes'])} "
        f"at {spool['bytes_per_observation']} B/observation",
        f"  bound 1, 2 x cut = {mib(spool['two_cuts_bytes'])}: "
        + ("within" if spool["within_two_cuts"] else "EXCEEDED (expected: see bound 2)"),
        f"  bound 2, state.segment_bytes + 2 x cut = {mib(spool['segment_plus_two_cuts_bytes'])}: "
        + ("within" if spool["within_segment_plus_two_cuts"] else "EXCEEDED"),
        f"landing lag (sent - landed, sampled every {SAMPLE_S:g} s): max {lag['max_observations']:,} observations "
        f"({lag['max_seconds_at_rate']:.1f} s at the rate), median {lag['median_observations']:,.0f}",
    ]
    return lines


def render_markdown(result: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    lines = [
        ("  - " if line.startswith(" ") else "- ") + line.strip() for line in report_lines(result)
    ]
    return (
        "\n".join(
            [
                "Soak test of the connector (benchmarks/soak.py):",
                "",
                *lines,
                "",
                f"{machine['nproc']} core(s), Python {machine['python']}, pyarrow {machine['pyarrow']}, "
                f"{machine['date'][:10]}; `{command}`. Spool bound formula: {result['spool']['formula']}.",
            ]
        )
        + "\n"
    )


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = " ".join(["python benchmarks/soak.py", *sys.argv[1:]])
    machine = machine_info()
    began = time.monotonic()
    print(
        f"soak: {args.rate:,.0f} obs/s at {args.per_message}/msg for {args.minutes:g} min",
        file=sys.stderr,
    )
    try:
        with session_dir() as session:
            result = run(args, session)
    except BenchFailure as exc:
        print(f"\nSOAK FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    print("\n".join(report_lines(result)))
    RESULTS.mkdir(exist_ok=True)
    document = {
        "machine": machine,
        "command": command,
        "elapsed_s": time.monotonic() - began,
        **result,
    }
    (RESULTS / "soak.json").write_text(json.dumps(document, indent=1) + "\n")
    (RESULTS / "soak.md").write_text(render_markdown(result, machine, command))
    print(
        f"\nwritten: {RESULTS / 'soak.json'}, {RESULTS / 'soak.md'} ({time.monotonic() - began:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
