"""Hypothesis state machines over the simulation world (``embxfer.tools.sim``).

Each example builds a world of real bytes (``ByteData``: metadata buffers, segment
plans, the in-process data transport), opens rooms of random length and default
allocation, and drives it with moves. Two kinds of rule sit side by side, because
uniformly random events rarely get a room deep into its resumes: ``legal_move`` draws
from the moves the world's reference model says a healthy system makes, while the
fault rules inject faults, and the hostile rules forge illegal messages and stray events.
``World.apply`` checks every invariant after every move; ``teardown`` cuts the network,
lets time pass, and checks that every room ended and every block came back.
"""

from __future__ import annotations

from typing import ClassVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from embxfer.fsm.events import (
    AbortAckReceived,
    PayloadReady,
    PeerLost,
    PeerReady,
    Released,
    Tick,
    WriteFinished,
)
from embxfer.fsm.messages import (
    Abort,
    AbortAck,
    Announce,
    PieceRequest,
    PieceWritten,
    RoomMessage,
)
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.sender import SenderRoom
from embxfer.tools.sim import (
    FAULTS,
    SENDER,
    Advance,
    Budget,
    ByteData,
    Envelope,
    Forge,
    HandPayload,
    Hog,
    Inject,
    Move,
    OpenRoom,
    SimConfig,
    Unhog,
    World,
    describe,
    nonce_of,
)

STRANGER = "M"  # a peer no engine registered
DELAYS = st.sampled_from([0.5, 1.0, 2.0, 29.0, 30.0, 60.0, 65.0]) | st.floats(0.001, 100.0)


@st.composite
def configs(draw: st.DrawFn, tight: bool, sender_holds: int = 0) -> SimConfig:
    """Small engines, so resumes are frequent and freed blocks come back at once.
    ``sender_holds``: rooms whose largest payloads the sender's memory holds at once
    (0: any size, so the sender may wait for memory too)."""
    block_size = draw(st.sampled_from([1, 2, 4]))
    cap = draw(st.none() | st.integers(1, 3).map(lambda blocks: blocks * block_size))
    # Rooms that keep every piece in place while they wait may hold memory each other
    # needs: the spec promises progress only to rooms that spill.
    spills = [mode for mode in SpillMode if not sender_holds or mode is not SpillMode.NEVER_SPILL]
    policy = ResumePolicy(
        spill=draw(st.sampled_from(spills)),
        max_resume_tokens=cap,
        allow_partial=draw(st.booleans()),
    )
    receiver_blocks = draw(st.integers(2, 6) if tight else st.integers(4, 24))
    return SimConfig(
        receivers=draw(st.integers(1, 3)),
        block_size=block_size,
        sender_blocks=sender_holds * 2 * receiver_blocks or draw(st.integers(8, 40)),
        receiver_blocks=receiver_blocks,
        policy=policy,
    )


