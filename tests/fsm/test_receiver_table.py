"""Every state x event of the receiver room: act, ignore (counted) or fail, as the table says."""

from __future__ import annotations

import pytest

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.fsm.actions import SendMessage, StopWaiting, WaitForMemory
from embxfer.fsm.events import (
    AbortAckReceived,
    AbortReceived,
    AbortRequested,
    AnnounceArrived,
    CallbackFailed,
    Event,
    MemoryGranted,
    PeerLost,
    PeerReady,
    Released,
    Tick,
)
from embxfer.fsm.messages import Announce
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.receiver import ReceiverRoom

from .rooms import (
    ACT,
    BLOCK,
    DELTA,
    FAIL,
    IGNORE,
    NONCE,
    OK,
    OLD_NONCE,
    ROOM,
    SENDER,
    TIMEOUTS,
    TOTAL,
    B,
    F,
    T,
    W,
    check_outcome,
    messages,
    piece,
    receiver,
    receiver_in,
)

OTHER = "encoder-2"


def announce(total: int, peer: str = SENDER, nonce: int = NONCE) -> AnnounceArrived:
    return AnnounceArrived(peer, Announce(ROOM, nonce, total))


CASES: dict[str, tuple[Event, float]] = {
    "peer_ready": (PeerReady(), 1.0),
    "first_piece": (piece(0, 8), 1.0),
    "last_piece": (piece(8, 2), 1.0),
    "oversized_piece": (piece(0, 9, 20), 1.0),
    "stranger_piece": (piece(0, 8, peer=OTHER), 1.0),
    "sender_abort": (AbortReceived(SENDER, "encoder failed", NONCE), 1.0),
    "stranger_abort": (AbortReceived(OTHER, "not yours", NONCE), 1.0),
    "abort_ack": (AbortAckReceived(SENDER, NONCE), 1.0),
    "abort": (AbortRequested("scheduler"), 1.0),
    "sender_lost": (PeerLost(SENDER), 1.0),
    "tick_early": (Tick(), 1.0),
    "tick_late": (Tick(), 100.0),
    "release": (Released(), 1.0),
    "granted": (MemoryGranted(()), 1.0),  # blocks the room did not wait for: see test_table
    "crash": (CallbackFailed("PayloadReady: KeyError()"), 1.0),
    "stranger_lost": (PeerLost(OTHER), 1.0),
    "stranger_ack": (AbortAckReceived(OTHER, NONCE), 1.0),
    "whole_piece": (piece(0, 8, total=8), 1.0),  # one piece: all 8 tokens
    "wrong_total": (piece(8, 2, total=12), 1.0),  # the total changed
    # The sender announces the length: 10 needs a third block, 4 only one of the two.
    "announce": (announce(TOTAL), 1.0),
    "short_announce": (announce(4), 1.0),
    "stranger_announce": (announce(TOTAL, peer=OTHER), 1.0),
    # Messages for the room that used this room id before (another incarnation).
    "old_piece": (piece(0, 8, nonce=OLD_NONCE), 1.0),
    "old_announce": (announce(TOTAL, nonce=OLD_NONCE), 1.0),
    "old_abort": (AbortReceived(SENDER, "an earlier room", OLD_NONCE), 1.0),
    "old_ack": (AbortAckReceived(SENDER, OLD_NONCE), 1.0),
    "wrong_delta": (piece(8, 2, delta=DELTA + 1), 1.0),  # the M-RoPE delta changed
}

ACTIVE = (B, W, T)

