"""What may happen next in a world: the moves a healthy system makes, and the moves of
each fault kind that the world's budget still allows."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from embxfer.tools.sim.config import SENDER, PendingWrite
from embxfer.tools.sim.moves import (
    Advance,
    AnnounceLength,
    Deliver,
    Drop,
    Duplicate,
    FinishWrite,
    HandPayload,
    Kill,
    LosePeer,
    Move,
    OpenRoom,
    Release,
    SchedulerAbort,
)
from embxfer.tools.sim.rooms import releasable

if TYPE_CHECKING:
    from embxfer.tools.sim.world import World


def time_limit(world: World) -> float:
    """How far the clock may go before a pending message or write must be settled."""
    latency, write = world.config.max_latency_s, world.config.max_write_s
    limits = [e.sent_at + latency for e in world.in_flight]
    limits += [w.issued_at + write for w in world.writes]
    return min(limits, default=math.inf)


def next_time(world: World) -> float:
    """The next time anything is due: a room's wakeup, or the time limit."""
    wakeup = min((room.wakeup for _, room in world.live_rooms()), default=math.inf)
    return min(wakeup, time_limit(world))


def owed(world: World) -> bool:
    """Whether a healthy system still has something to do before time must pass."""
    unhanded = SENDER not in world.dead and not world.handed.issuperset(world.members)
    return bool(world.in_flight or world.writes or unhanded or reopenings(world))


def reopenings(world: World) -> list[OpenRoom]:
    """Requests the schedulers open now: their room id is an earlier request's, whose
    rooms the schedulers have let go of."""
    if SENDER in world.dead:
        return []
    return [opening for opening in world.later if world.id_free(opening.wire_id)]


def legal_moves(world: World) -> list[Move]:
    """Moves a healthy system makes: open requests that reuse a freed room id, announce
    lengths and hand over payloads, deliver the oldest message of each channel, finish
    the oldest write to each receiver, declare dead peers lost, release finished rooms,
    and let time pass once nothing is in flight or owed. A request whose length is
    announced hands its payload over once the length is out."""
    moves: list[Move] = [*reopenings(world)]
    if SENDER not in world.dead:
        for room in world.members:
            if room in world.handed:
                continue
            if room in world.announcing and room not in world.announced:
                moves.append(AnnounceLength(room))
            else:
                moves.append(HandPayload(room))
    moves += [Deliver(e) for e in oldest(world.in_flight, lambda e: (e.src, e.dst))]
    moves += [FinishWrite(w, True) for w in oldest(world.writes, writer)]
    moves += [
        LosePeer(engine, peer)
        for peer in sorted(world.dead)
        for engine in world.engines
        if engine not in world.dead
        and (engine, peer) not in world.told
        and world.rooms_with(engine) & world.rooms_with(peer)
    ]
    if not world.auto_release:
        moves += [Release(*key) for key, room in world.live_rooms() if releasable(room)]
    if not owed(world):
        moves += _advance_move(world)
    return moves


def fault_moves(world: World, kind: str) -> list[Move]:
    """Moves of one fault kind (see ``FAULTS``) that the budget still allows."""
    budget = world.budget
    distinct = list(dict.fromkeys(world.in_flight))
    if kind == "reorder":
        heads = set(oldest(world.in_flight, lambda e: (e.src, e.dst)))
        first_writes = set(oldest(world.writes, writer))
        delivered: list[Move] = [Deliver(e) for e in distinct if e not in heads]
        return delivered + [FinishWrite(w, True) for w in world.writes if w not in first_writes]
    if kind == "dup" and budget.dups > 0:
        return [Duplicate(e) for e in distinct]
    if kind == "drop" and budget.drops > 0:
        return [Drop(e) for e in distinct]
    if kind == "abort" and budget.aborts > 0:
        active = [key for key, room in world.live_rooms() if not room.terminal]
        moves: list[Move] = [SchedulerAbort(*key) for key in active]
        return moves if world.auto_release else moves + [Release(*key) for key in active]
    if kind == "fail" and budget.failures > 0:
        return [FinishWrite(w, False) for w in oldest(world.writes, writer)]
    if kind == "kill" and budget.kills > 0:
        return [Kill(engine) for engine in world.engines if engine not in world.dead]
    if kind == "lose" and budget.losses > 0:
        return [
            LosePeer(engine, peer)
            for engine in world.engines
            for peer in world.engines
            if engine != peer
            and not {engine, peer} & world.dead
            and SENDER in (engine, peer)
            and world.rooms_with(engine) & world.rooms_with(peer)
        ]
    if kind == "delay" and owed(world):
        # To the next time anything is due, or a step of the latency bound short of
        # it: what is owed may then happen between two deadlines, not only at one.
        step = world.now + world.config.max_latency_s
        return _advance_move(world) + ([Advance(step)] if step < next_time(world) else [])
    return []


def moves(world: World, faults: Iterable[str]) -> list[Move]:
    """Legal moves and those of each fault kind in ``faults``."""
    found = legal_moves(world)
    for kind in faults:
        found += fault_moves(world, kind)
    return found


def oldest(items: list[Any], channel: Callable[[Any], object]) -> list[Any]:
    """The first item of each channel, in list order."""
    seen: set[object] = set()
    first = []
    for item in items:
        name = channel(item)
        if name not in seen:
            seen.add(name)
            first.append(item)
    return first


def writer(write: PendingWrite) -> str:
    """Writes to one receiver run in order on its writer thread (as ``SenderEngine``'s do)."""
    return write.piece.receiver


def _advance_move(world: World) -> list[Move]:
    to = next_time(world)
    return [Advance(to)] if world.now < to < math.inf else []
