"""Every state x event of the sender room: act, ignore (counted) or fail, as the table says."""

from __future__ import annotations

import pytest

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.fsm.actions import StopWaiting, WaitForMemory
from embxfer.fsm.events import (
    AbortReceived,
    AbortRequested,
    CallbackFailed,
    Event,
    LengthAnnounced,
    MemoryGranted,
    PayloadReady,
    PeerLost,
    Released,
    RequestReceived,
    Tick,
    WriteFinished,
)
from embxfer.fsm.messages import PieceRequest
from embxfer.fsm.sender import SenderRoom

from .rooms import (
    ACT,
    BLOCK,
    FAIL,
    IGNORE,
    NONCE,
    OK,
    OLD_NONCE,
    RECEIVER,
    ROOM,
    TOTAL,
    B,
    F,
    T,
    W,
    check_outcome,
    messages,
    request,
    sender_in,
)

OTHER = "language-9"

# case -> (event, now); "now" past the 10 s deadlines for tick_late
CASES: dict[str, tuple[Event, float]] = {
    "join": (RequestReceived(OTHER, request(0, (5, 6))), 1.0),
    "duplicate_request": (RequestReceived(RECEIVER, request(0, (0, 1))), 1.0),
    "resume": (RequestReceived(RECEIVER, request(8, (2,))), 1.0),
    "bad_allocation": (RequestReceived(OTHER, PieceRequest(ROOM, NONCE, 1, 0, (5,), 3, 1)), 1.0),
    "payload": (PayloadReady(TOTAL), 1.0),
    "payload_in_blocks": (PayloadReady(TOTAL, (-1,)), 1.0),  # blocks: see test_table
    "write_ok": (WriteFinished(RECEIVER, 0, True), 1.0),
    "write_failed": (WriteFinished(RECEIVER, 0, False, "rc=-1"), 1.0),
    "abort": (AbortRequested("scheduler"), 1.0),
    "peer_abort": (AbortReceived(RECEIVER, "gone", NONCE), 1.0),
    "stranger_abort": (AbortReceived(OTHER, "not yours", NONCE), 1.0),
    "peer_lost": (PeerLost(RECEIVER), 1.0),
    "stranger_lost": (PeerLost(OTHER), 1.0),
    "tick_early": (Tick(), 1.0),
    "tick_late": (Tick(), 100.0),
    "release": (Released(), 1.0),
    "granted": (MemoryGranted(()), 1.0),  # blocks the room did not wait for: see test_table
    "crash": (CallbackFailed("PayloadReady: KeyError()"), 1.0),
    "stale_write": (WriteFinished(RECEIVER, 4, True), 1.0),  # no write at that offset
    "empty_payload": (PayloadReady(0), 1.0),
    # The scheduler announces the length: the payload's, or another.
    "announce": (LengthAnnounced(TOTAL), 1.0),
    "wrong_announce": (LengthAnnounced(TOTAL + 2), 1.0),
    # The receiver replaces its first request with one for the announced length.
    "replace": (RequestReceived(RECEIVER, request(0, (0, 1, 2), seq=2)), 1.0),
    # Messages of the receiver room that used this room id before (another incarnation).
    "old_request": (RequestReceived(RECEIVER, request(0, (0, 1), seq=5, nonce=OLD_NONCE)), 1.0),
    "old_abort": (AbortReceived(RECEIVER, "an earlier room", OLD_NONCE), 1.0),
}