# W: first request (8 tokens) outstanding. T: 8 received, resume for 2 outstanding.
# F: aborted in W, so the outstanding blocks are quarantined.
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    (B, "peer_ready"): (W, ACT, ("PieceRequest",)),
    (B, "first_piece"): (B, IGNORE),  # nothing requested yet: stale
    (B, "last_piece"): (B, IGNORE),
    (B, "oversized_piece"): (B, IGNORE),
    (W, "peer_ready"): (W, IGNORE),
    (W, "first_piece"): (T, ACT, ("PieceRequest",)),  # 8 of 10: resume
    (W, "last_piece"): (F, FAIL, ("Abort",)),  # skips tokens 0..8
    (W, "oversized_piece"): (F, FAIL, ("Abort",)),  # 9 tokens into 8 allocated
    (T, "peer_ready"): (T, IGNORE),
    (T, "first_piece"): (T, IGNORE),  # duplicate: below the outstanding sent_tokens
    (T, "last_piece"): (OK, ACT, ()),
    (T, "oversized_piece"): (T, IGNORE),
    **{(s, "stranger_piece"): (s, IGNORE) for s in ACTIVE},
    **{(s, "sender_abort"): (F, FAIL, ()) for s in ACTIVE},  # no notice owed: it aborted
    **{(s, "stranger_abort"): (s, IGNORE) for s in ACTIVE},
    **{(s, "abort_ack"): (s, IGNORE) for s in ACTIVE},
    **{(s, "abort"): (F, FAIL, ("Abort",)) for s in ACTIVE},
    **{(s, "sender_lost"): (F, FAIL, ("Abort",)) for s in ACTIVE},
    **{(s, "tick_early"): (s, IGNORE) for s in ACTIVE},
    **{(s, "tick_late"): (F, FAIL, ("Abort",)) for s in ACTIVE},
    **{(s, "release"): (F, FAIL, ("Abort",)) for s in ACTIVE},
    **{(OK, case): (OK, IGNORE) for case in CASES if case != "release"},
    (OK, "release"): (OK, ACT, ()),
    **{(F, case): (F, IGNORE) for case in CASES},
    (F, "sender_abort"): (F, ACT, ()),  # the sender is quiet: quarantine ends
    (F, "abort_ack"): (F, ACT, ()),
    (F, "tick_late"): (F, ACT, ()),  # grace period over: quarantine ends
    (F, "release"): (F, ACT, ()),
    **{(s, "granted"): (s, IGNORE) for s in (B, W, T, OK, F)},  # given back at once
    **{(s, "crash"): (F, FAIL, ("Abort",)) for s in (B, W, T)},
    **{(s, "crash"): (s, IGNORE) for s in (OK, F)},
    **{(s, "stranger_lost"): (s, IGNORE) for s in (B, W, T, OK, F)},
    **{(s, "stranger_ack"): (s, IGNORE) for s in (B, W, T, OK, F)},
    (B, "whole_piece"): (B, IGNORE),
    (W, "whole_piece"): (OK, ACT, ()),
    (T, "whole_piece"): (T, IGNORE),  # below the outstanding request: a late copy
    (B, "wrong_total"): (B, IGNORE),
    (W, "wrong_total"): (F, FAIL, ("Abort",)),  # not the offset requested
    (T, "wrong_total"): (F, FAIL, ("Abort",)),
    **{(s, "whole_piece"): (s, IGNORE) for s in (OK, F)},
    **{(s, "wrong_total"): (s, IGNORE) for s in (OK, F)},
    (B, "announce"): (B, ACT, ()),  # kept: the first request will ask for 10
    (W, "announce"): (W, ACT, ("PieceRequest",)),  # a third block: the request replaced
    (T, "announce"): (T, IGNORE),  # known from the first piece
    (B, "short_announce"): (B, ACT, ()),
    (W, "short_announce"): (W, ACT, ()),  # the second block goes back: no message
    (T, "short_announce"): (F, FAIL, ("Abort",)),  # not the length of the first piece
    **{(s, "stranger_announce"): (s, IGNORE) for s in ACTIVE},
    **{(s, case): (s, IGNORE) for s in ACTIVE for case in ("old_piece", "old_announce")},
    **{(s, case): (s, IGNORE) for s in ACTIVE for case in ("old_abort", "old_ack")},
    **{
        (s, case): (s, IGNORE)
        for s in (OK, F)
        for case in ("announce", "short_announce", "stranger_announce", "old_piece")
    },
    **{(s, case): (s, IGNORE) for s in (OK, F) for case in ("old_announce", "old_abort")},
    **{(s, "old_ack"): (s, IGNORE) for s in (OK, F)},  # never frees this room's quarantine
    (B, "wrong_delta"): (B, IGNORE),
    (W, "wrong_delta"): (F, FAIL, ("Abort",)),  # not the offset requested
    (T, "wrong_delta"): (F, FAIL, ("Abort",)),  # the resume's piece names another delta
    **{(s, "wrong_delta"): (s, IGNORE) for s in (OK, F)},
}


