"""An independent, in-process implementation of Gotham's observation APIs.

It is the other side of the wire for tests, the demo and benchmarks, so it deliberately imports
nothing from `connector` outside this package: a shared misunderstanding of the protocol must not
be able to hide in shared code.
"""

from connector.simulator.filters import matches, validate_query
from connector.simulator.options import SimulatorOptions
from connector.simulator.server import Simulator
from connector.simulator.thread import SimulatorThread

__all__ = ["Simulator", "SimulatorOptions", "SimulatorThread", "matches", "validate_query"]
