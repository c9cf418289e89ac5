"""The simulation world's own checks catch what they exist to catch."""

from __future__ import annotations

import pytest

from embxfer.buffers.metadata import POISON_BYTE
from embxfer.fsm.events import Event, Tick
from embxfer.fsm.sender import SenderRoom
from embxfer.tools.sim import (
    SENDER,
    Advance,
    ByteData,
    Deliver,
    HandPayload,
    Inject,
    LabelData,
    OpenRoom,
    SimConfig,
    Violation,
    World,
)

CONFIG = SimConfig(receivers=1, block_size=2, sender_blocks=4, receiver_blocks=4)


def run_to_success(world: World) -> None:
    while moves := world.legal_moves():
        world.apply(moves[0])


def test_a_healthy_room_succeeds_and_gives_every_block_back() -> None:
    world = World(CONFIG, ByteData(CONFIG, seed=1))
    world.apply(OpenRoom(0, 7, ("L0",), (2,)))
    run_to_success(world)
    assert world.rooms[("L0", 0)].state == "Success"
    world.final_check()


def test_a_stray_write_into_a_free_block_trips_the_canary() -> None:
    data = ByteData(CONFIG, seed=1)
    world = World(CONFIG, data)
    data.buffers["L0"].tensor("fill_mrope")[0, 0, 0] = POISON_BYTE + 1  # lands in free block 0
    with pytest.raises(Violation, match="canary"):
        world.apply(OpenRoom(0, 2, ("L0",), (2,)))  # allocates block 0


def test_a_write_into_a_block_given_up_is_caught_while_pending() -> None:
    world = World(CONFIG, LabelData(CONFIG))
    world.apply(OpenRoom(0, 2, ("L0",), (2,)))
    world.apply(HandPayload(0))
    world.apply(Deliver(world.in_flight[0]))
    (write,) = world.writes
    with world.ownership.acting_for(0):  # as if room 0 freed the blocks its pending write targets
        world.allocators["L0"].free(write.piece.dst_blocks)
    with pytest.raises(Violation):
        world.check()


def test_a_state_going_backwards_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(CONFIG, LabelData(CONFIG))
    world.apply(OpenRoom(0, 2, ("L0",), (2,)))
    run_to_success(world)

    def regress(room: SenderRoom, _event: Event) -> None:
        room.state = "Transferring"

    monkeypatch.setattr(SenderRoom, "_ignore", regress)
    with pytest.raises(Violation, match="went from Success to Transferring"):
        world.apply(Inject(SENDER, 0, Tick(), fault=False))


def test_keys_ignore_the_absolute_time_and_survive_a_snapshot() -> None:
    def world_at(start: float) -> World:
        world = World(CONFIG, LabelData(CONFIG))
        if start:
            world.apply(Advance(start))
        world.apply(OpenRoom(0, 3, ("L0",), (2,)))
        world.apply(HandPayload(0))
        return world

    early, late = world_at(0.0), world_at(7.0)
    assert early.key() == late.key()
    snapshot = late.snapshot()
    before = late.key()
    run_to_success(late)
    assert late.key() != before
    late.restore(snapshot)
    assert late.key() == before
