"""One deterministic world for the protocol's verification tools.

A ``World`` hosts one sender engine (``E``) and N receiver engines (``L0``, ``L1``, ...)
the way ``embxfer.runtime`` does: it runs the real room machines (``embxfer.fsm``) over
real ``FreeListAllocator``s and carries out their actions as the engines do
(``SendMessage`` puts a message in flight, ``WritePiece`` starts a write,
``StorePayload`` and ``SpillPiece`` copy data). Whatever the runtime leaves to threads,
the network and the scheduler is an explicit *move* instead: which message is delivered
next (or duplicated, or dropped), when a write finishes (or fails), when the scheduler
hands over a payload, aborts or releases, when a peer dies, when time passes on the fake
clock. The Hypothesis machines in ``tests/verification`` draw moves, ``embxfer.explore``
enumerates every one of them breadth-first, and both check the same invariants
(``World.check``) after every move: a failure raises ``Violation``.

The world assumes what any deadline-based protocol must: a control message is delivered
or lost within ``max_latency_s`` of being sent, and a write ends within ``max_write_s``
of starting. Time cannot pass beyond the first such limit while the message or write is
pending, so a message cannot surface after every deadline that counted on it.

Beside the rooms the world keeps a reference model that does not trust their accounts:
which room owns each block (from the allocator calls each room makes), what each room's
payload is, and which rooms a fault touched ("tainted": a drop, a failed write, an abort,
a lost peer, a passed deadline). A room no fault touched must end in Success and may
never sit idle with nothing in flight; duplicates and reordering are not faults in that
sense, the protocol has to absorb them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import msgspec
import torch

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.assembly import StoredPiece, assemble, stage_piece
from embxfer.buffers.fair_pool import Ask, FairPool
from embxfer.buffers.layout import BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload, random_payload
from embxfer.buffers.segments import plan_segments
from embxfer.fsm.actions import (
    Action,
    SendMessage,
    SpillPiece,
    StopWaiting,
    StorePayload,
    WaitForMemory,
    WritePiece,
)
from embxfer.fsm.events import (
    AbortRequested,
    Event,
    MemoryGranted,
    PayloadReady,
    PeerLost,
    PeerReady,
    PieceArrived,
    Released,
    RequestReceived,
    Tick,
    WriteFinished,
)
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.messages import Abort, AbortAck, PieceRequest, PieceWritten
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import ACTIVE, FAILED, SUCCESS, Room, Timeouts, Verdict
from embxfer.fsm.routing import room_event
from embxfer.fsm.sender import SenderRoom
from embxfer.transport.base import WriteResult
from embxfer.transport.faults import INJECTED_WRITE_FAILURE
from embxfer.transport.inproc import InprocDataTransport, InprocNetwork
from embxfer.transport.wire import WireError, decode, encode

SENDER = "E"
HOG = -1
"""Owner of the blocks ``Hog`` takes: memory the scheduler uses for something else."""
UNBOUNDED = 1 << 30

SIM_TIMEOUTS = Timeouts(bootstrap_s=30.0, progress_s=30.0, write_grace_s=65.0)
"""The default timeouts in whole seconds, so that times relative to the clock are exact
and equal states compare equal."""

RoomKey: TypeAlias = tuple[str, int]
"""(engine, room id): one side of a room."""
RoomMessage: TypeAlias = PieceRequest | PieceWritten | Abort | AbortAck
ROOM_MESSAGES = (PieceRequest, PieceWritten, Abort, AbortAck)


class Violation(AssertionError):
    """An invariant of the protocol failed in the simulated world."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The engines of a world and the environment's limits."""

    receivers: int = 2
    block_size: int = 2
    sender_blocks: int = 16
    receiver_blocks: int = 8
    timeouts: Timeouts = SIM_TIMEOUTS
    policy: ResumePolicy = field(default_factory=ResumePolicy)
    max_latency_s: float = 2.0
    max_write_s: float = 60.0
    hidden_size: int = 8  # bytes per token matter only to ``ByteData``

    def __post_init__(self) -> None:
        if min(self.receivers, self.block_size, self.sender_blocks, self.receiver_blocks) < 1:
            raise ValueError(f"engines need receivers and blocks: {self}")

    @property
    def receiver_names(self) -> tuple[str, ...]:
        return tuple(f"L{rank}" for rank in range(self.receivers))


@dataclass(frozen=True, slots=True)
class Budget:
    """Faults a run may still inject: the explorer's bounds (Hypothesis runs unbounded)."""

    dups: int = UNBOUNDED  # messages duplicated
    drops: int = UNBOUNDED
    aborts: int = UNBOUNDED  # scheduler aborts and early releases
    failures: int = UNBOUNDED  # failed writes
    kills: int = UNBOUNDED
    losses: int = UNBOUNDED  # peers declared lost while alive


@dataclass(frozen=True, slots=True)
class Envelope:
    """A control message on the network."""

    src: str
    dst: str
    message: RoomMessage
    sent_at: float


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A ``WritePiece`` the sender's transport is carrying out."""

    room: int
    piece: WritePiece
    issued_at: float


# -- moves ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenRoom:
    """The schedulers create a room on the sender and on ``receivers`` (registered)."""

    room: int
    total_tokens: int
    receivers: tuple[str, ...]
    initial_tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HandPayload:
    """The encoder finished: the sender's scheduler hands over the payload."""

    room: int


@dataclass(frozen=True, slots=True)
class Deliver:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The network delivers a second copy of ``envelope`` later."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Drop:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class FinishWrite:
    write: PendingWrite
    ok: bool


@dataclass(frozen=True, slots=True)
class SchedulerAbort:
    engine: str
    room: int


@dataclass(frozen=True, slots=True)
class Release:
    engine: str
    room: int


@dataclass(frozen=True, slots=True)
class Advance:
    """The clock moves to ``to``; every room whose wakeup has come gets a Tick."""

    to: float


@dataclass(frozen=True, slots=True)
class Kill:
    """``engine`` dies: its rooms stop, its memory is gone, messages to it are lost."""

    engine: str


@dataclass(frozen=True, slots=True)
class LosePeer:
    """``engine``'s runtime declares ``peer`` lost (dead, or silent too long)."""

    engine: str
    peer: str


@dataclass(frozen=True, slots=True)
class Hog:
    """Something else takes ``tokens`` of ``engine``'s memory (back-pressure)."""

    engine: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Unhog:
    engine: str


@dataclass(frozen=True, slots=True)
class Inject:
    """An arbitrary event straight into one side of a room; ``fault`` taints the room."""

    engine: str
    room: int
    event: Event
    fault: bool


