"""Which room under a reused id a message is for (``fsm.routing.incarnation``), and how
old a request that waited for its room is."""

from __future__ import annotations

from embxfer.fsm.events import PayloadReady, Released, RequestReceived
from embxfer.fsm.room import Room
from embxfer.fsm.routing import incarnation
from embxfer.fsm.sender import SenderRoom

from .rooms import NONCE, OLD_NONCE, RECEIVER, ROOM, TIMEOUTS, TOTAL, memory, request


def _room(room: Room) -> Room:
    return room


def sender_bound_to(nonce: int) -> SenderRoom:
    room = SenderRoom(ROOM, memory(), TIMEOUTS, 0.0)
    room.handle(RequestReceived(RECEIVER, request(0, (0, 1), nonce=nonce)), 0.0)
    return room


def test_the_room_that_bound_an_incarnation_gets_its_messages() -> None:
    old, new = sender_bound_to(OLD_NONCE), sender_bound_to(NONCE)
    old.handle(Released(), 0.0)
    assert incarnation([old, new], _room, RECEIVER, OLD_NONCE) is old
    assert incarnation([old, new], _room, RECEIVER, NONCE) is new


def test_a_room_that_knows_the_receiver_by_another_incarnation_leaves_it_to_a_later_one() -> None:
    held = sender_bound_to(OLD_NONCE)
    assert incarnation([held], _room, RECEIVER, NONCE) is None  # parked for the next room


def test_the_scheduler_s_room_binds_an_incarnation_no_room_knows() -> None:
    old, new = sender_bound_to(OLD_NONCE), SenderRoom(ROOM, memory(), TIMEOUTS, 0.0)
    old.handle(Released(), 0.0)
    assert incarnation([old, new], _room, RECEIVER, NONCE) is new
    assert incarnation([old, new], _room, RECEIVER, NONCE, retired=True) is None  # late
    new.handle(Released(), 0.0)
    assert incarnation([old, new], _room, RECEIVER, NONCE) is None  # let go of: parked


def test_a_request_that_waited_for_its_room_is_as_old_as_its_arrival() -> None:
    """Parked longer than ``progress_s``, it is never served: its receiver may have
    freed the blocks it names by now."""
    for arrived_at, writes in ((None, ["WritePiece"]), (0.0, [])):
        room = SenderRoom(ROOM, memory(), TIMEOUTS, 0.0)
        room.handle(PayloadReady(TOTAL), 0.0)
        late = TIMEOUTS.progress_s + 1.0
        asked = RequestReceived(RECEIVER, request(0, (0, 1)), arrived_at)
        actions = room.handle(asked, late)
        assert [type(a).__name__ for a in actions if type(a).__name__ == "WritePiece"] == writes
