"""Rooms that must wait for memory: they wait in turn, cost nothing while they wait, and
every room whose smallest piece fits the pool gets through.

Engines on the in-process transport, pumped by hand on a virtual clock."""

from __future__ import annotations

from typing import Any

from embxfer import EngineConfig, KVPoll, ResumePolicy, SpillMode, Timeouts
from embxfer.fsm.events import Event
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine
from embxfer.tools.workload import payload_for

from .test_inproc_engines import check_result, drain, finish

TIMEOUTS = Timeouts(bootstrap_s=30.0, progress_s=30.0)
SENDER_CONFIG = EngineConfig(num_blocks=4096, block_size=4, hidden_size=8, write_threads=False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engines(
    receiver_config: EngineConfig, clock: Clock | None = None
) -> tuple[SenderEngine, ReceiverEngine]:
    sender, (receiver,), _ = inproc_engines(SENDER_CONFIG, receiver_config, clock=clock or Clock())
    return sender, receiver


def open_rooms(
    sender: SenderEngine, receiver: ReceiverEngine, lengths: list[int], lengths_known: bool = False
) -> list[tuple[SenderHandle, ReceiverHandle]]:
    """A room per length, its payload handed over at once. ``lengths_known``: the receiver's
    scheduler knows each length and allocates it up front (else the default allocation)."""
    rooms = []
    for room_id, tokens in enumerate(lengths):
        sent = sender.create_room(room_id)
        expected = tokens if lengths_known else None
        got = receiver.create_room(room_id, sender.address, expected_tokens=expected)
        sent.send(payload_for(room_id, tokens, sender.layout, seed=3))
        rooms.append((sent, got))
    return rooms


def serve_all(
    sender: SenderEngine, receiver: ReceiverEngine, lengths: list[int]
) -> list[ReceiverHandle]:
    """Open a room per length and pump like a scheduler that takes each result as soon
    as it is there and releases both sides; every room must succeed byte-exact."""
    rooms = open_rooms(sender, receiver, lengths)
    done: dict[int, ReceiverHandle] = {}
    for _ in range(10_000):
        for engine in (sender, receiver):
            engine.run_once(0.0)
        for index, (sent, got) in enumerate(rooms):
            if index not in done and got.poll() is KVPoll.Success:
                check_result(got, lengths[index], receiver)
                assert sent.poll() is KVPoll.Success, sent.reason
                got.release()
                sent.release()
                done[index] = got
        if len(done) == len(rooms):
            break
    assert len(done) == len(rooms), [got.reason for _, got in rooms if got.reason]
    drain([sender, receiver])
    assert sender.used_blocks == receiver.used_blocks == 0
    assert receiver.stats.failed == sender.stats.failed == 0
    return [done[index] for index in range(len(rooms))]


def test_two_rooms_larger_than_the_pool_stream_through_it_in_turn() -> None:
    """The memory-pressure issue's case: a 41-block pool, a first allocation larger than
    the pool, always spilling. Each room takes the whole pool in turn, piece by piece."""
    config = EngineConfig(
        num_blocks=41,
        block_size=4,
        hidden_size=8,
        default_alloc_tokens=200,  # 50 blocks
        adaptive_alloc=False,
        policy=ResumePolicy(spill=SpillMode.ALWAYS_SPILL),
        timeouts=TIMEOUTS,
        write_threads=False,
    )
    sender, receiver = engines(config)
    received = serve_all(sender, receiver, [327, 334])
    assert [got.resumes for got in received] == [1, 2], "164 tokens at a time"
    assert receiver.stats.memory_waits > 0


def test_many_rooms_on_a_pool_a_quarter_of_demand_all_succeed() -> None:
    config = EngineConfig(
        num_blocks=32,
        block_size=4,
        hidden_size=8,
        default_alloc_tokens=16,
        adaptive_alloc=False,
        timeouts=TIMEOUTS,
        write_threads=False,
    )
    sender, receiver = engines(config)
    serve_all(sender, receiver, [16 + (7 * i) % 40 for i in range(200)])
    assert receiver.stats.memory_waits > 100


def test_a_large_room_is_not_passed_by_smaller_ones_behind_it() -> None:
    config = EngineConfig(
        num_blocks=16,
        block_size=4,
        hidden_size=8,
        default_alloc_tokens=64,  # 16 blocks, all or nothing
        adaptive_alloc=False,
        policy=ResumePolicy(allow_partial=False),
        timeouts=TIMEOUTS,
        write_threads=False,
    )
    sender, receiver = engines(config)
    hog = receiver.memory.take(4, 4)  # memory used elsewhere: the large room must wait
    assert hog is not None
    lengths = [64, 4, 4]
    rooms = open_rooms(sender, receiver, lengths, lengths_known=True)
    pump_both = [sender, receiver]
    for _ in range(20):
        for engine in pump_both:
            engine.run_once(0.0)
    assert [t.room.waiting_for_memory for t in receiver.rooms] == [True] * 3
    receiver.memory.free(hog)
    for _ in range(20):
        for engine in pump_both:
            engine.run_once(0.0)
    assert rooms[0][1].poll() is KVPoll.Success, "the head took the whole pool"
    waiting = {t.room_id for t in receiver.rooms if t.room.waiting_for_memory}
    assert waiting == {1, 2}, "the small rooms waited behind it, though one block was free"
    for index, (sent, got) in enumerate(rooms):
        finish(pump_both, sent, got)
        check_result(got, lengths[index], receiver)
        got.release()
        sent.release()
    drain(pump_both)
    assert receiver.used_blocks == 0


def test_waiting_rooms_cost_no_events_until_memory_comes_back() -> None:
    clock = Clock()
    config = EngineConfig(
        num_blocks=20,
        block_size=4,
        hidden_size=8,
        default_alloc_tokens=4,
        adaptive_alloc=False,
        timeouts=TIMEOUTS,
        heartbeat_s=1.0,
        write_threads=False,
    )
    sender, receiver = engines(config, clock)
    handles = [receiver.create_room(i, sender.address) for i in range(100)]
    senders = [sender.create_room(i) for i in range(100)]  # the encoder has not sent yet
    for _ in range(10):
        sender.run_once(0.0)
        receiver.run_once(0.0)
    assert sum(t.room.waiting_for_memory for t in receiver.rooms) == 80
    events: list[Event] = []
    deliver = receiver.deliver

    def counting(room: Any, event: Event) -> None:
        events.append(event)
        deliver(room, event)

    receiver.deliver = counting  # type: ignore[method-assign]
    for _ in range(2000):  # 20 virtual seconds: every room still inside its deadline
        clock.now += 0.01
        sender.run_once(0.0)
        receiver.run_once(0.0)
    assert events == [], "no retry ticks: a waiting room is woken by memory or its deadline"
    for handle in handles[:5]:
        handle.abort()  # five rooms give their blocks back: five waiters get them, in turn
    for _ in range(5):  # the sender acknowledges; the quarantined blocks come back
        sender.run_once(0.0)
        receiver.run_once(0.0)
    granted = [t.room_id for t in receiver.rooms if t.room.outstanding]
    assert granted == list(range(5, 25)), "the next five in the queue hold blocks now"
    for handle in [*handles, *senders]:
        handle.abort()
        handle.release()
    drain([sender, receiver])


def test_a_scheduler_that_allocates_hands_over_the_first_blocks() -> None:
    config = EngineConfig(num_blocks=64, block_size=4, hidden_size=8, write_threads=False)
    sender, receiver = engines(config)
    sent = sender.create_room(1)
    got = receiver.create_room(1, sender.address, scheduler_allocates=True)
    for _ in range(5):
        sender.run_once(0.0)
        receiver.run_once(0.0)
    assert got.poll() is KVPoll.WaitingForInput
    blocks = receiver.memory.take(40, 40)  # the scheduler's own allocation: 10 blocks
    assert blocks is not None
    got.provide_blocks(blocks)
    sent.send(payload_for(1, 100, sender.layout, seed=3))
    finish([sender, receiver], sent, got)
    check_result(got, 100, receiver)
    assert got.resumes == 1, "60 more tokens came into blocks the engine allocated"
    sent.release()
    got.release()
    drain([sender, receiver])
    assert receiver.used_blocks == 0