@dataclass(frozen=True, slots=True)
class Forge:
    """A message no correct peer sent, put on the network; ``fault``: it may fail its
    room, which it taints (otherwise the room must ignore it)."""

    envelope: Envelope
    fault: bool


Move: TypeAlias = (
    OpenRoom
    | HandPayload
    | Deliver
    | Duplicate
    | Drop
    | FinishWrite
    | SchedulerAbort
    | Release
    | Advance
    | Kill
    | LosePeer
    | Hog
    | Unhog
    | Inject
    | Forge
)

FAULTS = ("reorder", "dup", "drop", "abort", "fail", "kill", "lose", "delay")
"""Fault kinds ``World.fault_moves`` knows. reorder: deliver any message, finish any write,
not only the oldest; dup: duplicate a message; drop: lose one; abort: a scheduler aborts
or releases an active room; fail: a write fails; kill: an engine dies; lose: a live peer
is declared lost; delay: time passes while messages or writes are pending."""


# -- data: what lands where ----------------------------------------------------------


class DataPlane(Protocol):
    """What the world does with payload bytes; the world decides when, this decides how."""

    def payload(self, room: int, total_tokens: int) -> object:
        """The payload of a new room, as ``PayloadReady`` carries it."""
        ...

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        """The message as the receiving engine decodes it (None: its wire rejects it)."""
        ...

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None: ...

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        """Carry out a write (``ok`` False: the transport fails it, target untouched)."""
        ...

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None: ...

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        """Fill freed blocks with the canary."""
        ...

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        """Whether free blocks still hold the canary: nothing wrote them while free."""
        ...

    def verify(self, engine: str, room: ReceiverRoom) -> str:
        """Why a Success room's result differs from what was sent ("" if it does not)."""
        ...

    def kill(self, engine: str) -> None: ...


Label: TypeAlias = tuple[int, int] | None
"""Symbolic content of a block: (room, offset of its first token); None is the canary."""
Staged: TypeAlias = tuple[tuple[Label, ...], Label]


class LabelData:
    """Blocks hold labels instead of bytes: cheap to copy and hash, for the explorer.

    A block's label says which room's tokens it holds from which offset, and a room's
    first block also carries an aux label (room, total tokens), so a Success result can be
    checked token range by token range without any tensor.
    """

    def __init__(self, config: SimConfig) -> None:
        self.block_size = config.block_size
        sizes = {SENDER: config.sender_blocks} | dict.fromkeys(
            config.receiver_names, config.receiver_blocks
        )
        self.labels: dict[str, list[Label]] = {e: [None] * n for e, n in sizes.items()}
        self.aux: dict[str, list[Label]] = {e: [None] * n for e, n in sizes.items()}
        self.staged: dict[RoomKey, dict[int, Staged]] = {}
        self.totals: dict[int, int] = {}
        self.dead: set[str] = set()

    def payload(self, room: int, total_tokens: int) -> object:
        self.totals[room] = total_tokens
        return None

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        return message

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None:
        labels = self.labels[SENDER]
        for index, block in enumerate(blocks):
            labels[block] = (room, index * self.block_size)
        self.aux[SENDER][blocks[0]] = (room, self.totals[room])

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        piece = write.piece
        if not ok:
            return WriteResult(False, INJECTED_WRITE_FAILURE)
        target = self.labels.get(piece.receiver)
        if target is None or piece.receiver in self.dead:
            return WriteResult(False, f"unknown peer session {piece.receiver!r}")
        nblocks = -(-piece.tokens // self.block_size)
        src, dst = piece.src_blocks[:nblocks], piece.dst_blocks[:nblocks]
        if len(dst) < nblocks or not all(0 <= block < len(target) for block in dst):
            return WriteResult(False, f"cannot plan write into blocks {piece.dst_blocks}")
        source = self.labels[SENDER]
        for src_block, dst_block in zip(src, dst, strict=True):
            target[dst_block] = source[src_block]
        if piece.with_aux:
            self.aux[piece.receiver][dst[0]] = self.aux[SENDER][src[0]]
        return WriteResult(True)

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None:
        labels = tuple(self.labels[engine][block] for block in piece.blocks)
        aux = self.aux[engine][piece.blocks[0]] if piece.sent_tokens == 0 else None
        self.staged.setdefault((engine, room), {})[piece.sent_tokens] = (labels, aux)

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        for block in blocks:
            self.labels[engine][block] = None
            self.aux[engine][block] = None

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        labels, aux = self.labels[engine], self.aux[engine]
        return all(labels[block] is None and aux[block] is None for block in blocks)

    def verify(self, engine: str, room: ReceiverRoom) -> str:
        staged = self.staged.get((engine, room.room_id), {})
        covered = 0
        for piece in sorted(room.pieces, key=lambda p: p.sent_tokens):
            nblocks = -(-piece.tokens // self.block_size)
            if piece.blocks:
                labels = tuple(self.labels[engine][b] for b in piece.blocks[:nblocks])
                aux = self.aux[engine][piece.blocks[0]]
            else:
                labels, aux = staged[piece.sent_tokens]
            expected = tuple(
                (room.room_id, piece.sent_tokens + i * self.block_size) for i in range(nblocks)
            )
            if piece.sent_tokens != covered or labels != expected:
                return f"piece at {piece.sent_tokens} holds {labels}, expected {expected}"
            if covered == 0 and aux != (room.room_id, self.totals[room.room_id]):
                return f"first block's aux is {aux}"
            covered += piece.tokens
        if covered != self.totals[room.room_id]:
            return f"pieces cover {covered} of {self.totals[room.room_id]} tokens"
        return ""

    def kill(self, engine: str) -> None:
        self.dead.add(engine)

    def snapshot(self) -> tuple[Any, ...]:
        return (
            {e: list(v) for e, v in self.labels.items()},
            {e: list(v) for e, v in self.aux.items()},
            {k: dict(v) for k, v in self.staged.items()},
            set(self.dead),
        )

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        labels, aux, staged, dead = snapshot
        self.labels = {e: list(v) for e, v in labels.items()}
        self.aux = {e: list(v) for e, v in aux.items()}
        self.staged = {k: dict(v) for k, v in staged.items()}
        self.dead = set(dead)

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(tuple(v) for v in self.labels.values()),
            tuple(tuple(v) for v in self.aux.values()),
            tuple(sorted((k, tuple(sorted(v.items()))) for k, v in self.staged.items())),
        )


class ByteData:
    """Real bytes: ``MetadataBuffers`` per engine, writes planned by ``plan_segments`` and
    copied by ``InprocDataTransport`` (failures through its fault hook), spills staged and
    results assembled as ``ReceiverEngine`` does, freed blocks poisoned with the canary."""

    def __init__(self, config: SimConfig, seed: int) -> None:
        self.seed = seed
        geometry = {SENDER: config.sender_blocks} | dict.fromkeys(
            config.receiver_names, config.receiver_blocks
        )
        self.layouts = {
            engine: BufferLayout(n, config.block_size, config.hidden_size)
            for engine, n in geometry.items()
        }
        self.network = InprocNetwork()
        self.buffers = {engine: MetadataBuffers(layout) for engine, layout in self.layouts.items()}
        self.transports: dict[str, InprocDataTransport] = {}
        for engine, buffers in self.buffers.items():
            transport = self.transports[engine] = InprocDataTransport(self.network, engine)
            for address, length in buffers.memory_ranges():
                transport.register(address, length)
            buffers.poison()
        self.regions = {engine: buffers.regions() for engine, buffers in self.buffers.items()}
        self.expected: dict[int, EmbeddingPayload] = {}
        self.staged: dict[RoomKey, dict[int, EmbeddingPayload]] = {}
        self.aux: dict[RoomKey, tuple[int, int]] = {}

    def payload(self, room: int, total_tokens: int) -> object:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + room)
        payload = random_payload(total_tokens, self.layouts[SENDER], generator)
        self.expected[room] = payload
        return payload

    def transmit(self, message: RoomMessage) -> RoomMessage | None:
        try:
            decoded = decode(encode(message))
        except WireError:
            return None
        assert isinstance(decoded, ROOM_MESSAGES)
        return decoded

    def store(self, room: int, blocks: Sequence[int], payload: object) -> None:
        assert isinstance(payload, EmbeddingPayload)
        self.buffers[SENDER].store(blocks, payload)

    def write(self, write: PendingWrite, ok: bool) -> WriteResult:
        piece = write.piece
        if piece.receiver not in self.layouts:
            return WriteResult(False, f"receiver {piece.receiver} is not registered")
        try:
            segments = plan_segments(
                self.regions[SENDER],
                self.regions[piece.receiver],
                self.layouts[SENDER],
                piece.src_blocks,
                piece.dst_blocks,
                piece.tokens,
                with_aux=piece.with_aux,
                remote_num_blocks=self.layouts[piece.receiver].num_blocks,
            )
        except ValueError as exc:
            return WriteResult(False, f"cannot plan write: {exc}")
        if not ok:
            self.network.faults.fail_next_writes(1)
        return self.transports[SENDER].write(piece.receiver, segments)

    def spill(self, engine: str, room: int, piece: SpillPiece) -> None:
        buffers = self.buffers[engine]
        if piece.sent_tokens == 0:
            self.aux[(engine, room)] = buffers.read_aux(piece.blocks[0])
        staged = stage_piece(buffers, piece.blocks, piece.tokens)
        self.staged.setdefault((engine, room), {})[piece.sent_tokens] = staged

    def poison(self, engine: str, blocks: Sequence[int]) -> None:
        if blocks:
            self.buffers[engine].poison(blocks)

    def canary_intact(self, engine: str, blocks: Sequence[int]) -> bool:
        return not blocks or self.buffers[engine].is_poisoned(blocks)

    def verify(self, engine: str, room: ReceiverRoom) -> str:
        buffers = self.buffers[engine]
        staged = self.staged.get((engine, room.room_id), {})
        pieces = [
            StoredPiece(p.sent_tokens, p.tokens, blocks=p.blocks)
            if p.blocks
            else StoredPiece(p.sent_tokens, p.tokens, staged=staged[p.sent_tokens])
            for p in room.pieces
        ]
        first = min(room.pieces, key=lambda p: p.sent_tokens)
        total, delta = self.aux.get((engine, room.room_id)) or buffers.read_aux(first.blocks[0])
        if total != room.total_tokens:
            return f"aux says {total} tokens, the sender said {room.total_tokens}"
        try:
            result = assemble(buffers, pieces, total, delta)
        except ValueError as exc:
            return str(exc)
        return "" if result.equals(self.expected[room.room_id]) else "bytes differ from the payload"

    def kill(self, engine: str) -> None:
        self.transports[engine].close()


