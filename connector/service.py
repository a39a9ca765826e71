"""Process-level attachments of a runner: signals (stop, SIGHUP reload)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from connector.config import load_config
from connector.errors import ConfigError
from connector.runner import Runner

log = logging.getLogger(__name__)


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
    runner.watch(runner.reload(cfg), "reload")
