"""The language-side engine and the room handle its scheduler uses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from embxfer.buffers.allocator import BlockAllocator
from embxfer.buffers.assembly import StoredPiece, assemble, stage_piece
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.actions import Action, SendMessage, SpillPiece
from embxfer.fsm.events import (
    AbortReceived,
    AbortRequested,
    MemoryGranted,
    PeerReady,
    Released,
)
from embxfer.fsm.messages import (
    BufferRegion,
    Message,
    Register,
    RegisterAck,
)
from embxfer.fsm.policy import AdaptiveSizer
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.routing import room_event
from embxfer.metrics import Metrics
from embxfer.runtime import Runtime, TransferFailed
from embxfer.transport.base import ControlChannel, DataTransport

LOG = logging.getLogger("embxfer.receiver")


@dataclass
class SenderLink:
    """Registration with one sender: rooms wait in Bootstrapping until it is accepted."""

    ready: bool = False
    next_register: float = 0.0


class ReceiverEngine(Runtime[ReceiverRoom]):
    """Owns the language side's buffers and rooms; asks senders for pieces."""

    role = "receiver"

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
        self.sizer = AdaptiveSizer(
            config.default_alloc_tokens,
            quantile=config.adaptive_quantile,
            adaptive=config.adaptive_alloc,
        )
        self.senders: dict[str, SenderLink] = {}
        self._staged: dict[int, dict[int, EmbeddingPayload]] = {}
        self._aux: dict[int, tuple[int, int]] = {}
        self._register = Register(
            session_id=data.session_id,
            block_size=self.layout.block_size,
            num_blocks=self.layout.num_blocks,
            regions=tuple(BufferRegion(k, b, n) for k, b, n in self.buffers.regions()),
        )

    def create_room(
        self,
        room_id: int,
        sender: str,
        required_receivers: int = 1,
        expected_tokens: int | None = None,
        scheduler_allocates: bool = False,
    ) -> ReceiverHandle:
        """A room receiving from ``sender`` (its control address). ``expected_tokens``,
        when the scheduler knows the length, is allocated up front: no resume needed.

        ``scheduler_allocates``: the scheduler allocates the first piece's blocks from
        ``self.memory`` itself and hands them over with ``ReceiverHandle.provide_blocks``
        (SGLang's ``send_metadata``); resumes still allocate beneath it."""
        room = ReceiverRoom(
            room_id,
            sender,
            self.memory,
            None if scheduler_allocates else self.sizer.initial_tokens(expected_tokens),
            self.config.timeouts,
            self.clock(),
            self.config.policy,
            required_receivers,
        )
        self.submit(lambda: self._adopt(room))
        return ReceiverHandle(self, room)

    def _adopt(self, room: ReceiverRoom) -> None:
        if not self.adopt(room):
            return
        link = self.senders.get(room.sender)
        if link is None:  # one registration per sender; housekeeping repeats it if lost
            link = self.senders[room.sender] = SenderLink()
            self._send_register(room.sender, link)
        elif link.ready:
            self.deliver(room, PeerReady())

    def _send_register(self, sender: str, link: SenderLink) -> None:
        link.next_register = self.clock() + self.config.heartbeat_s
        self.control.send(sender, self._register)

    # -- inbound ---------------------------------------------------------------------
    def on_message(self, peer: str, message: Message) -> None:
        if isinstance(message, RegisterAck):
            self._registered(peer, message)
            return
        routed = room_event("receiver", peer, message)
        if routed is None:
            self.reject("unexpected_kind", peer, type(message).__name__)
            return
        room_id, event = routed
        room = self.rooms.get(room_id)
        if room is None:
            reason = "closed_room" if self.is_closed(room_id) else "unknown_room"
            self.reject(reason, peer, room=room_id)
            return
        self.deliver(room, event)

    def _registered(self, peer: str, message: RegisterAck) -> None:
        link = self.senders.get(peer)
        if link is None or link.ready:
            self.reject("unexpected_register_ack", peer)
            return
        waiting = [room for room in self.rooms.values() if room.sender == peer]
        if message.accepted:
            link.ready = True
            for room in waiting:
                self.deliver(room, PeerReady())
        else:
            del self.senders[peer]
            for room in waiting:
                self.deliver(room, AbortReceived(peer, f"registration refused: {message.reason}"))

    # -- outbound --------------------------------------------------------------------
    def carry_out(self, room: ReceiverRoom, action: Action) -> None:
        if isinstance(action, SendMessage):
            self.control.send(action.peer, action.message)
        elif isinstance(action, SpillPiece):
            if action.sent_tokens == 0:
                self._aux[room.room_id] = self.buffers.read_aux(action.blocks[0])
            staged = stage_piece(self.buffers, action.blocks, action.tokens)
            self._staged.setdefault(room.room_id, {})[action.sent_tokens] = staged
        else:
            raise TypeError(f"receiver cannot carry out {action!r}")

    def on_terminal(self, room: ReceiverRoom) -> None:
        if room.poll is KVPoll.Success:
            self.sizer.observe(room.total_tokens)
            self.stats.bytes_moved(room.total_tokens * self.layout.bytes_per_token)

    def on_forget(self, room: ReceiverRoom) -> None:
        self._staged.pop(room.room_id, None)
        self._aux.pop(room.room_id, None)

    def result(self, room: ReceiverRoom) -> EmbeddingPayload:
        """The assembled embedding of a Success room (views into the buffers where the
        room's blocks are one run: valid until the room is released)."""
        staged = self._staged.get(room.room_id, {})
        pieces = [
            StoredPiece(p.sent_tokens, p.tokens, staged=staged[p.sent_tokens])
            if not p.blocks
            else StoredPiece(p.sent_tokens, p.tokens, blocks=p.blocks)
            for p in room.pieces
        ]
        first = room.pieces[0]
        aux = self._aux.get(room.room_id) or self.buffers.read_aux(first.blocks[0])
        total, delta = aux
        if total != room.total_tokens:
            raise TransferFailed(
                room.room_id, f"aux says {total} tokens, sender said {room.total_tokens}"
            )
        return assemble(self.buffers, pieces, total, delta)

    # -- peers and time --------------------------------------------------------------
    def active_peers(self) -> Iterable[str]:
        """Senders of open rooms, and every sender this engine is registered with.

        A registration is watched like a room: both sides heartbeat it (the sender
        heartbeats receivers it hears from), so a sender silent past the peer timeout
        is lost, and the registration with it. Without that, a receiver idle through a
        partition would keep a registration the sender gave up, and its next rooms would
        ask as a stranger and be turned down until they timed out.
        """
        open_rooms = {room.sender for room in self.rooms.values() if not room.terminal}
        return open_rooms | self.senders.keys()

    def forget_peer(self, peer: str) -> None:
        self.senders.pop(peer, None)

    def housekeeping(self, now: float) -> None:
        for sender, link in self.senders.items():
            if not link.ready and now >= link.next_register:
                self._send_register(sender, link)


