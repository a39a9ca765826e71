"""A disk that forgets what was never fsynced: power loss for child processes.

A child process (the connector, or a small script) runs with hooks installed at interpreter
start by a generated `sitecustomize`, so every interpreter it starts (the converter) has them
too. The hooks journal, for every file and folder under the watched roots:

* `os.fsync`/`os.fdatasync` of a regular file: its size when the call began; the bytes below
  it are durable from the moment the call returns.
* `os.fsync` of a folder: its entries (name -> inode) when the call began; they are the
  folder's durable entries from the moment the call returns.
* before `os.unlink`/`os.remove`, and before `os.replace`/`os.rename` over an existing file:
  a hard link to the inode that is going away, so its content can come back.

The power is cut by SIGKILLing the whole process group: from outside (`cut_power`), or from
inside at an exact fsync (`CutAt`). Then `Disk.power_loss` rebuilds the roots as a disk would
hold them once the page cache is gone:

* Modelled: a folder holds exactly the entries of its last fsync (or of the start of the run,
  when everything is taken as durable); an entry created since (a new file, a new folder, the
  target of a rename) is gone, a rename is undone, an unlinked file is back. A folder whose
  own entry is not durable vanishes with everything below it. A file holds the bytes below its
  last fsynced size (none, if it was never fsynced); the unsynced rest is dropped, or
  (`tail_survival`) a random prefix of it survives, as a partial writeback would leave it: torn
  records included. Each file and folder is judged on its own fsyncs, whatever their order.
* Not modelled: overwrites in place of bytes that were already durable (O_TRUNC reopen,
  pwrite, truncation): the connector does none, except its lock file's pid and the sink's
  empty probe, whose content nobody reads. Journalling filesystems that persist more than
  POSIX asks (ext4 commits a new file's entry with its fsync) are stricter here. Writes that
  bypass Python's `os` module (C libraries writing files themselves) are not seen: the
  connector's writes all go through it, and the test checks that both processes journal.
* The roots themselves (their own entries) are taken as durable: an operator's volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JOURNAL_ENV = "POWERLOSS_JOURNAL"
ROOTS_ENV = "POWERLOSS_ROOTS"
KEEP_ENV = "POWERLOSS_KEEP"
CUT_ENV = "POWERLOSS_CUT"  # see CutAt

Entries = dict[str, tuple[int, bool]]  # name -> (inode, is a folder)


# -- the child's side ---------------------------------------------------------------------------
def install() -> None:
    """Wrap the `os` calls that make data durable or take it away (see the module docstring).
    Called from the generated sitecustomize of every process the child starts."""
    journal = os.environ.get(JOURNAL_ENV)
    if not journal:
        return
    roots = tuple(os.environ[ROOTS_ENV].split(os.pathsep))
    keep = os.environ[KEEP_ENV]
    when, _, rest = os.environ.get(CUT_ENV, "").partition(":")
    count, _, text = rest.partition(":")
    seen = [0]
    out = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    real_write = os.write
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    real_unlink, real_remove = os.unlink, os.remove
    real_replace, real_rename = os.replace, os.rename

    def note(event: dict[str, Any]) -> None:
        # One write per line on an O_APPEND file: lines of both processes never interleave.
        event["pid"], event["t"] = os.getpid(), time.time()
        real_write(out, (json.dumps(event) + "\n").encode())

    def reached(path: str) -> bool:
        if not text or text not in path:
            return False
        seen[0] += 1
        return seen[0] == int(count)

    def cut() -> None:
        # The exact moment, from inside: no poll from outside could be this quick.
        note({"cut": True})
        os.killpg(0, signal.SIGKILL)

    def watched(path: str) -> bool:
        return any(path == root or path.startswith(root + "/") for root in roots)

    def synced(real: Any) -> Any:
        def fsync(fd: Any) -> None:
            number = fd if isinstance(fd, int) else fd.fileno()
            try:
                path = os.readlink(f"/proc/self/fd/{number}")
            except OSError:
                path = ""
            if not watched(path):
                real(number)
                return
            last = reached(path)
            if last and when == "before":
                cut()
            st = os.fstat(number)
            if stat.S_ISDIR(st.st_mode):
                entries = _entries(path)
                real(number)
                note({"dir": path, "entries": entries})
            else:
                real(number)
                note({"file": path, "ino": st.st_ino, "size": st.st_size})
            if last:
                cut()

        return fsync

    def keep_inode(path: Any) -> None:
        """Hard-link a file about to lose its name: the disk may still hold it by that name."""
        try:
            name = os.path.realpath(os.fspath(path))
            st = os.lstat(name)
        except (OSError, TypeError):
            return
        if watched(name) and stat.S_ISREG(st.st_mode):
            with contextlib.suppress(FileExistsError):
                os.link(name, os.path.join(keep, str(st.st_ino)))

    def removing(real: Any) -> Any:
        def remove(path: Any, *, dir_fd: int | None = None) -> None:
            if dir_fd is None:
                keep_inode(path)
            real(path, dir_fd=dir_fd)

        return remove

    def moving(real: Any) -> Any:
        def move(src: Any, dst: Any, **kwargs: Any) -> None:
            if not kwargs:
                keep_inode(dst)
            real(src, dst, **kwargs)

        return move

    os.fsync, os.fdatasync = synced(real_fsync), synced(real_fdatasync)
    os.unlink, os.remove = removing(real_unlink), removing(real_remove)
    os.replace, os.rename = moving(real_replace), moving(real_rename)


# -- the harness's side -------------------------------------------------------------------------
@dataclass(frozen=True)
class CutAt:
    """Cut the power from inside the child at the n-th fsync of a path holding `text` (counted
    in each process): right after it returns, or (`before`) right before it starts."""

    text: str
    n: int
    before: bool = False

    def env(self) -> str:
        return f"{'before' if self.before else 'after'}:{self.n}:{self.text}"


@dataclass
class Disk:
    """Watched roots plus the journal, the kept inodes and the sitecustomize that installs the
    hooks. `begin()` before a child runs; `power_loss()` once it and its children are dead.
    `work` must be on the roots' filesystem (kept inodes are hard links)."""

    roots: list[Path]
    work: Path
    dirs: dict[str, Entries] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    losses: int = 0

    def __post_init__(self) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in self.roots]
        for root in self.roots:
            root.mkdir(parents=True, exist_ok=True)
        site = self.work / "site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text("from tests.powerloss import install\ninstall()\n")

    @property
    def journal(self) -> Path:
        return self.work / "journal.jsonl"

    @property
    def keep(self) -> Path:
        return self.work / "keep"

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.work / "site"), str(REPO)])
        return {
            "PYTHONPATH": path,
            JOURNAL_ENV: str(self.journal),
            ROOTS_ENV: os.pathsep.join(str(r) for r in self.roots),
            KEEP_ENV: str(self.keep),
        }

    def begin(self) -> None:
        """Everything on disk now is durable: the state a run starts from."""
        self.dirs, self.sizes = {}, {}
        for root in self.roots:
            for folder, _, files in os.walk(root):
                self.dirs[folder] = _entries(folder)
                for name in files:
                    st = os.lstat(os.path.join(folder, name))
                    self.sizes[st.st_ino] = st.st_size
        self.journal.write_bytes(b"")
        shutil.rmtree(self.keep, ignore_errors=True)
        self.keep.mkdir()

    def events(self) -> list[dict[str, Any]]:
        """The journal so far; a line cut by the kill is an fsync the child never saw return."""
        found = []
        for line in self.journal.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def durable(self, path: Path) -> bytes | None:
        """What `path` would hold after a power loss now (no partial writeback), while the
        child runs: lets a test cut the power the moment something became durable."""
        folder = os.path.realpath(path.parent)
        entries = self.dirs.get(folder, {})
        sizes = dict(self.sizes)
        for event in self.events():
            if event.get("dir") == folder:
                entries = {k: (v[0], v[1]) for k, v in event["entries"].items()}
            elif "ino" in event:
                sizes[event["ino"]] = event["size"]
        if path.name not in entries:
            return None
        ino = entries[path.name][0]
        for candidate in (path, self.keep / str(ino)):
            try:
                with open(candidate, "rb") as fh:
                    if os.fstat(fh.fileno()).st_ino == ino:
                        return fh.read()[: sizes.get(ino, 0)]
            except FileNotFoundError:
                continue
        return None

    def power_loss(self, rng: random.Random | None = None, tail_survival: float = 0.0) -> None:
        """Replace each root with what a disk would hold after losing its page cache now."""
        dirs = dict(self.dirs)
        sizes = dict(self.sizes)
        for event in self.events():
            if "dir" in event:
                dirs[event["dir"]] = {k: (v[0], v[1]) for k, v in event["entries"].items()}
            elif "ino" in event:
                sizes[event["ino"]] = event["size"]
        inodes: dict[int, str] = {}
        for root in self.roots:
            for folder, _, files in os.walk(root):
                for name in files:
                    path = os.path.join(folder, name)
                    inodes.setdefault(os.lstat(path).st_ino, path)
        for name in os.listdir(self.keep):
            inodes.setdefault(int(name), str(self.keep / name))
        rng = rng or random.Random(0)
        self.losses += 1
        staging = self.work / f"rebuilt-{self.losses}"
        rebuild = _Rebuild(dirs, sizes, inodes, rng, tail_survival)
        for root in self.roots:
            rebuild.folder(str(root), staging / root.name)
        for root in self.roots:
            crashed = self.work / f"crashed-{self.losses}-{root.name}"
            os.rename(root, crashed)
            os.rename(staging / root.name, root)
            shutil.rmtree(crashed)
        shutil.rmtree(staging)
        shutil.rmtree(self.keep)