# (state, case) -> (state after, outcome). W here has one receiver whose first piece
# (8 of 10 tokens) is being written; T has that piece written and awaits the resume.
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    (B, "join"): (W, ACT, ()),
    (B, "duplicate_request"): (W, ACT, ()),  # nothing seen yet: it is the join
    (B, "resume"): (F, FAIL, ()),  # resume from an unknown receiver
    (B, "bad_allocation"): (F, FAIL, ()),
    (B, "payload"): (B, ACT, ("StorePayload",)),  # stored; written once receivers joined
    (B, "payload_in_blocks"): (B, ACT, ()),  # stored by the scheduler: the room keeps them
    (B, "write_ok"): (B, IGNORE),
    (B, "write_failed"): (B, IGNORE),
    (B, "abort"): (F, FAIL, ()),
    (B, "peer_abort"): (F, FAIL, ("AbortAck",)),
    (B, "stranger_abort"): (
        F,
        FAIL,
        ("AbortAck",),
    ),  # a receiver may abort before its request arrives
    (B, "peer_lost"): (B, IGNORE),  # not a receiver of this room (yet)
    (B, "stranger_lost"): (B, IGNORE),
    (B, "tick_early"): (B, IGNORE),
    (B, "tick_late"): (F, FAIL, ()),
    (B, "release"): (F, FAIL, ()),
    (W, "join"): (F, FAIL, ()),  # more receivers than the room has
    (W, "duplicate_request"): (W, IGNORE),
    (W, "resume"): (F, FAIL, ()),  # resume while the piece is still being written
    (W, "bad_allocation"): (F, FAIL, ()),
    (W, "payload"): (W, IGNORE),  # already handed over
    (W, "payload_in_blocks"): (W, IGNORE),  # and its blocks go back at once
    (W, "write_ok"): (T, ACT, ("PieceWritten",)),  # 8 of 10 written: a resume is owed
    (W, "write_failed"): (F, FAIL, ("Abort",)),
    (W, "abort"): (F, FAIL, ()),
    (W, "peer_abort"): (F, FAIL, ()),
    (W, "stranger_abort"): (W, IGNORE),  # every receiver joined: not one of them
    (W, "peer_lost"): (F, FAIL, ()),
    (W, "stranger_lost"): (W, IGNORE),
    (W, "tick_early"): (W, IGNORE),
    (W, "tick_late"): (F, FAIL, ()),
    (W, "release"): (F, FAIL, ()),
    (T, "join"): (F, FAIL, ("Abort",)),
    (T, "duplicate_request"): (T, IGNORE),  # sent_tokens 0 is below the last request
    (T, "resume"): (T, ACT, ("WritePiece",)),  # writes the remaining 2 tokens
    (T, "bad_allocation"): (F, FAIL, ("Abort",)),
    (T, "payload"): (T, IGNORE),
    (T, "payload_in_blocks"): (T, IGNORE),
    (T, "write_ok"): (T, IGNORE),  # no write in flight
    (T, "write_failed"): (T, IGNORE),
    (T, "abort"): (F, FAIL, ("Abort",)),
    (T, "peer_abort"): (F, FAIL, ("AbortAck",)),
    (T, "stranger_abort"): (T, IGNORE),
    (T, "peer_lost"): (F, FAIL, ("Abort",)),
    (T, "stranger_lost"): (T, IGNORE),
    (T, "tick_early"): (T, IGNORE),
    (T, "tick_late"): (F, FAIL, ("Abort",)),
    (T, "release"): (F, FAIL, ("Abort",)),
    (OK, "join"): (OK, IGNORE),
    (OK, "duplicate_request"): (OK, IGNORE),
    (OK, "resume"): (OK, IGNORE),
    (OK, "bad_allocation"): (OK, IGNORE),
    (OK, "payload"): (OK, IGNORE),
    (OK, "payload_in_blocks"): (OK, IGNORE),
    (OK, "write_ok"): (OK, IGNORE),
    (OK, "write_failed"): (OK, IGNORE),
    (OK, "abort"): (OK, IGNORE),
    (OK, "peer_abort"): (OK, ACT, ("AbortAck",)),  # answered with AbortAck
    (OK, "stranger_abort"): (OK, ACT, ("AbortAck",)),  # acknowledged: nothing is in flight
    (OK, "peer_lost"): (OK, IGNORE),
    (OK, "stranger_lost"): (OK, IGNORE),
    (OK, "tick_early"): (OK, IGNORE),
    (OK, "tick_late"): (OK, IGNORE),
    (OK, "release"): (OK, ACT, ()),
    (F, "join"): (F, ACT, ("Abort",)),  # a late receiver is told the room is over
    (F, "duplicate_request"): (F, IGNORE),
    (F, "resume"): (F, IGNORE),
    (F, "bad_allocation"): (F, ACT, ("Abort",)),
    (F, "payload"): (F, IGNORE),
    (F, "payload_in_blocks"): (F, IGNORE),
    (F, "write_ok"): (F, IGNORE),  # no write was in flight when it failed
    (F, "write_failed"): (F, IGNORE),
    (F, "abort"): (F, IGNORE),
    (F, "peer_abort"): (F, ACT, ("AbortAck",)),
    (F, "stranger_abort"): (F, ACT, ("AbortAck",)),
    (F, "peer_lost"): (F, IGNORE),
    (F, "stranger_lost"): (F, IGNORE),
    (F, "tick_early"): (F, IGNORE),
    (F, "tick_late"): (F, IGNORE),
    (F, "release"): (F, ACT, ()),
    **{(s, "granted"): (s, IGNORE) for s in (B, W, T, OK, F)},  # given back at once
    (B, "crash"): (F, FAIL, ()),
    (W, "crash"): (F, FAIL, ()),  # the notice waits for the write in flight
    (T, "crash"): (F, FAIL, ("Abort",)),
    **{(s, "crash"): (s, IGNORE) for s in (OK, F)},
    **{(s, "stale_write"): (s, IGNORE) for s in (B, W, T, OK, F)},
    (B, "empty_payload"): (F, FAIL, ()),
    **{(s, "empty_payload"): (s, IGNORE) for s in (W, T, OK, F)},  # handed over already
    (B, "announce"): (B, ACT, ()),  # kept: receivers are told as they join
    (B, "wrong_announce"): (B, ACT, ()),  # in B, nothing else is known
    (W, "announce"): (W, IGNORE),  # the payload's length, known already
    (W, "wrong_announce"): (F, FAIL, ()),  # not the payload's; the Abort waits for the write
    (T, "announce"): (T, IGNORE),
    (T, "wrong_announce"): (F, FAIL, ("Abort",)),
    **{(s, case): (s, IGNORE) for s in (OK, F) for case in ("announce", "wrong_announce")},
    (B, "replace"): (W, ACT, ()),  # its first request to arrive: it joins
    (W, "replace"): (W, IGNORE),  # the request it replaces is being written: too late
    (T, "replace"): (T, IGNORE),  # ... or was written
    (OK, "replace"): (OK, IGNORE),
    (F, "replace"): (F, IGNORE),  # told already
    (B, "old_request"): (W, ACT, ()),  # no incarnation bound yet: it cannot tell (spec 4)
    (W, "old_request"): (W, IGNORE),  # not the incarnation bound
    (T, "old_request"): (T, IGNORE),
    (OK, "old_request"): (OK, IGNORE),
    (F, "old_request"): (F, ACT, ("Abort",)),  # that incarnation is told the room is over
    (B, "old_abort"): (F, FAIL, ("AbortAck",)),  # any receiver may abort before it joins
    (W, "old_abort"): (W, IGNORE),
    (T, "old_abort"): (T, IGNORE),
    (OK, "old_abort"): (OK, ACT, ("AbortAck",)),  # acknowledged to that incarnation
    (F, "old_abort"): (F, ACT, ("AbortAck",)),
}


