"""Every row of both tables is reached, every callback a table names exists.

The state x event tables (``test_sender_table``, ``test_receiver_table``) start from one
room per state; the rows they cannot reach from there (several receivers, several
resumes, memory granted later, a write that fails on a resume) are the scenarios here.
``test_every_row_is_reached`` runs both tables and every scenario and fails, naming the
rows, if any row of either machine never fired: a row no test reaches is a rule nobody
has checked, or one that cannot happen and should not be in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from transitions import Machine

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.fsm.events import (
    AnnounceArrived,
    Event,
    LengthAnnounced,
    MemoryGranted,
    PayloadReady,
    PeerLost,
    PeerReady,
    RequestReceived,
    WriteFinished,
)
from embxfer.fsm.messages import Announce
from embxfer.fsm.policy import ResumePolicy
from embxfer.fsm.receiver import RECEIVER_MACHINE, ReceiverRoom
from embxfer.fsm.room import Room, Step, VerdictTransition
from embxfer.fsm.sender import SENDER_MACHINE, SenderRoom

from . import test_receiver_table, test_sender_table
from .rooms import (
    ACT,
    BLOCK,
    FAIL,
    IGNORE,
    NONCE,
    OK,
    RECEIVER,
    ROOM,
    SENDER,
    TOTAL,
    B,
    F,
    T,
    W,
    check_outcome,
    piece,
    receiver,
    request,
    sender_in,
)

OTHER = "language-1"  # a room's second receiver
Row = tuple[str, str, str, str | None, str]  # machine, trigger, source, dest, verdict


def rows(machine: Machine) -> set[Row]:
    return {
        (machine.name, trigger, source, row.dest, _verdict(row))
        for trigger, event in machine.events.items()
        for source, row_list in event.transitions.items()
        for row in row_list
    }


def _verdict(row: VerdictTransition) -> str:
    return row.conditions[0].func if row.conditions else ""


@contextmanager
def recording() -> Iterator[set[Row]]:
    """Record every row that fires while the body runs."""
    fired: set[Row] = set()
    fire = Step.fire

    def recorded(step: Step, room: Room, event: Event) -> None:
        fire(step, room, event)
        machine, trigger, row = step.origin
        fired.add((machine, trigger, row.source, row.dest, _verdict(row)))

    Step.fire = recorded  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        Step.fire = fire  # type: ignore[method-assign]


# -- scenarios: rows a room built into one state cannot reach -------------------------


def two_receivers() -> SenderRoom:
    """A sender room of two receivers, the first joined (8 of 10 tokens) and its payload
    stored: its write to the first receiver is in flight, the room still Bootstrapping."""
    room = sender_in(B)
    check_outcome(room, RequestReceived(RECEIVER, request(0, (0, 1), 2)), 0.0, B, ACT)
    check_outcome(room, RequestReceived(RECEIVER, request(0, (0, 1), 2)), 0.0, B, IGNORE)
    check_outcome(room, PayloadReady(TOTAL), 0.0, B, ACT, ("StorePayload", "WritePiece"))
    check_outcome(room, PayloadReady(TOTAL), 0.0, B, IGNORE)  # handed over already
    return room


def sender_fan_out_before_every_receiver_joined() -> None:
    room = two_receivers()
    check_outcome(room, WriteFinished(RECEIVER, 0, True), 0.0, B, ACT, ("PieceWritten",))
    joins = RequestReceived(OTHER, request(0, (0, 1, 2), 2))
    check_outcome(room, joins, 0.0, W, ACT, ("WritePiece",))
    resumes = RequestReceived(RECEIVER, request(8, (2,), 2))
    check_outcome(room, resumes, 0.0, W, ACT, ("WritePiece",))
    # The first receiver has all its tokens while the second's write is in flight.
    check_outcome(room, WriteFinished(RECEIVER, 8, True), 0.0, W, ACT, ("PieceWritten",))
    check_outcome(room, WriteFinished(OTHER, 0, True), 0.0, OK, ACT, ("PieceWritten",))


def sender_resume_of_one_receiver_while_another_still_owed() -> None:
    room = sender_in(B)
    room.handle(RequestReceived(RECEIVER, request(0, (0, 1), 2)), 0.0)
    room.handle(RequestReceived(OTHER, request(0, (0, 1), 2)), 0.0)
    room.handle(PayloadReady(TOTAL), 0.0)
    check_outcome(room, WriteFinished(RECEIVER, 0, True), 0.0, T, ACT, ("PieceWritten",))
    check_outcome(room, WriteFinished(OTHER, 0, True), 0.0, T, ACT, ("PieceWritten",))
    room.handle(RequestReceived(RECEIVER, request(8, (2,), 2)), 0.0)
    check_outcome(room, WriteFinished(RECEIVER, 8, True), 0.0, T, ACT, ("PieceWritten",))
    check_outcome(room, PeerLost(OTHER), 0.0, F, FAIL, ("Abort", "Abort"))


def sender_a_write_fails_before_every_receiver_joined() -> None:
    room = two_receivers()
    check_outcome(room, WriteFinished(RECEIVER, 0, False, "rc=-1"), 0.0, F, FAIL, ("Abort",))


def sender_a_joined_receiver_is_lost_before_the_others_join() -> None:
    room = two_receivers()
    check_outcome(room, PeerLost(RECEIVER), 0.0, F, FAIL, ())  # its write is still in flight
    check_outcome(room, WriteFinished(RECEIVER, 0, True), 0.0, F, ACT, ("Abort",))


def sender_one_piece_does_it_all() -> None:
    room = sender_in(B)
    room.handle(RequestReceived(RECEIVER, request(0, (0, 1, 2))), 0.0)
    room.handle(PayloadReady(TOTAL), 0.0)
    check_outcome(room, WriteFinished(RECEIVER, 0, True), 0.0, OK, ACT, ("PieceWritten",))


def sender_three_pieces_and_a_failed_resume_write() -> None:
    room = sender_in(B)
    room.handle(RequestReceived(RECEIVER, request(0, (0,))), 0.0)
    room.handle(PayloadReady(TOTAL), 0.0)
    room.handle(WriteFinished(RECEIVER, 0, True), 0.0)
    room.handle(RequestReceived(RECEIVER, request(4, (1,))), 0.0)
    check_outcome(room, WriteFinished(RECEIVER, 4, True), 0.0, T, ACT, ("PieceWritten",))
    room.handle(RequestReceived(RECEIVER, request(8, (2,))), 0.0)
    check_outcome(room, WriteFinished(RECEIVER, 8, False, "rc=-1"), 0.0, F, FAIL, ("Abort",))


def sender_payload_granted_memory_in_each_state() -> None:
    for state in (B, W):
        allocator = FreeListAllocator(3, BLOCK)
        hog = allocator.alloc(BLOCK)
        room = sender_in(state, allocator)
        # A receiver that joined is told the length while the payload waits for memory.
        waits = ("WaitForMemory",) if state == B else ("WaitForMemory", "Announce")
        check_outcome(room, PayloadReady(TOTAL), 0.0, state, ACT, waits)
        assert hog is not None
        allocator.free(hog)
        granted = MemoryGranted(tuple(allocator.alloc(TOTAL) or ()))
        emits = ("StorePayload",) if state == B else ("StorePayload", "WritePiece")
        check_outcome(room, granted, 0.0, state, ACT, emits)


def sender_an_empty_payload_while_waiting_for_input() -> None:
    check_outcome(sender_in(W), PayloadReady(0), 0.0, F, FAIL, ("Abort",))


def sender_announced_before_the_payload() -> None:
    """Announced before anyone joined: again is stale, another length fails the room; a
    receiver that joins before the payload is told the length at once."""
    room = sender_in(B)
    check_outcome(room, LengthAnnounced(TOTAL), 0.0, B, ACT)
    check_outcome(room, LengthAnnounced(TOTAL), 0.0, B, IGNORE)
    check_outcome(room, LengthAnnounced(TOTAL + 1), 0.0, F, FAIL)
    waiting = sender_in(W)
    check_outcome(waiting, LengthAnnounced(TOTAL), 0.0, W, ACT, ("Announce",))


def receiver_announced_twice() -> None:
    """A length other than the one announced fails the room, before or after it asked."""
    for state in (B, W):
        room = receiver(8)
        if state == W:
            room.handle(PeerReady(), 0.0)
        told = AnnounceArrived(SENDER, Announce(ROOM, NONCE, TOTAL))
        check_outcome(room, told, 0.0, state, ACT, ("PieceRequest",) if state == W else ())
        other = AnnounceArrived(SENDER, Announce(ROOM, NONCE, TOTAL + 1))
        check_outcome(room, other, 0.0, F, FAIL, ("Abort",))


def receiver_three_pieces() -> None:
    policy = ResumePolicy(max_resume_tokens=BLOCK)
    room = receiver(4, None, policy)
    room.handle(PeerReady(), 0.0)
    check_outcome(room, piece(0, 4, seq=1), 0.0, T, ACT, ("PieceRequest",))
    check_outcome(room, piece(4, 4, seq=2), 0.0, T, ACT, ("PieceRequest",))
    check_outcome(room, piece(8, 2, seq=3), 0.0, OK, ACT, ())


def receiver_memory_granted_in_each_state() -> None:
    allocator = FreeListAllocator(8, BLOCK)
    scheduler = receiver(None, allocator)
    check_outcome(scheduler, MemoryGranted(tuple(allocator.alloc(8) or ())), 0.0, B, ACT)
    waiting = receiver(None, allocator)
    check_outcome(waiting, PeerReady(), 0.0, W, ACT)
    granted = MemoryGranted(tuple(allocator.alloc(8) or ()))
    check_outcome(waiting, granted, 0.0, W, ACT, ("PieceRequest",))
    test_receiver_table.test_a_granted_resume_asks_for_the_rest()  # Transferring


def receiver_first_piece_larger_than_the_pool() -> None:
    test_receiver_table.test_a_piece_that_can_never_fit_fails_the_room()


SCENARIOS: dict[str, Callable[[], None]] = {
    name: scenario
    for name, scenario in globals().items()
    if name.startswith(("sender_", "receiver_")) and callable(scenario) and name != "sender_in"
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name: str) -> None:
    SCENARIOS[name]()


def run_every_case() -> None:
    """Every case of both tables' tests, and every scenario above."""
    for table in (test_sender_table, test_receiver_table):
        for state, case in table.EXPECTED:
            table.test_table(state, case)
    for scenario in SCENARIOS.values():
        scenario()


def every_row() -> set[Row]:
    return rows(SENDER_MACHINE) | rows(RECEIVER_MACHINE)


def test_every_row_is_reached() -> None:
    with recording() as fired:
        run_every_case()
    unreached = every_row() - fired
    assert not unreached, "rows no test reaches:\n" + "\n".join(sorted(map(str, unreached)))


@pytest.mark.parametrize("room", [SenderRoom, ReceiverRoom])
def test_every_callback_a_table_names_exists(room: type[SenderRoom | ReceiverRoom]) -> None:
    machine = room.MACHINE
    named = {
        callback
        for event in machine.events.values()
        for row_list in event.transitions.values()
        for row in row_list
        for callback in (*row.before, *row.after)
    }
    named |= {c for state in machine.states.values() for c in (*state.on_enter, *state.on_exit)}
    named |= {*machine.prepare_event, *machine.on_final}
    missing = sorted(name for name in named if not callable(getattr(room, name, None)))
    assert not missing, f"{room.__name__} lacks {missing}"