# -- the allocator as the reference model sees it -----------------------------------


class TrackedAllocator:
    """The real ``FreeListAllocator`` (LIFO: freed blocks come straight back, so every
    resume can reuse them), with each alloc and free reported to the world, which records
    the owner, checks frees against it, and checks the canary of blocks handed out."""

    def __init__(self, world: World, engine: str, inner: FreeListAllocator) -> None:
        self.world = world
        self.engine = engine
        self.inner = inner

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def total_blocks(self) -> int:
        return self.inner.total_blocks

    @property
    def free_blocks(self) -> int:
        return self.inner.free_blocks

    def alloc(self, num_tokens: int) -> list[int] | None:
        blocks = self.inner.alloc(num_tokens)
        if blocks is not None:
            self.world._allocated(self.engine, blocks)
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        self.world._freeing(self.engine, blocks)
        self.inner.free(blocks)


# -- the world -----------------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    """Everything ``World.restore`` needs to put the world back (the explorer's frontier)."""

    now: float
    rooms: dict[RoomKey, Room]
    room_keys: dict[RoomKey, tuple[Any, ...]]
    members: dict[int, tuple[str, ...]]
    totals: dict[int, int]
    payloads: dict[int, object]
    allocators: dict[str, dict[str, Any]]
    queues: dict[str, tuple[tuple[int, Ask], ...]]
    queued: dict[str, list[int]]
    owners: dict[str, dict[int, int]]
    in_flight: list[Envelope]
    writes: list[PendingWrite]
    handed: set[int]
    tainted: set[int]
    dead: set[str]
    told: set[tuple[str, str]]
    hogs: dict[str, list[int]]
    budget: Budget
    data: tuple[Any, ...]


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
        sizes = {SENDER: config.sender_blocks} | dict.fromkeys(
            config.receiver_names, config.receiver_blocks
        )
        self.allocators = {
            engine: TrackedAllocator(self, engine, FreeListAllocator(n, config.block_size))
            for engine, n in sizes.items()
        }
        # Each engine's memory queue, served after every move as the runtime serves it
        # after every pump iteration.
        self.pools: dict[str, FairPool[int]] = {
            engine: FairPool(allocator) for engine, allocator in self.allocators.items()
        }
        # The reference model of fairness: rooms in the order they began to wait. No room
        # may get blocks while one that began to wait before it still waits.
        self.queued: dict[str, list[int]] = {engine: [] for engine in self.engines}
        # The reference model: who owns each allocated block, per engine.
        self.owners: dict[str, dict[int, int]] = {engine: {} for engine in self.engines}
        self.rooms: dict[RoomKey, Room] = {}
        self.members: dict[int, tuple[str, ...]] = {}  # room id -> its receivers
        self.totals: dict[int, int] = {}
        self.payloads: dict[int, object] = {}  # what the sender's scheduler will hand over
        self.in_flight: list[Envelope] = []  # in sending order
        self.writes: list[PendingWrite] = []  # in starting order
        self.handed: set[int] = set()  # rooms whose payload the sender has
        self.tainted: set[int] = set()
        self.dead: set[str] = set()
        self.told: set[tuple[str, str]] = set()  # (engine, peer) declared lost there
        self.hogs: dict[str, list[int]] = {engine: [] for engine in self.engines}
        self._owner: int | None = None  # the room allocating right now
        # Rooms may be shared with snapshots; ``_run`` clones one before its first event.
        self._owned: set[RoomKey] = set()
        self._room_keys: dict[RoomKey, tuple[Any, ...]] = {}  # cache for ``key``
        self._freed: list[tuple[str, list[int]]] = []  # to poison once actions ran

    # -- moves ---------------------------------------------------------------------
    def apply(self, move: Move) -> None:
        """Carry out ``move``, then check every invariant (raises ``Violation``)."""
        match move:
            case OpenRoom():
                self._open(move)
            case HandPayload(room=room):
                self.handed.add(room)
                self._run((SENDER, room), PayloadReady(self.totals[room]))
            case Deliver(envelope=envelope):
                self.in_flight.remove(envelope)
                self._deliver(envelope)
            case Duplicate(envelope=envelope):
                self._spend(dups=1)
                self.in_flight.append(envelope)
            case Drop(envelope=envelope):
                self.in_flight.remove(envelope)
                self.tainted.add(envelope.message.room)
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
                self.tainted.update(self._rooms_with(engine))
                self.data.kill(engine)
            case LosePeer(engine=engine, peer=peer):
                self._lose_peer(engine, peer)
            case Hog(engine=engine, tokens=tokens):
                with self._acting_for(HOG):
                    blocks = self.allocators[engine].alloc(tokens)
                self.hogs[engine].extend(blocks or ())
            case Unhog(engine=engine):
                with self._acting_for(HOG):
                    self.allocators[engine].free(self.hogs[engine])
                self.hogs[engine] = []
                self._poison_freed()
            case Inject(engine=engine, room=room, event=event, fault=fault):
                if fault:
                    self.tainted.add(room)
                self._run((engine, room), event)
            case Forge(envelope=envelope, fault=fault):
                if fault:
                    self.tainted.add(envelope.message.room)
                self.in_flight.append(envelope)
        if self.auto_release:
            for key in [key for key, room in self.live_rooms() if _releasable(room)]:
                self._run(key, Released())
        self._serve_memory()
        self.check()

    def _spend(self, **costs: int) -> None:
        self.budget = dataclasses.replace(
            self.budget, **{name: getattr(self.budget, name) - n for name, n in costs.items()}
        )

    def _open(self, move: OpenRoom) -> None:
        room, members = move.room, move.receivers
        if room in self.members or not members or len(members) != len(move.initial_tokens):
            raise ValueError(f"cannot open {move}")
        self.members[room] = members
        self.totals[room] = move.total_tokens
        self.payloads[room] = self.data.payload(room, move.total_tokens)
        if any(self._never_fits(move.total_tokens, initial) for initial in move.initial_tokens):
            self.tainted.add(room)  # refused, as the spec says: it may (must) fail
        timeouts = self.config.timeouts
        self.rooms[(SENDER, room)] = SenderRoom(room, self.pools[SENDER], timeouts, self.now)
        self._owned.add((SENDER, room))
        for receiver, initial in zip(members, move.initial_tokens, strict=True):
            self._owned.add((receiver, room))
            self.rooms[(receiver, room)] = ReceiverRoom(
                room,
                SENDER,
                self.pools[receiver],
                initial,
                timeouts,
                self.now,
                self.config.policy,
                len(members),
            )
            self._run((receiver, room), PeerReady())

    def _never_fits(self, total: int, initial: int) -> bool:
        """Whether one of the room's pieces can never be granted: a payload larger than
        the sender's pool, or, with partial pieces off, a piece larger than a receiver's."""
        config, policy = self.config, self.config.policy
        size = config.block_size
        if blocks_needed(total, size) > config.sender_blocks:
            return True
        kept_in_place = policy.spill is SpillMode.NEVER_SPILL and initial < total
        if kept_in_place and blocks_needed(total, size) > config.receiver_blocks:
            return True
        received, ask = 0, initial
        while not policy.allow_partial:
            if blocks_needed(ask, size) > config.receiver_blocks:
                return True
            received += min(total - received, blocks_needed(ask, size) * size)
            if received >= total:
                break
            ask = total - received
            if policy.max_resume_tokens:
                ask = min(ask, policy.max_resume_tokens)
        return False

    def _deliver(self, envelope: Envelope) -> None:
        if envelope.dst in self.dead:
            return
        message = self.data.transmit(envelope.message)
        if message is None:
            return  # the receiving engine's wire rejects it
        event = _event_at(envelope.dst, envelope.src, message, self.engines)
        key = (envelope.dst, message.room)
        if event is not None and key in self.rooms:
            self._run(key, event)

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
                    raise Violation(f"{_side(key)} is still {after.state} past its deadline")

    def _lose_peer(self, engine: str, peer: str) -> None:
        if peer not in self.dead:
            self._spend(losses=1)
        self.told.add((engine, peer))
        self.tainted.update(self._rooms_with(engine) & self._rooms_with(peer))
        for key in sorted(key for key, _ in self.live_rooms() if key[0] == engine):
            self._run(key, PeerLost(peer))

    def _rooms_with(self, engine: str) -> set[int]:
        """Rooms that ``engine`` takes part in."""
        return {room for room, members in self.members.items() if engine in (SENDER, *members)}

    # -- running a room --------------------------------------------------------------
    def _run(self, key: RoomKey, event: Event) -> None:
        """One event into one side of a room, and its actions carried out in order."""
        if key not in self._owned:
            self.rooms[key] = _clone_slots(self.rooms[key])
            self._owned.add(key)
        self._room_keys.pop(key, None)
        room = self.rooms[key]
        before = room.state
        with self._acting_for(key[1]):
            actions = room.handle(event, self.now)
        if room.crash:
            raise Violation(f"{_side(key)} crashed on {event!r}: {room.crash}")
        forward = room.state == FAILED or KVPoll[room.state] > KVPoll[before]
        if before != room.state and not (before in ACTIVE and forward):
            raise Violation(f"{_side(key)} went from {before} to {room.state}")
        for action in actions:
            self._carry_out(key, action)
        self._poison_freed()
        if isinstance(room, ReceiverRoom) and room.state == SUCCESS and before != SUCCESS:
            problem = self.data.verify(key[0], room)
            if problem:
                raise Violation(f"{_side(key)} succeeded with a wrong result: {problem}")

    def _carry_out(self, key: RoomKey, action: Action) -> None:
        engine, room = key
        if isinstance(action, SendMessage):
            message = action.message
            if not isinstance(message, ROOM_MESSAGES):
                raise Violation(f"{_side(key)} sent {message!r}, not a room message")
            self.in_flight.append(Envelope(engine, action.peer, message, self.now))
        elif isinstance(action, WritePiece):
            self.writes.append(PendingWrite(room, action, self.now))
        elif isinstance(action, StorePayload):
            self.data.store(room, action.blocks, self.payloads[room])
        elif isinstance(action, WaitForMemory):
            self.queued[engine].append(room)
            self.pools[engine].wait(room, action.tokens, action.floor_tokens)
        elif isinstance(action, StopWaiting):
            self.queued[engine].remove(room)
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
                    with self._acting_for(room):
                        blocks = pool.grant(room)
                    self._run((engine, room), MemoryGranted(tuple(blocks)))
                    granted = True

    @contextmanager
    def _acting_for(self, owner: int) -> Iterator[None]:
        """Attribute the allocations and frees of the body to room ``owner``."""
        self._owner = owner
        try:
            yield
        finally:
            self._owner = None

    def _allocated(self, engine: str, blocks: Sequence[int]) -> None:
        owner = self._owner
        if owner is None:
            raise Violation(f"{engine} allocated {blocks} outside any room's event")
        queued = self.queued[engine]
        if owner != HOG and queued:
            if queued[0] != owner:
                raise Violation(
                    f"room {owner} got {engine} blocks {list(blocks)} while room "
                    f"{queued[0]} waited ahead of it"
                )
            del queued[0]
        owners = self.owners[engine]
        just_freed = {b for e, freed in self._freed if e == engine for b in freed}
        for block in blocks:
            if block in owners:
                raise Violation(f"{engine} handed out block {block}, owned by room {owners[block]}")
            owners[block] = owner
        fresh = [block for block in blocks if block not in just_freed]
        if not self.data.canary_intact(engine, fresh):
            raise Violation(f"canary of {engine} blocks {fresh} overwritten while they were free")

    def _freeing(self, engine: str, blocks: Sequence[int]) -> None:
        owners = self.owners[engine]
        for block in blocks:
            if owners.get(block) != self._owner:
                raise Violation(
                    f"room {self._owner} freed {engine} block {block}, owned by "
                    f"{owners.get(block, 'nobody')}"
                )
            del owners[block]
        self._freed.append((engine, list(blocks)))

    def _poison_freed(self) -> None:
        """Poison what was freed, once the actions ran: a ``SpillPiece`` copies blocks the
        room freed while handling the event, before any write can reach them."""
        for engine, blocks in self._freed:
            owners = self.owners[engine]
            self.data.poison(engine, [block for block in blocks if block not in owners])
        self._freed.clear()

    # -- what may happen next ----------------------------------------------------------
    def live_rooms(self) -> Iterator[tuple[RoomKey, Room]]:
        return ((key, room) for key, room in self.rooms.items() if key[0] not in self.dead)

    def time_limit(self) -> float:
        """How far the clock may go before a pending message or write must be settled."""
        latency, write = self.config.max_latency_s, self.config.max_write_s
        limits = [e.sent_at + latency for e in self.in_flight]
        limits += [w.issued_at + write for w in self.writes]
        return min(limits, default=math.inf)

    def next_time(self) -> float:
        """The next time anything is due: a room's wakeup, or the time limit."""
        wakeup = min((room.wakeup for _, room in self.live_rooms()), default=math.inf)
        return min(wakeup, self.time_limit())

    def legal_moves(self) -> list[Move]:
        """Moves a healthy system makes: hand over payloads, deliver the oldest message of
        each channel, finish the oldest write to each receiver, declare dead peers lost,
        release finished rooms, and let time pass once nothing is in flight or owed."""
        moves: list[Move] = []
        if SENDER not in self.dead:
            moves += [HandPayload(room) for room in self.members if room not in self.handed]
        moves += [Deliver(e) for e in _oldest(self.in_flight, lambda e: (e.src, e.dst))]
        moves += [FinishWrite(w, True) for w in _oldest(self.writes, _writer)]
        moves += [
            LosePeer(engine, peer)
            for peer in sorted(self.dead)
            for engine in self.engines
            if engine not in self.dead
            and (engine, peer) not in self.told
            and self._rooms_with(engine) & self._rooms_with(peer)
        ]
        if not self.auto_release:
            moves += [Release(*key) for key, room in self.live_rooms() if _releasable(room)]
        if not self.owed():
            moves += self._advance_move()
        return moves

    def fault_moves(self, kind: str) -> list[Move]:
        """Moves of one fault kind (see ``FAULTS``) that the budget still allows."""
        budget = self.budget
        distinct = list(dict.fromkeys(self.in_flight))
        if kind == "reorder":
            heads = set(_oldest(self.in_flight, lambda e: (e.src, e.dst)))
            first_writes = set(_oldest(self.writes, _writer))
            delivered: list[Move] = [Deliver(e) for e in distinct if e not in heads]
            return delivered + [FinishWrite(w, True) for w in self.writes if w not in first_writes]
        if kind == "dup" and budget.dups > 0:
            return [Duplicate(e) for e in distinct]
        if kind == "drop" and budget.drops > 0:
            return [Drop(e) for e in distinct]
        if kind == "abort" and budget.aborts > 0:
            active = [key for key, room in self.live_rooms() if not room.terminal]
            moves: list[Move] = [SchedulerAbort(*key) for key in active]
            return moves if self.auto_release else moves + [Release(*key) for key in active]
        if kind == "fail" and budget.failures > 0:
            return [FinishWrite(w, False) for w in _oldest(self.writes, _writer)]
        if kind == "kill" and budget.kills > 0:
            return [Kill(engine) for engine in self.engines if engine not in self.dead]
        if kind == "lose" and budget.losses > 0:
            return [
                LosePeer(engine, peer)
                for engine in self.engines
                for peer in self.engines
                if engine != peer
                and not {engine, peer} & self.dead
                and SENDER in (engine, peer)
                and self._rooms_with(engine) & self._rooms_with(peer)
            ]
        if kind == "delay" and self.owed():
            # To the next time anything is due, or a step of the latency bound short of
            # it: what is owed may then happen between two deadlines, not only at one.
            step = self.now + self.config.max_latency_s
            return self._advance_move() + ([Advance(step)] if step < self.next_time() else [])
        return []

    def moves(self, faults: Iterable[str]) -> list[Move]:
        """Legal moves and those of each fault kind in ``faults``."""
        moves = self.legal_moves()
        for kind in faults:
            moves += self.fault_moves(kind)
        return moves

    def owed(self) -> bool:
        """Whether a healthy system still has something to do before time must pass."""
        unhanded = SENDER not in self.dead and not self.handed.issuperset(self.members)
        return bool(self.in_flight or self.writes or unhanded)

    def _advance_move(self) -> list[Move]:
        to = self.next_time()
        return [Advance(to)] if self.now < to < math.inf else []

    # -- invariants ----------------------------------------------------------------------
    def check(self) -> None:
        """Every invariant that must hold between moves; raises ``Violation``."""
        for key, room in self.live_rooms():
            if room.state in ACTIVE and not room.wakeup <= room.deadline:
                raise Violation(f"{_side(key)} is {room.state} with no deadline")
            if room.wakeup <= self.now:
                raise Violation(f"{_side(key)} wants a Tick at {room.wakeup}, now is {self.now}")
        for engine in self.engines:
            if engine not in self.dead:
                self._check_ownership(engine)
        self._check_writes()
        self._check_outcomes()

    def _check_ownership(self, engine: str) -> None:
        """Each allocated block is held by exactly the room the allocator gave it to."""
        held: dict[int, int] = dict.fromkeys(self.hogs[engine], HOG)
        for (side, room_id), room in self.rooms.items():
            if side == engine:
                for block in _held_blocks(room):
                    if block in held:
                        raise Violation(
                            f"{engine} block {block} is held by rooms {held[block]} and {room_id}"
                        )
                    held[block] = room_id
        owners = self.owners[engine]
        if held != owners:
            leaked = {b: r for b, r in owners.items() if held.get(b) != r}
            foreign = {b: r for b, r in held.items() if owners.get(b) != r}
            raise Violation(
                f"{engine} blocks: allocated but not held (leaked) {leaked}, "
                f"held but not allocated to the holder {foreign}"
            )
        if self.allocators[engine].inner.used_blocks != len(owners):
            raise Violation(f"{engine} allocator and reference model disagree on used blocks")

    def _check_writes(self) -> None:
        """A pending write may land at any moment: its blocks must stay its room's."""
        for write in self.writes:
            piece = write.piece
            targets = [(SENDER, piece.src_blocks), (piece.receiver, piece.dst_blocks)]
            for engine, blocks in targets:
                if engine in self.dead or engine not in self.owners:
                    continue
                for block in blocks:
                    owner = self.owners[engine].get(block)
                    if owner != write.room:
                        raise Violation(
                            f"write of room {write.room} at {piece.sent_tokens} still pending "
                            f"on {engine} block {block}, now "
                            f"{'free' if owner is None else f'owned by {owner}'}"
                        )

    def _check_outcomes(self) -> None:
        """Rooms no fault touched never fail, and never stall with nothing in flight."""
        busy = {e.message.room for e in self.in_flight} | {w.room for w in self.writes}
        for room_id, members in self.members.items():
            if room_id in self.tainted:
                continue
            sides = [self.rooms[(engine, room_id)] for engine in (SENDER, *members)]
            for side in sides:
                if side.state == FAILED:
                    raise Violation(f"room {room_id} failed with no fault: {side.reason}")
            if room_id in busy or room_id not in self.handed or all(s.terminal for s in sides):
                continue
            states = ", ".join(f"{_describe_room(s)}" for s in sides)
            waiting = [
                engine
                for engine, side in zip((SENDER, *members), sides, strict=True)
                if _waiting_for_memory(side)
            ]
            if not waiting:
                raise Violation(f"room {room_id} is stuck, nothing in flight: {states}")
            if self._settled() and self._progress_promised():
                raise Violation(
                    f"deadlock: room {room_id} waits for memory on {', '.join(waiting)} and "
                    f"nothing can free any: {states}; queues {self._queues_text()}"
                )

    def _settled(self) -> bool:
        """Nothing left for a healthy system to do but let time pass."""
        return not self.owed() and not any(_releasable(room) for _, room in self.live_rooms())

    def _progress_promised(self) -> bool:
        """Whether the spec promises that rooms waiting for memory get it without time
        passing (its progress rule): no engine's memory is held by others (hogs) or by
        rooms a fault touched (their deadlines free it), ``NEVER_SPILL`` rooms do not
        keep pieces while they wait, and the sender's memory holds every payload of its
        open rooms."""
        if self.dead or any(self.hogs.values()):
            return False
        if self.config.policy.spill is SpillMode.NEVER_SPILL:
            return False
        if any(
            room_id in self.tainted and bool(list(_held_blocks(room)))
            for (_, room_id), room in self.rooms.items()
        ):
            return False  # a room a fault touched may hold blocks until its deadline
        payload_blocks = sum(
            blocks_needed(self.totals[room], self.config.block_size)
            for room, members in self.members.items()
            if not all(self.rooms[(e, room)].terminal for e in (SENDER, *members))
        )
        return payload_blocks <= self.config.sender_blocks

    def _queues_text(self) -> str:
        return " ".join(
            f"{engine}:{[room for room, _ in pool.queue()]}"
            for engine, pool in self.pools.items()
            if pool.waiting
        )

    def final_check(self) -> None:
        """Once everything settled: every room finished, every block back."""
        for key, room in self.live_rooms():
            if not room.finished:
                raise Violation(f"{_side(key)} never finished: {_describe_room(room)}")
        for engine in self.engines:
            allocator = self.allocators[engine].inner
            if engine not in self.dead and allocator.used_blocks != len(self.hogs[engine]):
                raise Violation(f"{engine} leaked blocks {sorted(self.owners[engine])}")

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
            releasable = [key for key, room in self.live_rooms() if _releasable(room)]
            if releasable:
                self.apply(Release(*releasable[0]))
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
            dict(self.totals),
            dict(self.payloads),
            {e: _allocator_state(a.inner) for e, a in self.allocators.items()},
            {e: pool.queue() for e, pool in self.pools.items()},
            {e: list(q) for e, q in self.queued.items()},
            {e: dict(o) for e, o in self.owners.items()},
            list(self.in_flight),
            list(self.writes),
            set(self.handed),
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
        self.totals = dict(snapshot.totals)
        self.payloads = dict(snapshot.payloads)
        for engine, state in snapshot.allocators.items():
            vars(self.allocators[engine].inner).update(_copy_containers(state))
        for engine, queue in snapshot.queues.items():
            self.pools[engine].restore_queue(queue)
        self.queued = {e: list(q) for e, q in snapshot.queued.items()}
        self.owners = {e: dict(o) for e, o in snapshot.owners.items()}
        self.in_flight = list(snapshot.in_flight)
        self.writes = list(snapshot.writes)
        self.handed = set(snapshot.handed)
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
        now = self.now
        cache = self._room_keys
        for key, room in self.rooms.items():
            if key not in cache:
                cache[key] = _room_key(room, now)
        rooms = tuple(sorted(cache.items()))
        channels: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for e in self.in_flight:
            channels.setdefault((e.src, e.dst), []).append(
                (_message_key(e.message), e.sent_at - now)
            )
        writers: dict[str, list[tuple[Any, ...]]] = {}
        for w in self.writes:
            writers.setdefault(_writer(w), []).append((w.room, w.piece, w.issued_at - now))
        arrange: Callable[[list[tuple[Any, ...]]], tuple[Any, ...]] = (
            tuple if ordered else _sorted_tuple
        )
        return (
            rooms,
            tuple(tuple(a.inner._stack) for a in self.allocators.values()),
            tuple(pool.queue() for pool in self.pools.values()),
            tuple(sorted((channel, arrange(items)) for channel, items in channels.items())),
            tuple(sorted((writer, arrange(items)) for writer, items in writers.items())),
            frozenset(self.handed),
            frozenset(self.tainted),
            frozenset(self.dead),
            frozenset(self.told),
            tuple(tuple(h) for h in self.hogs.values()),
            self.budget,
            self.data.key(),
        )

    def summary(self) -> str:
        """One line: the clock and every side of every room."""
        sides = " ".join(
            f"{_side(key)}={_describe_room(room)}{'(dead)' if key[0] in self.dead else ''}"
            for key, room in sorted(self.rooms.items())
        )
        return f"t={self.now:g} {sides} in-flight={len(self.in_flight)} writes={len(self.writes)}"


