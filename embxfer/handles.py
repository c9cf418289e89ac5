"""Room handles: a scheduler's view of one room, the same calls on both sides.

A handle never touches its room. It reads the room's status, which the engine's pump
publishes once an event is fully handled (a receiver's result included), and it hands
the scheduler's calls to the pump as commands. So ``poll()`` never blocks, states only
move forward, and what a handle shows is consistent (a Success comes with its result).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from embxfer.buffers.blocks import contiguous_start
from embxfer.buffers.layout import FIELDS
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.fsm.events import AbortRequested, Event, MemoryGranted, Released
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.poll import KVPoll
from embxfer.runtime.rooms import RoomStatus, Tracked
from embxfer.runtime.stats import TransferFailed

if TYPE_CHECKING:
    from embxfer.receiver import ReceiverEngine
    from embxfer.runtime.engine import Engine
    from embxfer.sender import SenderEngine, SenderTracked


@dataclass
class SenderStatus(RoomStatus):
    bytes_written: int = 0  # every kind of every piece confirmed (no aux record is written)


class PendingResult:
    """A Success room's embedding, assembled the first time its scheduler asks, on the
    scheduler's thread: the pump publishes Success without building it (nor any result
    a scheduler never reads, as of a room it aborts). Views into the room's blocks,
    valid until release; copies of pieces that were spilled."""

    __slots__ = ("_assemble", "_payload", "_problem")

    def __init__(self, assemble: Callable[[], EmbeddingPayload]) -> None:
        self._assemble: Callable[[], EmbeddingPayload] | None = assemble
        self._payload: EmbeddingPayload | None = None
        self._problem = ""

    def get(self, room_id: int) -> EmbeddingPayload:
        """The embedding; raises ``TransferFailed`` if the pieces could not form it."""
        if self._assemble is not None:
            assemble, self._assemble = self._assemble, None
            try:
                self._payload = assemble()
            except ValueError as problem:
                self._problem = str(problem)
        if self._payload is None:
            raise TransferFailed(room_id, self._problem)
        return self._payload


@dataclass
class ReceiverStatus(RoomStatus):
    result: PendingResult | None = None  # set with Success, dropped at release
    released: bool = False


class RoomHandle:
    """What both sides' handles do: poll, explain a failure, abort, release."""

    def __init__(self, engine: Engine[Any, Any], tracked: Tracked[Any]) -> None:
        self._engine = engine
        self._tracked = tracked
        self.room_id: int = tracked.room_id

    def poll(self) -> KVPoll:
        """KVPoll's value: non-blocking, only moves forward; Success and Failed latch."""
        return self._tracked.status.state

    @property
    def reason(self) -> str:
        """Why the room failed ("" unless it did)."""
        return self._tracked.status.reason

    def failure_exception(self) -> NoReturn:
        """Raise the room's failure, with its reason (SGLang's contract)."""
        raise TransferFailed(self.room_id, self.reason or "room has not failed")

    def abort(self, reason: str = "requested") -> None:
        """Fail the room now (idempotent; never revives a room)."""
        self._send(AbortRequested(reason))

    def release(self) -> None:
        """The scheduler is done with the room: its blocks go back to the allocator once
        no write can still land in them (idempotent)."""
        self._send(Released())

    def _send(self, event: Event) -> None:
        engine, tracked = self._engine, self._tracked
        engine.submit(lambda: engine.deliver(tracked, event))


@dataclass(frozen=True)
class _Buffer:
    """Blocks ``SenderHandle.buffer`` took for the room, and the payload it handed out:
    views into those blocks (``in_place``), or memory of its own."""

    blocks: tuple[int, ...]
    payload: EmbeddingPayload
    in_place: bool

    def holds(self, payload: EmbeddingPayload) -> bool:
        """Whether ``payload``'s tensors are this buffer's views, so nothing needs a copy
        (``dataclasses.replace`` of the buffer, to set the delta, keeps them)."""
        return self.in_place and all(
            self.payload.tensor(field) is payload.tensor(field) for field in FIELDS
        )


