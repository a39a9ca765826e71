"""connector.gaps: where the stream may have missed data, per subscription. Pure, so driven
directly; its state is the checkpoint's (a real CheckpointStore round trip proves a kill forgets
no gap)."""

from __future__ import annotations

from pathlib import Path

from connector.checkpoint import CheckpointStore, SubscriptionState
from connector.gaps import Gap, Gaps

T = 1_719_248_400_000_000  # 2024-06-24T17:00:00Z in microseconds
S = 1_000_000  # one second


def test_a_new_subscription_has_no_gap_and_its_first_accept_is_reported() -> None:
    gaps = Gaps({})
    assert gaps.subscribed("air", T) == (True, None)
    assert gaps.states == {"air": SubscriptionState(accepted=True)}
    # Accepted again (after a reconnect with no recorded stop): not the first time, no gap.
    assert gaps.subscribed("air", T + S) == (False, None)


def test_stop_then_resubscribe_closes_a_disconnect_gap() -> None:
    gaps = Gaps({})
    gaps.subscribed("air", T)
    gaps.subscribed("sea", T)
    gaps.stream_stopped(["air", "sea"], T + 10 * S)
    assert gaps.states["air"].gap_from_us == T + 10 * S
    # A second stop before the resubscribe keeps the earliest start: nothing after it arrived.
    gaps.stream_stopped(["air"], T + 20 * S)
    assert gaps.subscribed("air", T + 30 * S) == (
        False,
        Gap("air", T + 10 * S, T + 30 * S, "disconnected"),
    )
    assert gaps.states["air"].gap_from_us is None
    assert gaps.states["sea"].gap_from_us == T + 10 * S  # still open until sea is back
    assert gaps.subscribed("sea", T + 40 * S) == (
        False,
        Gap("sea", T + 10 * S, T + 40 * S, "disconnected"),
    )


def test_restart_opens_gaps_from_last_seen_for_subscriptions_that_streamed() -> None:
    states = {
        "streamed": SubscriptionState(accepted=True),
        "stopped": SubscriptionState(accepted=True, gap_from_us=T + 5 * S),
        "never": SubscriptionState(accepted=False),
        "dropped": SubscriptionState(accepted=True, pending_gaps=[(T, T + S)]),
    }
    gaps = Gaps(states)
    ended = gaps.restarted({"streamed", "stopped", "never", "new"}, last_seen_us=T + 9 * S)
    assert ended == ["dropped"]
    assert "dropped" not in states  # forgotten: its pending gap with it
    assert states["streamed"].gap_from_us == T + 9 * S  # a crash: gap from the last frame seen
    assert states["stopped"].gap_from_us == T + 5 * S  # a clean stop: gap from the stop itself
    assert states["never"].gap_from_us is None  # never streamed: nothing was missed
    assert "new" not in states
    assert gaps.subscribed("streamed", T + 60 * S) == (
        False,
        Gap("streamed", T + 9 * S, T + 60 * S, "disconnected"),
    )
    assert gaps.subscribed("new", T + 60 * S) == (True, None)


def test_restart_without_anything_seen_opens_no_gap() -> None:
    states = {"air": SubscriptionState(accepted=True)}
    assert Gaps(states).restarted({"air"}, last_seen_us=0) == []
    assert states["air"].gap_from_us is None


def test_removed_subscription_forgets_its_gaps() -> None:
    gaps = Gaps({})
    gaps.subscribed("air", T)
    gaps.stream_stopped(["air"], T + S)
    gaps.add_pending(Gap("air", T, T + S, "disconnected"))
    assert gaps.spool_full("air", T + 2 * S)
    gaps.removed("air")
    assert gaps.states == {}
    assert gaps.pending() == []
    assert gaps.close_spool_gaps(T + 3 * S) == []
    gaps.removed("never-known")  # harmless