# -- helpers -------------------------------------------------------------------------


def _event_at(
    engine: str, peer: str, message: RoomMessage, registered: tuple[str, ...]
) -> Event | None:
    """The event an engine's runtime makes of a message from ``peer`` (None: it rejects
    the message, as ``SenderEngine.on_message`` / ``ReceiverEngine.on_message`` do: a
    sender takes room messages from registered receivers only)."""
    if engine == SENDER and peer not in registered:
        return None
    routed = room_event("sender" if engine == SENDER else "receiver", peer, message)
    return None if routed is None else routed[1]


def _writer(write: PendingWrite) -> str:
    """Writes to one receiver run in order on its writer thread (``SenderEngine._writer``)."""
    return write.piece.receiver


def _oldest(items: list[Any], channel: Callable[[Any], object]) -> list[Any]:
    """The first item of each channel, in list order."""
    seen: set[object] = set()
    first = []
    for item in items:
        name = channel(item)
        if name not in seen:
            seen.add(name)
            first.append(item)
    return first


def _releasable(room: Room) -> bool:
    assert isinstance(room, (SenderRoom, ReceiverRoom))
    return room.terminal and not room.released


def _held_blocks(room: Room) -> Iterable[int]:
    if isinstance(room, SenderRoom):
        return room.src_blocks
    assert isinstance(room, ReceiverRoom)
    return room.held_blocks()


