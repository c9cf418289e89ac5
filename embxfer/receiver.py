"""The language-side engine: allocates, asks senders for pieces, and publishes each
room's result with its Success, for the scheduler to assemble when it asks."""

from __future__ import annotations

import functools
import random
import secrets
from collections.abc import Hashable
from dataclasses import dataclass, field

from embxfer.buffers.assembly import assemble_room, stage_piece
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.fsm.actions import Action, SendMessage, SpillPiece
from embxfer.fsm.messages import BufferRegion, Register
from embxfer.fsm.policy import AdaptiveSizer
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.handles import PendingResult, ReceiverHandle, ReceiverStatus
from embxfer.routes import ReceiverRoutes
from embxfer.runtime.engine import Engine
from embxfer.runtime.rooms import Tracked

NONCE_BITS = 63  # the wire's integers are non-negative int64s


@dataclass(eq=False)
class ReceiverTracked(Tracked[ReceiverRoom]):
    """A receiver room, and the pieces it spilled out of its blocks."""

    staged: dict[int, EmbeddingPayload] = field(default_factory=dict)  # by sent_tokens

    def publish(self) -> None:
        status = self.status
        assert isinstance(status, ReceiverStatus)
        if self.room.released:
            status.released = True
            status.result = None  # the views it held point at blocks now free
        super().publish()

    def incarnations(self) -> frozenset[Hashable]:
        return frozenset({self.room.nonce})


class ReceiverEngine(Engine[ReceiverTracked, ReceiverHandle]):
    """Owns the language side's buffers and rooms; asks senders for pieces."""

    role = "receiver"

    def _init_role(self) -> None:
        config = self.config
        self.sizer = AdaptiveSizer(
            config.default_alloc_tokens,
            quantile=config.adaptive_quantile,
            adaptive=config.adaptive_alloc,
        )
        register = Register(
            session_id=self.data.session_id,
            block_size=self.layout.block_size,
            num_blocks=self.layout.num_blocks,
            regions=tuple(BufferRegion(k, b, n) for k, b, n in self.buffers.regions()),
        )
        self.router = self.routes = ReceiverRoutes(self, register)
        # Incarnations need to differ, not to be secret (CURVE keys say who speaks), so a
        # generator seeded from the OS draws them: no system call per room.
        self._nonces = random.Random(secrets.randbits(128))

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
        (SGLang's ``send_metadata``); resumes still allocate beneath it.

        The room is a new incarnation of ``room_id``, named by a random nonce that its
        messages carry: nothing meant for an earlier room under the same id reaches it."""
        room = ReceiverRoom(
            room_id,
            sender,
            self.memory,
            None if scheduler_allocates else self.sizer.initial_tokens(expected_tokens),
            self.config.timeouts,
            self.clock(),
            self.config.policy,
            required_receivers,
            nonce=self._nonces.getrandbits(NONCE_BITS),
        )
        tracked = ReceiverTracked(room, ReceiverStatus())
        handle = self._handle(tracked, ReceiverHandle(self, tracked))  # before the pump has it
        self.submit(lambda: self._adopt(tracked))
        return handle

    def _adopt(self, tracked: ReceiverTracked) -> None:
        if self.adopt(tracked):
            self.routes.joined(tracked)

    # -- outbound --------------------------------------------------------------------
    def carry_out(self, tracked: ReceiverTracked, action: Action) -> None:
        if isinstance(action, SendMessage):
            self.control.send(action.peer, action.message)
        elif isinstance(action, SpillPiece):
            staged = stage_piece(self.buffers, action.blocks, action.tokens)
            tracked.staged[action.sent_tokens] = staged
        else:
            raise TypeError(f"receiver cannot carry out {action!r}")

    def room_ended(self, tracked: ReceiverTracked) -> None:
        """On Success, publish the result with it, to be assembled when the scheduler
        asks: views into the buffers where the room's blocks are one run (valid until
        release), a copy where pieces were spilled."""
        room, status = tracked.room, tracked.status
        assert isinstance(status, ReceiverStatus)
        staged, tracked.staged = tracked.staged, {}
        if room.state != "Success":
            return
        self.sizer.observe(room.total_tokens)
        self.stats.bytes_moved(room.total_tokens * self.bytes_per_token)
        status.result = PendingResult(
            functools.partial(
                assemble_room,
                self.buffers,
                tuple(room.pieces),
                staged,
                room.total_tokens,
                room.mrope_position_delta,
            )
        )
