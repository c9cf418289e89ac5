"""Fair waiting for blocks: one first-come, first-served queue over any allocator.

SGLang's embedding pool lets whichever request retries first after a free take the
blocks, so large requests starve behind small ones and every release wakes every
waiter. Here a request that cannot be served joins one FIFO queue, and the engine
serves the queue after blocks come back (``ready`` / ``grant``): the head keeps the
blocks freed for it until its ask fits, or takes a partial grant once its floor fits
(a floor equal to the ask means all or nothing). Nobody passes a head that waits:
any blocks taken past it would delay it. Waiting costs nothing until blocks come free.

Thread-safe: an engine serves its rooms on one thread, but a scheduler that allocates
from the same memory (SGLang's language side hands over blocks it allocated) calls
``take`` and ``free`` from its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from embxfer.buffers.allocator import BlockAllocator
from embxfer.fsm.memory import blocks_needed

WaiterT = TypeVar("WaiterT", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Ask:
    """What one waiter needs, in blocks: ``blocks`` at most, ``floor`` at least."""

    blocks: int
    floor: int


class FairPool(Generic[WaiterT]):
    """A ``BlockAllocator`` with a FIFO queue of waiters; implements ``fsm``'s ``BlockPool``.

    ``on_free`` runs after every free (outside the lock): an engine uses it to wake its
    thread when another thread freed blocks, so the queue is served without polling.
    """

    def __init__(
        self, allocator: BlockAllocator, on_free: Callable[[], None] | None = None
    ) -> None:
        self.allocator = allocator
        self.on_free = on_free
        self.block_size = allocator.block_size  # an allocator's geometry never changes
        self.total_blocks = allocator.total_blocks
        self._queue: OrderedDict[WaiterT, Ask] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def free_blocks(self) -> int:
        return self.allocator.free_blocks

    @property
    def waiting(self) -> int:
        """Waiters in the queue."""
        return len(self._queue)

    def ask(self, tokens: int, floor_tokens: int) -> Ask:
        """``tokens`` (at least ``floor_tokens``) in blocks; the floor never exceeds the ask."""
        size = self.block_size
        wanted = blocks_needed(tokens, size)
        return Ask(wanted, min(wanted, max(1, blocks_needed(floor_tokens, size))))

    # -- taking and freeing ----------------------------------------------------------
    def take(self, tokens: int, floor_tokens: int) -> list[int] | None:
        """Blocks now when nobody waits and at least the floor is free, else None."""
        ask = self.ask(tokens, floor_tokens)
        with self._lock:
            return None if self._queue else self._alloc(ask)

    def free(self, blocks: Sequence[int]) -> None:
        with self._lock:
            self.allocator.free(blocks)
        if self.on_free is not None:
            self.on_free()

    def _alloc(self, ask: Ask) -> list[int] | None:
        free = self.allocator.free_blocks
        if free < ask.floor:
            return None
        return self.allocator.alloc(min(free, ask.blocks) * self.block_size)

    # -- the queue -------------------------------------------------------------------
    def wait(self, waiter: WaiterT, tokens: int, floor_tokens: int) -> None:
        """Queue ``waiter`` at the back; raises if it waits already (one turn each)."""
        with self._lock:
            if waiter in self._queue:
                raise ValueError(f"{waiter!r} is waiting already")
            self._queue[waiter] = self.ask(tokens, floor_tokens)

    def cancel(self, waiter: WaiterT) -> bool:
        """Take ``waiter`` out of the queue; False if it was not in it."""
        with self._lock:
            return self._queue.pop(waiter, None) is not None

    def ready(self) -> WaiterT | None:
        """The head of the queue if its floor fits now, else None."""
        with self._lock:
            if not self._queue:
                return None
            waiter, ask = next(iter(self._queue.items()))
            return waiter if self.allocator.free_blocks >= ask.floor else None

    def grant(self, waiter: WaiterT) -> list[int]:
        """Allocate for ``waiter``, the head that ``ready`` named, and dequeue it."""
        with self._lock:
            head, ask = next(iter(self._queue.items()))
            if head != waiter:
                raise ValueError(f"{waiter!r} is not the head of the queue ({head!r} is)")
            blocks = self._alloc(ask)
            if blocks is None:
                raise ValueError(f"{waiter!r} does not fit: {ask}, {self.free_blocks} free")
            del self._queue[head]
            return blocks

    def queue(self) -> tuple[tuple[WaiterT, Ask], ...]:
        """The waiters in order, with their asks (for inspection and state keys)."""
        with self._lock:
            return tuple(self._queue.items())

    def restore_queue(self, waiters: Sequence[tuple[WaiterT, Ask]]) -> None:
        """Replace the queue by ``waiters`` (as ``queue`` returned them)."""
        with self._lock:
            self._queue = OrderedDict(waiters)