def _waiting_for_memory(room: Room) -> bool:
    """Back-pressure: the room waits for blocks (a legitimate reason to sit idle)."""
    assert isinstance(room, (SenderRoom, ReceiverRoom))
    return room.state in ACTIVE and room.waiting_for_memory


def _side(key: RoomKey) -> str:
    return f"{key[0]}#{key[1]}"


def _describe_room(room: Room) -> str:
    if isinstance(room, ReceiverRoom):
        extra = f"{room.received}/{room.total_tokens or '?'}"
        if room.quarantine:
            extra += f" quarantine={room.quarantine}"
    else:
        assert isinstance(room, SenderRoom)
        extra = ",".join(f"{p}:{g.written}" for p, g in room.receivers.items())
    return f"{room.state}[{extra}]"


def _message_key(message: RoomMessage) -> tuple[Any, ...]:
    if isinstance(message, Abort):
        return ("abort", message.room)  # the reason is text only
    return (type(message).__name__, *msgspec.structs.astuple(message))


def _sorted_tuple(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(sorted(items, key=repr))


_SLOTS: dict[type, tuple[str, ...]] = {}
# Slots that never steer a room's behaviour between events: the outbox (empty between
# events), the last verdict, texts, counters, constants of the room, and the times that
# ``_room_key`` takes relative to the clock itself.
_UNKEYED = frozenset(
    {"_actions", "_verdict", "verdict_reason", "reason", "resumes", "ignored", "now"}
    | {"timeouts", "memory", "policy", "room_id", "sender", "deadline", "quarantine_until"}
)


def _slots(cls: type) -> tuple[str, ...]:
    names = _SLOTS.get(cls)
    if names is None:
        names = _SLOTS[cls] = tuple(
            name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())
        )
    return names


