"""The encoder-side engine and the room handle its scheduler uses."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

from embxfer.buffers.allocator import BlockAllocator
from embxfer.buffers.layout import AUX_KIND
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.buffers.segments import plan_segments
from embxfer.config import EngineConfig
from embxfer.fsm.actions import Action, SendMessage, StorePayload, WritePiece
from embxfer.fsm.events import (
    AbortReceived,
    AbortRequested,
    Event,
    PayloadReady,
    Released,
    WriteFinished,
)
from embxfer.fsm.messages import (
    AbortAck,
    BufferRegion,
    Message,
    Register,
    RegisterAck,
)
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.routing import room_event
from embxfer.fsm.sender import SenderRoom
from embxfer.metrics import Metrics
from embxfer.runtime import Runtime, TransferFailed
from embxfer.transport.base import ControlChannel, DataTransport, Segment, WriteResult

LOG = logging.getLogger("embxfer.sender")

_PARKED_LIMIT = 65536  # room messages held for rooms the scheduler has not created yet


@dataclass(frozen=True)
class RemoteBuffers:
    """A registered receiver: where its blocks are, for one-sided writes."""

    session_id: str
    regions: tuple[BufferRegion, ...]
    num_blocks: int


class SenderEngine(Runtime[SenderRoom]):
    """Owns the encoder's buffers and rooms; writes pieces to receivers that ask."""

    role = "sender"

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
        super().__init__(
            config, control, data, clock, metrics, allocator=allocator, buffers=buffers
        )
        self.receivers: dict[str, RemoteBuffers] = {}
        self._writers: dict[str, _Writer] = {}
        self._parked: dict[int, list[tuple[float, Event]]] = {}
        self._parked_count = 0
        self._local_regions = [
            BufferRegion(kind, base, size) for kind, base, size in self.buffers.regions()
        ]

    def create_room(self, room_id: int) -> SenderHandle:
        """A room for one request; receivers join it by asking for pieces."""
        room = SenderRoom(room_id, self.memory, self.config.timeouts, self.clock())
        self.submit(lambda: self._adopt(room))
        return SenderHandle(self, room)

    def _adopt(self, room: SenderRoom) -> None:
        if self.adopt(room):
            for _, event in self._parked.pop(room.room_id, []):
                self._parked_count -= 1
                self.deliver(room, event)

    # -- inbound ---------------------------------------------------------------------
    def on_message(self, peer: str, message: Message) -> None:
        if isinstance(message, Register):
            self._register(peer, message)
            return
        routed = room_event("sender", peer, message)
        if routed is None:
            self.reject("unexpected_kind", peer, type(message).__name__)
            return
        room_id, event = routed
        room = self.rooms.get(room_id)
        forgotten = room is None and self.is_closed(room_id)
        if forgotten and isinstance(event, AbortReceived):
            # A receiver gave up on a room this engine finished and forgot (its last
            # notice was lost, in a partition say, after which this engine may have given
            # the receiver up too). A room is forgotten only once none of its writes is in
            # flight: say so, as the room would have, and the receiver frees the blocks it
            # holds against a late write. That fails nothing, whoever asks.
            self.control.send(peer, AbortAck(room_id))
        # Only a registered receiver can be in a room, so only one may ask or abort: a
        # stray peer guessing room ids must not fail other receivers' rooms.
        if peer not in self.receivers:
            self.reject("unregistered_peer", peer)
        elif room is not None:
            self.deliver(room, event)
        elif not forgotten:
            self._park(peer, room_id, event)
        elif not isinstance(event, AbortReceived):
            self.reject("closed_room", peer, room=room_id)

    def _park(self, peer: str, room_id: int, event: Event) -> None:
        """Hold a room's event for a room the scheduler has not created yet (it may be
        slower than the receiver); dropped after the bootstrap timeout."""
        if self._parked_count >= _PARKED_LIMIT:
            self.reject("park_full", peer, room=room_id)
            return
        self._parked.setdefault(room_id, []).append((self.clock(), event))
        self._parked_count += 1

    def _register(self, peer: str, message: Register) -> None:
        problem = self._geometry_problem(message)
        if problem:
            self.reject("bad_geometry", peer, problem)
            self.control.send(peer, RegisterAck(False, problem))
            return
        self.receivers[peer] = RemoteBuffers(
            message.session_id, message.regions, message.num_blocks
        )
        self.control.send(peer, RegisterAck(True))

    def _geometry_problem(self, message: Register) -> str:
        if message.block_size != self.layout.block_size:
            return f"block_size {message.block_size} != {self.layout.block_size}"
        theirs = {(r.kind, r.block_bytes) for r in message.regions}
        ours = {(r.kind, r.block_bytes) for r in self._local_regions}
        if theirs != ours:
            return f"buffer kinds/sizes {sorted(theirs)} != {sorted(ours)}"
        return ""

    # -- outbound --------------------------------------------------------------------
    def carry_out(self, room: SenderRoom, action: Action) -> None:
        if isinstance(action, SendMessage):
            self.control.send(action.peer, action.message)
        elif isinstance(action, StorePayload):
            assert isinstance(action.payload, EmbeddingPayload)
            self.buffers.store(action.blocks, action.payload)
        elif isinstance(action, WritePiece):
            self._write(room, action)
        else:
            raise TypeError(f"sender cannot carry out {action!r}")

    def _write(self, room: SenderRoom, action: WritePiece) -> None:
        def finished(result: WriteResult) -> None:
            nbytes = sum(s.length for s in segments) if result.ok else 0
            event = WriteFinished(action.receiver, action.sent_tokens, result.ok, result.reason)

            def on_pump() -> None:  # stats, like rooms, are touched on the pump thread only
                self.stats.bytes_moved(nbytes)
                self.deliver(room, event)

            self.submit(on_pump)

        peer = self.receivers.get(action.receiver)
        if peer is None:
            finished(WriteResult(False, f"receiver {action.receiver} is not registered"))
            return
        try:
            segments = plan_segments(
                self._local_regions,
                peer.regions,
                self.layout,
                action.src_blocks,
                action.dst_blocks,
                action.tokens,
                with_aux=action.with_aux,
                remote_num_blocks=peer.num_blocks,
            )
        except Exception as exc:  # e.g. blocks outside the receiver's declared geometry
            finished(WriteResult(False, f"cannot plan write: {exc}"))
            return
        job = _WriteJob(
            self.data.write,
            peer.session_id,
            segments,
            finished,
            wanted=lambda: self.receivers.get(action.receiver) == peer,
        )
        if self.config.write_threads:
            self._writer(action.receiver).submit(job)
        else:
            job.run()

    def _writer(self, peer: str) -> _Writer:
        """One thread per receiver: a stalled receiver holds up only its own writes."""
        writer = self._writers.get(peer)
        if writer is None:
            writer = self._writers[peer] = _Writer(f"embxfer-write-{len(self._writers)}")
        return writer

    def _shutdown_writers(self) -> None:
        for writer in self._writers.values():
            writer.shutdown()

    # -- peers and time --------------------------------------------------------------
    def active_peers(self) -> Iterable[str]:
        """Receivers that get heartbeats; those silent past the peer timeout are lost.

        A receiver still owed a piece of an open room must be alive; one that has all
        its tokens may go quiet (it has nothing left to ask) while the room waits on
        the other receivers, so its silence must not fail the room. Registered
        receivers heard from within the peer timeout get heartbeats as well (and are
        never lost for it): one may be waiting on a room this engine has not created
        yet, and must keep hearing from us meanwhile.
        """
        owed = {
            peer
            for room in self.rooms.values()
            if not room.terminal
            for peer, progress in room.receivers.items()
            if progress.in_flight or not room.total_tokens or progress.written < room.total_tokens
        }
        heard_since = self.clock() - self.config.peer_timeout_s
        recent = {
            peer
            for peer in self.receivers
            if (clock := self.peers.get(peer)) and clock.last_seen >= heard_since
        }
        return owed | recent

    def forget_peer(self, peer: str) -> None:
        self.receivers.pop(peer, None)

    def housekeeping(self, now: float) -> None:
        expiry = now - self.config.timeouts.bootstrap_s
        for room_id in list(self._parked):
            kept = [entry for entry in self._parked[room_id] if entry[0] > expiry]
            self._parked_count -= len(self._parked[room_id]) - len(kept)
            if kept:
                self._parked[room_id] = kept
            else:
                del self._parked[room_id]


