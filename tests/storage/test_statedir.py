"""connector.statedir on real files and real processes: one connector per state dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connector.errors import ConfigError
from connector.statedir import StateDirLock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from connector.statedir import StateDirLock

    StateDirLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(3600)
    """
)


def hold_in_child(directory: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_process_is_refused_naming_the_dir_and_the_holders_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    child = hold_in_child(state)
    try:
        with pytest.raises(ConfigError) as info:
            StateDirLock(state).acquire()
        [(key, message)] = info.value.problems
        assert key == "state.dir"
        assert str(state) in message and f"pid {child.pid}" in message
        assert info.value.exit_code == 2
    finally:
        child.kill()
        child.wait()


def test_a_sigkilled_holder_does_not_block_the_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    child = hold_in_child(state)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lock = StateDirLock(state)
    lock.acquire()  # the kernel dropped the dead holder's lock
    assert (state / "lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_two_locks_in_one_process_conflict_until_released(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError):
        StateDirLock(tmp_path).acquire()
    first.release()
    again = StateDirLock(tmp_path)
    again.acquire()
    again.release()


def test_the_state_dir_is_private_and_swept_of_interrupted_saves(tmp_path: Path) -> None:
    state = tmp_path / "new-state"
    state.mkdir(mode=0o700)
    leftover = state / ".checkpoint.0123abcd.tmp"
    leftover.write_bytes(b'{"half": ')
    kept = state / "checkpoint.json"
    kept.write_text("{}")
    lock = StateDirLock(state)
    lock.acquire()
    assert not leftover.exists() and kept.exists()
    lock.release()
    fresh = tmp_path / "created-by-the-lock"
    StateDirLock(fresh).acquire()
    assert fresh.stat().st_mode & 0o777 == 0o700