def _clone_slots(obj: Any) -> Any:
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
            value = {k: _clone_slots(v) if _mutable(v) else v for k, v in value.items()}
        object.__setattr__(clone, name, value)
    return clone


def _mutable(value: Any) -> bool:
    """Slotted and unhashable: a mutable dataclass such as ``ReceiverProgress``."""
    return type(value).__hash__ is None and hasattr(type(value), "__slots__")


def _room_key(room: Room, now: float) -> tuple[Any, ...]:
    """The room's state, its times relative to ``now`` (the deadline only while active,
    the quarantine's end only while there is one)."""
    values: list[Any] = [room.wakeup - now if room.wakeup < math.inf else None]
    values.append(room.deadline - now if room.state in ACTIVE else None)
    if isinstance(room, ReceiverRoom) and room.quarantine:
        values.append(room.quarantine_until - now)
    horizon = _longest_timeout(room.timeouts)
    for name in _slots(type(room)):
        if name not in _UNKEYED:
            values.append(_freeze(getattr(room, name), now, horizon))
    return tuple(values)


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


def _allocator_state(allocator: FreeListAllocator) -> dict[str, Any]:
    return _copy_containers(vars(allocator))


def _copy_containers(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.copy() if isinstance(v, (list, bytearray)) else v for k, v in state.items()}