@dataclass(frozen=True)
class _WriteJob:
    """A write and what to do with its outcome; transports never raise, this double-checks.

    ``wanted`` turns False once the receiver is declared lost (or registers another
    geometry): a write still queued then fails at once instead of being tried, because
    each try at a dead Mooncake peer holds the writer thread about a second, and its
    room keeps its source blocks until the write is over.
    """

    write: Callable[[str, list[Segment]], WriteResult]
    session_id: str
    segments: list[Segment]
    done: Callable[[WriteResult], None]
    wanted: Callable[[], bool]

    def run(self) -> None:
        if not self.wanted():
            self.done(WriteResult(False, "receiver lost before the write started"))
            return
        try:
            result = self.write(self.session_id, self.segments)
        except Exception as exc:
            result = WriteResult(False, f"transport raised {exc!r}")
        self.done(result)


class _Writer:
    """The writer thread of one receiver, which sends the writes queued while one was in
    flight together, as one transport call.

    A Mooncake batch costs a fixed round trip and a busy wait on top of its segments;
    rooms of a few tokens each pay it in full, so writing one room at a time caps a
    receiver at a few hundred rooms a second when cores are contended. Joined writes
    are the same writes in the same order; if a joined call fails, each is tried again
    on its own (a one-sided write may be repeated) so every room learns its own outcome.
    """

    MAX_SEGMENTS = 1024  # per joined call: bounds the bytes a failed call makes us retry

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(1, name)
        self._lock = threading.Lock()
        self._queue: deque[_WriteJob] = deque()
        self._draining = False

    def submit(self, job: _WriteJob) -> None:
        with self._lock:
            self._queue.append(job)
            if self._draining:
                return
            self._draining = True
        self._executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                jobs = [self._queue.popleft()]
                segments = len(jobs[0].segments)
                while self._queue and segments + len(self._queue[0].segments) <= self.MAX_SEGMENTS:
                    segments += len(self._queue[0].segments)
                    jobs.append(self._queue.popleft())
            try:
                _run_joined(jobs)
            except Exception:  # the thread must go on draining whatever one job did
                LOG.exception("writer failed on %d jobs", len(jobs))

    def shutdown(self) -> None:
        """Drop the writes not started; one under way finishes on its own."""
        with self._lock:
            self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run_joined(jobs: list[_WriteJob]) -> None:
    """Run ``jobs`` (queued for one receiver, in order) as one write."""
    first = jobs[0]
    if len(jobs) == 1 or any(
        job.session_id != first.session_id or not job.wanted() for job in jobs
    ):
        for job in jobs:  # a receiver lost or registered anew: one by one, as ever
            job.run()
        return
    try:
        result = first.write(first.session_id, [s for job in jobs for s in job.segments])
    except Exception as exc:
        result = WriteResult(False, f"transport raised {exc!r}")
    for job in jobs:
        if result.ok:
            job.done(result)
        else:
            job.run()


