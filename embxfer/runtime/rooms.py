"""The rooms an engine drives, what it publishes of each, and the ids it finished lately.

A scheduler's thread never touches a room: it reads the room's ``RoomStatus``, which
the pump writes once an event is fully handled (actions carried out, a result
assembled). Room ids are the scheduler's: one in use cannot be taken by a new room,
and the last ids finished are remembered (tombstones) so that late messages for them
are recognised as late, not as errors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Room

TOMBSTONES = 65536  # recently finished room ids whose late messages are dropped quietly

RoomT = TypeVar("RoomT", bound=Room)


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
    """A room, the status its handle reads, and when the engine took it on."""

    room: RoomT
    status: RoomStatus
    adopted_at: float = math.nan

    @property
    def room_id(self) -> int:
        return self.room.room_id

    def publish(self) -> None:
        """Show the room as it is now (after an event is fully handled)."""
        status, room = self.status, self.room
        status.reason = room.reason
        status.resumes = room.resumes
        status.state = KVPoll[room.state]


TrackedT = TypeVar("TrackedT", bound="Tracked[Any]")


class RoomTable(Generic[TrackedT]):
    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        self._tracked: dict[int, TrackedT] = {}
        self._tombstones: OrderedDict[int, None] = OrderedDict()
        self._limit = tombstones

    def __len__(self) -> int:
        return len(self._tracked)

    def __iter__(self) -> Iterator[TrackedT]:
        return iter(list(self._tracked.values()))

    def __contains__(self, room_id: int) -> bool:
        return room_id in self._tracked

    def get(self, room_id: int) -> TrackedT | None:
        return self._tracked.get(room_id)

    def holds(self, tracked: TrackedT) -> bool:
        """Whether ``tracked`` is the room this table drives under its id."""
        return self._tracked.get(tracked.room_id) is tracked

    def add(self, tracked: TrackedT, now: float) -> bool:
        """Take the room on; False if its id is in use."""
        if tracked.room_id in self._tracked:
            return False
        self._tombstones.pop(tracked.room_id, None)
        tracked.adopted_at = now
        self._tracked[tracked.room_id] = tracked
        return True

    def forget(self, tracked: TrackedT) -> None:
        """The room is finished: drop it and remember its id for a while."""
        del self._tracked[tracked.room_id]
        self._tombstones[tracked.room_id] = None
        if len(self._tombstones) > self._limit:
            self._tombstones.popitem(last=False)

    def is_closed(self, room_id: int) -> bool:
        """The room finished recently: late messages for it are expected, not errors."""
        return room_id in self._tombstones
