"""Capped exponential backoff with full jitter, reset after a healthy session. Pure."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        # The exponent is capped: 2**1024 does not fit a float (OverflowError after a long outage).
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.attempt, 64)))
        self.attempt += 1
        # Full jitter keeps many replicas from reconnecting in lockstep after an outage.
        return self._rng.uniform(self.minimum / 2, max(ceiling, self.minimum))

    def reset(self) -> None:
        self.attempt = 0
