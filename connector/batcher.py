"""When to cut: rows, bytes or age of the oldest row, whichever first. Pure: time is an argument.

A cut is a contiguous range of spool sequence numbers. The batcher holds counts only; the
frames themselves stay in the spool until the flush reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cut:
    first: int
    last: int
    rows: int
    bytes: int
    reason: str


class Batcher:
    def __init__(self, max_rows: int, max_bytes: int, max_seconds: float) -> None:
        self.max_rows, self.max_bytes, self.max_seconds = max_rows, max_bytes, max_seconds
        self._first: int | None = None
        self._last = 0
        self._rows = 0
        self._bytes = 0
        self._opened_at = 0.0

    def add(self, seq: int, rows: int, nbytes: int, now: float) -> Cut | None:
        """Account one spooled frame; returns a cut when a size limit is reached."""
        if self._first is None:
            self._first, self._opened_at = seq, now
        elif seq != self._last + 1:
            raise ValueError(f"sequence gap in batcher: {self._last} -> {seq}")
        self._last = seq
        self._rows += rows
        self._bytes += nbytes
        if self._rows >= self.max_rows:
            return self._cut("rows")
        if self._bytes >= self.max_bytes:
            return self._cut("bytes")
        return None

    def deadline(self) -> float | None:
        """When `poll` will cut by age (monotonic seconds), or None when nothing is pending."""
        return None if self._first is None else self._opened_at + self.max_seconds

    def poll(self, now: float) -> Cut | None:
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._cut("seconds")
        return None

    def force(self, reason: str = "stop") -> Cut | None:
        return None if self._first is None else self._cut(reason)

    def _cut(self, reason: str) -> Cut:
        assert self._first is not None
        cut = Cut(self._first, self._last, self._rows, self._bytes, reason)
        self._first, self._rows, self._bytes = None, 0, 0
        return cut
