"""The simulated engines, the environment's limits and the fault budget, with the names
and records every part of the simulation shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from embxfer.fsm.actions import WritePiece
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.messages import Abort, AbortAck, Announce, PieceRequest, PieceWritten, RoomMessage
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.room import Timeouts

SENDER = "E"
HOG = -1
"""Owner of the blocks ``Hog`` takes: memory the scheduler uses for something else."""
UNBOUNDED = 1 << 30

SIM_TIMEOUTS = Timeouts(bootstrap_s=30.0, progress_s=30.0, write_grace_s=65.0)
"""The default timeouts in whole seconds, so that times relative to the clock are exact
and equal states compare equal."""

RoomKey: TypeAlias = tuple[str, int]
"""(engine, request): one side of a request. Requests are numbered by the world; the
room id the schedulers give a request (``World.ids``) may be an earlier request's."""
ROOM_MESSAGES = (PieceRequest, PieceWritten, Announce, Abort, AbortAck)


class Violation(AssertionError):
    """An invariant of the protocol failed in the simulated world."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The engines of a world and the environment's limits."""

    receivers: int = 2
    block_size: int = 2
    sender_blocks: int = 16
    receiver_blocks: int = 8
    timeouts: Timeouts = SIM_TIMEOUTS
    policy: ResumePolicy = field(default_factory=ResumePolicy)
    max_latency_s: float = 2.0
    max_write_s: float = 60.0
    hidden_size: int = 8  # bytes per token matter only to ``ByteData``

    def __post_init__(self) -> None:
        if min(self.receivers, self.block_size, self.sender_blocks, self.receiver_blocks) < 1:
            raise ValueError(f"engines need receivers and blocks: {self}")

    @property
    def receiver_names(self) -> tuple[str, ...]:
        return tuple(f"L{rank}" for rank in range(self.receivers))

    @property
    def engine_blocks(self) -> dict[str, int]:
        """Blocks of each engine's memory, the sender first."""
        return {SENDER: self.sender_blocks} | dict.fromkeys(
            self.receiver_names, self.receiver_blocks
        )

    def never_fits(self, total: int, initial: int) -> bool:
        """Whether one of a room's pieces can never be granted: a payload larger than
        the sender's pool, or, with partial pieces off, a piece larger than a receiver's
        (the spec refuses such a room: it may, and must, fail)."""
        policy, size = self.policy, self.block_size
        if blocks_needed(total, size) > self.sender_blocks:
            return True
        kept_in_place = policy.spill is SpillMode.NEVER_SPILL and initial < total
        if kept_in_place and blocks_needed(total, size) > self.receiver_blocks:
            return True
        received, ask = 0, initial
        while not policy.allow_partial:
            if blocks_needed(ask, size) > self.receiver_blocks:
                return True
            received += min(total - received, blocks_needed(ask, size) * size)
            if received >= total:
                break
            ask = total - received
            if policy.max_resume_tokens:
                ask = min(ask, policy.max_resume_tokens)
        return False


@dataclass(frozen=True, slots=True)
class Budget:
    """Faults a run may still inject: the explorer's bounds (Hypothesis runs unbounded)."""

    dups: int = UNBOUNDED  # messages duplicated
    drops: int = UNBOUNDED
    aborts: int = UNBOUNDED  # scheduler aborts and early releases
    failures: int = UNBOUNDED  # failed writes
    kills: int = UNBOUNDED
    losses: int = UNBOUNDED  # peers declared lost while alive


@dataclass(frozen=True, slots=True)
class Envelope:
    """A control message on the network, sent by request ``room``'s side at ``src``."""

    src: str
    dst: str
    message: RoomMessage
    sent_at: float
    room: int


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A ``WritePiece`` the sender's transport is carrying out for request ``room``, into
    the blocks of request ``target``'s receiver (the incarnation the request it serves
    came from: ``room`` unless a reused id mixed them up)."""

    room: int
    piece: WritePiece
    issued_at: float
    target: int
