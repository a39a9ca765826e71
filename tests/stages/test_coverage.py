"""connector.coverage in-process: real Gaps (the checkpoint's state), a real Intake on a real
Spool. What coverage recorded is read back from the spool's LEDGER records (what lands as
`_ledger/<cut>.jsonl`), not from its internals; the save callback and the backfill hook are
plain collectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector import ledger
from connector.checkpoint import SubscriptionState
from connector.config import BatchConfig
from connector.coverage import Coverage
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.spool import DATA, RecordMeta, Spool
from connector.timeparse import format_us
from tests.stages.helpers import SECOND, T0, IntakeRig, ledger_events

Rigs = Callable[..., IntakeRig]


@dataclass
class Watched:
    coverage: Coverage
    gaps: Gaps
    intake: Intake
    saves: list[None] = field(default_factory=list)
    hooked: list[Gap] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return ledger_events(self.intake.spool)


def watched(
    rigs: Rigs,
    directory: Path,
    states: dict[str, SubscriptionState] | None = None,
    *,
    hook: bool = True,
) -> Watched:
    gaps = Gaps(states if states is not None else {})
    rig = rigs(directory, gaps=gaps)
    saves: list[None] = []
    coverage = Coverage(gaps, rig.intake, lambda: saves.append(None))
    w = Watched(coverage, gaps, rig.intake, saves)
    if hook:
        coverage.hooks.append(w.hooked.append)
    return w


def started(name: str, sid: str, at: int) -> dict[str, Any]:
    return ledger.event(ledger.STREAM_STARTED, name, at, id=sid)


def gap_event(name: str, start: int, end: int, reason: str = "disconnected") -> dict[str, Any]:
    return ledger.event(ledger.GAP, name, end, gap_start=start, gap_end=end, reason=reason)


def test_the_first_accept_is_saved_at_once_and_each_accept_recorded(
    tmp_path: Path, rigs: Rigs
) -> None:
    w = watched(rigs, tmp_path)
    w.coverage.subscribed("air", "S1", T0)
    assert len(w.saves) == 1  # a kill now must still know that air streamed
    assert w.gaps.states["air"].accepted
    w.coverage.subscribed("air", "S2", T0 + SECOND)  # accepted again, nothing lost between
    assert len(w.saves) == 1
    assert w.events() == [started("air", "S1", T0), started("air", "S2", T0 + SECOND)]
    assert w.events()[0]["recorded_at"] == format_us(T0)
    assert w.hooked == [] and w.coverage.gap_count == 0


def test_subscribed_after_a_disconnect_records_the_gap_and_queues_it_for_backfill(
    tmp_path: Path, rigs: Rigs
) -> None:
    w = watched(rigs, tmp_path)
    w.coverage.subscribed("air", "S1", T0)
    w.coverage.stream_lost(["air"], T0 + 5 * SECOND)
    assert w.events() == [started("air", "S1", T0)]  # a loss is known only when it ends
    assert w.gaps.states["air"].gap_from_us == T0 + 5 * SECOND

    w.coverage.subscribed("air", "S2", T0 + 9 * SECOND)
    assert w.events() == [
        started("air", "S1", T0),
        started("air", "S2", T0 + 9 * SECOND),
        gap_event("air", T0 + 5 * SECOND, T0 + 9 * SECOND),
    ]
    gap = Gap("air", T0 + 5 * SECOND, T0 + 9 * SECOND, "disconnected")
    assert w.hooked == [gap]
    assert w.gaps.states["air"].pending_gaps == [(gap.start_us, gap.end_us)]
    assert w.gaps.states["air"].gap_from_us is None
    assert len(w.saves) == 2  # the first accept, then the pending gap
    assert w.coverage.gap_count == 1


def test_a_recorded_gap_is_saved_before_the_call_returns(tmp_path: Path, rigs: Rigs) -> None:
    """Not soon: the stream's next frames are spooled right after the reply that closes the gap,
    and a kill before a later save would restart with the gap beginning after them."""
    gaps = Gaps({})
    rig = rigs(tmp_path, gaps=gaps)
    saved_now: list[list[tuple[int, int]]] = []
    coverage = Coverage(
        gaps,
        rig.intake,
        lambda: None,
        save_now=lambda: saved_now.append(list(gaps.states["air"].pending_gaps)),
    )
    coverage.hooks.append(lambda gap: None)
    coverage.subscribed("air", "S1", T0)
    coverage.stream_lost(["air"], T0 + 5 * SECOND)
    coverage.subscribed("air", "S2", T0 + 9 * SECOND)
    assert saved_now == [[(T0 + 5 * SECOND, T0 + 9 * SECOND)]]


def test_without_a_backfill_hook_a_gap_is_recorded_but_not_kept_pending(
    tmp_path: Path, rigs: Rigs
) -> None:
    w = watched(rigs, tmp_path, hook=False)
    w.coverage.subscribed("air", "S1", T0)
    w.coverage.stream_lost(["air"], T0 + SECOND)
    w.coverage.subscribed("air", "S2", T0 + 2 * SECOND)
    assert w.events()[-1] == gap_event("air", T0 + SECOND, T0 + 2 * SECOND)
    assert w.gaps.states["air"].pending_gaps == []
    assert len(w.saves) == 1


def test_a_stop_records_stream_stopped_and_the_gap_runs_to_the_next_accept(
    tmp_path: Path, rigs: Rigs
) -> None:
    w = watched(rigs, tmp_path)
    w.coverage.subscribed("air", "S1", T0)
    w.coverage.subscribed("sea", "S2", T0)
    w.coverage.stream_stopped(["air", "sea"], T0 + 3 * SECOND)
    assert w.events()[2:] == [
        ledger.event(ledger.STREAM_STOPPED, "air", T0 + 3 * SECOND),
        ledger.event(ledger.STREAM_STOPPED, "sea", T0 + 3 * SECOND),
    ]
    w.coverage.subscribed("sea", "S3", T0 + 8 * SECOND)
    assert w.events()[-1] == gap_event("sea", T0 + 3 * SECOND, T0 + 8 * SECOND)
    assert w.gaps.states["air"].gap_from_us == T0 + 3 * SECOND  # still open


def test_a_refusal_is_recorded_with_the_servers_errors(tmp_path: Path, rigs: Rigs) -> None:
    w = watched(rigs, tmp_path)
    errors: list[dict[str, Any]] = [
        {"error": "InvalidQuery", "args": [{"name": "query.location", "value": "clockwise"}]}
    ]
    w.coverage.refused("sea", errors, T0)
    assert w.events() == [ledger.event(ledger.SUBSCRIBE_REJECTED, "sea", T0, errors=errors)]
    assert not w.gaps.state("sea").accepted


def test_ended_forgets_the_subscription_and_records_its_end(tmp_path: Path, rigs: Rigs) -> None:
    w = watched(rigs, tmp_path)
    w.coverage.subscribed("air", "S1", T0)
    w.coverage.stream_lost(["air"], T0 + SECOND)
    w.gaps.spool_full("air", T0 + SECOND)  # and a spool-full gap open for it
    w.coverage.ended("air", T0 + 2 * SECOND)
    assert "air" not in w.gaps.states
    assert w.events()[-1] == ledger.event(ledger.SUBSCRIPTION_ENDED, "air", T0 + 2 * SECOND)
    w.intake.close_spool_gaps()  # no gap, ever again, for an ended subscription
    assert w.coverage.gap_count == 0 and w.hooked == []
    # Configured again later: it starts over (first accept, no gap from its old life).
    w.coverage.subscribed("air", "S9", T0 + 9 * SECOND)
    assert w.events()[-1] == started("air", "S9", T0 + 9 * SECOND)
    assert len(w.saves) == 2


def test_restarted_opens_gaps_from_last_seen_and_renotifies_pending_ones(
    tmp_path: Path, rigs: Rigs
) -> None:
    pending = (T0 - 50 * SECOND, T0 - 40 * SECOND)
    states = {
        "streamed": SubscriptionState(accepted=True),
        "healing": SubscriptionState(accepted=True, pending_gaps=[pending]),
        "stopped": SubscriptionState(accepted=True, gap_from_us=T0 - 5 * SECOND),
        "never": SubscriptionState(accepted=False),
        "gone": SubscriptionState(accepted=True, pending_gaps=[pending]),
    }
    w = watched(rigs, tmp_path, states)
    configured = {"streamed", "healing", "stopped", "never", "new"}
    w.coverage.restarted(configured, T0, T0 + 100 * SECOND)

    assert w.events() == [ledger.event(ledger.SUBSCRIPTION_ENDED, "gone", T0 + 100 * SECOND)]
    assert "gone" not in w.gaps.states
    # Only the configured one's pending gap goes to backfill again, and it is not doubled.
    assert w.hooked == [Gap("healing", *pending, "pending")]
    assert w.gaps.states["healing"].pending_gaps == [pending]
    assert w.gaps.states["streamed"].gap_from_us == T0
    assert w.gaps.states["healing"].gap_from_us == T0
    assert w.gaps.states["stopped"].gap_from_us == T0 - 5 * SECOND  # the clean stop's own
    assert w.gaps.states["never"].gap_from_us is None

    w.coverage.subscribed("streamed", "S1", T0 + 101 * SECOND)
    w.coverage.subscribed("stopped", "S2", T0 + 101 * SECOND)
    w.coverage.subscribed("never", "S3", T0 + 101 * SECOND)
    gaps = [e for e in w.events() if e["event"] == ledger.GAP]
    assert gaps == [
        gap_event("streamed", T0, T0 + 101 * SECOND),
        gap_event("stopped", T0 - 5 * SECOND, T0 + 101 * SECOND),
    ]
    assert w.hooked[1:] == [
        Gap("streamed", T0, T0 + 101 * SECOND, "disconnected"),
        Gap("stopped", T0 - 5 * SECOND, T0 + 101 * SECOND, "disconnected"),
    ]


def test_restarted_with_nothing_seen_opens_no_gap(tmp_path: Path, rigs: Rigs) -> None:
    w = watched(rigs, tmp_path, {"air": SubscriptionState(accepted=True)})
    w.coverage.restarted({"air"}, 0, T0)
    w.coverage.subscribed("air", "S1", T0 + SECOND)
    assert w.events() == [started("air", "S1", T0 + SECOND)]


def test_settle_forgets_a_healed_gap_and_saves(tmp_path: Path, rigs: Rigs) -> None:
    w = watched(rigs, tmp_path)
    w.coverage.subscribed("air", "S1", T0)
    w.coverage.stream_lost(["air"], T0 + SECOND)
    w.coverage.subscribed("air", "S2", T0 + 2 * SECOND)
    [gap] = w.hooked
    saves = len(w.saves)
    w.coverage.settle(gap)
    assert w.gaps.states["air"].pending_gaps == []
    assert len(w.saves) == saves + 1
    w.coverage.settle(gap)  # unknown now: nothing to save
    assert len(w.saves) == saves + 1


def test_a_full_spool_still_records_its_gap_in_the_ledger(tmp_path: Path) -> None:
    """Wired as the runner wires them: intake's gaps go to coverage, whose ledger event is
    forced into the spool that just refused a frame."""
    gaps = Gaps({})
    spool = Spool(tmp_path, segment_bytes=1 << 20, max_bytes=150)
    sink: list[Coverage] = []
    intake = Intake(spool, BatchConfig(), 3600.0, gaps, lambda gap: sink[0].gap(gap))
    coverage = Coverage(gaps, intake, lambda: None)
    sink.append(coverage)
    try:
        intake.recover(0)
        meta = RecordMeta(sub="air", id="S1", n=1)
        assert intake.frame(DATA, meta, b"x" * 60, 1, T0, "air")
        assert not intake.frame(DATA, meta, b"x" * 60, 1, T0 + SECOND, "air")
        assert spool.size_bytes > spool.max_bytes - 60  # full
        intake.close_spool_gaps()
        [event] = ledger_events(spool)
        assert event["event"] == ledger.GAP and event["reason"] == "spool_full"
        assert event["gap_start"] == format_us(T0)
    finally:
        intake.close()
