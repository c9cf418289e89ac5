"""Outputs of a room machine, carried out in order by the runtime before the next event."""

from __future__ import annotations

import msgspec

from embxfer.fsm.messages import Message


# gc=False: these hold plain values only, so they can never be in a reference cycle and
# the cyclic collector need not track them (a room makes dozens: fewer collections).
class SendMessage(msgspec.Struct, frozen=True, gc=False):
    """Send a control message to ``peer``."""

    peer: str
    message: Message


class StorePayload(msgspec.Struct, frozen=True, gc=False):
    """Sender: copy the payload the scheduler handed over into the room's ``blocks``."""

    blocks: tuple[int, ...]


class WritePiece(msgspec.Struct, frozen=True, gc=False):
    """Sender: write ``tokens`` tokens starting at ``sent_tokens`` to ``receiver``.

    Pieces start on block boundaries: source tokens come from slot 0 of
    ``src_blocks`` (the room's blocks covering the piece) and land from slot 0
    of ``dst_blocks``. The runtime reports back with ``WriteFinished``.
    """

    receiver: str
    sent_tokens: int
    tokens: int
    src_blocks: tuple[int, ...]
    dst_blocks: tuple[int, ...]


class SpillPiece(msgspec.Struct, frozen=True, gc=False):
    """Receiver: copy a received piece out of ``blocks`` into staging memory.

    The room frees those blocks right after; the runtime must copy before it
    handles the next event (actions run in order, writes start only after the
    next request is sent).
    """

    sent_tokens: int
    tokens: int
    blocks: tuple[int, ...]


class WaitForMemory(msgspec.Struct, frozen=True, gc=False):
    """Queue the room for ``tokens`` tokens of blocks (at least ``floor_tokens``): it
    could not take them now. The engine answers with ``MemoryGranted`` in turn."""

    tokens: int
    floor_tokens: int


class StopWaiting(msgspec.Struct, frozen=True, gc=False):
    """Take the room out of the memory queue: it no longer needs blocks (it failed)."""


Action = SendMessage | StorePayload | WritePiece | SpillPiece | WaitForMemory | StopWaiting
