"""What an inbound message means to the rooms of a role: the one mapping from the wire
to room events, used by both engines, the verification world, the diagrams and the
benchmarks alike.

Engine-level messages (``Register``, ``RegisterAck``, ``Heartbeat``) name no room; the
engines handle them. Every other message is for one room, and becomes that room's
event here, or nothing when no room of the role takes that kind (the engine rejects
it, counted as ``unexpected_kind``). Where the message came from (``peer``) is the
channel's word, never the message's: the machines judge the rest.
"""

from __future__ import annotations

from typing import Literal

from embxfer.fsm.events import (
    AbortAckReceived,
    AbortReceived,
    Event,
    PieceArrived,
    RequestReceived,
)
from embxfer.fsm.messages import Abort, AbortAck, Message, PieceRequest, PieceWritten

Role = Literal["sender", "receiver"]


def room_event(role: Role, peer: str, message: Message) -> tuple[int, Event] | None:
    """``(room id, event)`` for a room of ``role``, or None if no such room takes it."""
    if isinstance(message, Abort):
        return message.room, AbortReceived(peer, message.reason)
    if role == "sender":
        if isinstance(message, PieceRequest):
            return message.room, RequestReceived(peer, message)
        return None
    if isinstance(message, PieceWritten):
        return message.room, PieceArrived(peer, message)
    if isinstance(message, AbortAck):
        return message.room, AbortAckReceived(peer)
    return None
