"""The rooms an engine drives, what it publishes of each, and the ids it finished lately.

A scheduler's thread never touches a room: it reads the room's ``RoomStatus``, which
the pump writes once an event is fully handled (actions carried out; with a receiver's
Success, what its result is made of). Room ids are the scheduler's, and it reuses
them: an id its scheduler still holds cannot be taken by a new room, but one it let go
of can, while the old room settles (writes in flight, blocks under quarantine) beside
the new one. Each room has a key of its own for timers and the memory queue. The last
ids finished are remembered (tombstones), with the incarnations their rooms had, so
that late messages for them are recognised as late, not as errors, and never reach a
room that reuses the id.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Room

TOMBSTONES = 65536  # recently finished room ids whose late messages are dropped quietly
INCARNATIONS_PER_TOMBSTONE = 64  # of the last rooms under one id: late messages are recent

RoomT = TypeVar("RoomT", bound=Room)
_POLL = {poll.name: poll for poll in KVPoll}  # a room's state, as its status shows it


@dataclass
class RoomStatus:
    """What a scheduler reads of one room, from any thread. The pump replaces each field
    whole, the state last, so a reader that sees a terminal state sees what came with it
    (the reason; a receiver's result)."""

    state: KVPoll = KVPoll.Bootstrapping
    reason: str = ""
    resumes: int = 0


@dataclass(eq=False)
class Tracked(Generic[RoomT]):
    """A room, the status its handle reads, when the engine took it on, and its key
    (unique in the engine, unlike the room id)."""

    room: RoomT
    status: RoomStatus
    adopted_at: float = math.nan
    key: int = 0
    on_end: Callable[[], None] | None = None  # tells a watching scheduler, once

    @property
    def room_id(self) -> int:
        return self.room.room_id

    def incarnations(self) -> frozenset[Hashable]:
        """What names this room's messages apart from other rooms under its id: what a
        tombstone keeps once the room is gone."""
        raise NotImplementedError

    def publish(self) -> None:
        """Show the room as it is now (after an event is fully handled)."""
        status, room = self.status, self.room
        status.reason = room.reason
        status.resumes = room.resumes
        status.state = _POLL[room.state]


TrackedT = TypeVar("TrackedT", bound="Tracked[Any]")


class RoomTable(Generic[TrackedT]):
    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        self._by_key: dict[int, TrackedT] = {}
        self._by_id: dict[int, list[TrackedT]] = {}  # rooms under each id, oldest first
        self._tombstones: OrderedDict[int, tuple[Hashable, ...]] = OrderedDict()
        self._limit = tombstones
        self._keys = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[TrackedT]:
        return iter(list(self._by_key.values()))

    def __contains__(self, room_id: int) -> bool:
        return room_id in self._by_id

    def get(self, room_id: int) -> TrackedT | None:
        """The newest room under ``room_id``: its scheduler's, unless it let go of it."""
        held = self._by_id.get(room_id)
        return held[-1] if held else None

    def under(self, room_id: int) -> list[TrackedT]:
        """Every room held under ``room_id``, oldest first (earlier ones are settling)."""
        return list(self._by_id.get(room_id, ()))

    def by_key(self, key: int) -> TrackedT | None:
        return self._by_key.get(key)

    def holds(self, tracked: TrackedT) -> bool:
        """Whether this table drives ``tracked``."""
        return self._by_key.get(tracked.key) is tracked

    def add(self, tracked: TrackedT, now: float) -> bool:
        """Take the room on; False if its scheduler still holds a room of that id."""
        held = self._by_id.setdefault(tracked.room_id, [])
        if any(not other.room.released for other in held):
            return False
        tracked.adopted_at = now
        tracked.key = next(self._keys)
        self._by_key[tracked.key] = tracked
        held.append(tracked)
        return True

    def forget(self, tracked: TrackedT) -> None:
        """The room is finished: drop it and remember its id, and its incarnations, for
        a while (those of the last rooms under the id)."""
        del self._by_key[tracked.key]
        held = self._by_id[tracked.room_id]
        held.remove(tracked)
        if not held:
            del self._by_id[tracked.room_id]
        earlier = self._tombstones.pop(tracked.room_id, ())
        kept = (*earlier, *tracked.incarnations())[-INCARNATIONS_PER_TOMBSTONE:]
        self._tombstones[tracked.room_id] = kept
        if len(self._tombstones) > self._limit:
            self._tombstones.popitem(last=False)

    def is_closed(self, room_id: int) -> bool:
        """A room under this id finished recently: late messages for it are expected."""
        return room_id in self._tombstones

    def retired(self, room_id: int, incarnation: Hashable) -> bool:
        """Whether a room under this id that is gone had ``incarnation``."""
        return incarnation in self._tombstones.get(room_id, ())
