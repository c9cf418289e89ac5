"""One engine: its memory, its rooms, its transports, and the pump that drives them.

An engine is composed of a ``Pump`` (its one thread, commands, timers), a
``PeerMonitor`` (heartbeats, lost peers), a ``RoomTable`` (rooms, tombstones, what
each publishes), a ``FairPool`` over its allocator (the memory queue) and a role's
``Router`` (what inbound messages mean for this role: registrations, parking, which
room an event is for). ``deliver`` is the one way an event reaches a room; the room's
actions are carried out in order before its next event.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from embxfer.buffers.allocator import BlockAllocator, FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.config import EngineConfig
from embxfer.fsm.actions import Action, StopWaiting, WaitForMemory
from embxfer.fsm.events import AbortRequested, Event, MemoryGranted, PeerLost, Tick
from embxfer.fsm.messages import Heartbeat, Message
from embxfer.metrics import Metrics, default_metrics
from embxfer.runtime.ended import EndedRooms
from embxfer.runtime.peers import PeerMonitor
from embxfer.runtime.pump import Pump, Timers
from embxfer.runtime.rooms import RoomTable, Tracked
from embxfer.runtime.stats import EngineStats
from embxfer.transport.base import ControlChannel, DataTransport
from embxfer.transport.tally import Tally

LOG = logging.getLogger("embxfer.runtime")

TrackedT = TypeVar("TrackedT", bound="Tracked[Any]")
HandleT = TypeVar("HandleT")  # the role's room handle


class Router(Protocol):
    """A role's reading of the control channel."""

    def on_message(self, peer: str, message: Message) -> None:
        """A message (not a heartbeat) from ``peer``: route it to a room, or handle it."""
        ...

    def needed_peers(self) -> Iterable[str]:
        """Peers that must stay alive (heartbeated, and lost when silent)."""
        ...

    def peer_lost(self, peer: str) -> None:
        """``peer`` was declared lost (its rooms have been told)."""
        ...

    def housekeeping(self, now: float) -> None:
        """Chores once per heartbeat period."""
        ...


