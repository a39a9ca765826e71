"""CPU time and memory of a program's whole process tree, read from /proc (no psutil).

Why the whole tree: the connector hands conversion to a worker process, so the main pid alone
would flatter it. Why two CPU figures: the rusage returned by wait4 covers the program and every
descendant that was waited for, but nothing orphaned; the /proc samples see every member, but
miss the last <50 ms of each. The larger of the two is reported.

A program is started in a new session, so its process group id is its pid: members are its
descendants plus anything still in that group (orphans are re-parented, not re-grouped).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now, not in the forked child


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child if the harness dies, so a crash leaves no orphan."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class _Stat:
    state: str
    ppid: int
    pgrp: int
    own_ticks: int  # utime + stime of this process only
    start: int  # start time in ticks since boot: tells a reused pid apart
    rss_pages: int


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:  # gone between listdir and open
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    f = data[data.rindex(b")") + 2 :].split()
    return _Stat(
        f[0].decode(), int(f[1]), int(f[2]), int(f[11]) + int(f[12]), int(f[19]), int(f[21])
    )


def _read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _snapshot() -> dict[int, _Stat]:
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _read_stat(int(name))) is not None:
            stats[int(name)] = stat
    return stats


class ProcessTree:
    """Samples one program's process tree; `sample()` about every 50 ms while it runs."""

    def __init__(self, root: int) -> None:
        self.root = root
        stat = _read_stat(root)
        self._root_start = stat.start if stat else 0
        self._members: dict[int, int] = {}  # pid -> start, every member ever seen
        self._own_ticks: dict[int, int] = {}  # pid -> latest utime + stime seen
        self.peak_rss_bytes = 0
        self.rss_bytes = 0  # the tree's RSS at the latest sample
        self.rss_by_pid: dict[int, int] = {}  # members at the latest sample -> RSS
        self.peak_rss_by_pid: dict[int, int] = {}  # every member ever seen -> its own peak
        self.cmdlines: dict[int, str] = {}  # every member ever seen -> latest argv read

    def _current(self, stats: dict[int, _Stat]) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            children.setdefault(stat.ppid, []).append(pid)
        found = {
            pid for pid, s in stats.items() if s.pgrp == self.root and s.start >= self._root_start
        }
        found.update(
            p for p, start in self._members.items() if p in stats and stats[p].start == start
        )
        root = stats.get(self.root)
        stack = [self.root] if root is not None and root.start == self._root_start else []
        while stack:
            pid = stack.pop()
            found.add(pid)
            stack.extend(children.get(pid, ()))
        return sorted(found)

    def sample(self) -> None:
        stats = _snapshot()
        members = self._current(stats)
        self.rss_by_pid = {}
        for pid in members:
            self._members[pid] = stats[pid].start
            self._own_ticks[pid] = stats[pid].own_ticks
            rss = self.rss_by_pid[pid] = stats[pid].rss_pages * _PAGE
            self.peak_rss_by_pid[pid] = max(self.peak_rss_by_pid.get(pid, 0), rss)
            # Read again each time: a child sampled between fork and exec still shows the
            # parent's argv, and a zombie shows none (then the last one read stays).
            if cmdline := _read_cmdline(pid):
                self.cmdlines[pid] = cmdline
        self.rss_bytes = sum(self.rss_by_pid.values())
        self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes)

    @property
    def sampled_cpu_s(self) -> float:
        return sum(self._own_ticks.values()) / _TICKS

    def cpu_s_by_pid(self) -> dict[int, float]:
        """CPU seconds of each member ever seen (its own, children excluded), as last sampled:
        each misses at most its last sampling interval."""
        return {pid: ticks / _TICKS for pid, ticks in self._own_ticks.items()}

    def running(self) -> list[int]:
        """Members still running (zombies excluded)."""
        stats = _snapshot()
        return [pid for pid in self._current(stats) if stats[pid].state != "Z"]

    def kill(self) -> list[int]:
        """SIGKILL every member still running (checked by start time); returns their pids."""
        killed = []
        for _ in range(3):  # a dying parent may fork once more
            alive = self.running()
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            if not alive:
                break
            time.sleep(0.05)
        return killed


class Reaper:
    """Waits for one child in a thread with os.wait4: exact exit time and the tree's rusage."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self.exit_time = 0.0
        self.cpu_s = 0.0
        self._done = threading.Event()
        threading.Thread(target=self._wait, name=f"reaper-{pid}", daemon=True).start()

    def _wait(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        self.exit_time = time.monotonic()
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.exit_code = os.waitstatus_to_exitcode(status)
        self._done.set()

    def exited(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)
