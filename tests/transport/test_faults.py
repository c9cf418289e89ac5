"""Fault injection on the in-process network: one-shot hooks, and seeded plans that give the
same fates for the same sends."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embxfer.fsm.messages import AbortAck, Heartbeat, Message
from embxfer.tools.faults import INJECTED_WRITE_FAILURE, FaultPlan, Faults
from embxfer.transport.base import Segment
from embxfer.transport.inproc import InprocControlChannel, InprocDataTransport, InprocNetwork


def rooms(channel: InprocControlChannel) -> list[int]:
    return [i.message.room for i in channel.receive(0) if isinstance(i.message, AbortAck)]


def run(plan: FaultPlan | None, sends: int = 200) -> tuple[list[int], list[int]]:
    """Rooms received after ``sends`` messages under ``plan``, before and after release."""
    network = InprocNetwork()
    faults = Faults.on(network)
    faults.plan = plan
    sender = InprocControlChannel(network, "E0")
    receiver = InprocControlChannel(network, "L0")
    for room in range(sends):
        sender.send("L0", AbortAck(room, 0))
    before = rooms(receiver)
    faults.release_held()
    return before, before + rooms(receiver)


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan(seed=7, drop=0.3),
        FaultPlan(seed=7, duplicate=0.3),
        FaultPlan(seed=7, reorder=0.3),
        FaultPlan(seed=7, delay=0.3, delay_sends=5),
        FaultPlan(seed=7, drop=0.1, duplicate=0.1, reorder=0.1, delay=0.1),
    ],
)
def test_same_seed_same_fates(plan: FaultPlan) -> None:
    assert run(plan) == run(plan)
    assert run(plan) != run(dataclasses.replace(plan, seed=8))


def test_no_plan_delivers_everything_in_order() -> None:
    assert run(None) == (list(range(200)), list(range(200)))
    assert run(FaultPlan(seed=3)) == (list(range(200)), list(range(200)))


def test_drop_loses_messages_and_keeps_order() -> None:
    _, received = run(FaultPlan(seed=1, drop=0.3))
    assert 0 < len(received) < 200
    assert received == sorted(set(received))


def test_duplicate_repeats_adjacent_copies() -> None:
    _, received = run(FaultPlan(seed=1, duplicate=0.3))
    assert sorted(set(received)) == list(range(200))
    assert len(received) > 200
    assert received == sorted(received)


def test_reorder_swaps_neighbours_and_loses_nothing() -> None:
    _, received = run(FaultPlan(seed=1, reorder=0.3))
    assert sorted(received) == list(range(200))
    assert received != list(range(200))
    assert all(abs(position - room) <= 1 for position, room in enumerate(received[:-1]))


def test_a_reordered_message_follows_the_next_send_to_its_peer() -> None:
    network = InprocNetwork()
    faults = Faults.on(network)
    faults.plan = FaultPlan(reorder=1.0)
    sender = InprocControlChannel(network, "E0")
    receiver = InprocControlChannel(network, "L0")
    other = InprocControlChannel(network, "L1")
    sender.send("L0", AbortAck(1, 0))
    sender.send("L1", AbortAck(2, 0))  # another peer: does not release room 1
    assert rooms(receiver) == []
    faults.plan = None
    sender.send("L0", AbortAck(3, 0))
    assert rooms(receiver) == [3, 1]
    faults.release_held()
    assert rooms(other) == [2]


def test_delay_holds_for_n_sends_or_until_released() -> None:
    before, after = run(FaultPlan(seed=1, delay=1.0, delay_sends=1000), sends=10)
    assert (before, after) == ([], list(range(10)))
    before, _ = run(FaultPlan(seed=1, delay=1.0, delay_sends=4), sends=10)
    assert before == list(range(6))


@pytest.mark.parametrize("kind", [AbortAck, None])
def test_drop_next_of_a_kind(kind: type[Message] | None) -> None:
    network = InprocNetwork()
    faults = Faults.on(network)
    sender = InprocControlChannel(network, "E0")
    receiver = InprocControlChannel(network, "L0")
    faults.drop_next(2, kind)
    for room in range(4):
        sender.send("L0", Heartbeat())
        sender.send("L0", AbortAck(room, 0))
    received = [inbound.message for inbound in receiver.receive(0)]
    if kind is AbortAck:
        assert received.count(Heartbeat()) == 4
        assert [m for m in received if m != Heartbeat()] == [AbortAck(2, 0), AbortAck(3, 0)]
    else:
        assert received[:2] == [Heartbeat(), AbortAck(1, 0)]
        assert len(received) == 6


def test_write_failure_plan_is_seeded_and_touches_nothing() -> None:
    def outcomes(seed: int) -> list[bool]:
        network = InprocNetwork()
        faults = Faults.on(network)
        faults.plan = FaultPlan(seed=seed, write_failure=0.5)
        sender, receiver = InprocDataTransport(network, "E"), InprocDataTransport(network, "L")
        source, target = torch.ones(64, dtype=torch.uint8), torch.zeros(64, dtype=torch.uint8)
        sender.register_tensor(source)
        receiver.register_tensor(target)
        results = []
        for _ in range(50):
            result = sender.write("L", [Segment(source.data_ptr(), target.data_ptr(), 64)])
            assert result.ok or result.reason == INJECTED_WRITE_FAILURE
            results.append(result.ok)
            assert bool(target.all()) == any(results)
        return results

    assert outcomes(5) == outcomes(5)
    assert 0 < sum(outcomes(5)) < 50


def test_plan_rejects_impossible_probabilities() -> None:
    with pytest.raises(ValueError):
        FaultPlan(drop=0.6, duplicate=0.6)
    with pytest.raises(ValueError):
        FaultPlan(write_failure=1.5)
    with pytest.raises(ValueError):
        FaultPlan(delay=0.1, delay_sends=0)
