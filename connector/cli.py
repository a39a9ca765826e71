"""The only module that reads argv, sets up logging and maps errors to exit codes.

Exit codes: 0 clean stop, 1 unexpected failure, 2 config or query error, 3 token refused,
4 sink refused writes for good (data kept in the spool), 130 second stop signal.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import threading
import time
from pathlib import Path

from connector import __version__, icebergsync, logs
from connector.config import Config, load_config
from connector.errors import ConfigError, ConnectorError
from connector.secret import scrub

log = logging.getLogger("connector")


def build_parser() -> argparse.ArgumentParser:
    """Every command and its arguments. Imports the modules that define them, which must stay
    light: this runs at every start of `run` (test_purity holds it to that)."""
    parser = argparse.ArgumentParser(
        prog="gotham-connector",
        description="Land Palantir Gotham's observation stream as Parquet, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"gotham-connector {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="stream observations into the sink until stopped")
    run.add_argument("--config", type=Path, required=True)
    check = commands.add_parser("validate", help="check a config file offline")
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--show",
        action="store_true",
        help="print the effective configuration (file + environment + defaults) as TOML",
    )
    commands.add_parser("schema", help="print the observation schema as JSON")

    from connector.simulator import cli as simulator_cli

    simulate = commands.add_parser("simulate", help="serve the embedded Gotham simulator")
    simulator_cli.add_arguments(simulate)

    from connector import demo as demo_cmd

    demo_parser = commands.add_parser("demo", help="simulator + connector + DuckDB summary")
    demo_cmd.add_arguments(demo_parser)

    from connector import sqlshell

    sql_parser = commands.add_parser("sql", help="query the landing zone with DuckDB")
    sqlshell.add_arguments(sql_parser)

    icebergsync.add_arguments(commands.add_parser("iceberg", help="the [iceberg] table"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from connector.schema import schema_json

        sys.stdout.write(schema_json())
        return 0
    if args.command == "simulate":
        from connector.simulator import cli as simulator_cli

        logs.setup()
        return simulator_cli.run(args)
    if args.command == "demo":
        from connector import demo as demo_cmd

        return demo_cmd.run(args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return exc.exit_code
    if args.command == "validate":
        return _validated(cfg, args.config, args.show)
    if args.command == "sql":
        from connector import sqlshell

        return sqlshell.run(cfg, args)
    if args.command == "iceberg":
        return icebergsync.run(cfg, args)
    logs.setup(cfg.log.level, cfg.log.format)
    return run_connector(cfg, args.config)


def _validated(cfg: Config, path: Path, show: bool) -> int:
    # Warnings go to stderr: with --show, stdout is a config file that loads as it is.
    for sub in cfg.subscriptions:
        for note in sub.notes:
            print(f"warning: subscription {sub.name!r}: {note}", file=sys.stderr)
    summary = f"{path}: OK ({len(cfg.subscriptions)} subscription(s))"
    if not show:
        print(summary)
        return 0
    from connector.tables import show_toml

    print(f"# {summary}\n# effective configuration: file + environment + defaults")
    print(f'# secret values are shown as "***"\n\n{show_toml(cfg)}', end="")
    return 0


def _print_config_error(exc: ConfigError) -> None:
    print(f"configuration error ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for key, message in exc.problems:
        print(f"  {key}: {message}", file=sys.stderr)


def run_connector(cfg: Config, config_path: Path | None = None) -> int:
    # Decoding allocates millions of short-lived objects; the default gen-0 threshold (700)
    # runs the collector constantly for nothing (measured: ~9% of conversion time).
    gc.set_threshold(50_000, 20, 20)
    code = _run_loop(cfg, config_path)
    # A storage call stuck in a worker thread (to_thread cannot cancel it) must not hold the
    # exit past the shutdown promise: everything that matters is already in the spool.
    deadline = time.monotonic() + 2.0  # idle pool workers need a moment to notice shutdown
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        log.warning("exiting with %d worker thread(s) still busy", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_loop(cfg: Config, config_path: Path | None) -> int:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_run(cfg, config_path))
    except ConfigError as exc:
        _print_config_error(exc)
        return exc.exit_code
    except ConnectorError as exc:
        print(scrub(f"error: {exc}"), file=sys.stderr)
        return exc.exit_code
    finally:
        # Not asyncio.run: it would wait without limit for threads that cannot be cancelled.
        loop.close()
    return 0


async def _run(cfg: Config, config_path: Path | None) -> None:
    from connector.runner import Runner
    from connector.service import attach_signals

    runner = Runner(cfg)
    attach_signals(runner, config_path)
    await runner.run()
