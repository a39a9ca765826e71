"""Where the stream may have missed data, per subscription. Pure: typed state in, gaps out.

A gap opens when the stream stops for a subscription (disconnect, stop, crash, a full spool)
and closes when data can flow again (resubscribed, spool has room). Closed gaps are pending
until backfill settles them; the state is part of the checkpoint, so a kill forgets none.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.checkpoint import SubscriptionState


@dataclass(frozen=True)
class Gap:
    subscription: str
    start_us: int
    end_us: int
    reason: str


class Gaps:
    def __init__(self, states: dict[str, SubscriptionState]) -> None:
        self.states = states  # the checkpoint's: saving the checkpoint saves these

    def state(self, name: str) -> SubscriptionState:
        return self.states.setdefault(name, SubscriptionState())

    def restarted(self, configured: set[str], last_seen_us: int) -> list[str]:
        """After a start: subscriptions that streamed before have a gap from `last_seen_us`.
        Returns the ones no longer configured (forgotten here; the caller records the end)."""
        ended = sorted(self.states.keys() - configured)
        for name in ended:
            del self.states[name]
        for state in self.states.values():
            if state.spool_full_from_us is not None:
                # Frames were being dropped when the last run ended: the loss began there.
                start = state.spool_full_from_us
                state.gap_from_us = min(start, state.gap_from_us or start)
                state.spool_full_from_us = None
            if state.accepted and state.gap_from_us is None and last_seen_us:
                state.gap_from_us = last_seen_us
        return ended

    def stream_stopped(self, names: list[str], at_us: int) -> None:
        """Nothing more arrives for these after `at_us` (disconnect, unsubscribe)."""
        for name in names:
            state = self.state(name)
            if state.gap_from_us is None:
                state.gap_from_us = at_us

    def subscribed(self, name: str, at_us: int) -> tuple[bool, Gap | None]:
        """(first time ever accepted, the gap this closes)."""
        state = self.state(name)
        first_time = not state.accepted
        state.accepted = True
        start, state.gap_from_us = state.gap_from_us, None
        if start is None:
            return first_time, None
        return first_time, Gap(name, start, at_us, "disconnected")

    def removed(self, name: str) -> None:
        self.states.pop(name, None)

    # -- the spool's side -----------------------------------------------------------------
    def spool_full(self, name: str, last_spooled_us: int) -> bool:
        """A frame of `name` was dropped; True when this opens a new spool-full gap (the
        caller saves the checkpoint then)."""
        state = self.state(name)
        if state.spool_full_from_us is not None:
            return False
        state.spool_full_from_us = last_spooled_us
        return True

    def spooled(self, name: str, at_us: int) -> Gap | None:
        """A frame of `name` was spooled: closes its spool-full gap, if one is open."""
        state = self.states.get(name)
        if state is None or state.spool_full_from_us is None:
            return None
        start, state.spool_full_from_us = state.spool_full_from_us, None
        return Gap(name, start, at_us, "spool_full")

    def close_spool_gaps(self, at_us: int) -> list[Gap]:
        gaps = []
        for name, state in self.states.items():
            if state.spool_full_from_us is not None:
                gaps.append(Gap(name, state.spool_full_from_us, at_us, "spool_full"))
                state.spool_full_from_us = None
        return gaps

    # -- backfill's side ------------------------------------------------------------------
    def add_pending(self, gap: Gap) -> None:
        self.state(gap.subscription).pending_gaps.append((gap.start_us, gap.end_us))

    def settle(self, gap: Gap) -> bool:
        """Backfill finished with it (its outcome is in the ledger); False if unknown."""
        pending = self.states.get(gap.subscription)
        window = (gap.start_us, gap.end_us)
        if pending is None or window not in pending.pending_gaps:
            return False
        pending.pending_gaps.remove(window)
        return True

    def pending(self) -> list[Gap]:
        return [
            Gap(name, start, end, "pending")
            for name, state in self.states.items()
            for start, end in state.pending_gaps
        ]
