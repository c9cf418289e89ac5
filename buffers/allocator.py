"""Block allocation: hands out block indices for a number of tokens and takes them back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from embxfer.fsm.memory import blocks_needed


class BlockAllocator(Protocol):
    """What a room needs from an allocator. Implementations need not be thread-safe:
    each engine calls its allocator from one thread."""

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        ...

    @property
    def total_blocks(self) -> int:
        """Blocks this allocator manages."""
        ...

    @property
    def free_blocks(self) -> int:
        """Blocks available right now."""
        ...

    def alloc(self, num_tokens: int) -> list[int] | None:
        """Blocks covering ``num_tokens`` tokens, or None when not enough are free."""
        ...

    def free(self, blocks: Sequence[int]) -> None:
        """Return blocks; raises on a double or foreign free."""
        ...


class BlockFreeError(ValueError):
    """A free of a block that is not allocated (double free) or not ours (foreign free)."""


@dataclass(frozen=True, slots=True)
class FreeListSnapshot:
    """A ``FreeListAllocator``'s whole state, for ``restore``: a model checker branches
    from one state into many."""

    stack: tuple[int, ...]  # the free blocks, the next one handed out last
    allocated: bytes  # per block: 1 if handed out
    high_water_mark: int


class FreeListAllocator:
    """A LIFO stack of free block indices.

    The stack top is the next block handed out, so a fresh allocator gives 0, 1, 2, ...
    (contiguous runs let transfers coalesce) and just-freed blocks come back first, in
    the order they were freed (warm memory, and the same indices can return to a room,
    which the protocol must tolerate). Every call costs O(blocks requested or freed).
    """

    def __init__(self, num_blocks: int, block_size: int = 128) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}"
            )
        self._block_size = block_size
        self._stack = list(range(num_blocks - 1, -1, -1))
        self._allocated = bytearray(num_blocks)
        self._high_water_mark = 0

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        return self._block_size

    @property
    def total_blocks(self) -> int:
        """Blocks this allocator manages."""
        return len(self._allocated)

    @property
    def free_blocks(self) -> int:
        """Blocks available right now."""
        return len(self._stack)

    @property
    def used_blocks(self) -> int:
        """Blocks handed out and not yet freed."""
        return self.total_blocks - self.free_blocks

    @property
    def free_tokens(self) -> int:
        """Tokens that the free blocks can hold."""
        return self.free_blocks * self._block_size

    @property
    def high_water_mark(self) -> int:
        """Most blocks ever in use at once: sizes buffers from real load."""
        return self._high_water_mark

    @property
    def free_order(self) -> tuple[int, ...]:
        """The free blocks in the order they will be handed out: allocators with equal
        free orders behave alike from now on."""
        return tuple(reversed(self._stack))

    def snapshot(self) -> FreeListSnapshot:
        """Everything ``restore`` needs to put this allocator back as it is now."""
        return FreeListSnapshot(tuple(self._stack), bytes(self._allocated), self._high_water_mark)

    def restore(self, snapshot: FreeListSnapshot) -> None:
        """Go back to the state ``snapshot`` took (of this allocator or one like it)."""
        if len(snapshot.allocated) != self.total_blocks:
            raise ValueError(
                f"a snapshot of {len(snapshot.allocated)} blocks, not {self.total_blocks}"
            )
        self._stack = list(snapshot.stack)
        self._allocated = bytearray(snapshot.allocated)
        self._high_water_mark = snapshot.high_water_mark

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed for ``num_tokens`` tokens (whole blocks, rounded up)."""
        return blocks_needed(num_tokens, self._block_size)

    def is_allocated(self, block: int) -> bool:
        """Whether ``block`` is handed out; False for indices outside this allocator."""
        return 0 <= block < self.total_blocks and bool(self._allocated[block])

    def alloc(self, num_tokens: int) -> list[int] | None:
        """Blocks covering ``num_tokens`` tokens, or None when not enough are free."""
        if num_tokens <= 0:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        count = blocks_needed(num_tokens, self._block_size)
        stack = self._stack
        if count > len(stack):
            return None
        blocks = stack[-count:]
        del stack[-count:]
        blocks.reverse()
        allocated = self._allocated
        for block in blocks:
            allocated[block] = 1
        self._high_water_mark = max(self._high_water_mark, len(allocated) - len(stack))
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        """Return blocks; on a double, duplicate or foreign free raises ``BlockFreeError``
        and changes nothing, so a caller's bug cannot corrupt the free list."""
        seen: set[int] = set()
        allocated = self._allocated
        for block in blocks:
            if not 0 <= block < len(allocated):
                raise BlockFreeError(f"block {block} is not one of {len(allocated)} blocks")
            if not allocated[block] or block in seen:
                raise BlockFreeError(f"block {block} is not allocated (double free)")
            seen.add(block)
        for block in blocks:
            allocated[block] = 0
        self._stack.extend(reversed(blocks))