def test_every_pair_is_covered() -> None:
    assert set(EXPECTED) == {(s, c) for s in (B, W, T, OK, F) for c in CASES}
    assert set(ReceiverRoom.TRIGGERS) == {type(event) for event, _ in CASES.values()}


@pytest.mark.parametrize(("state", "case"), sorted(EXPECTED))
def test_table(state: str, case: str) -> None:
    room = receiver_in(state)
    assert room.state == state
    event, now = CASES[case]
    if isinstance(event, MemoryGranted):
        event = MemoryGranted(tuple(room.memory.take(BLOCK, BLOCK) or ()))
    after, outcome, *emits = EXPECTED[state, case]
    assert emits or outcome == IGNORE, "an act or a failure says what it emits"
    check_outcome(room, event, now, after, outcome, *emits)
    assert room.memory.free_blocks + len(room.held_blocks()) == 64


def test_failure_quarantines_blocks_a_write_may_target_until_the_sender_acks() -> None:
    allocator = FreeListAllocator(64, BLOCK)
    room = receiver_in(W, allocator)
    assert messages(room.handle(AbortRequested(), 1.0)) == ["Abort"]
    assert room.quarantine and allocator.used_blocks == 2
    room.handle(AbortAckReceived(SENDER, OLD_NONCE), 2.0)  # another incarnation's
    assert allocator.used_blocks == 2
    room.handle(AbortAckReceived(SENDER, NONCE), 2.0)
    assert allocator.used_blocks == 0 and not room.held_blocks()


def test_quarantine_ends_after_the_write_grace_without_an_ack() -> None:
    allocator = FreeListAllocator(64, BLOCK)
    room = receiver_in(W, allocator)
    room.handle(PeerLost(SENDER), 1.0)
    # the sender starts no write for a request older than progress_s (asked at 0.0)
    assert room.wakeup == 0.0 + TIMEOUTS.progress_s + TIMEOUTS.write_grace_s
    room.handle(Tick(), room.wakeup - 0.001)
    assert allocator.used_blocks == 2
    room.handle(Tick(), room.wakeup)
    assert allocator.used_blocks == 0


def test_sender_abort_frees_everything_at_once() -> None:
    allocator = FreeListAllocator(64, BLOCK)
    room = receiver_in(T, allocator)
    assert messages(room.handle(AbortReceived(SENDER, "encoder oom", NONCE), 1.0)) == []
    assert allocator.used_blocks == 0 and room.reason == "aborted by sender: encoder oom"


def test_resume_waits_for_memory_in_the_queue_until_the_deadline() -> None:
    allocator = FreeListAllocator(3, BLOCK)
    policy = ResumePolicy(spill=SpillMode.NEVER_SPILL, allow_partial=False)
    room = receiver(8, allocator, policy)
    room.handle(PeerReady(), 0.0)
    hog = allocator.alloc(BLOCK)  # the last free block goes elsewhere
    assert room.handle(piece(0, 8), 1.0) == [WaitForMemory(2, 2)]
    assert room.state == T and room.waiting_for_memory and room.wakeup == room.deadline
    assert room.handle(Tick(), 1.5) == []  # a tick before the deadline changes nothing
    actions = room.handle(Tick(), 1.0 + TIMEOUTS.progress_s)
    assert room.state == F and room.reason == "deadline passed in Transferring waiting for memory"
    assert actions[0] == StopWaiting()
    assert allocator.used_blocks == len(hog or ())