def test_spool_full_gap_opens_once_and_closes_with_the_next_spooled_frame() -> None:
    gaps = Gaps({})
    assert gaps.spooled("air", T) is None  # nothing open: nothing closes
    assert gaps.spool_full("air", T + S) is True
    assert gaps.spool_full("air", T + 2 * S) is False  # the same gap, still open
    assert gaps.spool_full("sea", T + 3 * S) is True
    assert gaps.spooled("air", T + 9 * S) == Gap("air", T + S, T + 9 * S, "spool_full")
    assert gaps.spooled("air", T + 10 * S) is None
    # A spool-full gap is not stream state: it is not saved in the checkpoint.
    assert all(s.gap_from_us is None for s in gaps.states.values())
    assert gaps.close_spool_gaps(T + 20 * S) == [Gap("sea", T + 3 * S, T + 20 * S, "spool_full")]
    assert gaps.close_spool_gaps(T + 21 * S) == []
    assert gaps.spool_full("air", T + 30 * S) is True  # a new one may open later


def test_pending_gaps_are_settled_once_by_their_window() -> None:
    gaps = Gaps({})
    first = Gap("air", T, T + S, "disconnected")
    second = Gap("air", T + 5 * S, T + 6 * S, "spool_full")
    other = Gap("sea", T, T + S, "disconnected")
    for gap in (first, second, other):
        gaps.add_pending(gap)
    pending = gaps.pending()
    assert sorted((g.subscription, g.start_us, g.end_us) for g in pending) == [
        ("air", T, T + S),
        ("air", T + 5 * S, T + 6 * S),
        ("sea", T, T + S),
    ]
    # Whatever the gap was called when it opened, the window identifies it.
    assert gaps.settle(Gap("air", T + 5 * S, T + 6 * S, "pending")) is True
    assert gaps.settle(second) is False  # already settled
    assert gaps.settle(Gap("air", T, T + 2 * S, "disconnected")) is False  # another window
    assert gaps.settle(Gap("nobody", T, T + S, "disconnected")) is False
    assert [(g.subscription, g.start_us, g.end_us) for g in gaps.pending()] == [
        ("air", T, T + S),
        ("sea", T, T + S),
    ]
    assert gaps.states["air"].pending_gaps == [(T, T + S)]


def test_gap_state_lives_in_the_checkpoint_and_survives_a_restart(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    gaps = Gaps(cp.subscriptions)
    gaps.subscribed("air", T)
    gaps.stream_stopped(["air"], T + S)
    gaps.add_pending(Gap("air", T - 60 * S, T - 30 * S, "disconnected"))
    store.save(cp)

    again = CheckpointStore(tmp_path).load(None)
    restored = Gaps(again.subscriptions)
    assert restored.restarted({"air"}, last_seen_us=T + 5 * S) == []
    # Settling works on what came back from disk (JSON arrays, read back as tuples).
    assert restored.settle(Gap("air", T - 60 * S, T - 30 * S, "pending")) is True
    assert restored.subscribed("air", T + 90 * S) == (
        False,
        Gap("air", T + S, T + 90 * S, "disconnected"),
    )


def test_a_spool_full_gap_survives_a_kill_through_the_checkpoint(tmp_path: Path) -> None:
    """The start of a spool-full episode is saved when it opens: after a SIGKILL mid-episode
    the next start's gap begins there, not at the newest frame another subscription spooled."""
    store = CheckpointStore(tmp_path)
    cp = store.load(None)
    gaps = Gaps(cp.subscriptions)
    gaps.subscribed("air", 1_000)
    assert gaps.spool_full("air", 5_000)
    assert not gaps.spool_full("air", 6_000)  # one gap per episode
    store.save(cp)  # what the intake's state-change callback triggers

    after_kill = Gaps(store.load(None).subscriptions)
    after_kill.restarted({"air"}, last_seen_us=9_000)  # other frames were spooled until 9_000
    _, gap = after_kill.subscribed("air", 20_000)
    assert gap is not None and (gap.start_us, gap.end_us) == (5_000, 20_000)
