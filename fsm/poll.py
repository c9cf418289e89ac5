"""KVPoll: the room states, with SGLang's integer values."""

from __future__ import annotations

import enum


class KVPoll(enum.IntEnum):
    """A room's state as a scheduler sees it; schedulers all-reduce MIN across ranks."""

    Failed = 0
    Bootstrapping = 1
    WaitingForInput = 2
    Transferring = 3
    Success = 4


STATE_NAMES: tuple[str, ...] = tuple(state.name for state in KVPoll)
TERMINAL_STATES: frozenset[str] = frozenset({KVPoll.Success.name, KVPoll.Failed.name})
