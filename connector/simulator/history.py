"""Bounded in-memory history and the REST searches over it.

Paging: the first call of a search computes the whole answer and later pages are served from that
snapshot, kept server-side under an opaque token. That makes paging stable while generation goes
on, at the cost of memory for abandoned walks (bounded: oldest snapshots are forgotten first).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from connector.simulator.filters import CompiledQuery
from connector.simulator.generator import Generated

MAX_PAGE_SIZE = 100
DEFAULT_WINDOW_NS = 7 * 86400 * 1_000_000_000
_MAX_SNAPSHOTS = 1024
_SNAPSHOT_TTL_S = 600.0


@dataclass
class _TrackHistory:
    entries: deque[Generated] = field(default_factory=deque)
    latest: Generated | None = None


class History:
    def __init__(self, max_age_s: float, max_count: int) -> None:
        self._max_age_s = max_age_s
        self._max_count = max_count
        self._all: deque[tuple[float, Generated]] = deque()
        self._tracks: dict[str, _TrackHistory] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, items: Iterable[Generated], now_mono: float | None = None) -> None:
        now_mono = time.monotonic() if now_mono is None else now_mono
        for gen in items:
            self._all.append((now_mono, gen))
            track = self._tracks.setdefault(gen.track, _TrackHistory())
            track.entries.append(gen)
            if track.latest is None or gen.ts_ns > track.latest.ts_ns:
                track.latest = gen
        self.evict(now_mono)

    def evict(self, now_mono: float) -> None:
        cutoff = now_mono - self._max_age_s
        while self._all and (len(self._all) > self._max_count or self._all[0][0] < cutoff):
            _, gen = self._all.popleft()
            track = self._tracks[gen.track]
            # Per-track order equals global insertion order, so the oldest is leftmost.
            track.entries.popleft()
            if not track.entries:
                del self._tracks[gen.track]
            elif track.latest is gen:
                track.latest = max(track.entries, key=lambda g: g.ts_ns)

    def observations(self) -> list[dict[str, Any]]:
        return [gen.obs for _, gen in self._all]

    def latest(self, spec: str, query: CompiledQuery) -> list[Generated]:
        """The latest observation of each track of `spec` whose latest observation matches."""
        found = [
            t.latest
            for key, t in sorted(self._tracks.items())
            if t.latest is not None and t.latest.spec == spec
        ]
        return [g for g in found if query.matches(g.obs, g.ts_ns)]

    def track_history(
        self, spec: str, query: CompiledQuery, start_ns: int, end_ns: int | None
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        """(track key, observations in window by timestamp) for tracks whose latest matches."""
        out = []
        for latest in self.latest(spec, query):
            entries = self._tracks[latest.track].entries
            window = sorted(
                (
                    g
                    for g in entries
                    if g.ts_ns >= start_ns and (end_ns is None or g.ts_ns <= end_ns)
                ),
                key=lambda g: g.ts_ns,
            )
            out.append((latest.track, [g.obs for g in window]))
        return out


class PageStore:
    """Server-side snapshots of search answers, addressed by opaque page tokens.

    A token stays valid until it expires, so a client retrying a page after a 429/503 gets the
    same page again.
    """

    def __init__(self) -> None:
        self._snapshots: OrderedDict[str, tuple[float, list[Any]]] = OrderedDict()

    def first_page(self, items: list[Any], page_size: int) -> tuple[list[Any], str | None]:
        return self._page(items, page_size)

    def next_page(self, token: str, page_size: int) -> tuple[list[Any], str | None] | None:
        """The page for `token`, or None when the token is unknown or expired."""
        self._expire()
        snapshot = self._snapshots.get(token)
        return None if snapshot is None else self._page(snapshot[1], page_size)

    def _page(self, items: list[Any], page_size: int) -> tuple[list[Any], str | None]:
        page, rest = items[:page_size], items[page_size:]
        if not rest:
            return page, None
        token = uuid.uuid4().hex
        self._snapshots[token] = (time.monotonic(), rest)
        while len(self._snapshots) > _MAX_SNAPSHOTS:
            self._snapshots.popitem(last=False)
        return page, token

    def _expire(self) -> None:
        cutoff = time.monotonic() - _SNAPSHOT_TTL_S
        while self._snapshots and next(iter(self._snapshots.values()))[0] < cutoff:
            self._snapshots.popitem(last=False)