class WorldMachine(RuleBasedStateMachine):
    """The rules; subclasses choose the faults, hostility and memory pressure."""

    FAULT_KINDS: ClassVar[tuple[str, ...]] = FAULTS  # each example draws a subset
    HOSTILE: ClassVar[bool] = True  # forge illegal messages, inject stray events
    TIGHT: ClassVar[bool] = False  # receivers with 2 to 6 blocks
    MAX_ROOMS: ClassVar[int] = 8  # rooms per example
    MAX_ACTIVE: ClassVar[int] = 3  # rooms under way at once
    ELSEWHERE: ClassVar[bool] = True  # time passes, memory goes to others (hogs)
    REUSE: ClassVar[bool] = False  # always reuse a freed room id (else: drawn)
    BURST: ClassVar[int] = 25  # most legal moves in a row

    def __init__(self) -> None:
        super().__init__()
        self._world: World | None = None
        self.broken = False  # a move raised: teardown must not pile a second failure on
        self.opened = 0
        self.faults: tuple[str, ...] = ()

    @property
    def world(self) -> World:
        assert self._world is not None
        return self._world

    def _apply(self, move: Move) -> None:
        note(describe(move))
        try:
            self.world.apply(move)
        except BaseException:
            self.broken = True
            raise

    @initialize(data=st.data(), seed=st.integers(0, 2**16))
    def start(self, data: st.DataObject, seed: int) -> None:
        """A world, and the fault kinds this example injects: a random subset ("swarm
        testing"), so that each example hammers a few kinds hard."""
        holds = 0 if self.ELSEWHERE else self.MAX_ACTIVE
        config = data.draw(configs(self.TIGHT, sender_holds=holds))
        self._world = World(config, ByteData(config, seed), Budget(kills=1))
        kinds = st.lists(st.sampled_from(self.FAULT_KINDS), min_size=1, unique=True)
        self.faults = tuple(data.draw(kinds))

    # -- rooms ---------------------------------------------------------------------
    def _can_open(self) -> bool:
        world = self.world
        active = sum(
            1
            for room, members in world.members.items()
            if not all(world.rooms[(e, room)].terminal for e in (SENDER, *members))
        )
        return (
            self.opened < self.MAX_ROOMS
            and active < self.MAX_ACTIVE
            and SENDER not in world.dead
            and any(r not in world.dead for r in world.config.receiver_names)
        )

    @precondition(lambda self: self._can_open())
    @rule(data=st.data())
    def open_room(self, data: st.DataObject) -> None:
        config = self.world.config
        block_size = config.block_size
        live = [r for r in config.receiver_names if r not in self.world.dead]
        receivers = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
        longest = min(config.sender_blocks, 2 * config.receiver_blocks) * block_size
        total = data.draw(st.integers(1, longest))
        initial = st.integers(1, config.receiver_blocks * block_size)
        allocations = tuple(data.draw(initial) for _ in receivers)
        # Room ids are reused as soon as the schedulers let go of them, while messages
        # of the rooms that had them may still be in flight.
        freed = sorted({wire for wire in self.world.ids.values() if self.world.id_free(wire)})
        reuse = st.sampled_from(freed) if self.REUSE else st.none() | st.sampled_from(freed)
        wire = data.draw(reuse) if freed else None
        announce = data.draw(st.booleans())
        opening = OpenRoom(
            self.opened, total, tuple(sorted(receivers)), allocations, wire, announce
        )
        self._apply(opening)
        self.opened += 1

    # -- what a healthy system does ---------------------------------------------------
    def _network_moves(self) -> list[Move]:
        """Legal moves but the encoder's: it finishes at its own pace (``hand_payload``)."""
        return [m for m in self.world.legal_moves() if not isinstance(m, HandPayload)]

    @precondition(lambda self: bool(self._network_moves()))
    @rule(data=st.data(), burst=st.integers(1, 25))
    def legal_moves(self, data: st.DataObject, burst: int) -> None:
        """Up to ``burst`` moves of a healthy system in a row, each drawn from what the
        reference model allows now: rooms get through many resumes in few steps."""
        for _ in range(min(burst, self.BURST)):
            moves = self._network_moves()
            if not moves:
                break
            self._apply(data.draw(st.sampled_from(moves)))

    @precondition(lambda self: SENDER not in self.world.dead and self._waiting_payloads())
    @rule(data=st.data())
    def hand_payload(self, data: st.DataObject) -> None:
        self._apply(HandPayload(data.draw(st.sampled_from(self._waiting_payloads()))))

    def _waiting_payloads(self) -> list[int]:
        """Payloads not handed over; an announcing scheduler announces first."""
        world = self.world
        return [
            room
            for room in world.members
            if room not in world.handed
            and (room not in world.announcing or room in world.announced)
        ]

    # -- faults ------------------------------------------------------------------------
    def _fault_kinds(self) -> list[str]:
        return [kind for kind in self.faults if self.world.fault_moves(kind)]

    @precondition(lambda self: bool(self._fault_kinds()))
    @rule(data=st.data())
    def fault(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(self._fault_kinds()))
        self._apply(data.draw(st.sampled_from(self.world.fault_moves(kind))))

    def _may_advance(self) -> bool:
        world = self.world
        if not self.ELSEWHERE:
            return False
        return world.time_limit() > world.now and ("delay" in self.faults or not world.owed())

    @precondition(lambda self: self._may_advance())
    @rule(delay=DELAYS)
    def advance(self, delay: float) -> None:
        """Time passes by any amount (not only to the next wakeup), up to the limit the
        pending messages and writes set."""
        world = self.world
        self._apply(Advance(min(world.now + delay, world.time_limit())))

    def _live_engines(self) -> list[str]:
        return [e for e in self.world.engines if e not in self.world.dead]

    @precondition(lambda self: self.ELSEWHERE)
    @rule(data=st.data())
    def hog(self, data: st.DataObject) -> None:
        """Memory goes to something else, so allocations (resumes) must wait."""
        engine = data.draw(st.sampled_from(self._live_engines()))
        config = self.world.config
        blocks = config.engine_blocks[engine]
        self._apply(Hog(engine, data.draw(st.integers(1, blocks * config.block_size))))

    @precondition(lambda self: any(self.world.hogs[e] for e in self._live_engines()))
    @rule(data=st.data())
    def unhog(self, data: st.DataObject) -> None:
        hogging = [e for e in self._live_engines() if self.world.hogs[e]]
        self._apply(Unhog(data.draw(st.sampled_from(hogging))))

    # -- hostile peers and stray events -------------------------------------------------
    @precondition(lambda self: self.HOSTILE and bool(self._strays()))
    @rule(data=st.data())
    def stray(self, data: st.DataObject) -> None:
        self._apply(data.draw(st.sampled_from(self._strays())))

    def _strays(self) -> list[Move]:
        """Messages no correct peer sends, and events a room must shrug off.

        A forgery in a member's name must be illegal whenever it arrives, not only when
        it is forged (the room moves on meanwhile): a plausible lie from a peer is
        beyond any protocol. Those that may fail a room taint it; the rest must leave no
        trace."""
        world = self.world
        moves: list[Move] = []
        for (engine, room_id), room in world.live_rooms():
            members = world.members[room_id]
            total = world.totals[room_id]
            if isinstance(room, SenderRoom):
                moves += self._strays_at_sender(room, room_id, members)
            else:
                assert isinstance(room, ReceiverRoom)
                moves += self._strays_at_receiver(engine, room, room_id, total)
            moves.append(Inject(engine, room_id, Tick(), fault=False))
            moves.append(Inject(engine, room_id, PeerLost("L9"), fault=False))
        return moves

    def _strays_at_sender(
        self, room: SenderRoom, room_id: int, members: tuple[str, ...]
    ) -> list[Move]:
        world, now, bs = self.world, self.world.now, self.world.config.block_size
        wire, n = world.ids[room_id], len(members)
        nonce = nonce_of(room_id)

        def forged(peer: str, message: RoomMessage, fault: bool) -> Forge:
            return Forge(Envelope(peer, SENDER, message, now, room_id), fault)

        moves: list[Move] = [
            forged(STRANGER, Abort(wire, nonce, "forged"), False),
            forged(STRANGER, PieceRequest(wire, nonce, 1, 0, (0,), bs, n), False),
        ]
        moves += [  # a registered receiver that is not in this room
            forged(other, Abort(wire, nonce, "forged"), True)
            for other in world.config.receiver_names
            if other not in members
        ]
        if room_id in world.handed:
            moves.append(Inject(SENDER, room_id, PayloadReady(1), fault=False))
        past_end = world.totals[room_id] + 1
        for peer, progress in room.receivers.items():
            stale_write = WriteFinished(peer, progress.requested_at + 1, True)
            moves.append(Inject(SENDER, room_id, stale_write, fault=False))
            bound, seq = progress.nonce, progress.seq + 1
            for request in (
                PieceRequest(wire, bound, seq, past_end, (0,), bs, n),
                PieceRequest(wire, bound, seq, progress.written, (0,), bs + 1, n),  # allocation
                PieceRequest(wire, bound, seq, progress.written, (0,), bs, n + 1),  # room size
            ):
                moves.append(forged(peer, request, True))
        return moves

    def _strays_at_receiver(
        self, engine: str, room: ReceiverRoom, room_id: int, total: int
    ) -> list[Move]:
        now, wire, nonce = self.world.now, self.world.ids[room_id], room.nonce
        delta = self.world.data.mrope_position_delta(room_id)

        def forged(peer: str, message: RoomMessage, fault: bool) -> Forge:
            return Forge(Envelope(peer, engine, message, now, room_id), fault)

        stray = PieceWritten(wire, nonce, room.seq or 1, 0, 1, total, delta)
        moves: list[Move] = [
            forged(STRANGER, stray, False),
            forged(STRANGER, Announce(wire, nonce, total), False),
            forged(STRANGER, Abort(wire, nonce, "forged"), False),
            forged(STRANGER, AbortAck(wire, nonce), False),
        ]
        if room.state != "Bootstrapping":
            moves.append(Inject(engine, room_id, PeerReady(), fault=False))
        if not room.terminal:
            moves.append(Inject(engine, room_id, AbortAckReceived(SENDER, nonce), fault=False))
        elif room.released:
            moves.append(Inject(engine, room_id, Released(), fault=False))
        out = room.outstanding
        if out is not None:
            too_long = out.allocated_tokens + 1  # more than the blocks hold
            seq = out.asked[-1][0]
            start, end = out.sent_tokens, out.sent_tokens + too_long
            pieces = [
                PieceWritten(wire, nonce, seq, total, 1, total + 1, delta),  # past the end
                PieceWritten(wire, nonce, seq, start, too_long, end, delta),
            ]
            if room.received:  # the delta is known from the first piece: another one
                fits = min(out.allocated_tokens, total - start)  # is a violation
                pieces.append(PieceWritten(wire, nonce, seq, start, fits, total, delta + 1))
            for piece in pieces:
                moves.append(forged(SENDER, piece, True))
        return moves

    def teardown(self) -> None:
        if self._world is not None and not self.broken:
            self._world.wind_down()


