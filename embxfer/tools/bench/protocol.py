"""The protocol alone, without I/O: CPU per room lifecycle and memory per room.

Both rooms of a request are driven by hand with the events their engines would feed
them (the sender's messages handed straight to the receiver and back, no wire codec,
no threads), as in ``tests/fsm/rooms.py``. What is measured is therefore the state
machines, their classifiers and callbacks, and block allocation: what every room costs
whatever the transport.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.fsm.actions import Action, SendMessage
from embxfer.fsm.events import Event, PayloadReady, PeerReady, Released, WriteFinished
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import Timeouts
from embxfer.fsm.routing import Role, room_event
from embxfer.fsm.sender import SenderRoom
from embxfer.tools.bench.core import BenchSettings, Metric, Spread, at_most

SENDER = "tcp://127.0.0.1:5000"
RECEIVER = "tcp://127.0.0.1:5001"
TOKENS = 16  # a tiny payload: one block, so the protocol's own cost is what shows
BLOCK_SIZE = 128
_TIMEOUTS = Timeouts()


class Pair:
    """The two rooms of one request, and the allocators they share with other rooms."""

    def __init__(self, sender_blocks: FreeListAllocator, receiver_blocks: FreeListAllocator):
        self.sender_blocks = sender_blocks
        self.receiver_blocks = receiver_blocks
        self.sender_memory: FairPool[int] = FairPool(sender_blocks)
        self.receiver_memory: FairPool[int] = FairPool(receiver_blocks)

    def open(self, room_id: int) -> tuple[SenderRoom, ReceiverRoom]:
        """Both rooms with the first piece requested and its write in flight: the state in
        which a room holds the most (both sides' progress records and block lists)."""
        receiver = ReceiverRoom(room_id, SENDER, self.receiver_memory, TOKENS, _TIMEOUTS, 0.0)
        sender = SenderRoom(room_id, self.sender_memory, _TIMEOUTS, 0.0)
        (ask,) = receiver.handle(PeerReady(), 0.0)
        sender.handle(_arriving("sender", RECEIVER, ask), 0.0)
        sender.handle(PayloadReady(TOKENS), 0.0)
        return sender, receiver

    def finish(self, sender: SenderRoom, receiver: ReceiverRoom) -> None:
        """The rest of the lifecycle: write done, piece reported, both released."""
        report = sender.handle(WriteFinished(RECEIVER, 0, True), 0.0)[-1]
        receiver.handle(_arriving("receiver", SENDER, report), 0.0)
        receiver.handle(Released(), 0.0)
        sender.handle(Released(), 0.0)

    def lifecycle(self, room_id: int) -> tuple[SenderRoom, ReceiverRoom]:
        sender, receiver = self.open(room_id)
        self.finish(sender, receiver)
        return sender, receiver


def _arriving(role: Role, peer: str, action: Action) -> Event:
    """The event ``action`` (a message sent) is when it reaches the other room."""
    assert isinstance(action, SendMessage)
    routed = room_event(role, peer, action.message)
    assert routed is not None
    return routed[2]


def _pair(rooms: int) -> Pair:
    return Pair(FreeListAllocator(rooms, BLOCK_SIZE), FreeListAllocator(rooms, BLOCK_SIZE))


def lifecycle_us(settings: BenchSettings) -> Metric:
    """CPU time of one request's whole lifecycle, both rooms, on this thread's clock
    (time other jobs take the core from us is not counted)."""
    pair = _pair(4)
    sender, receiver = pair.lifecycle(0)
    assert sender.finished and receiver.finished, "the lifecycle must end with nothing held"
    assert pair.sender_blocks.used_blocks == pair.receiver_blocks.used_blocks == 0
    rooms = settings.pick(4000, 300)

    def batch() -> float:
        start = time.thread_time()
        for room_id in range(rooms):
            pair.lifecycle(room_id)
        return (time.thread_time() - start) / rooms * 1e6

    batch()  # warm up
    spread = Spread.of([batch() for _ in range(settings.reps * 2)])
    return Metric(
        "fsm_lifecycle_us",
        spread.median,
        "us",
        "protocol CPU per request, both sides, no resume: receiver PeerReady, sender "
        "RequestReceived + PayloadReady + WriteFinished, receiver PieceArrived, both "
        f"Released (7 events through the transitions machines, {TOKENS}-token payload)",
        at_most(100.0),
        spread,
        {"rooms_per_batch": rooms, "events_per_lifecycle": 7},
    )


def memory_per_room(settings: BenchSettings) -> Metric:
    """Bytes that rooms hold, from tracemalloc, for ``ROOMS`` concurrent requests."""
    rooms = settings.pick(10_000, 500)
    pair = _pair(rooms)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [pair.open(room_id) for room_id in range(rooms)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(held) == rooms
    per_room = total / rooms
    return Metric(
        "protocol_bytes_per_room",
        per_room,
        "B",
        f"tracemalloc growth for {rooms:,} concurrent requests / {rooms:,}: one sender "
        "room and one receiver room each with their contexts (progress records, block "
        "lists, outstanding request), every one with its first piece in flight",
        at_most(2048.0),
        context={"rooms": rooms, "bytes_total": total},
    )


def run(settings: BenchSettings) -> list[Metric]:
    return [lifecycle_us(settings), memory_per_room(settings)]