def test_a_granted_resume_asks_for_the_rest() -> None:
    allocator = FreeListAllocator(3, BLOCK)
    policy = ResumePolicy(spill=SpillMode.NEVER_SPILL)
    room = receiver(8, allocator, policy)
    room.handle(PeerReady(), 0.0)
    hog = allocator.alloc(BLOCK)  # the last free block goes elsewhere
    assert hog is not None
    assert room.handle(piece(0, 8), 1.0) == [WaitForMemory(2, 2)]
    allocator.free(hog)  # it comes back: the engine grants it to the waiting room
    granted = tuple(allocator.alloc(BLOCK) or ())
    (ask,) = room.handle(MemoryGranted(granted), 2.0)
    assert isinstance(ask, SendMessage) and ask.message.sent_tokens == 8
    assert room.outstanding is not None and room.outstanding.blocks == granted
    assert not room.waiting_for_memory


def test_a_piece_that_can_never_fit_fails_the_room() -> None:
    policy = ResumePolicy(allow_partial=False)
    room = receiver(8, FreeListAllocator(1, BLOCK), policy)
    check_outcome(room, PeerReady(), 0.0, F, FAIL, ("Abort",))
    assert "can never fit 1 blocks" in room.reason


def test_scheduler_blocks_handed_over_early_are_kept_until_the_sender_is_ready() -> None:
    allocator = FreeListAllocator(8, BLOCK)
    room = receiver(None, allocator)
    blocks = allocator.alloc(8)
    assert blocks is not None
    check_outcome(room, MemoryGranted(tuple(blocks)), 0.0, B, ACT)
    (ask,) = room.handle(PeerReady(), 1.0)
    assert isinstance(ask, SendMessage) and ask.message.blocks == tuple(blocks)


def test_scheduler_blocks_awaited_in_waiting_for_input() -> None:
    allocator = FreeListAllocator(8, BLOCK)
    room = receiver(None, allocator)
    assert room.handle(PeerReady(), 0.0) == []  # not queued: the scheduler allocates
    assert room.state == W and room.waiting_for_memory and not room.queued
    blocks = allocator.alloc(8)
    assert blocks is not None
    assert messages(room.handle(MemoryGranted(tuple(blocks)), 1.0)) == ["PieceRequest"]
    assert messages(room.handle(AbortRequested(), 2.0)) == ["Abort"]  # no StopWaiting


def test_spilling_frees_kept_pieces_so_the_resume_fits() -> None:
    allocator = FreeListAllocator(2, BLOCK)
    room = receiver(8, allocator)  # keep, then spill
    room.handle(PeerReady(), 0.0)
    actions = room.handle(piece(0, 8), 1.0)
    assert [type(a).__name__ for a in actions] == ["SpillPiece", "SendMessage"]
    assert room.pieces[0].blocks == () and room.outstanding is not None
    assert room.outstanding.blocks == (0,), "just-freed blocks come straight back"


def test_over_allocation_is_given_back_when_the_first_piece_lands() -> None:
    allocator = FreeListAllocator(64, BLOCK)
    room = receiver(40, allocator)
    room.handle(PeerReady(), 0.0)
    assert allocator.used_blocks == 10
    room.handle(piece(0, TOTAL), 1.0)
    assert room.state == OK and allocator.used_blocks == 3


def test_release_after_success_frees_the_result_blocks() -> None:
    allocator = FreeListAllocator(64, BLOCK)
    room = receiver_in(OK, allocator)
    room.handle(Released(), 2.0)
    assert room.finished and allocator.used_blocks == 0