class ProtocolMachine(WorldMachine):
    """Every fault, hostile peers, engines of any size: safety under fire (ownership,
    no write into a block its room gave up, byte-exact results, deadlines honoured)."""


class ResumeMachine(WorldMachine):
    """A network that duplicates and reorders but loses nothing, receivers with two to
    six blocks, and other users of memory: many resumes, each reusing blocks just freed.
    Here no room may fail or stall, so broken resume logic shows at once."""

    FAULT_KINDS = ("reorder", "dup")
    HOSTILE = False
    TIGHT = True


class ReuseMachine(WorldMachine):
    """Protocol v2 under a lossless network that duplicates and reorders: one request at
    a time, each reusing a room id the schedulers let go of while copies of the earlier
    room's messages may still be in flight, and lengths announced (or not) before,
    during and after the first requests. Nothing of an earlier room may reach a later
    one, and an announce never makes a room fail or stall."""

    FAULT_KINDS = ("reorder", "dup")
    HOSTILE = False
    TIGHT = True
    MAX_ROOMS = 16
    MAX_ACTIVE = 1
    REUSE = True
    BURST = 3  # rooms open and payloads come between messages, not after them all


class PressureMachine(WorldMachine):
    """Liveness under memory pressure: up to six rooms at once on receivers of two to six
    blocks (smaller than one room), a network that loses nothing, no other users of
    memory, and a sender whose memory holds every open room's payload (the spec's
    progress rule). Every room whose smallest piece fits must reach Success without
    time passing, while the spec promises it: the world reports a deadlock as soon as
    rooms wait for memory that nothing can free, and ``teardown`` first lets the
    healthy system finish. (A refused room's receiver that joins after the sender let
    the room go keeps its blocks until its deadline: section 2.1 leaves that to time,
    and ``teardown``'s wind-down then checks that every room ends and every block
    comes back.)"""

    FAULT_KINDS = ("reorder", "dup")
    HOSTILE = False
    TIGHT = True
    MAX_ROOMS = 12
    MAX_ACTIVE = 6
    ELSEWHERE = False

    @rule()
    def settle(self) -> None:
        """The healthy system finishes what it has (payloads handed, messages and writes
        delivered, rooms released, no time passing): every room must then be done."""
        world = self.world
        for _ in range(10_000):
            moves = [m for m in world.legal_moves() if not isinstance(m, Advance)]
            if not moves:
                break
            self._apply(moves[0])
        if not world.progress_promised():
            return  # blocks held until a deadline: time, not the system, frees them
        for room_id, members in world.members.items():
            if room_id in world.tainted:
                continue  # refused: a piece that can never fit its receiver
            states = [world.rooms[(engine, room_id)].state for engine in (SENDER, *members)]
            assert set(states) == {"Success"}, f"room {room_id} ended {states}"

    def teardown(self) -> None:
        if self._world is not None and not self.broken:
            self.settle()
            self.world.wind_down()