def describe(move: Move) -> str:
    """A move as one line of a trace."""
    match move:
        case Deliver(envelope=e) | Duplicate(envelope=e) | Drop(envelope=e) | Forge(envelope=e):
            verb = type(move).__name__.lower()
            return f"{verb} {e.src}->{e.dst} {_message_text(e.message)}"
        case FinishWrite(write=w, ok=ok):
            p = w.piece
            return (
                f"write {'lands' if ok else 'FAILS'}: room {w.room} tokens "
                f"[{p.sent_tokens}, {p.sent_tokens + p.tokens}) -> {p.receiver} {p.dst_blocks}"
            )
        case Inject(engine=engine, room=room, event=event):
            return f"inject {event!r} into {engine}#{room}"
    return repr(move)


def _message_text(message: RoomMessage) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(message).items())
    return f"{type(message).__name__}({fields})"


# -- mutants: deliberately broken machines the tools must catch -----------------------


def _dedup_on_blocks(original: Callable[..., None]) -> Callable[..., None]:
    """The seeds' wrong dedup rule: a request naming the blocks of the last one is taken
    for a duplicate, though the allocator hands the same blocks back after a free."""

    def classify(room: SenderRoom, event: RequestReceived) -> None:
        known = room.receivers.get(event.receiver)
        if known is not None and event.request.blocks == known.blocks:
            room._decide(Verdict.STALE, "same blocks as the last request")
        else:
            original(room, event)

    return classify


