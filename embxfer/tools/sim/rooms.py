"""What the world asks of a room of either role, and how a trace shows one."""

from __future__ import annotations

from collections.abc import Iterable

from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import ACTIVE, Room
from embxfer.fsm.sender import SenderRoom
from embxfer.tools.sim.config import RoomKey


def releasable(room: Room) -> bool:
    """Finished its protocol, not yet released by its scheduler."""
    assert isinstance(room, (SenderRoom, ReceiverRoom))
    return room.terminal and not room.released


def held_blocks(room: Room) -> Iterable[int]:
    if isinstance(room, SenderRoom):
        return room.src_blocks
    assert isinstance(room, ReceiverRoom)
    return room.held_blocks()


def waiting_for_memory(room: Room) -> bool:
    """Back-pressure: the room waits for blocks (a legitimate reason to sit idle)."""
    assert isinstance(room, (SenderRoom, ReceiverRoom))
    return room.state in ACTIVE and room.waiting_for_memory


def side(key: RoomKey) -> str:
    return f"{key[0]}#{key[1]}"


def describe_room(room: Room) -> str:
    if isinstance(room, ReceiverRoom):
        extra = f"{room.received}/{room.total_tokens or '?'}"
        if room.quarantine:
            extra += f" quarantine={room.quarantine}"
    else:
        assert isinstance(room, SenderRoom)
        extra = ",".join(f"{p}:{g.written}" for p, g in room.receivers.items())
    return f"{room.state}[{extra}]"
