"""The encoder-side engine: stores each room's embedding and writes it to the receivers
that ask, piece by piece."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.buffers.segments import plan_segments
from embxfer.fsm.actions import Action, SendMessage, StorePayload, WritePiece
from embxfer.fsm.events import LengthAnnounced, PayloadReady, WriteFinished
from embxfer.fsm.messages import BufferRegion
from embxfer.fsm.sender import SenderRoom
from embxfer.handles import SenderHandle, SenderStatus
from embxfer.routes import SenderRoutes
from embxfer.runtime.engine import Engine
from embxfer.runtime.rooms import Tracked
from embxfer.transport.base import WriteResult
from embxfer.transport.writer import WriteJob, Writers


@dataclass(eq=False)
class SenderTracked(Tracked[SenderRoom]):
    """A sender room, and the scheduler's payload until it is stored in the room's blocks."""

    token_bytes: int = 0  # every kind of one token
    payload: EmbeddingPayload | None = None

    def publish(self) -> None:
        status = self.status
        assert isinstance(status, SenderStatus)
        written = sum(progress.written for progress in self.room.receivers.values())
        status.bytes_written = written * self.token_bytes
        super().publish()

    def incarnations(self) -> frozenset[Hashable]:
        """The receiver incarnations the room bound or answered: ``(peer, nonce)``."""
        return frozenset(self.room.heard.items())


class SenderEngine(Engine[SenderTracked, SenderHandle]):
    """Owns the encoder's buffers and rooms; writes pieces to receivers that ask."""

    role = "sender"

    def _init_role(self) -> None:
        self.local_regions = [
            BufferRegion(kind, base, size) for kind, base, size in self.buffers.regions()
        ]
        self.router = self.routes = SenderRoutes(self)
        self.writers = Writers(threaded=self.config.write_threads)

    def create_room(self, room_id: int) -> SenderHandle:
        """A room for one request; receivers join it by asking for pieces."""
        room = SenderRoom(room_id, self.memory, self.config.timeouts, self.clock())
        tracked = SenderTracked(room, SenderStatus(), token_bytes=self.bytes_per_token)
        handle = self._handle(tracked, SenderHandle(self, tracked))  # before the pump has it
        self.submit(lambda: self._adopt(tracked))
        return handle

    def _adopt(self, tracked: SenderTracked) -> None:
        if self.adopt(tracked):
            for event in self.routes.unpark(tracked):
                self.deliver(tracked, event)

    def announce(self, tracked: SenderTracked, total_tokens: int) -> None:
        """The scheduler knows the embedding's length before it is computed (thread-safe)."""
        if total_tokens < 1:
            raise ValueError(f"an embedding has at least one token, not {total_tokens}")
        self.submit(lambda: self.deliver(tracked, LengthAnnounced(total_tokens)))

    def hand_over(
        self,
        tracked: SenderTracked,
        payload: EmbeddingPayload | None,
        blocks: tuple[int, ...] = (),
        num_tokens: int = 0,
        mrope_position_delta: int = 0,
    ) -> None:
        """The scheduler's embedding for the room: a payload to copy in, or ``blocks``
        of this engine's memory it already wrote (thread-safe)."""
        if payload is not None:
            payload.validate(self.layout)
            num_tokens = payload.num_tokens
            mrope_position_delta = payload.mrope_position_delta
        ready = PayloadReady(num_tokens, blocks, mrope_position_delta)

        def on_pump() -> None:
            if payload is not None and tracked.payload is None and not tracked.room.handed:
                tracked.payload = payload
            self.deliver(tracked, ready)

        self.submit(on_pump)

    def close(self) -> None:
        super().close()
        self.writers.shutdown()

    # -- outbound --------------------------------------------------------------------
    def carry_out(self, tracked: SenderTracked, action: Action) -> None:
        if isinstance(action, SendMessage):
            self.control.send(action.peer, action.message)
        elif isinstance(action, StorePayload):
            payload, tracked.payload = tracked.payload, None
            assert payload is not None, "a room stores only a payload it was handed"
            self.buffers.store(action.blocks, payload)
        elif isinstance(action, WritePiece):
            self._write(tracked, action)
        else:
            raise TypeError(f"sender cannot carry out {action!r}")

    def _write(self, tracked: SenderTracked, action: WritePiece) -> None:
        def finished(result: WriteResult) -> None:
            nbytes = sum(segment.length for segment in segments) if result.ok else 0
            event = WriteFinished(action.receiver, action.sent_tokens, result.ok, result.reason)

            def on_pump() -> None:  # stats, like rooms, are touched on the pump thread only
                self.stats.bytes_moved(nbytes)
                self.deliver(tracked, event)

            self.submit(on_pump)

        peer = self.routes.receivers.get(action.receiver)
        if peer is None:
            finished(WriteResult(False, f"receiver {action.receiver} is not registered"))
            return
        try:
            segments = plan_segments(
                self.local_regions,
                peer.regions,
                self.layout,
                action.src_blocks,
                action.dst_blocks,
                action.tokens,
                remote_num_blocks=peer.num_blocks,
            )
        except Exception as exc:  # e.g. blocks outside the receiver's declared geometry
            finished(WriteResult(False, f"cannot plan write: {exc}"))
            return
        job = WriteJob(
            self.data.write,
            peer.session_id,
            segments,
            finished,
            wanted=lambda: self.routes.receivers.get(action.receiver) == peer,
        )
        self.writers.submit(action.receiver, job)

    def room_ended(self, tracked: SenderTracked) -> None:
        tracked.payload = None  # never stored: the room failed first
