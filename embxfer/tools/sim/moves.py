"""Moves: everything that may happen next in a simulated world, one record each.

Whatever the runtime leaves to threads, the network and the scheduler is an explicit move
in the world: which message is delivered next (or duplicated, or dropped), when a write
finishes (or fails), when the scheduler hands over a payload, aborts or releases, when a
peer dies, when time passes on the fake clock. ``describe`` writes one as a trace line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import msgspec

from embxfer.fsm.events import Event
from embxfer.fsm.messages import RoomMessage
from embxfer.tools.sim.config import Envelope, PendingWrite


@dataclass(frozen=True, slots=True)
class OpenRoom:
    """The schedulers create request ``room``'s rooms on the sender and on ``receivers``
    (registered), under room id ``room_id`` (None: ``room``; an earlier request's id is
    reused, which is allowed once its schedulers let go of its rooms). ``announce``: the
    sender's scheduler announces the length before it hands over the payload."""

    room: int
    total_tokens: int
    receivers: tuple[str, ...]
    initial_tokens: tuple[int, ...]
    room_id: int | None = None
    announce: bool = False

    @property
    def wire_id(self) -> int:
        return self.room if self.room_id is None else self.room_id


@dataclass(frozen=True, slots=True)
class AnnounceLength:
    """The sender's scheduler announces the length (an ``announce`` request's, before its
    payload is handed over)."""

    room: int


@dataclass(frozen=True, slots=True)
class HandPayload:
    """The encoder finished: the sender's scheduler hands over the payload."""

    room: int


@dataclass(frozen=True, slots=True)
class Deliver:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The network delivers a second copy of ``envelope`` later."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Drop:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class FinishWrite:
    write: PendingWrite
    ok: bool


@dataclass(frozen=True, slots=True)
class SchedulerAbort:
    engine: str
    room: int


@dataclass(frozen=True, slots=True)
class Release:
    engine: str
    room: int


@dataclass(frozen=True, slots=True)
class Advance:
    """The clock moves to ``to``; every room whose wakeup has come gets a Tick."""

    to: float


@dataclass(frozen=True, slots=True)
class Kill:
    """``engine`` dies: its rooms stop, its memory is gone, messages to it are lost."""

    engine: str


@dataclass(frozen=True, slots=True)
class LosePeer:
    """``engine``'s runtime declares ``peer`` lost (dead, or silent too long)."""

    engine: str
    peer: str


@dataclass(frozen=True, slots=True)
class Hog:
    """Something else takes ``tokens`` of ``engine``'s memory (back-pressure)."""

    engine: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Unhog:
    engine: str


@dataclass(frozen=True, slots=True)
class Inject:
    """An arbitrary event straight into one side of a room; ``fault`` taints the room."""

    engine: str
    room: int
    event: Event
    fault: bool


@dataclass(frozen=True, slots=True)
class Forge:
    """A message no correct peer sent, put on the network; ``fault``: it may fail its
    room, which it taints (otherwise the room must ignore it)."""

    envelope: Envelope
    fault: bool


Move: TypeAlias = (
    OpenRoom
    | AnnounceLength
    | HandPayload
    | Deliver
    | Duplicate
    | Drop
    | FinishWrite
    | SchedulerAbort
    | Release
    | Advance
    | Kill
    | LosePeer
    | Hog
    | Unhog
    | Inject
    | Forge
)

FAULTS = ("reorder", "dup", "drop", "abort", "fail", "kill", "lose", "delay")
"""Fault kinds ``World.fault_moves`` knows. reorder: deliver any message, finish any write,
not only the oldest; dup: duplicate a message; drop: lose one; abort: a scheduler aborts
or releases an active room; fail: a write fails; kill: an engine dies; lose: a live peer
is declared lost; delay: time passes while messages or writes are pending."""


def describe(move: Move) -> str:
    """A move as one line of a trace."""
    match move:
        case Deliver(envelope=e) | Duplicate(envelope=e) | Drop(envelope=e) | Forge(envelope=e):
            verb = type(move).__name__.lower()
            return f"{verb} {e.src}->{e.dst} {_message_text(e.message)}"
        case FinishWrite(write=w, ok=ok):
            p = w.piece
            return (
                f"write {'lands' if ok else 'FAILS'}: room {w.room} tokens "
                f"[{p.sent_tokens}, {p.sent_tokens + p.tokens}) -> {p.receiver} {p.dst_blocks}"
            )
        case Inject(engine=engine, room=room, event=event):
            return f"inject {event!r} into {engine}#{room}"
    return repr(move)


def _message_text(message: RoomMessage) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(message).items())
    return f"{type(message).__name__}({fields})"
