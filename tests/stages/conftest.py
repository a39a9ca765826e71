"""Fixtures of the stage tests: intakes on real spools, closed (fds released) after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.stages.helpers import IntakeRig, make_rig


@pytest.fixture
def rigs() -> Iterator[Callable[..., IntakeRig]]:
    """`rigs(directory, **options)` builds an IntakeRig (see `make_rig`); all are closed after."""
    made: list[IntakeRig] = []

    def build(*args: Any, **kwargs: Any) -> IntakeRig:
        rig = make_rig(*args, **kwargs)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        rig.intake.close()