class SenderHandle:
    """A scheduler's view of one sender room: non-blocking, safe from any one thread."""

    def __init__(self, engine: SenderEngine, room: SenderRoom) -> None:
        self._engine = engine
        self._room = room
        self.room_id = room.room_id

    def send(self, payload: EmbeddingPayload) -> None:
        """Hand over the embedding; it is copied into the engine's buffers."""
        payload.validate(self._engine.layout)
        event = PayloadReady(payload.num_tokens, payload)
        self._engine.submit(lambda: self._engine.deliver(self._room, event))

    def send_blocks(self, blocks: Sequence[int], num_tokens: int) -> None:
        """Hand over an embedding of ``num_tokens`` tokens that the scheduler already
        wrote into ``blocks`` (taken from the engine's ``memory``, written with
        ``buffers.store``): nothing is copied. The room owns the blocks from now on and
        frees them with its own (at once if it refuses them)."""
        event = PayloadReady(num_tokens, None, tuple(blocks))
        self._engine.submit(lambda: self._engine.deliver(self._room, event))

    def poll(self) -> KVPoll:
        return self._room.poll

    @property
    def reason(self) -> str:
        return self._room.reason

    @property
    def bytes_written(self) -> int:
        """Bytes this room has written to its receivers so far: every token kind of every
        piece confirmed, and each receiver's aux record."""
        layout = self._engine.layout
        written = [progress.written for progress in list(self._room.receivers.values())]
        reached = sum(1 for tokens in written if tokens)
        return sum(written) * layout.bytes_per_token + reached * layout.block_bytes(AUX_KIND)

    def failure_exception(self) -> NoReturn:
        """Raise the room's failure, with its reason (SGLang's contract)."""
        raise TransferFailed(self.room_id, self._room.reason or "room has not failed")

    def abort(self, reason: str = "requested") -> None:
        self._engine.submit(lambda: self._engine.deliver(self._room, AbortRequested(reason)))

    def release(self) -> None:
        """The scheduler is done; the engine frees the room's memory once no write needs it."""
        self._engine.submit(lambda: self._engine.deliver(self._room, Released()))