class ReceiverHandle:
    """A scheduler's view of one receiver room: non-blocking, safe from any one thread."""

    def __init__(self, engine: ReceiverEngine, room: ReceiverRoom) -> None:
        self._engine = engine
        self._room = room
        self.room_id = room.room_id

    def poll(self) -> KVPoll:
        return self._room.poll

    @property
    def reason(self) -> str:
        return self._room.reason

    @property
    def resumes(self) -> int:
        return self._room.resumes

    def result(self) -> EmbeddingPayload:
        """The embedding, once ``poll()`` is Success; keep it only until ``release``."""
        if self._room.poll is not KVPoll.Success:
            raise RuntimeError(f"room {self.room_id} is {self._room.state}, not Success")
        return self._engine.result(self._room)

    def failure_exception(self) -> NoReturn:
        """Raise the room's failure, with its reason (SGLang's contract)."""
        raise TransferFailed(self.room_id, self._room.reason or "room has not failed")

    def provide_blocks(self, blocks: Sequence[int]) -> None:
        """Hand over the first piece's blocks (a room made with ``scheduler_allocates``),
        taken from the engine's ``memory``; the room owns them from now on and frees
        them with its own. Blocks the room did not wait for are freed at once."""
        granted = MemoryGranted(tuple(blocks))
        self._engine.submit(lambda: self._engine.deliver(self._room, granted))

    def abort(self, reason: str = "requested") -> None:
        self._engine.submit(lambda: self._engine.deliver(self._room, AbortRequested(reason)))

    def release(self) -> None:
        """The scheduler is done with the result; its blocks go back to the allocator
        (after a failure: once no write can still land in them)."""
        self._engine.submit(lambda: self._engine.deliver(self._room, Released()))
