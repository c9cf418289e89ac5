"""The seeds' worked cases end to end through real engines on the in-process transport,
pumped by hand (no threads, no sleeps), checked byte for byte."""

from __future__ import annotations

from typing import Any

import pytest

from embxfer import EngineConfig, KVPoll, ResumePolicy, SpillMode
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverEngine
from embxfer.runtime import Engine
from embxfer.sender import SenderEngine
from embxfer.tools.faults import Faults
from embxfer.tools.workload import payload_for

TERMINAL = (KVPoll.Success, KVPoll.Failed)
CONFIG = EngineConfig(num_blocks=1024, hidden_size=32, write_threads=False)


def run_room(
    tokens: int,
    allocs: list[int | None],
    receiver_config: EngineConfig = CONFIG,
    room_id: int = 1,
) -> tuple[SenderEngine, list[ReceiverEngine], SenderHandle, list[ReceiverHandle]]:
    """One room of ``tokens`` tokens into ``len(allocs)`` receivers, each allocating its
    entry (None: the configured default) up front."""
    sender, receivers, _ = inproc_engines(CONFIG, receiver_config, len(allocs))
    sent = sender.create_room(room_id)
    got = [
        r.create_room(room_id, sender.address, len(allocs), expected_tokens=alloc)
        for r, alloc in zip(receivers, allocs, strict=True)
    ]
    sent.send(payload_for(room_id, tokens, sender.layout, seed=3))
    finish([sender, *receivers], sent, *got)
    return sender, receivers, sent, got


def pump(engines: list[Any], done: Any, rounds: int = 10_000) -> None:
    for _ in range(rounds):
        if done():
            return
        for engine in engines:
            engine.run_once(0.0)
    raise AssertionError("rooms did not finish")


def finish(engines: list[Any], *handles: SenderHandle | ReceiverHandle) -> None:
    """Pump until every handle is terminal."""
    pump(engines, lambda: all(h.poll() in TERMINAL for h in handles))


def drain(engines: list[Any]) -> None:
    """Pump until every engine has forgotten its rooms."""
    pump(engines, lambda: not any(e.rooms for e in engines))


def check_result(handle: ReceiverHandle, tokens: int, layout_engine: Engine[Any, Any]) -> None:
    assert handle.poll() is KVPoll.Success, handle.reason
    result = handle.result()
    assert result.num_tokens == tokens
    assert result.equals(payload_for(handle.room_id, tokens, layout_engine.layout, seed=3))


@pytest.mark.parametrize(
    ("tokens", "alloc", "resumes"),
    [
        (500, 1024, 0),  # fits
        (1024, 1024, 0),  # exactly the allocation: boundary, no resume
        (2000, 1024, 1),  # 1024 then 976
        (10000, 8192, 1),  # the rest in one resume when memory allows
        (50000, 8192, 1),
    ],
)
def test_seed_cases(tokens: int, alloc: int, resumes: int) -> None:
    sender, (receiver,), sent, (got,) = run_room(tokens, [alloc])
    assert sent.poll() is KVPoll.Success
    check_result(got, tokens, receiver)
    assert got.resumes == resumes
    for handle in (sent, got):
        handle.release()
    drain([sender, receiver])
    assert sender.allocator.used_blocks == 0 and receiver.allocator.used_blocks == 0


def test_second_allocation_is_whole_blocks_of_the_rest() -> None:
    _, (receiver,), _, (got,) = run_room(2000, [1024])
    room = receiver.rooms.get(got.room_id).room
    assert [(p.sent_tokens, p.tokens, len(p.blocks)) for p in room.pieces] == [
        (0, 1024, 8),
        (1024, 976, 8),
    ]


def test_capped_resumes_bound_every_piece() -> None:
    config = CONFIG.replace(policy=ResumePolicy(max_resume_tokens=16384))
    _, (receiver,), _, (got,) = run_room(50000, [8192], config)
    check_result(got, 50000, receiver)
    room = receiver.rooms.get(got.room_id).room
    assert [p.tokens for p in room.pieces] == [8192, 16384, 16384, 9040]
    assert got.resumes == 3


def test_same_block_indices_come_back_on_a_resume() -> None:
    config = CONFIG.replace(policy=ResumePolicy(spill=SpillMode.ALWAYS_SPILL))
    _, (receiver,), _, (got,) = run_room(2000, [1024], config)
    check_result(got, 2000, receiver)
    first, second = receiver.rooms.get(got.room_id).room.pieces
    assert first.blocks == () and second.blocks == tuple(range(8)), "blocks 0-7 twice"


def test_two_receivers_with_different_allocations() -> None:
    _, receivers, sent, got = run_room(5000, [1024, 4096])
    assert sent.poll() is KVPoll.Success
    for handle, engine in zip(got, receivers, strict=True):
        check_result(handle, 5000, engine)
    assert [h.resumes for h in got] == [1, 1]


def test_memory_pressure_resumes_in_many_pieces_byte_exact() -> None:
    tight = CONFIG.replace(num_blocks=20)  # 2560 tokens for a 10000-token embedding
    _, (receiver,), _, (got,) = run_room(10000, [1024], tight)
    check_result(got, 10000, receiver)
    assert got.resumes >= 3


def test_a_failed_write_fails_both_sides_with_a_reason_and_frees_everything() -> None:
    sender, receivers, network = inproc_engines(CONFIG, CONFIG, 1)
    Faults.on(network).fail_next_writes(1, "injected -1")
    sent = sender.create_room(9)
    (got,) = [r.create_room(9, sender.address) for r in receivers]
    sent.send(payload_for(9, 3000, sender.layout, seed=3))
    engines: list[Any] = [sender, *receivers]
    finish(engines, sent, got)
    assert sent.poll() is KVPoll.Failed and "injected -1" in sent.reason
    assert got.poll() is KVPoll.Failed and "injected -1" in got.reason
    with pytest.raises(RuntimeError, match="injected -1"):
        got.failure_exception()
    sent.release()
    got.release()
    drain(engines)
    assert sender.allocator.used_blocks == 0 and receivers[0].allocator.used_blocks == 0


def test_room_ids_can_be_reused_after_release_without_inheriting_state() -> None:
    sender, receivers, _ = inproc_engines(CONFIG, CONFIG, 1)
    engines: list[Any] = [sender, *receivers]
    for tokens in (3000, 700):
        sent = sender.create_room(5)
        got = receivers[0].create_room(5, sender.address)
        assert got.poll() is KVPoll.Bootstrapping
        sent.send(payload_for(5, tokens, sender.layout, seed=3))
        finish(engines, sent, got)
        check_result(got, tokens, receivers[0])
        sent.release()
        got.release()
        drain(engines)