def _no_resume_request(_original: Callable[..., None]) -> Callable[..., None]:
    """The receiver takes a short piece and never asks for the rest."""

    def take(room: ReceiverRoom, event: PieceArrived) -> None:
        room._take_piece(event)
        room.resumes += 1

    return take


def _no_resume_write(original: Callable[..., None]) -> Callable[..., None]:
    """The seeds' bug #1: a resume updates the room but enqueues no write."""

    def accept(room: SenderRoom, event: RequestReceived) -> None:
        progress = room.receivers.get(event.receiver)
        if progress is None:
            original(room, event)
            return
        progress.requested_at = event.request.sent_tokens
        progress.blocks = event.request.blocks
        progress.allocated_tokens = event.request.allocated_tokens
        progress.accepted_at = room.now
        room.resumes += 1
        room._progressed()

    return accept


def _serve_stale_requests(original: Callable[..., None]) -> Callable[..., None]:
    """The sender serves a request however long it waited (no request ever expires)."""

    def start_writes(room: SenderRoom) -> None:
        for progress in room.receivers.values():
            progress.accepted_at = room.now
        original(room)

    return start_writes


def _quarantine_from_failure(original: Callable[..., None]) -> Callable[..., None]:
    """The receiver counts its grace period from its failure, not from the last moment a
    write for its request may start."""

    def enter_failed(room: ReceiverRoom, event: Event) -> None:
        original(room, event)
        if room.quarantine:
            room.quarantine_until = room.now + room.timeouts.write_grace_s

    return enter_failed


def _lifo_ready(_original: Callable[..., Any]) -> Callable[..., Any]:
    """The memory queue serves the newest waiter first (a stack, not a queue)."""

    def ready(pool: FairPool[int]) -> int | None:
        queue = pool.queue()
        if not queue:
            return None
        waiter, ask = queue[-1]
        return waiter if pool.free_blocks >= ask.floor else None

    return ready


def _grant_any(original: Callable[..., Any]) -> Callable[..., Any]:
    """Grant ``ready``'s choice wherever it stands in the queue."""

    def grant(pool: FairPool[int], waiter: int) -> list[int]:
        queue = pool.queue()
        pool.restore_queue(
            [e for e in queue if e[0] == waiter] + [e for e in queue if e[0] != waiter]
        )
        blocks: list[int] = original(pool, waiter)
        return blocks

    return grant


def _hold_while_waiting(_original: Callable[..., Any]) -> Callable[..., Any]:
    """The receiver waits for memory keeping the pieces it holds (it never spills first)."""

    def take(room: ReceiverRoom, wanted: int, floor: int) -> list[int] | None:
        return room.memory.take(wanted, wanted) or room.memory.take(wanted, floor)

    return take


def _writes_wait_for_every_receiver(original: Callable[..., None]) -> Callable[..., None]:
    """The sender writes nothing until every receiver of the room has joined."""

    def start_writes(room: SenderRoom) -> None:
        if room.state != "Bootstrapping":
            original(room)

    return start_writes


Breaker: TypeAlias = Callable[[Callable[..., Any]], Callable[..., Any]]
MUTANTS: dict[str, tuple[tuple[type, str, Breaker], ...]] = {
    "dedup-on-blocks": ((SenderRoom, "_classify_request", _dedup_on_blocks),),
    "no-resume-request": ((ReceiverRoom, "_take_piece_and_resume", _no_resume_request),),
    "no-resume-write": ((SenderRoom, "_accept_request", _no_resume_write),),
    # Both halves of the fix for the use-after-free the explorer found, undone.
    "late-write": (
        (SenderRoom, "_start_writes", _serve_stale_requests),
        (ReceiverRoom, "_enter_failed", _quarantine_from_failure),
    ),
    # Memory pressure: the progress and fairness rules, each undone.
    "lifo-queue": ((FairPool, "ready", _lifo_ready), (FairPool, "grant", _grant_any)),
    "hold-while-waiting": ((ReceiverRoom, "_take", _hold_while_waiting),),
    "writes-wait-for-all": ((SenderRoom, "_start_writes", _writes_wait_for_every_receiver),),
}
"""name -> the (class, method, breaker) patches that make the broken machines; a breaker
makes the broken method from the original."""


@contextmanager
def mutant(name: str | None) -> Iterator[None]:
    """Run the body with the machines broken as ``MUTANTS[name]`` says (None: intact).
    The machines look callbacks up by name on each event, so patching the class works."""
    patches = MUTANTS[name] if name is not None else ()
    originals = [(cls, method, cls.__dict__[method]) for cls, method, _ in patches]
    for (cls, method, original), (_, _, breaker) in zip(originals, patches, strict=True):
        setattr(cls, method, breaker(original))
    try:
        yield
    finally:
        for cls, method, original in originals:
            setattr(cls, method, original)