class Engine(Generic[TrackedT, HandleT]):
    """What both roles' engines are; a role adds its ``Router`` (in ``_init_role``),
    ``carry_out`` and ``room_ended``, and makes its rooms' handles.

    A scheduler that owns the memory passes its own ``allocator`` (any
    ``BlockAllocator`` over the layout's blocks) and ``buffers``; by default the engine
    makes both from ``config``. Either way the engine wraps the allocator in a
    ``FairPool``: rooms that cannot get blocks wait in one FIFO queue, served whenever
    blocks come back.
    """

    role = "engine"
    router: Router

    def __init__(
        self,
        config: EngineConfig,
        control: ControlChannel,
        data: DataTransport,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        *,
        allocator: BlockAllocator | None = None,
        buffers: MetadataBuffers | None = None,
    ) -> None:
        self.config = config
        self.control = control
        self.data = data
        self.clock = clock
        self.layout = config.layout
        self.bytes_per_token = self.layout.bytes_per_token  # worked out once: used per room
        self.buffers = buffers or MetadataBuffers(self.layout)
        self.allocator: BlockAllocator = allocator or FreeListAllocator(
            self.layout.num_blocks, self.layout.block_size
        )
        if self.allocator.block_size != self.layout.block_size:
            raise ValueError(
                f"allocator blocks hold {self.allocator.block_size} tokens, "
                f"the layout's {self.layout.block_size}"
            )
        for address, length in self.buffers.memory_ranges():
            data.register(address, length)
        self.pump = Pump(f"embxfer-{self.role}", self.run_once, control.wake)
        self.memory: FairPool[int] = FairPool(self.allocator, self.pump.woken_from_elsewhere)
        self.rooms: RoomTable[TrackedT] = RoomTable()
        self.peers = PeerMonitor(clock, config.heartbeat_s, config.peer_timeout_s)
        self.timers = Timers()
        sink = (metrics or default_metrics()).engine(self.role, self.address)
        self.stats = EngineStats(Tally(LOG, f"{self.role} rejected a message from"), sink=sink)
        sink.watch_allocator(self.allocator)
        self._channel_rejects: dict[str, int] = {}  # control.rejected already counted
        self._ended_rooms: EndedRooms[HandleT] | None = None  # once a scheduler watches
        self._init_role()

    def _init_role(self) -> None:
        """Make the role's own parts, its ``router`` at least, once the shared ones
        exist; the roles take the constructor as it is, so it is spelled here once."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Control address peers use to reach this engine."""
        return self.control.address

    @property
    def used_blocks(self) -> int:
        """Blocks allocated from this engine's memory right now."""
        return self.allocator.total_blocks - self.allocator.free_blocks

    def start(self) -> None:
        """Run the pump on a daemon thread until ``close``."""
        self.pump.start()

    def close(self) -> None:
        """Stop the pump and release transports; idempotent."""
        self.pump.stop()
        self.control.close()
        self.data.close()
        self.stats.sink.close()

    def submit(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the pump thread (thread-safe)."""
        self.pump.submit(command)

    def watch_ended(self) -> EndedRooms[HandleT]:
        """Put the handle of every room created from now on in the returned queue as
        its room ends (with a receiver's, its result ready): a scheduler takes the
        ended ones from it instead of polling every open room."""
        if self._ended_rooms is None:
            self._ended_rooms = EndedRooms()
        return self._ended_rooms

    def _handle(self, tracked: TrackedT, handle: HandleT) -> HandleT:
        """``handle``, for the scheduler: put in the ended queue when its room ends, if
        the scheduler watches. Called before the room is submitted to the pump, which
        may end it at once (its id is taken)."""
        if self._ended_rooms is not None:
            tracked.on_end = functools.partial(self._ended_rooms.put, handle)
        return handle

    def run_once(self, max_wait_s: float) -> None:
        """One pump iteration: receive, run queued commands, fire due timers, serve the
        memory queue, heartbeat. Tests and benchmarks call it to pump an engine by hand."""
        wait = 0.0 if self.pump.busy else min(max_wait_s, self._until_next_timer())
        for inbound in self.control.receive(wait):
            self.peers.heard(inbound.peer)
            if not isinstance(inbound.message, Heartbeat):
                self.router.on_message(inbound.peer, inbound.message)
        self.pump.run_commands()
        self._fire_timers()
        self._serve_memory()
        self._heartbeat()

    # -- the one way events reach rooms ----------------------------------------------
    def deliver(self, tracked: TrackedT, event: Event) -> None:
        """Run ``event`` through the room, carry out what it returns, then publish it."""
        room = tracked.room
        was_terminal = room.terminal
        for action in room.handle(event, self.clock()):
            if isinstance(action, WaitForMemory):
                self.stats.memory_waits += 1
                self.memory.wait(tracked.key, action.tokens, action.floor_tokens)
            elif isinstance(action, StopWaiting):
                self.memory.cancel(tracked.key)
            else:
                self.carry_out(tracked, action)
        ended = room.terminal and not was_terminal
        if ended:
            self._ended(tracked)
        tracked.publish()
        if ended and tracked.on_end is not None:
            tracked.on_end()  # once its status shows the end
            tracked.on_end = None
        if self.rooms.holds(tracked):
            if room.finished:
                self.rooms.forget(tracked)
                self.timers.cancel(tracked.key)
            else:
                self.timers.schedule(tracked.key, room.wakeup)

    def adopt(self, tracked: TrackedT) -> bool:
        """Start driving a new room; False (and the room fails) if its id is taken (its
        scheduler still holds a room of that id). A room the scheduler released may
        still settle under the id: the new room lives beside it."""
        if not self.rooms.add(tracked, self.clock()):
            reason = f"room id {tracked.room_id} is already in use"
            self.deliver(tracked, AbortRequested(reason))
            return False
        self.timers.schedule(tracked.key, tracked.room.wakeup)
        return True

    def _ended(self, tracked: TrackedT) -> None:
        room = tracked.room
        # A room refused at adoption (its id is another's) never started.
        seconds = self.clock() - tracked.adopted_at if self.rooms.holds(tracked) else 0.0
        self.stats.room_ended(room, seconds)
        LOG.debug(
            "room=%d %s ended %s after %.3fs, %d resumes %s",
            room.room_id,
            self.role,
            room.state,
            seconds,
            room.resumes,
            room.reason,
        )
        self.room_ended(tracked)

    # -- role parts --------------------------------------------------------------------
    def carry_out(self, tracked: TrackedT, action: Action) -> None:
        """Carry out one of the room's actions (messages, data); never raises."""
        raise NotImplementedError

    def room_ended(self, tracked: TrackedT) -> None:
        """The room just reached Success or Failed (before its status shows it)."""

    # -- rejections ------------------------------------------------------------------
    def reject(self, reason: str, peer: str, detail: str = "", room: int | None = None) -> None:
        """Count (and log once per reason) an inbound message that cannot be used."""
        self.stats.rejected_message(reason, peer, detail, room)

    def count_channel_rejects(self) -> None:
        """Count frames the control channel dropped (garbage, bad version, refused keys,
        ...) since last time: at every heartbeat, and before reading the final counts."""
        for reason, total in self.control.rejected.items():
            new = total - self._channel_rejects.get(reason, 0)
            if new > 0:
                self._channel_rejects[reason] = total
                self.stats.rejected_by_channel(reason, new)

    # -- memory, time, peers -----------------------------------------------------------
    def _serve_memory(self) -> None:
        """Grant blocks to the rooms at the head of the memory queue, in turn, for as
        long as the head's floor fits (a grant's room may free or queue more)."""
        memory = self.memory
        while (key := memory.ready()) is not None:
            blocks = memory.grant(key)
            tracked = self.rooms.by_key(key)
            if tracked is None:  # cannot happen: a room leaves the queue before it is gone
                LOG.error("%s granted blocks to unknown room key %r", self.role, key)
                memory.free(blocks)
                continue
            self.deliver(tracked, MemoryGranted(tuple(blocks)))

    def _fire_timers(self) -> None:
        """Tick the rooms whose wakeup is due; a timer set before the room pushed its
        wakeup out (progress moves the deadline) is set again instead."""
        now = self.clock()
        for key in self.timers.due(now):
            tracked = self.rooms.by_key(key)
            if tracked is None:
                continue
            if tracked.room.wakeup <= now:
                self.deliver(tracked, Tick())
            else:
                self.timers.schedule(key, tracked.room.wakeup)

    def _until_next_timer(self) -> float:
        return max(0.0, self.timers.next_at() - self.clock())

    def _heartbeat(self) -> None:
        """Keep the peers the role needs informed we live; fail rooms of silent ones."""
        beat = self.peers.round(self.router.needed_peers())
        if beat is None:
            return
        for peer in beat.lost:
            LOG.warning(
                "%s lost peer %s (silent %.1fs)", self.role, peer, self.peers.silent_for(peer)
            )
            self.peer_lost(peer)
        for peer in beat.alive:
            self.control.send(peer, Heartbeat())
        self.count_channel_rejects()
        self.router.housekeeping(self.clock())

    def peer_lost(self, peer: str) -> None:
        """Fail every room that depends on ``peer``."""
        for tracked in self.rooms:
            self.deliver(tracked, PeerLost(peer))
        self.router.peer_lost(peer)
        self.peers.forget(peer)
