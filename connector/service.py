"""Builds a runner with its process-level attachments: backfill, SIGHUP reload."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from connector.backfill import Backfiller
from connector.config import Config, load_config
from connector.errors import ConfigError
from connector.runner import Runner

log = logging.getLogger(__name__)


def build(cfg: Config) -> Runner:
    runner = Runner(cfg)
    if cfg.backfill.enabled:
        Backfiller(runner).attach()
    return runner


def attach_signals(runner: Runner, config_path: Path | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.request_stop)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _schedule_reload(runner, config_path))


def _schedule_reload(runner: Runner, path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        log.error("reload refused, the running config stays: %s", exc)
        return
    log.info("reloading subscriptions from %s", path)
    task = asyncio.get_running_loop().create_task(runner.reload(cfg))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()
