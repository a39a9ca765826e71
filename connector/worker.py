"""The converter process: lands cuts and answers lookups for the receiving process.

Runs as a `spawn`ed child (its own interpreter and GIL, so conversion never stalls the event
loop that reads the socket). Requests come over a pipe one at a time. The heavy imports
(pyarrow, fsspec) happen here, lazily: the receiving process imports this module for `serve`
only and stays small.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from connector.errors import Crashed
from connector.jobs import CutJob, FlushResult, FlushSettings, Identity, SinkSpec
from connector.spool import SpoolRange

if TYPE_CHECKING:
    from connector.flush import Lookahead
    from connector.sink import Sink

_sink: tuple[SinkSpec, Sink] | None = None
_lookahead: Lookahead | None = None


def main(argv: list[str]) -> None:
    """`python -m connector.worker FD PARENT_PID [LOG_LEVEL LOG_FORMAT]`: FD is the child's
    end of a socketpair inherited from the receiving process."""
    from connector import logs

    fd, parent_pid = int(argv[0]), int(argv[1])
    logs.setup(*(argv[2:4] or ["INFO", "text"]))
    serve(Connection(fd), parent_pid)


def serve(conn: Connection, parent_pid: int) -> None:
    """The child's main loop: (name, args) in, (ok, value or exception) out."""
    _initialize(parent_pid)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe: stop
        try:
            reply: tuple[bool, Any] = (True, HANDLERS[name](*args))
        except Exception as exc:
            reply = (False, _sendable(exc))
        conn.send(reply)


def _initialize(parent_pid: int) -> None:
    # Signals are the parent's to handle: a Ctrl-C reaching the whole process group must not
    # kill a flush half-way; the parent decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The receive loop must never fall behind a push stream; conversion can lag (the spool
    # holds the backlog). Under CPU contention the reader wins; alone, this still gets a core.
    os.nice(5)
    # Conversion allocates millions of short-lived objects: the default gen-0 threshold (700)
    # runs the collector constantly for nothing (measured ~9% of conversion time).
    gc.set_threshold(50_000, 20, 20)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    """A SIGKILLed parent cannot stop us: leave when we are orphaned."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _sendable(exc: Exception) -> Exception:
    try:
        # Our own bytes, just made: a round trip proves the parent can unpickle the error.
        pickle.loads(pickle.dumps(exc))  # noqa: S301
    except Exception:
        return Crashed(f"converter: {type(exc).__name__}: {exc}")
    return exc


def sink_for(spec: SinkSpec) -> Sink:
    """One Sink per process (it holds the fsspec filesystem and its connections)."""
    global _sink
    if _sink is None or _sink[0] != spec:
        from connector.sink import Sink

        _sink = (spec, Sink(spec.url, spec.storage_options, max_attempts=spec.max_attempts))
    return _sink[1]


def flush(
    job: CutJob, spec: SinkSpec, settings: FlushSettings, ahead: CutJob | None = None
) -> FlushResult:
    """Land `job`; `ahead`, the cut expected next, is prepared meanwhile (see `Lookahead`)."""
    global _lookahead
    if _lookahead is None:
        from connector.flush import Lookahead

        _lookahead = Lookahead()
    result = _lookahead.flush(job, sink_for(spec), settings, ahead)
    if settings.iceberg is not None and result.files:
        # Here: the files are visible, and the reply that advances the checkpoint waits on it.
        from connector.iceberg import commit_cut
        from connector.icebergspec import CutKey

        key = CutKey(settings.writer_id, job.first, job.last)
        commit_cut(settings.iceberg, key, result.files, sink_for(spec))
    return result


def check_sink(spec: SinkSpec) -> int:
    """Fail fast when the sink refuses writes; sweep what a kill left (returns how many)."""
    sink = sink_for(spec)
    sink.check()
    return sink.sweep_temp_files()


def landed_identities(
    spec: SinkSpec, hours: list[str], name: str, start: int, end: int
) -> set[Identity]:
    from connector.lookups import landed_identities as lookup

    return lookup(sink_for(spec), hours, name, start, end)


def spooled_identities(ranges: list[SpoolRange], first: int, last: int, name: str) -> set[Identity]:
    from connector.lookups import spooled_identities as lookup

    return lookup(ranges, first, last, name)


HANDLERS: dict[str, Callable[..., Any]] = {
    "flush": flush,
    "check_sink": check_sink,
    "landed_identities": landed_identities,
    "spooled_identities": spooled_identities,
}


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
