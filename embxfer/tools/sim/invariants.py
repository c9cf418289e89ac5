"""The invariants a world checks after every move, and once everything has settled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.policy import SpillMode
from embxfer.fsm.room import ACTIVE, FAILED
from embxfer.tools.sim.choices import owed
from embxfer.tools.sim.config import HOG, SENDER, Violation
from embxfer.tools.sim.rooms import (
    describe_room,
    held_blocks,
    releasable,
    side,
    waiting_for_memory,
)

if TYPE_CHECKING:
    from embxfer.tools.sim.world import World


def check(world: World) -> None:
    """Every invariant that must hold between moves; raises ``Violation``."""
    for key, room in world.live_rooms():
        if room.state in ACTIVE and not room.wakeup <= room.deadline:
            raise Violation(f"{side(key)} is {room.state} with no deadline")
        if room.wakeup <= world.now:
            raise Violation(f"{side(key)} wants a Tick at {room.wakeup}, now is {world.now}")
    for engine in world.engines:
        if engine not in world.dead:
            _check_ownership(world, engine)
    _check_writes(world)
    _check_outcomes(world)


def final_check(world: World) -> None:
    """Once everything settled: every room finished, every block back."""
    for key, room in world.live_rooms():
        if not room.finished:
            raise Violation(f"{side(key)} never finished: {describe_room(room)}")
    for engine in world.engines:
        allocator = world.allocators[engine].inner
        if engine not in world.dead and allocator.used_blocks != len(world.hogs[engine]):
            raise Violation(f"{engine} leaked blocks {sorted(world.ownership.owners[engine])}")


def _check_ownership(world: World, engine: str) -> None:
    """Each allocated block is held by exactly the room the allocator gave it to."""
    held: dict[int, int] = dict.fromkeys(world.hogs[engine], HOG)
    for (holder, room_id), room in world.rooms.items():
        if holder == engine:
            for block in held_blocks(room):
                if block in held:
                    raise Violation(
                        f"{engine} block {block} is held by rooms {held[block]} and {room_id}"
                    )
                held[block] = room_id
    owners = world.ownership.owners[engine]
    if held != owners:
        leaked = {b: r for b, r in owners.items() if held.get(b) != r}
        foreign = {b: r for b, r in held.items() if owners.get(b) != r}
        raise Violation(
            f"{engine} blocks: allocated but not held (leaked) {leaked}, "
            f"held but not allocated to the holder {foreign}"
        )
    if world.allocators[engine].inner.used_blocks != len(owners):
        raise Violation(f"{engine} allocator and reference model disagree on used blocks")


def _check_writes(world: World) -> None:
    """A pending write may land at any moment: its blocks must stay its room's."""
    owners = world.ownership.owners
    for write in world.writes:
        piece = write.piece
        targets = [
            (SENDER, piece.src_blocks, write.room),
            (piece.receiver, piece.dst_blocks, write.target),
        ]
        for engine, blocks, room in targets:
            if engine in world.dead or engine not in owners:
                continue
            for block in blocks:
                owner = owners[engine].get(block)
                if owner != room:
                    raise Violation(
                        f"write of room {write.room} at {piece.sent_tokens} for room {room} "
                        f"still pending on {engine} block {block}, now "
                        f"{'free' if owner is None else f'owned by {owner}'}"
                    )


def _check_outcomes(world: World) -> None:
    """Rooms no fault touched never fail, and never stall with nothing in flight."""
    busy = {e.room for e in world.in_flight} | {w.room for w in world.writes}
    for room_id, members in world.members.items():
        if room_id in world.tainted:
            continue
        sides = [world.rooms[(engine, room_id)] for engine in (SENDER, *members)]
        for room in sides:
            if room.state == FAILED:
                raise Violation(f"room {room_id} failed with no fault: {room.reason}")
        if room_id in busy or room_id not in world.handed or all(s.terminal for s in sides):
            continue
        states = ", ".join(f"{describe_room(s)}" for s in sides)
        waiting = [
            engine
            for engine, room in zip((SENDER, *members), sides, strict=True)
            if waiting_for_memory(room)
        ]
        if not waiting:
            raise Violation(f"room {room_id} is stuck, nothing in flight: {states}")
        if _settled(world) and progress_promised(world):
            raise Violation(
                f"deadlock: room {room_id} waits for memory on {', '.join(waiting)} and "
                f"nothing can free any: {states}; queues {_queues_text(world)}"
            )


def _settled(world: World) -> bool:
    """Nothing left for a healthy system to do but let time pass."""
    return not owed(world) and not any(releasable(room) for _, room in world.live_rooms())


def progress_promised(world: World) -> bool:
    """Whether the spec promises that rooms waiting for memory get it without time
    passing (its progress rule): no engine's memory is held by others (hogs) or by
    rooms a fault touched (their deadlines free it), ``NEVER_SPILL`` rooms do not
    keep pieces while they wait, and the sender's memory holds every payload of its
    open rooms."""
    if world.dead or any(world.hogs.values()):
        return False
    if world.config.policy.spill is SpillMode.NEVER_SPILL:
        return False
    if any(
        room_id in world.tainted and bool(list(held_blocks(room)))
        for (_, room_id), room in world.rooms.items()
    ):
        return False  # a room a fault touched may hold blocks until its deadline
    payload_blocks = sum(
        blocks_needed(world.totals[room], world.config.block_size)
        for room, members in world.members.items()
        if not all(world.rooms[(e, room)].terminal for e in (SENDER, *members))
    )
    return payload_blocks <= world.config.sender_blocks


def _queues_text(world: World) -> str:
    return " ".join(
        f"{engine}:{[room for room, _ in pool.queue()]}"
        for engine, pool in world.pools.items()
        if pool.waiting
    )
