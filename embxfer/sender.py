"""The encoder-side engine and the room handle its scheduler uses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

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
    RequestReceived,
    WriteFinished,
)
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.sender import SenderRoom
from embxfer.runtime import Runtime, TransferFailed
from embxfer.transport.base import ControlChannel, DataTransport, Segment, WriteResult
from embxfer.transport.messages import (
    Abort,
    BufferRegion,
    Message,
    PieceRequest,
    Register,
    RegisterAck,
)

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
    ) -> None:
        super().__init__(config, control, data, clock)
        self.receivers: dict[str, RemoteBuffers] = {}
        self._writers: dict[str, ThreadPoolExecutor] = {}
        self._parked: dict[int, list[tuple[float, str, PieceRequest | Abort]]] = {}
        self._parked_count = 0
        self._local_regions = [
            BufferRegion(kind, base, size) for kind, base, size in self.buffers.regions()
        ]

    def create_room(self, room_id: int) -> SenderHandle:
        """A room for one request; receivers join it by asking for pieces."""
        room = SenderRoom(room_id, self.allocator, self.config.timeouts, self.clock())
        self.submit(lambda: self._adopt(room))
        return SenderHandle(self, room)

    def _adopt(self, room: SenderRoom) -> None:
        if self.adopt(room):
            for _, peer, message in self._parked.pop(room.room_id, []):
                self._parked_count -= 1
                self._deliver_room_message(room, peer, message)

    # -- inbound ---------------------------------------------------------------------
    def on_message(self, peer: str, message: Message) -> None:
        if isinstance(message, Register):
            self._register(peer, message)
        elif isinstance(message, (PieceRequest, Abort)):
            if isinstance(message, PieceRequest) and peer not in self.receivers:
                self.reject("unregistered_peer", peer)
                return
            room = self.rooms.get(message.room)
            if room is not None:
                self._deliver_room_message(room, peer, message)
            elif self.is_closed(message.room):
                self.reject("closed_room", peer)
            else:
                self._park(peer, message)
        else:
            self.reject("unexpected_kind", peer, type(message).__name__)

    def _deliver_room_message(
        self, room: SenderRoom, peer: str, message: PieceRequest | Abort
    ) -> None:
        event: Event = (
            RequestReceived(peer, message)
            if isinstance(message, PieceRequest)
            else AbortReceived(peer, message.reason)
        )
        self.deliver(room, event)

    def _park(self, peer: str, message: PieceRequest | Abort) -> None:
        """Hold a message for a room the scheduler has not created yet (it may be slower
        than the receiver); dropped after the bootstrap timeout."""
        if self._parked_count >= _PARKED_LIMIT:
            self.reject("park_full", peer)
            return
        self._parked.setdefault(message.room, []).append((self.clock(), peer, message))
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
            if result.ok:
                self.stats.payload_bytes += sum(s.length for s in segments)
            event = WriteFinished(action.receiver, action.sent_tokens, result.ok, result.reason)
            self.submit(lambda: self.deliver(room, event))

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
        job = _WriteJob(self.data.write, peer.session_id, segments, finished)
        if self.config.write_threads:
            self._writer(action.receiver).submit(job.run)
        else:
            job.run()

    def _writer(self, peer: str) -> ThreadPoolExecutor:
        """One thread per receiver: a stalled receiver holds up only its own writes."""
        writer = self._writers.get(peer)
        if writer is None:
            writer = self._writers[peer] = ThreadPoolExecutor(
                1, f"embxfer-write-{len(self._writers)}"
            )
        return writer

    def _shutdown_writers(self) -> None:
        for writer in self._writers.values():
            writer.shutdown(wait=False, cancel_futures=True)

    # -- peers and time --------------------------------------------------------------
    def active_peers(self) -> Iterable[str]:
        return {
            peer for room in self.rooms.values() if not room.terminal for peer in room.receivers
        }

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
    """A write and what to do with its outcome; transports never raise, this double-checks."""

    write: Callable[[str, list[Segment]], WriteResult]
    session_id: str
    segments: list[Segment]
    done: Callable[[WriteResult], None]

    def run(self) -> None:
        try:
            result = self.write(self.session_id, self.segments)
        except Exception as exc:
            result = WriteResult(False, f"transport raised {exc!r}")
        self.done(result)


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

    def poll(self) -> KVPoll:
        return self._room.poll

    @property
    def reason(self) -> str:
        return self._room.reason

    def failure_exception(self) -> NoReturn:
        """Raise the room's failure, with its reason (SGLang's contract)."""
        raise TransferFailed(self.room_id, self._room.reason or "room has not failed")

    def abort(self, reason: str = "aborted by scheduler") -> None:
        self._engine.submit(lambda: self._engine.deliver(self._room, AbortRequested(reason)))

    def release(self) -> None:
        """The scheduler is done; the engine frees the room's memory once no write needs it."""
        self._engine.submit(lambda: self._engine.deliver(self._room, Released()))
