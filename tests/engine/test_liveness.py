"""Heartbeats and dead-peer detection between live engines: silence fails only the rooms
that still need the silent peer.

Engines on the in-process transport, pumped by hand on a virtual clock."""

from __future__ import annotations

from typing import Any

from embxfer import EngineConfig, KVPoll, ResumePolicy, SpillMode, Timeouts
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine
from embxfer.tools.faults import FaultPlan, Faults
from embxfer.tools.workload import payload_for
from embxfer.transport.inproc import InprocControlChannel, InprocDataTransport, InprocNetwork

PEER_TIMEOUT_S = 1.0
CONFIG = EngineConfig(
    num_blocks=64,
    hidden_size=32,
    write_threads=False,
    heartbeat_s=0.1,
    peer_timeout_s=PEER_TIMEOUT_S,
    timeouts=Timeouts(bootstrap_s=30.0, progress_s=30.0),
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pump(engines: list[Any], clock: Clock, seconds: float, step_s: float = 0.01) -> None:
    """Run every engine for ``seconds`` of virtual time."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step_s
        for engine in engines:
            engine.run_once(0.0)


def test_a_served_receiver_going_quiet_does_not_fail_a_room_still_waiting_on_another() -> None:
    clock = Clock()
    network = InprocNetwork()

    def receiver(name: str, config: EngineConfig) -> ReceiverEngine:
        control = InprocControlChannel(network, name)
        return ReceiverEngine(config, control, InprocDataTransport(network, f"{name}-data"), clock)

    data = InprocDataTransport(network, "encoder-data")
    sender = SenderEngine(CONFIG, InprocControlChannel(network, "encoder"), data, clock)
    served = receiver("served", CONFIG)
    # Waits for memory for its resume (no spilling, no partial allocation): alive and
    # heartbeating, but the room cannot end until it gets blocks.
    starved = receiver(
        "starved",
        CONFIG.replace(policy=ResumePolicy(spill=SpillMode.NEVER_SPILL, allow_partial=False)),
    )
    engines = [sender, served, starved]
    sent = sender.create_room(1)
    got_all = served.create_room(1, sender.address, 2, expected_tokens=2048)
    got_part = starved.create_room(1, sender.address, 2, expected_tokens=1024)
    pump(engines, clock, 0.05)
    assert sent.poll() is KVPoll.WaitingForInput  # both receivers joined
    hog = starved.allocator.alloc(starved.allocator.free_tokens)  # no memory for the resume
    assert hog is not None
    sent.send(payload_for(1, 2000, sender.layout, seed=5))
    pump(engines, clock, 0.05)
    assert got_all.poll() is KVPoll.Success
    assert got_part.poll() is KVPoll.Transferring

    # The served receiver has nothing left to ask and goes quiet for many peer timeouts;
    # the room waits on the starved one, who is alive: it must not fail.
    pump(engines, clock, 5 * PEER_TIMEOUT_S)
    assert sent.poll() is KVPoll.Transferring, sent.reason
    assert got_part.poll() is KVPoll.Transferring, got_part.reason

    starved.allocator.free(hog)
    pump(engines, clock, 0.05)
    assert sent.poll() is KVPoll.Success
    assert got_part.poll() is KVPoll.Success
    assert got_part.result().equals(payload_for(1, 2000, starved.layout, seed=5))


def encoder_and_language(
    network: InprocNetwork, clock: Clock
) -> tuple[SenderEngine, ReceiverEngine]:
    sender = SenderEngine(
        CONFIG,
        InprocControlChannel(network, "encoder"),
        InprocDataTransport(network, "encoder-data"),
        clock,
    )
    receiver = ReceiverEngine(
        CONFIG,
        InprocControlChannel(network, "language"),
        InprocDataTransport(network, "language-data"),
        clock,
    )
    return sender, receiver


def test_a_receiver_waiting_on_a_room_the_sender_has_not_created_keeps_hearing_from_it() -> None:
    clock = Clock()
    network = InprocNetwork()
    sender, receiver = encoder_and_language(network, clock)
    engines = [sender, receiver]
    got = receiver.create_room(1, sender.address)
    # The encoder's scheduler is late: for many peer timeouts the request waits, parked.
    pump(engines, clock, 5 * PEER_TIMEOUT_S)
    assert got.poll() is KVPoll.WaitingForInput, got.reason

    sent = sender.create_room(1)
    sent.send(payload_for(1, 300, sender.layout, seed=5))
    pump(engines, clock, 0.05)
    assert got.poll() is KVPoll.Success
    assert sent.poll() is KVPoll.Success


def test_after_a_partition_an_idle_receiver_the_sender_gave_up_on_registers_again() -> None:
    """In a partition the sender gave a receiver up (the receiver had joined a room and
    its abort of it was lost in the cut) while the receiver, with no room open, waited
    for nothing. Once the network heals, the receiver's next room must register again,
    not ask the sender as a stranger whose requests are turned down."""
    clock = Clock()
    network = InprocNetwork()
    faults = Faults.on(network)
    sender, receiver = encoder_and_language(network, clock)
    engines = [sender, receiver]
    first = sender.create_room(1)
    joined = receiver.create_room(1, sender.address, expected_tokens=300)
    pump(engines, clock, 0.05)
    assert first.poll() is KVPoll.WaitingForInput  # joined; the payload is not in yet

    faults.plan = FaultPlan(drop=1.0)  # the cut: every message is lost
    joined.abort("the client went away")
    pump(engines, clock, 5 * PEER_TIMEOUT_S)
    assert first.poll() is KVPoll.Failed
    assert first.reason == "receiver language lost"
    faults.plan = None  # healed

    got = receiver.create_room(2, sender.address)
    sent = sender.create_room(2)
    sent.send(payload_for(2, 300, sender.layout, seed=5))
    pump(engines, clock, 0.05)
    assert got.poll() is KVPoll.Success, got.reason
    assert sent.poll() is KVPoll.Success, sent.reason
    assert dict(sender.stats.rejected) == {}
