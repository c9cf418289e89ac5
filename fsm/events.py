"""Inputs to a room machine: messages received, local completions, scheduler calls, time."""

from __future__ import annotations

import msgspec

from embxfer.fsm.messages import Announce, PieceRequest, PieceWritten


# gc=False: these hold plain values only, so they can never be in a reference cycle and
# the cyclic collector need not track them (a room makes dozens: fewer collections).
class PeerReady(msgspec.Struct, frozen=True, gc=False):
    """Receiver: the sender accepted this engine's registration."""


class RequestReceived(msgspec.Struct, frozen=True, gc=False):
    """Sender: a receiver asked for a piece (initial or resume). ``arrived_at``: when the
    engine took it in, if it waited (parked) for the scheduler to create the room."""

    receiver: str
    request: PieceRequest
    arrived_at: float | None = None


class LengthAnnounced(msgspec.Struct, frozen=True, gc=False):
    """Sender: the scheduler knows the embedding will have ``total_tokens`` tokens (a
    vision encoder knows it from the image grid before its forward pass)."""

    total_tokens: int


class PayloadReady(msgspec.Struct, frozen=True, gc=False):
    """Sender: the scheduler handed over the embedding of ``total_tokens`` tokens: the
    engine holds it until the room has blocks to store it in, or it is stored already in
    ``blocks`` of the engine's memory, which the scheduler took and filled (the room owns
    them from now on). The room needs only the length and the M-RoPE delta, which it
    reports with every piece."""

    total_tokens: int
    blocks: tuple[int, ...] = ()
    mrope_position_delta: int = 0


class WriteFinished(msgspec.Struct, frozen=True, gc=False):
    """Sender: the data transport finished the write of a piece (``ok`` or not)."""

    receiver: str
    sent_tokens: int
    ok: bool
    reason: str = ""


class PieceArrived(msgspec.Struct, frozen=True, gc=False):
    """Receiver: ``peer`` reported a piece written into this room's blocks."""

    peer: str
    message: PieceWritten


class AnnounceArrived(msgspec.Struct, frozen=True, gc=False):
    """Receiver: ``peer`` announced the embedding's length."""

    peer: str
    message: Announce


class AbortReceived(msgspec.Struct, frozen=True, gc=False):
    """A peer aborted the room (``peer`` names it), for receiver incarnation ``nonce``."""

    peer: str
    reason: str
    nonce: int


class AbortAckReceived(msgspec.Struct, frozen=True, gc=False):
    """Receiver: ``peer`` confirmed no write for incarnation ``nonce`` is in flight."""

    peer: str
    nonce: int


class AbortRequested(msgspec.Struct, frozen=True, gc=False):
    """The local scheduler aborted the room."""

    reason: str = "requested"


class PeerLost(msgspec.Struct, frozen=True, gc=False):
    """The runtime stopped hearing from ``peer`` (heartbeats or transport failure)."""

    peer: str


class Released(msgspec.Struct, frozen=True, gc=False):
    """The scheduler is done with the room: free what it still holds once safe."""


class MemoryGranted(msgspec.Struct, frozen=True, gc=False):
    """Blocks taken for this room, which waited for them: its turn in the engine's queue
    came, or (receiver) the scheduler handed over the blocks of the first piece."""

    blocks: tuple[int, ...]


class CallbackFailed(msgspec.Struct, frozen=True, gc=False):
    """A callback of this room raised on an earlier event (a bug): the room fails."""

    error: str


class Tick(msgspec.Struct, frozen=True, gc=False):
    """Time passed: deadlines and quarantine ends."""


Event = (
    PeerReady
    | RequestReceived
    | LengthAnnounced
    | PayloadReady
    | WriteFinished
    | PieceArrived
    | AnnounceArrived
    | AbortReceived
    | AbortAckReceived
    | AbortRequested
    | PeerLost
    | Released
    | MemoryGranted
    | CallbackFailed
    | Tick
)
