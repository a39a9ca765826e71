"""An independent, in-process implementation of Gotham's observation APIs.

It is the other side of the wire for tests, the demo and benchmarks, so it deliberately imports
nothing from `connector` outside this package: a shared misunderstanding of the protocol must not
be able to hide in shared code.

Its names load on first use (PEP 562): `gotham-connector run` builds the `simulate` command's
arguments from this package, and must not pay at every start for the aiohttp server it never
runs (~0.3 CPU-s and 12 MiB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.simulator.filters import matches, validate_query
    from connector.simulator.options import SimulatorOptions
    from connector.simulator.server import Simulator
    from connector.simulator.thread import SimulatorThread

__all__ = ["Simulator", "SimulatorOptions", "SimulatorThread", "matches", "validate_query"]

_MODULE_OF = {
    "Simulator": "server",
    "SimulatorOptions": "options",
    "SimulatorThread": "thread",
    "matches": "filters",
    "validate_query": "filters",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
