"""What an inbound message means to the rooms of a role: the one mapping from the wire
to room events, used by both engines, the verification world, the diagrams and the
benchmarks alike.

Engine-level messages (``Register``, ``RegisterAck``, ``Heartbeat``) name no room; the
engines handle them. Every other message is for one room, and becomes that room's
event here, or nothing when no room of the role takes that kind (the engine rejects
it, counted as ``unexpected_kind``). Where the message came from (``peer``) is the
channel's word, never the message's: the machines judge the rest.

Room ids get reused, so an engine may hold several rooms under one id: the one its
scheduler holds, and earlier ones still settling (writes in flight, blocks under
quarantine). ``incarnation`` says which of them a message is for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from embxfer.fsm.events import (
    AbortAckReceived,
    AbortReceived,
    AnnounceArrived,
    Event,
    PieceArrived,
    RequestReceived,
)
from embxfer.fsm.messages import Abort, AbortAck, Announce, Message, PieceRequest, PieceWritten
from embxfer.fsm.room import Room

Role = Literal["sender", "receiver"]
HeldT = TypeVar("HeldT")


def room_event(role: Role, peer: str, message: Message) -> tuple[int, int, Event] | None:
    """``(room id, receiver incarnation, event)`` for a room of ``role``, or None if no
    such room takes it."""
    if isinstance(message, Abort):
        return message.room, message.nonce, AbortReceived(peer, message.reason, message.nonce)
    if role == "sender":
        if isinstance(message, PieceRequest):
            return message.room, message.nonce, RequestReceived(peer, message)
        return None
    if isinstance(message, PieceWritten):
        return message.room, message.nonce, PieceArrived(peer, message)
    if isinstance(message, Announce):
        return message.room, message.nonce, AnnounceArrived(peer, message)
    if isinstance(message, AbortAck):
        return message.room, message.nonce, AbortAckReceived(peer, message.nonce)
    return None


def incarnation(
    held: Sequence[HeldT],
    room_of: Callable[[HeldT], Room],
    peer: str,
    nonce: int,
    retired: bool = False,
) -> HeldT | None:
    """Which of the rooms ``held`` under one id (oldest first) a message from ``peer``
    about receiver incarnation ``nonce`` is for: the room that is (receiver) or bound
    (sender) that incarnation; else the newest room, unless its scheduler let go of it
    or the incarnation is ``retired`` (a room of the id that is gone had it): the newest
    judges the message (stale, or a first request binds the incarnation) unless it knows
    ``peer`` by another incarnation (then the message is a later room's); else None."""
    for item in reversed(held):
        if room_of(item).names(peer, nonce):
            return item
    if not held or retired:
        return None
    newest = room_of(held[-1])
    if newest.released or newest.knows_other(peer, nonce):
        return None
    return held[-1]
