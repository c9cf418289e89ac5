"""What the explorer keeps of a world: snapshots to branch from, and canonical keys that
are equal for states that behave alike, so each state is searched once.

Rooms are slotted objects; a snapshot shares them and the world clones one
(``clone_room``) before it changes it. Cloning and keying go by the classes'
``__slots__``, which is their public structure: every name comes from the class, none is
named here, so a field added to a room is cloned and keyed without a change here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from embxfer.buffers.allocator import FreeListSnapshot
from embxfer.buffers.fair_pool import Ask
from embxfer.fsm.messages import Abort, RoomMessage
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import ACTIVE, Room, Timeouts
from embxfer.tools.sim.choices import writer
from embxfer.tools.sim.config import Budget, Envelope, PendingWrite, RoomKey
from embxfer.tools.sim.data import LabelData
from embxfer.tools.sim.moves import OpenRoom
from embxfer.tools.sim.ownership import OwnershipSnapshot

if TYPE_CHECKING:
    from embxfer.tools.sim.world import World


@dataclass(slots=True)
class Snapshot:
    """Everything ``World.restore`` needs to put the world back (the explorer's frontier)."""

    now: float
    rooms: dict[RoomKey, Room]
    room_keys: dict[RoomKey, tuple[Any, ...]]
    members: dict[int, tuple[str, ...]]
    ids: dict[int, int]
    totals: dict[int, int]
    payloads: dict[int, object]
    allocators: dict[str, FreeListSnapshot]
    queues: dict[str, tuple[tuple[int, Ask], ...]]
    ownership: OwnershipSnapshot
    in_flight: list[Envelope]
    writes: list[PendingWrite]
    handed: set[int]
    announcing: set[int]
    announced: set[int]
    later: tuple[OpenRoom, ...]
    tainted: set[int]
    dead: set[str]
    told: set[tuple[str, str]]
    hogs: dict[str, list[int]]
    budget: Budget
    data: tuple[Any, ...]


def state_key(
    world: World, room_keys: dict[RoomKey, tuple[Any, ...]], ordered: bool
) -> tuple[Any, ...]:
    """``World.key``: the world's state in canonical form. ``room_keys`` caches the keys
    of rooms that have not changed since the clock last moved; missing ones are added."""
    assert isinstance(world.data, LabelData)
    now = world.now
    for key, room in world.rooms.items():
        if key not in room_keys:
            room_keys[key] = _room_key(room, now)
    rooms = tuple(sorted(room_keys.items()))
    channels: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for e in world.in_flight:
        entry = (_message_key(e.message), e.sent_at - now, e.room)
        channels.setdefault((e.src, e.dst), []).append(entry)
    writers: dict[str, list[tuple[Any, ...]]] = {}
    for w in world.writes:
        writers.setdefault(writer(w), []).append((w.room, w.piece, w.issued_at - now, w.target))
    arrange: Callable[[list[tuple[Any, ...]]], tuple[Any, ...]] = (
        tuple if ordered else _sorted_tuple
    )
    return (
        rooms,
        tuple(a.inner.free_order for a in world.allocators.values()),
        tuple(pool.queue() for pool in world.pools.values()),
        tuple(sorted((channel, arrange(items)) for channel, items in channels.items())),
        tuple(sorted((name, arrange(items)) for name, items in writers.items())),
        frozenset(world.handed),
        frozenset(world.announced),
        world.later,
        frozenset(world.tainted),
        frozenset(world.dead),
        frozenset(world.told),
        tuple(tuple(h) for h in world.hogs.values()),
        world.budget,
        world.data.key(),
    )


def clone_room(obj: Any) -> Any:
    """A copy of a slotted object (a room, a ``ReceiverProgress``) that shares nothing
    mutable with it: lists and dicts are copied, mutable slotted values cloned."""
    cls = type(obj)
    clone = object.__new__(cls)
    for name in _slots(cls):
        value = getattr(obj, name)
        kind = type(value)
        if kind is list:
            value = list(value)
        elif kind is dict:
            value = {k: clone_room(v) if _mutable(v) else v for k, v in value.items()}
        object.__setattr__(clone, name, value)
    return clone


def _room_key(room: Room, now: float) -> tuple[Any, ...]:
    """The room's state, its times relative to ``now`` (the deadline only while active,
    the quarantine's end only while there is one)."""
    values: list[Any] = [room.wakeup - now if room.wakeup < math.inf else None]
    values.append(room.deadline - now if room.state in ACTIVE else None)
    if isinstance(room, ReceiverRoom) and room.quarantine:
        values.append(room.quarantine_until - now)
    horizon = _longest_timeout(room.timeouts)
    for name in _keyed(type(room)):
        values.append(_freeze(getattr(room, name), now, horizon))
    return tuple(values)


def _message_key(message: RoomMessage) -> tuple[Any, ...]:
    if isinstance(message, Abort):
        return ("abort", message.room, message.nonce)  # the reason is text only
    return (type(message).__name__, *msgspec.structs.astuple(message))


def _sorted_tuple(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(sorted(items, key=repr))


_SLOTS: dict[type, tuple[str, ...]] = {}
_KEYED: dict[type, tuple[str, ...]] = {}
# Public slots that never steer a room's behaviour between events: texts, counters,
# constants of the room, and the times that ``_room_key`` takes relative to the clock.
_UNKEYED = frozenset(
    {"verdict_reason", "reason", "resumes", "ignored", "now", "timeouts", "memory", "policy"}
    | {"room_id", "sender", "deadline", "quarantine_until"}
)


def _slots(cls: type) -> tuple[str, ...]:
    names = _SLOTS.get(cls)
    if names is None:
        names = _SLOTS[cls] = tuple(
            name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())
        )
    return names


def _keyed(cls: type) -> tuple[str, ...]:
    """The attributes a room's key holds: its public slots that steer it, and whether it
    waits for memory. Private slots are left out: the outbox and the last verdict matter
    only within an event, the published poll mirrors the state between events, and the
    payload a sender holds while it waits for memory is the room's own, fixed one."""
    names = _KEYED.get(cls)
    if names is None:
        public = (n for n in _slots(cls) if not n.startswith("_") and n not in _UNKEYED)
        names = _KEYED[cls] = tuple(dict.fromkeys((*public, "waiting_for_memory")))
    return names


def _mutable(value: Any) -> bool:
    """Slotted and unhashable: a mutable dataclass such as ``ReceiverProgress``."""
    return type(value).__hash__ is None and hasattr(type(value), "__slots__")


@functools.cache
def _longest_timeout(timeouts: Timeouts) -> float:
    """Cached: every room key asks, and rooms share a handful of ``Timeouts``."""
    return float(max(dataclasses.astuple(timeouts)))


def _freeze(value: Any, now: float, horizon: float) -> Any:
    """A hashable equivalent of a slot's value. Floats in a room's records are times
    (when a request was sent, or accepted), so they too are taken relative to ``now``;
    a room only compares their age with one of its timeouts, so every age beyond the
    longest (``horizon``) behaves alike: without that cut, time passing by a finished
    room would make new states for ever."""
    kind = type(value)
    if kind is float:
        return max(value - now, -horizon)
    if kind is list:
        return tuple(_freeze(v, now, horizon) for v in value)
    if kind is dict:
        return tuple((k, _freeze(v, now, horizon)) for k, v in value.items())
    if _is_dataclass(kind):
        return tuple(_freeze(getattr(value, name), now, horizon) for name in _slots(kind))
    return value  # tuples of block indices, strings, numbers, enums


_DATACLASSES: dict[type, bool] = {}


def _is_dataclass(kind: type) -> bool:
    known = _DATACLASSES.get(kind)
    if known is None:
        known = _DATACLASSES[kind] = dataclasses.is_dataclass(kind)
    return known
