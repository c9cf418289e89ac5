"""Room handles: a scheduler's view of one room, the same calls on both sides.

A handle never touches its room. It reads the room's status, which the engine's pump
publishes once an event is fully handled (a receiver's result included), and it hands
the scheduler's calls to the pump as commands. So ``poll()`` never blocks, states only
move forward, and what a handle shows is consistent (a Success comes with its result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.fsm.events import AbortRequested, Event, MemoryGranted, Released
from embxfer.fsm.poll import KVPoll
from embxfer.runtime.rooms import RoomStatus, Tracked
from embxfer.runtime.stats import TransferFailed

if TYPE_CHECKING:
    from embxfer.receiver import ReceiverEngine
    from embxfer.runtime.engine import Engine
    from embxfer.sender import SenderEngine, SenderTracked


@dataclass
class SenderStatus(RoomStatus):
    bytes_written: int = 0  # every token kind of every piece confirmed, aux records too


@dataclass
class ReceiverStatus(RoomStatus):
    result: EmbeddingPayload | None = None  # set with Success: views until release
    result_problem: str = ""  # why a Success room's result could not be assembled
    released: bool = False


class RoomHandle:
    """What both sides' handles do: poll, explain a failure, abort, release."""

    def __init__(self, engine: Engine[Any], tracked: Tracked[Any]) -> None:
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


class SenderHandle(RoomHandle):
    """One request on the encoder side."""

    _engine: SenderEngine
    _tracked: SenderTracked

    def announce(self, total_tokens: int) -> None:
        """Say how many tokens the embedding will have, as soon as that is known (a
        vision encoder knows it from the image grid before its forward pass), before or
        with ``send``: each receiver is told and allocates for it, so no resume is
        needed when the length reaches it before the embedding does. A payload of
        another length then fails the room."""
        self._engine.announce(self._tracked, total_tokens)

    def send(self, payload: EmbeddingPayload) -> None:
        """Hand over the embedding; it is copied into the engine's buffers once the room
        has blocks for it."""
        self._engine.hand_over(self._tracked, payload)

    def send_blocks(self, blocks: Sequence[int], num_tokens: int) -> None:
        """Hand over an embedding of ``num_tokens`` tokens that the scheduler already
        wrote into ``blocks`` (taken from the engine's ``memory``, written with
        ``buffers.store``): nothing is copied. The room owns the blocks from now on and
        frees them with its own (at once if it refuses them)."""
        self._engine.hand_over(self._tracked, None, tuple(blocks), num_tokens)

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
        if status.released:
            raise RuntimeError(f"room {self.room_id} was released: its result is gone")
        if status.result is None:
            raise TransferFailed(self.room_id, status.result_problem)
        return status.result

    def provide_blocks(self, blocks: Sequence[int]) -> None:
        """Hand over the first piece's blocks (a room made with ``scheduler_allocates``),
        taken from the engine's ``memory``; the room owns them from now on and frees
        them with its own. Blocks the room did not wait for are freed at once."""
        self._send(MemoryGranted(tuple(blocks)))
