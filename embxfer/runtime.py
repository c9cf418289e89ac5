"""The runtime under both engines: one pump thread feeds room machines and carries out
their actions.

Everything that touches rooms runs on the pump thread: inbound control messages,
scheduler commands (queued by the handles), write completions (queued by the writer
threads) and timers. So no room is ever touched by two threads, and a room's actions
run in order before its next event. Scheduler threads only read ``room.state``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from embxfer.buffers.allocator import BlockAllocator, FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.config import EngineConfig
from embxfer.fsm.actions import Action, StopWaiting, WaitForMemory
from embxfer.fsm.events import AbortRequested, Event, MemoryGranted, PeerLost, Tick
from embxfer.fsm.messages import Heartbeat, Message
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Room
from embxfer.metrics import EngineMetrics, Metrics, NoMetrics, default_metrics
from embxfer.transport.base import ControlChannel, DataTransport

LOG = logging.getLogger("embxfer.runtime")

RoomT = TypeVar("RoomT", bound=Room)

_TOMBSTONES = 65536  # recently finished room ids whose late messages are dropped quietly


class TransferFailed(RuntimeError):
    """A room ended in Failed; ``reason`` says why."""

    def __init__(self, room_id: int, reason: str) -> None:
        super().__init__(f"room {room_id} failed: {reason}")
        self.room_id = room_id
        self.reason = reason


_DETAILS = re.compile(r"\S+://[^\s:]+(?::\d+)?|\d+")  # peer addresses and numbers


def reason_category(reason: str) -> str:
    """A failure reason without its details (addresses, offsets, counts): a bounded set
    of values for counters and metric labels."""
    return " ".join(_DETAILS.sub(" ", reason).split(":")[0].split())


@dataclass
class EngineStats:
    """Counters of one engine; read them from any thread (values may lag by an event).

    Updated only through its methods, which also feed ``sink`` (Prometheus or nothing),
    so the counters here and the exported metrics cannot disagree."""

    succeeded: int = 0
    failed: int = 0
    resumes: int = 0
    memory_waits: int = 0  # times a room queued for blocks
    payload_bytes: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    sink: EngineMetrics = field(default_factory=NoMetrics, repr=False, compare=False)

    def room_ended(self, room: Room, seconds: float) -> None:
        """``room`` just reached Success or Failed, ``seconds`` after it was adopted."""
        reason = ""
        if room.poll is KVPoll.Success:
            self.succeeded += 1
        else:
            self.failed += 1
            reason = reason_category(room.reason)
            self.failure_reasons[reason] += 1
        self.resumes += room.resumes
        self.sink.room_ended(room.state, reason, room.resumes, seconds)

    def bytes_moved(self, nbytes: int) -> None:
        self.payload_bytes += nbytes
        self.sink.bytes_moved(nbytes)

    def rejected_message(self, reason: str, count: int = 1) -> bool:
        """Count ``count`` rejections; True if they are the first for ``reason``."""
        first = not self.rejected[reason]
        self.rejected[reason] += count
        self.sink.message_rejected(reason, count)
        return first


@dataclass
class PeerClock:
    """When a peer was last heard from."""

    last_seen: float


class Runtime(Generic[RoomT]):
    """Rooms of one role, their memory, their transports and the thread that drives them.

    A scheduler that owns the memory passes its own ``allocator`` (any
    ``BlockAllocator`` over the layout's blocks) and ``buffers``; by default the engine
    makes both from ``config``. Either way the engine wraps the allocator in a
    ``FairPool``: rooms that cannot get blocks wait in one FIFO queue, served whenever
    blocks come back.
    """

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
        self.buffers = buffers or MetadataBuffers(self.layout)
        self.allocator: BlockAllocator = allocator or FreeListAllocator(
            self.layout.num_blocks, self.layout.block_size
        )
        if self.allocator.block_size != self.layout.block_size:
            raise ValueError(
                f"allocator blocks hold {self.allocator.block_size} tokens, "
                f"the layout's {self.layout.block_size}"
            )
        self.memory: FairPool[int] = FairPool(self.allocator, on_free=self._blocks_freed)
        for address, length in self.buffers.memory_ranges():
            data.register(address, length)
        self.rooms: dict[int, RoomT] = {}
        sink = (metrics or default_metrics()).engine(self.role, self.address)
        self.stats = EngineStats(sink=sink)
        self.stats.sink.watch_allocator(self.allocator)
        self._adopted_at: dict[int, float] = {}  # room id -> clock when adopted
        self._wire_rejects: dict[str, int] = {}  # control.rejected already counted
        self.peers: dict[str, PeerClock] = {}
        self._tombstones: OrderedDict[int, None] = OrderedDict()
        self._commands: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, int]] = []
        self._timer_at: dict[int, float] = {}
        self._seq = itertools.count()
        self._next_heartbeat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pump_id: int | None = None

    # -- lifecycle -----------------------------------------------------------------
    @property
    def address(self) -> str:
        """Control address peers use to reach this engine."""
        return self.control.address

    def start(self) -> None:
        """Run the pump on a daemon thread until ``close``."""
        self._thread = threading.Thread(target=self._pump, name=f"embxfer-{self.role}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the pump and release transports; idempotent."""
        self._stop.set()
        self.control.wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._shutdown_writers()
        self.control.close()
        self.data.close()
        self.stats.sink.close()

    def submit(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the pump thread (thread-safe).

        Only another thread's command needs to wake the pump: the pump drains commands
        before it sleeps, and an engine pumped by hand (never started) has no sleeper."""
        self._commands.append(command)
        pump = self._thread
        if pump is not None and pump.ident != threading.get_ident():
            self.control.wake()

    @property
    def used_blocks(self) -> int:
        """Blocks allocated from this engine's memory right now."""
        return self.allocator.total_blocks - self.allocator.free_blocks

    def _pump(self) -> None:
        self._pump_id = threading.get_ident()
        while not self._stop.is_set():
            try:
                self.run_once(0.05)
            except Exception:  # the pump must outlive any bug in one message or room
                LOG.exception("%s pump iteration failed", self.role)

    def run_once(self, max_wait_s: float) -> None:
        """One pump iteration: receive, run queued commands, fire due timers, heartbeat."""
        wait = 0.0 if self._commands else min(max_wait_s, self._until_next_timer())
        for inbound in self.control.receive(wait):
            now = self.clock()
            self.peers.setdefault(inbound.peer, PeerClock(now)).last_seen = now
            if not isinstance(inbound.message, Heartbeat):
                self.on_message(inbound.peer, inbound.message)
        while self._commands:
            self._commands.popleft()()
        self._fire_timers()
        self._serve_memory()
        self._heartbeat()

    # -- the one way events reach rooms ----------------------------------------------
    def deliver(self, room: RoomT, event: Event) -> None:
        """Run ``event`` through ``room`` and carry out what it returns."""
        was_terminal = room.terminal
        for action in room.handle(event, self.clock()):
            if isinstance(action, WaitForMemory):
                self.stats.memory_waits += 1
                self.memory.wait(room.room_id, action.tokens, action.floor_tokens)
            elif isinstance(action, StopWaiting):
                self.memory.cancel(room.room_id)
            else:
                self.carry_out(room, action)
        if room.terminal and not was_terminal:
            self._count_end(room)
        if self.rooms.get(room.room_id) is room:
            if room.finished:
                self._forget(room)
            else:
                self._schedule(room)

    def _count_end(self, room: RoomT) -> None:
        now = self.clock()
        # A room refused at adoption (duplicate id) never started: its id is another's.
        adopted = self.rooms.get(room.room_id) is room
        started = self._adopted_at.pop(room.room_id, now) if adopted else now
        self.stats.room_ended(room, now - started)
        LOG.debug(
            "room=%d %s ended %s after %.3fs, %d resumes %s",
            room.room_id,
            self.role,
            room.state,
            now - started,
            room.resumes,
            room.reason,
        )
        self.on_terminal(room)

    def adopt(self, room: RoomT) -> bool:
        """Start driving a new room; False (and the room fails) if its id is taken."""
        if room.room_id in self.rooms:
            self.deliver(room, AbortRequested(f"room id {room.room_id} is already in use"))
            return False
        self._tombstones.pop(room.room_id, None)
        self.rooms[room.room_id] = room
        self._adopted_at[room.room_id] = self.clock()
        self._schedule(room)
        return True

    def _forget(self, room: RoomT) -> None:
        del self.rooms[room.room_id]
        self._timer_at.pop(room.room_id, None)
        self._tombstones[room.room_id] = None
        if len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)
        self.on_forget(room)

    def is_closed(self, room_id: int) -> bool:
        """The room finished recently: late messages for it are expected, not errors."""
        return room_id in self._tombstones

    def reject(self, reason: str, peer: str, detail: str = "", room: int | None = None) -> None:
        """Count (and log once per reason) an inbound message that cannot be used."""
        if self.stats.rejected_message(reason):
            where = "" if room is None else f"room={room} "
            LOG.warning(
                "%s%s rejected a message from %s: %s %s", where, self.role, peer, reason, detail
            )

    def count_channel_rejects(self) -> None:
        """Count frames the control channel dropped (garbage, bad version, refused keys,
        ...) since last time: at every heartbeat, and before reading the final counts."""
        for reason, total in self.control.rejected.items():
            new = total - self._wire_rejects.get(reason, 0)
            if new > 0:
                self._wire_rejects[reason] = total
                self.stats.rejected_message(reason, new)

    # -- memory ----------------------------------------------------------------------
    def _serve_memory(self) -> None:
        """Grant blocks to the rooms at the head of the memory queue, in turn, for as
        long as the head's floor fits (a grant's room may free or queue more)."""
        memory = self.memory
        while (room_id := memory.ready()) is not None:
            blocks = memory.grant(room_id)
            room = self.rooms.get(room_id)
            if room is None:  # cannot happen: a room leaves the queue before it is gone
                LOG.error("%s granted blocks to unknown room %r", self.role, room_id)
                memory.free(blocks)
                continue
            self.deliver(room, MemoryGranted(tuple(blocks)))

    def _blocks_freed(self) -> None:
        """Another thread (a scheduler) freed blocks: wake the pump to serve the queue."""
        if self._pump_id is not None and self._pump_id != threading.get_ident():
            self.control.wake()

    # -- time ------------------------------------------------------------------------
    def _schedule(self, room: RoomT) -> None:
        wakeup = room.wakeup
        current = self._timer_at.get(room.room_id)
        if wakeup != float("inf") and (current is None or wakeup < current):
            self._timer_at[room.room_id] = wakeup
            heapq.heappush(self._timers, (wakeup, next(self._seq), room.room_id))

    def _until_next_timer(self) -> float:
        if not self._timers:
            return float("inf")
        return max(0.0, self._timers[0][0] - self.clock())

    def _fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            at, _, room_id = heapq.heappop(self._timers)
            room = self.rooms.get(room_id)
            if room is None or self._timer_at.get(room_id) != at:
                continue  # superseded by an earlier timer, or the room is gone
            del self._timer_at[room_id]
            if room.wakeup <= now:
                self.deliver(room, Tick())
            else:
                self._schedule(room)

    def _heartbeat(self) -> None:
        """Keep peers of active rooms informed we live; fail rooms of peers gone silent."""
        now = self.clock()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.config.heartbeat_s
        active = self.active_peers()
        for peer in active:
            clock = self.peers.setdefault(peer, PeerClock(now))
            if now - clock.last_seen > self.config.peer_timeout_s:
                LOG.warning(
                    "%s lost peer %s (silent %.1fs)", self.role, peer, now - clock.last_seen
                )
                self.peer_lost(peer)
            else:
                self.control.send(peer, Heartbeat())
        self.count_channel_rejects()
        self.housekeeping(now)

    def peer_lost(self, peer: str) -> None:
        """Fail every room that depends on ``peer``."""
        for room in list(self.rooms.values()):
            self.deliver(room, PeerLost(peer))
        self.forget_peer(peer)
        self.peers.pop(peer, None)

    # -- role hooks ------------------------------------------------------------------
    role = "engine"

    def on_message(self, peer: str, message: Message) -> None:
        raise NotImplementedError

    def carry_out(self, room: RoomT, action: Action) -> None:
        raise NotImplementedError

    def active_peers(self) -> Iterable[str]:
        raise NotImplementedError

    def on_terminal(self, room: RoomT) -> None:
        """A room just reached Success or Failed."""

    def on_forget(self, room: RoomT) -> None:
        """A finished room is gone; drop anything kept for it."""

    def forget_peer(self, peer: str) -> None:
        """A peer was declared lost."""

    def housekeeping(self, now: float) -> None:
        """Periodic chores of a role (every heartbeat period)."""

    def _shutdown_writers(self) -> None:
        """Stop writer threads (the sender has some)."""
