"""The state dir: private (0700), held by one process at a time, swept of a kill's leftovers.
Also the one helper that makes a new local folder survive a power loss (`make_dirs`)."""

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
            make_dirs(self.directory, 0o700)
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


def make_dirs(folder: Path, mode: int = 0o777) -> None:
    """`mkdir -p` that survives a power loss: each folder it creates is fsynced into its
    parent. Fsyncing a file and its own folder does not persist that folder's entry in the
    folder above: a new partition (or state dir) would vanish with every file in it.

    Only "does not exist" creates: any other error (permission, a symlink loop) is raised.
    `mode` is for `folder` itself; folders above it get the default, as with pathlib."""
    missing = []
    at = folder
    while True:
        try:
            at.stat()
            break
        except FileNotFoundError:
            missing.append(at)
            at = at.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another thread made it: fsync it anyway
            new.mkdir(mode if new == folder else 0o777)
        fsync_dir(new.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