class SenderHandle(RoomHandle):
    """One request on the encoder side. Its calls come from one scheduler thread."""

    _engine: SenderEngine
    _tracked: SenderTracked

    def __init__(self, engine: SenderEngine, tracked: SenderTracked) -> None:
        super().__init__(engine, tracked)
        self._buffer: _Buffer | None = None  # taken by buffer(), not handed over yet

    def announce(self, total_tokens: int) -> None:
        """Say how many tokens the embedding will have, as soon as that is known (a
        vision encoder knows it from the image grid before its forward pass), before or
        with ``send``: each receiver is told and allocates for it, so no resume is
        needed when the length reaches it before the embedding does. A payload of
        another length then fails the room."""
        self._engine.announce(self._tracked, total_tokens)

    def buffer(self, total_tokens: int) -> EmbeddingPayload | None:
        """Writable memory for the room's ``total_tokens``-token embedding, in the engine's
        registered blocks: the encoder writes its output there, and ``send()`` of this
        payload copies nothing (set the M-RoPE delta with ``dataclasses.replace``; the
        tensors stay the same).

        The payload is views into the blocks when they form one run (a fresh pool gives
        runs; blocks freed in another order may not), else memory of its own, which
        ``send()`` copies into the blocks once. None when memory is short: blocks are
        taken only if nobody waits for memory before us (``memory.take``, fair); keep
        the request queued and ask again when blocks come back (SGLang's own
        back-pressure), or ``send()`` a payload of your own, which takes its turn in the
        memory queue. The blocks are the room's: a buffer never sent is freed when the
        room is released, not before (the encoder may still be writing into it).
        """
        if self._buffer is not None:
            raise RuntimeError(f"room {self.room_id} has a buffer already")
        engine = self._engine
        size = engine.memory.block_size
        if total_tokens <= 0 or blocks_needed(total_tokens, size) > engine.memory.total_blocks:
            raise ValueError(
                f"a buffer of {total_tokens} tokens can never fit "
                f"{engine.memory.total_blocks} blocks of {size}"
            )
        taken = engine.memory.take(total_tokens, total_tokens)
        if taken is None:
            return None
        blocks = tuple(taken)
        in_place = contiguous_start(blocks) is not None
        payload = (
            engine.buffers.view_payload(blocks, total_tokens)
            if in_place
            else EmbeddingPayload.empty(total_tokens, engine.layout)
        )
        self._buffer = _Buffer(blocks, payload, in_place)
        return payload

    def send(self, payload: EmbeddingPayload) -> None:
        """Hand over the embedding. The room's ``buffer()`` (or a ``dataclasses.replace``
        of it) is handed over in place, with no copy; any other payload is copied once:
        into the room's buffer if it has one, else into blocks the room takes (at once,
        or in turn in the memory queue)."""
        held = self._buffer
        if held is None:
            self._engine.hand_over(self._tracked, payload)
            return
        if payload.num_tokens != held.payload.num_tokens:
            raise ValueError(
                f"room {self.room_id}'s buffer holds {held.payload.num_tokens} tokens, "
                f"the payload has {payload.num_tokens}"
            )
        if not held.holds(payload):
            self._engine.buffers.store(held.blocks, payload)
        self._buffer = None
        self.send_blocks(held.blocks, payload.num_tokens, payload.mrope_position_delta)

    def send_blocks(
        self, blocks: Sequence[int], num_tokens: int, mrope_position_delta: int = 0
    ) -> None:
        """Hand over an embedding of ``num_tokens`` tokens that the scheduler already
        wrote into ``blocks`` (taken from the engine's ``memory``, written with
        ``buffers.store``): nothing is copied. The room owns the blocks from now on and
        frees them with its own (at once if it refuses them)."""
        self._engine.hand_over(self._tracked, None, tuple(blocks), num_tokens, mrope_position_delta)

    def release(self) -> None:
        """As ``RoomHandle.release``; a buffer never sent goes back now."""
        held, self._buffer = self._buffer, None
        if held is not None:
            self._engine.memory.free(held.blocks)
        super().release()

    @property
    def bytes_written(self) -> int:
        """Bytes this room has written to its receivers so far."""
        status = self._tracked.status
        assert isinstance(status, SenderStatus)
        return status.bytes_written


class ReceiverHandle(RoomHandle):
    """One request on the language side."""

    _engine: ReceiverEngine

    @property
    def resumes(self) -> int:
        return self._tracked.status.resumes

    def result(self) -> EmbeddingPayload:
        """The embedding, once ``poll()`` is Success; keep it only until ``release``."""
        status = self._tracked.status
        assert isinstance(status, ReceiverStatus)
        if status.state is not KVPoll.Success:
            raise RuntimeError(f"room {self.room_id} is {status.state.name}, not Success")
        result = status.result
        if status.released or result is None:
            raise RuntimeError(f"room {self.room_id} was released: its result is gone")
        return result.get(self.room_id)

    def provide_blocks(self, blocks: Sequence[int]) -> None:
        """Hand over the first piece's blocks (a room made with ``scheduler_allocates``),
        taken from the engine's ``memory``; the room owns them from now on and frees
        them with its own. Blocks the room did not wait for are freed at once."""
        self._send(MemoryGranted(tuple(blocks)))
