"""A callback that raises is a bug: the room fails with the error, the half-done step's
actions are discarded, and the blocks the room recorded are freed as on any failure."""

from __future__ import annotations

import pytest

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.fsm.events import (
    AbortAckReceived,
    PayloadReady,
    PieceArrived,
    Released,
    WriteFinished,
)
from embxfer.fsm.messages import PieceWritten
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.sender import SenderRoom

from .rooms import DELTA, RECEIVER, ROOM, SENDER, TOTAL, messages, receiver_in, sender_in


def test_a_sender_callback_that_raises_fails_the_room_and_discards_its_actions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allocator = FreeListAllocator(64, 4)
    room = sender_in("WaitingForInput", allocator)
    room.handle(PayloadReady(TOTAL), 0.0)

    def broken(self: SenderRoom, event: WriteFinished) -> None:
        self._actions.append(object())  # type: ignore[arg-type]  # half a step
        raise KeyError("bug")

    monkeypatch.setattr(SenderRoom, "_report_piece", broken)
    actions = room.handle(WriteFinished(RECEIVER, 0, True), 1.0)
    assert room.state == "Failed"
    assert room.reason == "internal error on WriteFinished: KeyError('bug')"
    assert room.crash and not any(type(a) is object for a in actions)
    # The write that crashed was over, but the room's records say one is in flight: the
    # source blocks stay until the record is settled, never freed under a write.
    assert room.src_blocks
    monkeypatch.undo()
    assert messages(room.handle(WriteFinished(RECEIVER, 0, True), 2.0)) == ["Abort"]
    room.handle(Released(), 2.0)
    assert room.finished and allocator.used_blocks == 0


def test_a_receiver_callback_that_raises_quarantines_what_a_write_may_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allocator = FreeListAllocator(64, 4)
    room = receiver_in("WaitingForInput", allocator)

    def broken(self: ReceiverRoom, event: PieceArrived) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(ReceiverRoom, "_take_piece_and_resume", broken)
    actions = room.handle(PieceArrived(SENDER, PieceWritten(ROOM, 0, 8, TOTAL, DELTA)), 1.0)
    assert room.state == "Failed" and "ValueError('bug')" in room.reason
    assert messages(actions) == ["Abort"], "only the failure's own action"
    assert room.quarantine, "the request's blocks may still be written: held"
    room.handle(AbortAckReceived(SENDER), 2.0)
    room.handle(Released(), 2.0)
    assert room.finished and allocator.used_blocks == 0