def sender_with_write_in_flight(state: str) -> SenderRoom:
    """W with the first piece being written; other states as rooms.sender_in builds them."""
    room = sender_in(state)
    if state == W:
        room.handle(PayloadReady(TOTAL), 0.0)
    return room


def test_every_pair_is_covered() -> None:
    assert set(EXPECTED) == {(s, c) for s in (B, W, T, OK, F) for c in CASES}
    assert set(SenderRoom.TRIGGERS) == {type(event) for event, _ in CASES.values()}


@pytest.mark.parametrize(("state", "case"), sorted(EXPECTED))
def test_table(state: str, case: str) -> None:
    room = sender_with_write_in_flight(state)
    assert room.state == state
    event, now = CASES[case]
    if isinstance(event, MemoryGranted):
        event = MemoryGranted(tuple(room.memory.take(BLOCK, BLOCK) or ()))
    if isinstance(event, PayloadReady) and event.blocks:  # the scheduler took and filled
        event = PayloadReady(TOTAL, tuple(room.memory.take(TOTAL, TOTAL) or ()))
    after, outcome, *emits = EXPECTED[state, case]
    assert emits or outcome == IGNORE, "an act or a failure says what it emits"
    check_outcome(room, event, now, after, outcome, *emits)
    assert room.memory.free_blocks + len(room.src_blocks) == 64


def test_failing_with_a_write_in_flight_defers_the_abort_until_the_write_is_over() -> None:
    room = sender_with_write_in_flight(W)
    assert messages(room.handle(AbortRequested("stop"), 1.0)) == []
    assert room.src_blocks, "the source blocks stay while the transport reads them"
    assert messages(room.handle(WriteFinished(RECEIVER, 0, True), 1.0)) == ["Abort"]
    assert room.src_blocks == ()


def test_receiver_abort_is_acknowledged_once_its_write_is_over() -> None:
    room = sender_with_write_in_flight(W)
    assert messages(room.handle(AbortReceived(RECEIVER, "bye", NONCE), 1.0)) == []
    assert messages(room.handle(WriteFinished(RECEIVER, 0, True), 1.0)) == ["AbortAck"]


