"""Rooms driven into each state, for table tests: small blocks, a fake clock, no I/O."""

from __future__ import annotations

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.fsm.actions import Action, SendMessage, WritePiece
from embxfer.fsm.events import (
    AbortRequested,
    Event,
    PayloadReady,
    PeerReady,
    PieceArrived,
    RequestReceived,
    WriteFinished,
)
from embxfer.fsm.messages import PieceRequest, PieceWritten
from embxfer.fsm.policy import ResumePolicy
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import Room, Timeouts
from embxfer.fsm.sender import SenderRoom

BLOCK = 4
ROOM = 7
RECEIVER = "language-0"
SENDER = "encoder"
TIMEOUTS = Timeouts(bootstrap_s=10.0, progress_s=10.0, write_grace_s=20.0)
TOTAL = 10  # tokens: with 8 allocated, one resume of 2
NONCE = 0x5EED  # the receiver room's incarnation
OLD_NONCE = 0x01D  # an earlier receiver room under the same room id
DELTA = -3  # the room's M-RoPE position delta, reported with every piece
# The room states, short, as the state x event tables write them.
B, W, T, OK, F = "Bootstrapping", "WaitingForInput", "Transferring", "Success", "Failed"


def memory(allocator: FreeListAllocator | None = None) -> FairPool[int]:
    """A room's memory: ``allocator`` (64 blocks if None) behind a fair queue."""
    return FairPool(allocator or FreeListAllocator(64, BLOCK))


def request(
    sent_tokens: int,
    blocks: tuple[int, ...],
    receivers: int = 1,
    seq: int | None = None,
    nonce: int = NONCE,
) -> PieceRequest:
    """A receiver's request; its number grows with ``sent_tokens`` unless given."""
    number = sent_tokens + 1 if seq is None else seq
    return PieceRequest(ROOM, nonce, number, sent_tokens, blocks, len(blocks) * BLOCK, receivers)


def piece(
    sent: int,
    tokens: int,
    total: int = TOTAL,
    peer: str = SENDER,
    seq: int | None = None,
    nonce: int = NONCE,
    delta: int = DELTA,
) -> PieceArrived:
    """A piece written, answering (unless ``seq`` says) the first request of a
    ``receiver_in`` room at offset 0, its resume at any other."""
    number = (1 if sent == 0 else 2) if seq is None else seq
    return PieceArrived(peer, PieceWritten(ROOM, nonce, number, sent, tokens, total, delta))


def sender_in(state: str, allocator: FreeListAllocator | None = None) -> SenderRoom:
    """A one-receiver sender room in ``state``, first allocation 8 of 10 tokens."""
    room = SenderRoom(ROOM, memory(allocator), TIMEOUTS, 0.0)
    if state == "Bootstrapping":
        return room
    room.handle(RequestReceived(RECEIVER, request(0, (0, 1))), 0.0)
    if state == "WaitingForInput":
        return room
    if state == "Failed":
        room.handle(AbortRequested("test"), 0.0)
        return room
    (write,) = [a for a in room.handle(PayloadReady(TOTAL), 0.0) if isinstance(a, WritePiece)]
    room.handle(WriteFinished(RECEIVER, 0, True), 0.0)
    if state == "Transferring":
        return room
    room.handle(RequestReceived(RECEIVER, request(8, (2,))), 0.0)
    room.handle(WriteFinished(RECEIVER, 8, True), 0.0)
    assert room.state == "Success", (state, room.state, write)
    return room


def receiver(
    initial: int | None,
    allocator: FreeListAllocator | None = None,
    policy: ResumePolicy | None = None,
) -> ReceiverRoom:
    """A receiver room (incarnation ``NONCE``) whose first request asks ``initial``
    tokens (None: the scheduler's blocks)."""
    return ReceiverRoom(
        ROOM, SENDER, memory(allocator), initial, TIMEOUTS, 0.0, policy, nonce=NONCE
    )


def receiver_in(state: str, allocator: FreeListAllocator | None = None) -> ReceiverRoom:
    """A receiver room in ``state``, asking 8 tokens first of a 10-token embedding."""
    room = receiver(8, allocator)
    if state == "Bootstrapping":
        return room
    room.handle(PeerReady(), 0.0)
    if state == "WaitingForInput":
        return room
    if state == "Failed":
        room.handle(AbortRequested("test"), 0.0)
        return room
    room.handle(piece(0, 8), 0.0)
    if state == "Transferring":
        return room
    room.handle(piece(8, 2), 0.0)
    assert room.state == "Success"
    return room


ACT, IGNORE, FAIL = "act", "ignore", "fail"


def emitted(actions: list[Action]) -> tuple[str, ...]:
    """What ``actions`` are, by name: a message sent is named by the message's kind."""
    return tuple(
        type(a.message).__name__ if isinstance(a, SendMessage) else type(a).__name__
        for a in actions
    )


def check_outcome(
    room: Room, event: Event, now: float, after: str, outcome: str, emits: tuple[str, ...] = ()
) -> None:
    """Run ``event`` and check the table's answer: the state after it, whether the room
    acted, ignored it (counted) or failed (with a reason), and exactly the actions it
    emitted (``emits``: an ignored event emits none)."""
    ignored = room.ignored
    actions = room.handle(event, now)
    assert room.state == after, room.verdict_reason
    assert emitted(actions) == emits, room.verdict_reason
    if outcome == IGNORE:
        assert room.ignored == ignored + 1, room.verdict_reason
    else:
        assert room.ignored == ignored
    if outcome == FAIL:
        assert room.reason, "a failed room always says why"


def messages(actions: list[Action]) -> list[str]:
    """Kinds of the control messages among ``actions``."""
    return [type(a.message).__name__ for a in actions if isinstance(a, SendMessage)]
