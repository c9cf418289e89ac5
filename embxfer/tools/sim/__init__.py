"""One deterministic world for the protocol's verification tools.

The Hypothesis machines in ``tests/verification`` draw moves, ``embxfer explore``
(``embxfer.tools.explore``) enumerates every one of them breadth-first, and both check
the same invariants after every move; this package exports what they use. The
modules, one job each:

- ``config``: the engines, the environment's limits, the fault budget, shared records;
- ``moves``: everything that may happen next, one record each, and trace lines;
- ``data``, ``byte_data``: what lands where (symbolic labels, or real bytes);
- ``ownership``: the reference model of memory, fed by the tracked allocators;
- ``world``: the rooms, the network and the clock, carrying out moves;
- ``choices``, ``invariants``: which moves may come next, and what must hold;
- ``states``: snapshots and canonical state keys, for the explorer;
- ``mutants``: deliberately broken machines the tools must catch.
"""

from embxfer.tools.sim.byte_data import ByteData
from embxfer.tools.sim.config import SENDER, Budget, Envelope, SimConfig, Violation
from embxfer.tools.sim.data import DataPlane, LabelData
from embxfer.tools.sim.moves import (
    FAULTS,
    Advance,
    AnnounceLength,
    Deliver,
    Drop,
    Forge,
    HandPayload,
    Hog,
    Inject,
    Move,
    OpenRoom,
    SchedulerAbort,
    Unhog,
    describe,
)
from embxfer.tools.sim.mutants import MUTANTS, mutant
from embxfer.tools.sim.states import Snapshot
from embxfer.tools.sim.world import World, nonce_of

__all__ = [
    "FAULTS",
    "MUTANTS",
    "SENDER",
    "Advance",
    "AnnounceLength",
    "Budget",
    "ByteData",
    "DataPlane",
    "Deliver",
    "Drop",
    "Envelope",
    "Forge",
    "HandPayload",
    "Hog",
    "Inject",
    "LabelData",
    "Move",
    "OpenRoom",
    "SchedulerAbort",
    "SimConfig",
    "Snapshot",
    "Unhog",
    "Violation",
    "World",
    "describe",
    "mutant",
    "nonce_of",
]