def test_success_frees_source_blocks_and_reports_the_last_piece() -> None:
    room = sender_in(T)
    room.handle(RequestReceived(RECEIVER, request(8, (2,))), 1.0)
    actions = room.handle(WriteFinished(RECEIVER, 8, True), 1.0)
    assert room.state == OK and messages(actions) == ["PieceWritten"]
    assert room.src_blocks == () and room.memory.free_blocks == 64


def test_payload_waits_for_memory_in_the_queue_until_granted() -> None:
    allocator = FreeListAllocator(3, BLOCK)
    hog = allocator.alloc(BLOCK)
    assert hog is not None
    room = sender_in(W, allocator)
    # 3 blocks needed, 2 free: the room queues for all 3 and sets no timer but its
    # deadline; the receiver learns the length meanwhile
    actions = room.handle(PayloadReady(TOTAL), 1.0)
    assert actions[0] == WaitForMemory(TOTAL, TOTAL) and messages(actions) == ["Announce"]
    assert room.state == W and room.waiting_for_memory and room.wakeup == room.deadline
    assert room.handle(Tick(), 2.0) == [] and room.waiting_for_memory
    allocator.free(hog)
    granted = allocator.alloc(TOTAL)
    assert granted is not None
    actions = room.handle(MemoryGranted(tuple(granted)), 2.0)
    assert room.src_blocks == tuple(granted) and not room.waiting_for_memory
    assert [type(a).__name__ for a in actions] == ["StorePayload", "WritePiece"]


def test_a_room_failing_in_the_queue_leaves_it_and_says_why() -> None:
    allocator = FreeListAllocator(3, BLOCK)
    allocator.alloc(BLOCK)  # held by others: 2 of the 3 blocks needed are free
    room = sender_in(W, allocator)
    assert room.handle(PayloadReady(TOTAL), 1.0)[0] == WaitForMemory(TOTAL, TOTAL)
    actions = room.handle(Tick(), 1.0 + room.timeouts.progress_s)
    assert room.state == F
    assert room.reason == "deadline passed in WaitingForInput waiting for memory"
    assert actions[0] == StopWaiting()


def test_a_payload_larger_than_the_pool_fails_at_once() -> None:
    room = sender_in(W, FreeListAllocator(2, BLOCK))
    check_outcome(room, PayloadReady(TOTAL), 1.0, F, FAIL, ("Abort",))
    assert "can never fit 2 blocks" in room.reason


def test_a_joined_receiver_is_served_before_the_others_join() -> None:
    """Fan-out: a receiver's blocks never wait on another receiver's memory."""
    room = sender_in(B)
    room.handle(RequestReceived(RECEIVER, request(0, (0, 1, 2), receivers=2)), 0.0)
    assert room.state == B
    actions = room.handle(PayloadReady(TOTAL), 0.0)
    assert [type(a).__name__ for a in actions] == ["StorePayload", "WritePiece"]
    actions = room.handle(WriteFinished(RECEIVER, 0, True), 0.0)
    assert room.state == B and messages(actions) == ["PieceWritten"]
    room.handle(RequestReceived(OTHER, request(0, (4, 5, 6), receivers=2)), 0.0)
    assert room.state == W
    room.handle(WriteFinished(OTHER, 0, True), 0.0)
    assert room.state == OK


def test_a_payload_in_the_schedulers_blocks_is_written_from_them_without_a_copy() -> None:
    room = sender_in(W)
    blocks = tuple(room.memory.take(TOTAL, TOTAL) or ())
    actions = room.handle(PayloadReady(TOTAL, blocks), 1.0)
    assert [type(a).__name__ for a in actions] == ["WritePiece"]  # no StorePayload
    assert room.src_blocks == blocks
    room.handle(WriteFinished(RECEIVER, 0, True), 1.0)
    room.handle(RequestReceived(RECEIVER, request(8, (2,))), 1.0)
    room.handle(WriteFinished(RECEIVER, 8, True), 1.0)
    assert room.state == OK and room.memory.free_blocks == 64  # the room freed them


def test_blocks_that_do_not_match_the_payloads_length_fail_the_room_and_go_back() -> None:
    room = sender_in(W)
    blocks = tuple(room.memory.take(2 * BLOCK, 2 * BLOCK) or ())  # 10 tokens need 3
    check_outcome(room, PayloadReady(TOTAL, blocks), 1.0, F, FAIL, ("Abort",))
    assert room.reason == "payload of 10 tokens handed over in 2 blocks of 4"
    assert room.memory.free_blocks == 64
