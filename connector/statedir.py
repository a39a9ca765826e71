"""The state dir: private (0700), held by one process at a time, swept of a kill's leftovers."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from connector.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"


class StateDirLock:
    """An exclusive flock on `state.dir/lock`, held for the life of the process. The kernel
    drops it when the process dies, however it dies: a SIGKILLed run never blocks the next."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError.single("state.dir", f"cannot use {self.directory}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError.single(
                "state.dir",
                f"{self.directory} is in use by another connector process (pid {holder}); "
                "each running connector needs its own state dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _sweep(self.directory)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the flock
            self._fd = None


def _sweep(directory: Path) -> None:
    """Temp files a kill left mid-write (checkpoint saves): never read, safe to delete now that
    no other process can be writing here."""
    for tmp in directory.glob(".checkpoint.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            log.info("removed %s, left by an interrupted checkpoint save", tmp.name)
