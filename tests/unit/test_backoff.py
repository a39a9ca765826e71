"""Capped exponential backoff with jitter; a seeded RNG instead of sleeping."""

from __future__ import annotations

import itertools
import random

import pytest

from connector.backoff import Backoff


def test_first_delay_is_between_half_and_the_minimum() -> None:
    for seed in range(50):
        delay = Backoff(2.0, 30.0, random.Random(seed)).next()
        assert 1.0 <= delay <= 2.0


def test_ceiling_grows_then_caps_at_the_maximum() -> None:
    rng = random.Random(3)
    b = Backoff(0.5, 30.0, rng)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        draws = []
        for _ in range(200):
            b.attempt = attempt
            draws.append(b.next())
        assert all(0.25 <= d <= ceiling for d in draws)
        # The jitter really spreads over the range (not stuck at the floor).
        assert max(draws) > 0.25 + 0.8 * (ceiling - 0.25)
    assert b.attempt == 12


def test_growth_on_average() -> None:
    b = Backoff(1.0, 1000.0, random.Random(11))
    means = []
    for attempt in range(8):
        total = 0.0
        for _ in range(300):
            b.attempt = attempt
            total += b.next()
        means.append(total / 300)
    assert all(later > earlier * 1.3 for earlier, later in itertools.pairwise(means))


def test_reset_starts_over() -> None:
    b = Backoff(1.0, 60.0, random.Random(5))
    for _ in range(10):
        b.next()
    assert b.attempt == 10
    b.reset()
    assert b.attempt == 0
    assert b.next() <= 1.0


@pytest.mark.parametrize("attempts", [1100, 5000])
def test_a_long_outage_does_not_overflow(attempts: int) -> None:
    # 0.5 * 2**1024 does not fit a float: a sink down for hours once crashed the flush worker.
    b = Backoff(0.5, 30.0, random.Random(1))
    for _ in range(attempts):
        assert 0.25 <= b.next() <= 30.0


def test_deterministic_with_a_seeded_rng() -> None:
    a = [Backoff(0.5, 30.0, random.Random(9)).next() for _ in range(3)]
    assert a[0] == a[1] == a[2]
