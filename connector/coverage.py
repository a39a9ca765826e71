"""What the stream covered and what it missed: turns stream events into gap state, ledger
events and backfill requests. The only writer of the ledger's stream events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from connector import ledger
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.metrics import Metrics
from connector.timeparse import format_us

log = logging.getLogger(__name__)


class Coverage:
    def __init__(
        self,
        gaps: Gaps,
        intake: Intake,
        save: Callable[[], None],
        metrics: Metrics | None = None,
        save_now: Callable[[], None] | None = None,
    ) -> None:
        self.gaps = gaps
        self._metrics = metrics or Metrics()
        self._intake = intake
        self._save = save  # schedules a checkpoint save (gap state is part of it)
        self._save_now = save_now or save  # writes one before returning
        self.hooks: list[Callable[[Gap], None]] = []  # called on each gap (backfill)
        self.gap_count = 0

    def restarted(self, configured: set[str], last_seen_us: int, at_us: int) -> None:
        """After a start: close out what ended, open gaps since the last run, resume backfill."""
        for name in self.gaps.restarted(configured, last_seen_us):
            self._intake.record(ledger.event(ledger.SUBSCRIPTION_ENDED, name, at_us))
        for gap in self.gaps.pending():
            self._notify(gap)

    def streamed(self, name: str) -> bool:
        """Whether the server ever accepted this subscription (so a stop leaves a gap)."""
        state = self.gaps.states.get(name)
        return state is not None and state.accepted

    def gap(self, gap: Gap) -> None:
        self.gap_count += 1
        self._metrics.gaps.labels(gap.subscription, gap.reason).inc()
        log.warning(
            "gap in %s from %s to %s (%s)",
            gap.subscription,
            format_us(gap.start_us),
            format_us(gap.end_us),
            gap.reason,
        )
        self._intake.record(
            ledger.event(
                ledger.GAP,
                gap.subscription,
                gap.end_us,
                gap_start=gap.start_us,
                gap_end=gap.end_us,
                reason=gap.reason,
            )
        )
        if self.hooks:
            # Kept in the checkpoint until healed: a kill mid-backfill retries it on the next start.
            # Saved before returning, not soon: the stream's next frames are spooled right after,
            # and a kill before a later save would restart with the gap beginning after them,
            # the ledger saying the gap was recorded and nothing ever healing it.
            self.gaps.add_pending(gap)
            self._save_now()
        self._notify(gap)

    def _notify(self, gap: Gap) -> None:
        for hook in self.hooks:
            hook(gap)

    def subscribed(self, name: str, sid: str, at_us: int) -> None:
        first_time, gap = self.gaps.subscribed(name, at_us)
        if first_time:
            # Persist at once: after a SIGKILL the next start must know this one was streaming.
            self._save()
        self._intake.record(ledger.event(ledger.STREAM_STARTED, name, at_us, id=sid))
        if gap is not None:
            self.gap(gap)

    def refused(self, name: str, errors: list[dict[str, Any]], at_us: int) -> None:
        self._intake.record(ledger.event(ledger.SUBSCRIBE_REJECTED, name, at_us, errors=errors))

    def stream_lost(self, names: list[str], at_us: int) -> None:
        """Disconnected: everything after the last frame read is unknown to us."""
        self.gaps.stream_stopped(names, at_us)

    def stream_stopped(self, names: list[str], at_us: int) -> None:
        """We unsubscribed on purpose (stop): the gap runs until the next start."""
        self.gaps.stream_stopped(names, at_us)
        for name in names:
            self._intake.record(ledger.event(ledger.STREAM_STOPPED, name, at_us))

    def ended(self, name: str, at_us: int) -> None:
        """Removed from the configuration: no gap, ever again."""
        self.gaps.removed(name)
        self._intake.record(ledger.event(ledger.SUBSCRIPTION_ENDED, name, at_us))

    def unknown_data(self, sid: str, at_us: int) -> None:
        """Data for an id we never subscribed on this connection (kept in the dead letters)."""
        self._intake.record(ledger.event(ledger.UNKNOWN_DATA, "", at_us, id=sid))

    def server_error(self, errors: list[dict[str, Any]], at_us: int) -> None:
        self._intake.record(ledger.event(ledger.SERVER_ERROR, "", at_us, errors=errors))

    def open_gaps(self, names: set[str]) -> dict[str, int]:
        """Per subscription: gaps not healed yet (the stream missing now, from a disconnect or
        a full spool, plus those waiting for backfill to settle them)."""
        found = dict.fromkeys(names, 0)
        for name, state in self.gaps.states.items():
            if name in found:
                now = (state.gap_from_us is not None) + (state.spool_full_from_us is not None)
                found[name] = now + len(state.pending_gaps)
        return found

    def settle(self, gap: Gap) -> None:
        """Backfill is done with this gap (whatever its outcome, which the ledger holds)."""
        if self.gaps.settle(gap):
            self._save()