def _entries(folder: str) -> Entries:
    with os.scandir(folder) as it:
        found = {}
        for e in it:
            with contextlib.suppress(FileNotFoundError):  # unlinked meanwhile: not kept
                found[e.name] = _entry(e)
        return found


def _entry(entry: os.DirEntry[str]) -> tuple[int, bool]:
    # lstat's inode, not readdir's: the two may differ (overlayfs), fstat gives lstat's.
    st = entry.stat(follow_symlinks=False)
    return st.st_ino, stat.S_ISDIR(st.st_mode)


@dataclass
class _Rebuild:
    dirs: dict[str, Entries]  # durable entries of each folder
    sizes: dict[int, int]  # durable size of each inode
    inodes: dict[int, str]  # where each inode's bytes can be read now
    rng: random.Random
    tail_survival: float

    def folder(self, folder: str, out: Path) -> None:
        out.mkdir(parents=True)
        # A folder never fsynced since it was made has no durable entries at all.
        for name, (ino, is_dir) in self.dirs.get(folder, {}).items():
            if is_dir:
                self.folder(os.path.join(folder, name), out / name)
                continue
            data = Path(self.inodes[ino]).read_bytes()
            durable = min(self.sizes.get(ino, 0), len(data))
            if durable < len(data) and self.rng.random() < self.tail_survival:
                durable = self.rng.randint(durable, len(data))
            (out / name).write_bytes(data[:durable])


# -- processes ----------------------------------------------------------------------------------
def start(
    argv: list[str],
    disk: Disk,
    env: dict[str, str],
    log: Path,
    cut_at: CutAt | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python argv...` with the hooks, in a process group of its own (all of it dies at
    once, as with a power cut), its output appended to `log`."""
    disk.begin()
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env | disk.env()
    if cut_at is not None:
        full[CUT_ENV] = cut_at.env()
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *argv],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def cut_power(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGKILL the whole process group and wait until none of it runs any more."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {proc.pid} survived SIGKILL")
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces): state, ppid, pgrp.
        state, _, pgrp = text.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False
