"""Shrunk counterexamples of bugs the verification tools found, replayed after the fix.

Use after free (found by ``embxfer explore --faults dup,drop,reorder,abort,delay``): a
receiver gave up on its request (scheduler abort) and its Abort was lost; the sender,
still waiting for the encoder, got the payload later and wrote for that old request. The
receiver freed the blocks ``write_grace_s`` after giving up, while that write, started
late and allowed ``max_write_s``, could still land in them. Fixed on both sides: the
sender never serves a request that waited ``progress_s`` (its receiver has given up on
it), and the receiver counts its grace period from the last moment a write may start.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from embxfer.fsm.receiver import ReceiverRoom
from embxfer.tools.sim import (
    SENDER,
    Advance,
    ByteData,
    DataPlane,
    Deliver,
    Drop,
    HandPayload,
    Hog,
    LabelData,
    OpenRoom,
    SchedulerAbort,
    SimConfig,
    Unhog,
    World,
)

CONFIG = SimConfig(receivers=1, block_size=2, sender_blocks=1, receiver_blocks=2)


def late_write_world(data: DataPlane) -> World:
    """The shrunk trace, up to the write that used to be started too late."""
    world = World(CONFIG, data)
    world.apply(OpenRoom(0, 1, ("L0",), (2,)))
    world.apply(Deliver(world.in_flight[0]))  # L0's request reaches the sender
    world.apply(SchedulerAbort("L0", 0))  # L0 gives up: its blocks are quarantined
    world.apply(Drop(world.in_flight[0]))  # ... and its Abort is lost
    world.apply(Advance(6.0))
    world.apply(HandPayload(0))  # the encoder is done 6 s later: the sender writes
    return world


def byte_data(config: SimConfig) -> DataPlane:
    return ByteData(config, seed=0)


@pytest.mark.parametrize("data", [LabelData, byte_data], ids=["labels", "bytes"])
def test_late_write_never_lands_in_freed_blocks(data: Callable[[SimConfig], DataPlane]) -> None:
    world = late_write_world(data(CONFIG))
    (write,) = world.writes
    assert write.piece.receiver == "L0"
    # Let the write take as long as a write may; the blocks must stay quarantined.
    world.apply(Advance(world.time_limit()))
    receiver = world.rooms[("L0", 0)]
    assert isinstance(receiver, ReceiverRoom)
    assert receiver.quarantine == write.piece.dst_blocks
    world.wind_down()
    assert world.rooms[(SENDER, 0)].terminal


def test_request_that_waited_too_long_is_not_served() -> None:
    """L0's request waits for the payload while L1 (short of memory) joins late; by the
    time the payload is there, L0 has given up (its Abort lost): the sender must write
    to L1 only."""
    config = SimConfig(receivers=2, block_size=2, sender_blocks=1, receiver_blocks=2)
    world = World(config, LabelData(config))
    world.apply(Hog("L1", 4))
    world.apply(OpenRoom(0, 1, ("L0", "L1"), (2, 2)))
    world.apply(Deliver(world.in_flight[0]))  # L0 joins at 0; L1 waits for memory
    world.apply(Advance(21.0))
    world.apply(Unhog("L1"))  # L1's turn: it joins at 21, pushing the sender's deadline
    world.apply(Deliver(world.in_flight[0]))
    world.apply(Advance(30.0))  # L0's deadline: it gives up...
    world.apply(Drop(world.in_flight[0]))  # ... and its Abort is lost
    world.apply(HandPayload(0))
    assert [write.piece.receiver for write in world.writes] == ["L1"]
    world.wind_down()
