"""``World``: one sender, N receivers, their rooms, the network and the clock.

A world hosts one sender engine (``E``) and N receiver engines (``L0``, ``L1``, ...) the
way ``embxfer.runtime`` does: it runs the real room machines (``embxfer.fsm``) over real
``FreeListAllocator``s and carries out their actions as the engines do (``SendMessage``
puts a message in flight, ``WritePiece`` starts a write, ``StorePayload`` and
``SpillPiece`` copy data). Whatever the runtime leaves to threads, the network and the
scheduler is a move (``moves``) that ``apply`` carries out; ``choices`` says which moves
may come next, and ``invariants`` are checked after every one: a failure raises
``Violation``.

The world assumes what any deadline-based protocol must: a control message is delivered
or lost within ``max_latency_s`` of being sent, and a write ends within ``max_write_s``
of starting. Time cannot pass beyond the first such limit while the message or write is
pending, so a message cannot surface after every deadline that counted on it.

Beside the rooms the world keeps a reference model that does not trust their accounts:
which room owns each block (``ownership``), what each room's payload is, and which rooms
a fault touched ("tainted": a drop, a failed write, an abort, a lost peer, a passed
deadline). A room no fault touched must end in Success and may never sit idle with
nothing in flight; duplicates and reordering are not faults in that sense, the protocol
has to absorb them.

Requests are numbered by the world (``OpenRoom.room``), and each has a room id, which may
be an earlier request's: the id is reused once the schedulers let go of that request's
rooms. Messages carry the room id and the receiver incarnation (each receiver room's
nonce), and reach the room they are for as the engines route them
(``fsm.routing.incarnation``); a room that finished is gone, as an engine forgets it.
A new request whose sender room may meet a message of an earlier receiver incarnation no
earlier sender room bound is tainted: it cannot tell that message from its own
receiver's first one (the spec says so), and may fail; nothing may reach its receivers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.fsm.actions import (
    Action,
    SendMessage,
    StopWaiting,
    StorePayload,
    WaitForMemory,
    WritePiece,
)
from embxfer.fsm.events import (
    AbortRequested,
    Event,
    LengthAnnounced,
    MemoryGranted,
    PayloadReady,
    PeerLost,
    PeerReady,
    Released,
    Tick,
    WriteFinished,
)
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import ACTIVE, FAILED, SUCCESS, Room
from embxfer.fsm.routing import incarnation, room_event
from embxfer.fsm.sender import SenderRoom
from embxfer.tools.sim import choices, invariants
from embxfer.tools.sim.config import (
    HOG,
    ROOM_MESSAGES,
    SENDER,
    Budget,
    Envelope,
    PendingWrite,
    RoomKey,
    SimConfig,
    Violation,
)
from embxfer.tools.sim.data import DataPlane, LabelData
from embxfer.tools.sim.moves import (
    Advance,
    AnnounceLength,
    Deliver,
    Drop,
    Duplicate,
    FinishWrite,
    Forge,
    HandPayload,
    Hog,
    Inject,
    Kill,
    LosePeer,
    Move,
    OpenRoom,
    Release,
    SchedulerAbort,
    Unhog,
)
from embxfer.tools.sim.ownership import Ownership, TrackedAllocator
from embxfer.tools.sim.rooms import describe_room, releasable, side
from embxfer.tools.sim.states import Snapshot, clone_room, state_key


class World:
    """One sender, N receivers, their rooms, the network and the clock; see the module
    docstring. ``apply`` runs a move and checks every invariant; ``legal_moves`` and
    ``fault_moves`` enumerate what may happen next."""

    def __init__(
        self,
        config: SimConfig,
        data: DataPlane,
        budget: Budget | None = None,
        auto_release: bool = False,
    ) -> None:
        self.config = config
        self.data = data
        self.budget = budget or Budget()
        # Release rooms as soon as they end, instead of offering Release as a move: with
        # one room per engine nothing else competes for its blocks, so when the
        # scheduler releases cannot matter, and the explorer saves those interleavings.
        self.auto_release = auto_release
        self.now = 0.0
        self.engines = (SENDER, *config.receiver_names)
        self.ownership = Ownership(self.engines, data)
        self.allocators = {
            engine: TrackedAllocator(
                self.ownership, engine, FreeListAllocator(n, config.block_size)
            )
            for engine, n in config.engine_blocks.items()
        }
        # Each engine's memory queue, served after every move as the runtime serves it
        # after every pump iteration.
        self.pools: dict[str, FairPool[int]] = {
            engine: FairPool(allocator) for engine, allocator in self.allocators.items()
        }
        self.rooms: dict[RoomKey, Room] = {}
        self.members: dict[int, tuple[str, ...]] = {}  # request -> its receivers
        self.ids: dict[int, int] = {}  # request -> the room id its schedulers gave it
        self.totals: dict[int, int] = {}
        self.payloads: dict[int, object] = {}  # what the sender's scheduler will hand over
        self.in_flight: list[Envelope] = []  # in sending order
        self.writes: list[PendingWrite] = []  # in starting order
        self.handed: set[int] = set()  # requests whose payload the sender has
        self.announcing: set[int] = set()  # requests whose length the scheduler announces
        self.announced: set[int] = set()  # ... and has announced
        # Requests the schedulers open once their room id is free (reusing an id).
        self.later: tuple[OpenRoom, ...] = ()
        self.tainted: set[int] = set()
        self.dead: set[str] = set()
        self.told: set[tuple[str, str]] = set()  # (engine, peer) declared lost there
        self.hogs: dict[str, list[int]] = {engine: [] for engine in self.engines}
        # Rooms may be shared with snapshots; ``_run`` clones one before its first event.
        self._owned: set[RoomKey] = set()
        self._room_keys: dict[RoomKey, tuple[Any, ...]] = {}  # cache for ``key``

    # -- moves ---------------------------------------------------------------------
    def apply(self, move: Move) -> None:
        """Carry out ``move``, then check every invariant (raises ``Violation``)."""
        match move:
            case OpenRoom():
                self._open(move)
            case AnnounceLength(room=room):
                self.announced.add(room)
                self._run((SENDER, room), LengthAnnounced(self.totals[room]))
            case HandPayload(room=room):
                self.handed.add(room)
                delta = self.data.mrope_position_delta(room)
                self._run((SENDER, room), PayloadReady(self.totals[room], (), delta))
            case Deliver(envelope=envelope):
                self.in_flight.remove(envelope)
                self._deliver(envelope)
            case Duplicate(envelope=envelope):
                self._spend(dups=1)
                self.in_flight.append(envelope)
            case Drop(envelope=envelope):
                self.in_flight.remove(envelope)
                self.tainted.add(envelope.room)
                self._spend(drops=1)
            case FinishWrite(write=write, ok=ok):
                self._finish_write(write, ok)
            case SchedulerAbort(engine=engine, room=room):
                self._spend(aborts=1)
                self.tainted.add(room)
                self._run((engine, room), AbortRequested())
            case Release(engine=engine, room=room):
                if not self.rooms[(engine, room)].terminal:
                    self._spend(aborts=1)
                    self.tainted.add(room)
                self._run((engine, room), Released())
            case Advance(to=to):
                self._advance(to)
            case Kill(engine=engine):
                self._spend(kills=1)
                self.dead.add(engine)
                self.tainted.update(self.rooms_with(engine))
                self.data.kill(engine)
            case LosePeer(engine=engine, peer=peer):
                self._lose_peer(engine, peer)
            case Hog(engine=engine, tokens=tokens):
                with self.ownership.acting_for(HOG):
                    blocks = self.allocators[engine].alloc(tokens)
                self.hogs[engine].extend(blocks or ())
            case Unhog(engine=engine):
                with self.ownership.acting_for(HOG):
                    self.allocators[engine].free(self.hogs[engine])
                self.hogs[engine] = []
                self.ownership.poison_freed()
            case Inject(engine=engine, room=room, event=event, fault=fault):
                if fault:
                    self.tainted.add(room)
                self._run((engine, room), event)
            case Forge(envelope=envelope, fault=fault):
                if fault:  # it may reach any request under its room id
                    wire = self.ids[envelope.room]
                    self.tainted.update(r for r in self.members if self.ids[r] == wire)
                self.in_flight.append(envelope)
        if self.auto_release:
            for key in [key for key, room in self.live_rooms() if releasable(room)]:
                self._run(key, Released())
        self._serve_memory()
        self.check()

    def _spend(self, **costs: int) -> None:
        self.budget = dataclasses.replace(
            self.budget, **{name: getattr(self.budget, name) - n for name, n in costs.items()}
        )

    def _open(self, move: OpenRoom) -> None:
        room, members, wire = move.room, move.receivers, move.wire_id
        if room in self.members or not members or len(members) != len(move.initial_tokens):
            raise ValueError(f"cannot open {move}")
        if not self.id_free(wire):
            raise ValueError(f"cannot open {move}: a scheduler still holds a room of id {wire}")
        self.later = tuple(opening for opening in self.later if opening != move)
        if self._unbound_in_flight(wire):
            self.tainted.add(room)  # its sender room may take them for its receiver's
        self.members[room] = members
        self.ids[room] = wire
        self.totals[room] = move.total_tokens
        self.payloads[room] = self.data.payload(room, move.total_tokens)
        if move.announce:
            self.announcing.add(room)
        never_fits = self.config.never_fits
        if any(never_fits(move.total_tokens, initial) for initial in move.initial_tokens):
            self.tainted.add(room)  # refused, as the spec says: it may (must) fail
        timeouts = self.config.timeouts
        self.rooms[(SENDER, room)] = SenderRoom(wire, self.pools[SENDER], timeouts, self.now)
        self._owned.add((SENDER, room))
        for receiver, initial in zip(members, move.initial_tokens, strict=True):
            self._owned.add((receiver, room))
            self.rooms[(receiver, room)] = ReceiverRoom(
                wire,
                SENDER,
                self.pools[receiver],
                initial,
                timeouts,
                self.now,
                self.config.policy,
                len(members),
                nonce=nonce_of(room),
            )
            self._run((receiver, room), PeerReady())

    def defer(self, opening: OpenRoom) -> None:
        """The schedulers will open ``opening`` (which reuses an earlier request's room
        id) once that id is free: a legal move from then on."""
        self.later = (*self.later, opening)

    def id_free(self, wire: int) -> bool:
        """Whether the schedulers may open a request under room id ``wire``: every
        room of an earlier request under it has been released."""
        return all(self.rooms[key].released for key in self.rooms if self.ids[key[1]] == wire)

    def _unbound_in_flight(self, wire: int) -> bool:
        """Whether a message from a receiver to the sender under room id ``wire`` is in
        flight whose incarnation no sender room under that id bound."""
        senders = [
            room
            for (engine, request), room in self.rooms.items()
            if engine == SENDER and self.ids[request] == wire
        ]
        return any(
            e.dst == SENDER
            and e.message.room == wire
            and not any(s.names(e.src, e.message.nonce) for s in senders)
            for e in self.in_flight
        )

    def _deliver(self, envelope: Envelope) -> None:
        if envelope.dst in self.dead:
            return
        message = self.data.transmit(envelope.message)
        if message is None:
            return  # the receiving engine's wire rejects it
        dst, src = envelope.dst, envelope.src
        if dst == SENDER and src not in self.engines:
            return  # a sender takes room messages from registered receivers only
        routed = room_event("sender" if dst == SENDER else "receiver", src, message)
        if routed is None:
            return
        wire, nonce, event = routed
        request = self.route(dst, src, wire, nonce)
        if request is not None:
            self._run((dst, request), event)

    def route(self, engine: str, peer: str, wire: int, nonce: int) -> int | None:
        """The request whose room at ``engine`` a message from ``peer`` under room id
        ``wire`` about receiver incarnation ``nonce`` reaches, as the engines route it:
        of the rooms under that id not yet finished (a finished room is forgotten),
        the one ``fsm.routing.incarnation`` picks. A sender engine remembers the
        incarnations its forgotten rooms bound (tombstones): their messages are late."""
        under = [r for r in self.members if self.ids[r] == wire and (engine, r) in self.rooms]
        held = [r for r in under if not self.rooms[(engine, r)].finished]
        retired = engine == SENDER and any(
            self.rooms[(engine, r)].names(peer, nonce) for r in under if r not in held
        )
        return incarnation(held, lambda r: self.rooms[(engine, r)], peer, nonce, retired)

    def _finish_write(self, write: PendingWrite, ok: bool) -> None:
        self.writes.remove(write)
        if not ok:
            self._spend(failures=1)
            self.tainted.add(write.room)
        result = self.data.write(write, ok)
        if SENDER not in self.dead:
            piece = write.piece
            done = WriteFinished(piece.receiver, piece.sent_tokens, result.ok, result.reason)
            self._run((SENDER, write.room), done)

    def _advance(self, to: float) -> None:
        if not self.now < to <= self.time_limit():
            raise ValueError(f"cannot advance from {self.now} to {to}")
        self.now = to
        self._room_keys.clear()  # they hold times relative to the clock
        due = sorted((room.wakeup, key) for key, room in self.live_rooms() if room.wakeup <= to)
        for _, key in due:
            before = self.rooms[key]
            overdue = before.state in ACTIVE and to >= before.deadline
            self._run(key, Tick())
            after = self.rooms[key]  # ``_run`` may have replaced a shared room by a clone
            if overdue:
                self.tainted.add(key[1])
                if not after.terminal:
                    raise Violation(f"{side(key)} is still {after.state} past its deadline")

    def _lose_peer(self, engine: str, peer: str) -> None:
        if peer not in self.dead:
            self._spend(losses=1)
        self.told.add((engine, peer))
        self.tainted.update(self.rooms_with(engine) & self.rooms_with(peer))
        for key in sorted(key for key, _ in self.live_rooms() if key[0] == engine):
            self._run(key, PeerLost(peer))

    def rooms_with(self, engine: str) -> set[int]:
        """Rooms that ``engine`` takes part in."""
        return {room for room, members in self.members.items() if engine in (SENDER, *members)}

    # -- running a room --------------------------------------------------------------
    def _run(self, key: RoomKey, event: Event) -> None:
        """One event into one side of a room, and its actions carried out in order."""
        if key not in self._owned:
            self.rooms[key] = clone_room(self.rooms[key])
            self._owned.add(key)
        self._room_keys.pop(key, None)
        room = self.rooms[key]
        before = room.state
        with self.ownership.acting_for(key[1]):
            actions = room.handle(event, self.now)
        if room.crash:
            raise Violation(f"{side(key)} crashed on {event!r}: {room.crash}")
        forward = room.state == FAILED or KVPoll[room.state] > KVPoll[before]
        if before != room.state and not (before in ACTIVE and forward):
            raise Violation(f"{side(key)} went from {before} to {room.state}")
        for action in actions:
            self._carry_out(key, action)
        self.ownership.poison_freed()
        if isinstance(room, ReceiverRoom) and room.state == SUCCESS and before != SUCCESS:
            problem = self.data.verify(key[0], key[1], room)
            if problem:
                raise Violation(f"{side(key)} succeeded with a wrong result: {problem}")

    def _carry_out(self, key: RoomKey, action: Action) -> None:
        engine, room = key
        if isinstance(action, SendMessage):
            message = action.message
            if not isinstance(message, ROOM_MESSAGES):
                raise Violation(f"{side(key)} sent {message!r}, not a room message")
            self.in_flight.append(Envelope(engine, action.peer, message, self.now, room))
        elif isinstance(action, WritePiece):
            sender = self.rooms[key]
            assert isinstance(sender, SenderRoom)
            target = request_of(sender.receivers[action.receiver].nonce)
            self.writes.append(PendingWrite(room, action, self.now, target))
        elif isinstance(action, StorePayload):
            self.data.store(room, action.blocks, self.payloads[room])
        elif isinstance(action, WaitForMemory):
            self.ownership.queued[engine].append(room)
            self.pools[engine].wait(room, action.tokens, action.floor_tokens)
        elif isinstance(action, StopWaiting):
            self.ownership.queued[engine].remove(room)
            self.pools[engine].cancel(room)
        else:
            self.data.spill(engine, room, action)

    def _serve_memory(self) -> None:
        """Grant blocks to the rooms each engine's queue says are next, as the runtime
        does, until no head fits (a grant may free or queue more)."""
        granted = True
        while granted:
            granted = False
            for engine, pool in self.pools.items():
                room = None if engine in self.dead else pool.ready()
                if room is not None:
                    with self.ownership.acting_for(room):
                        blocks = pool.grant(room)
                    self._run((engine, room), MemoryGranted(tuple(blocks)))
                    granted = True

    # -- what may happen next, and what must hold (``choices``, ``invariants``) ------
    def live_rooms(self) -> Iterator[tuple[RoomKey, Room]]:
        return ((key, room) for key, room in self.rooms.items() if key[0] not in self.dead)

    def time_limit(self) -> float:
        return choices.time_limit(self)

    def next_time(self) -> float:
        return choices.next_time(self)

    def owed(self) -> bool:
        return choices.owed(self)

    def legal_moves(self) -> list[Move]:
        return choices.legal_moves(self)

    def fault_moves(self, kind: str) -> list[Move]:
        return choices.fault_moves(self, kind)

    def moves(self, faults: Iterable[str]) -> list[Move]:
        return choices.moves(self, faults)

    def check(self) -> None:
        invariants.check(self)

    def final_check(self) -> None:
        invariants.final_check(self)

    def progress_promised(self) -> bool:
        """Whether the spec promises that rooms waiting for memory get it without time
        passing (section 2.1's progress rule and the case it leaves to time)."""
        return invariants.progress_promised(self)

    def wind_down(self, max_rounds: int = 10_000) -> None:
        """Cut the network and let time pass: writes end, deadlines fire, finished rooms
        are released; then every room must have finished and every block come back."""
        self.tainted.update(self.members)
        for engine in self.engines:
            if self.hogs[engine] and engine not in self.dead:
                self.apply(Unhog(engine))
        for _ in range(max_rounds):
            self.in_flight.clear()
            if self.writes:
                self.apply(FinishWrite(self.writes[0], True))
                continue
            ready = [key for key, room in self.live_rooms() if releasable(room)]
            if ready:
                self.apply(Release(*ready[0]))
                continue
            self.in_flight.clear()
            to = self.next_time()
            if to == math.inf:
                break
            self.apply(Advance(to))
        self.final_check()

    # -- explorer support ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A copy of the whole state for ``restore``; it shares the rooms, which
        neither side changes from now on (``_run`` clones a shared room first)."""
        assert isinstance(self.data, LabelData), "only symbolic worlds are snapshotted"
        self._owned.clear()
        return Snapshot(
            self.now,
            dict(self.rooms),
            dict(self._room_keys),
            dict(self.members),
            dict(self.ids),
            dict(self.totals),
            dict(self.payloads),
            {e: a.inner.snapshot() for e, a in self.allocators.items()},
            {e: pool.queue() for e, pool in self.pools.items()},
            self.ownership.snapshot(),
            list(self.in_flight),
            list(self.writes),
            set(self.handed),
            set(self.announcing),
            set(self.announced),
            self.later,
            set(self.tainted),
            set(self.dead),
            set(self.told),
            {e: list(h) for e, h in self.hogs.items()},
            self.budget,
            self.data.snapshot(),
        )

    def restore(self, snapshot: Snapshot) -> None:
        assert isinstance(self.data, LabelData)
        self.now = snapshot.now
        self.rooms = dict(snapshot.rooms)
        self._owned.clear()
        self._room_keys = dict(snapshot.room_keys)
        self.members = dict(snapshot.members)
        self.ids = dict(snapshot.ids)
        self.totals = dict(snapshot.totals)
        self.payloads = dict(snapshot.payloads)
        for engine, state in snapshot.allocators.items():
            self.allocators[engine].inner.restore(state)
        for engine, queue in snapshot.queues.items():
            self.pools[engine].restore_queue(queue)
        self.ownership.restore(snapshot.ownership)
        self.in_flight = list(snapshot.in_flight)
        self.writes = list(snapshot.writes)
        self.handed = set(snapshot.handed)
        self.announcing = set(snapshot.announcing)
        self.announced = set(snapshot.announced)
        self.later = snapshot.later
        self.tainted = set(snapshot.tainted)
        self.dead = set(snapshot.dead)
        self.told = set(snapshot.told)
        self.hogs = {e: list(h) for e, h in snapshot.hogs.items()}
        self.budget = snapshot.budget
        self.data.restore(snapshot.data)

    def key(self, ordered: bool = True) -> tuple[Any, ...]:
        """A hashable canonical form of the state, equal for states that behave alike.

        Times are taken relative to the clock (the machines only compare times), texts
        that never steer behaviour (failure reasons, counters) are left out, and so is the
        reference model's ownership map (``check`` keeps it equal to the rooms' blocks).
        ``ordered``: whether the order of messages on one channel and of writes to one
        receiver matters (it does not once they may be reordered).
        """
        assert isinstance(self.data, LabelData)
        return state_key(self, self._room_keys, ordered)

    def summary(self) -> str:
        """One line: the clock and every side of every room."""
        sides = " ".join(
            f"{side(key)}={describe_room(room)}{'(dead)' if key[0] in self.dead else ''}"
            for key, room in sorted(self.rooms.items())
        )
        return f"t={self.now:g} {sides} in-flight={len(self.in_flight)} writes={len(self.writes)}"


def nonce_of(request: int) -> int:
    """The nonce of request ``request``'s receiver rooms (random in an engine; here
    distinct and reproducible)."""
    return request + 1


def request_of(nonce: int) -> int:
    """The request whose receiver rooms have ``nonce`` (-1: none; a forged one)."""
    return nonce - 1 if nonce > 0 else -1
