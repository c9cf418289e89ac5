"""What a room needs from its engine's memory: blocks now if that is fair, or a turn.

Rooms never allocate past other rooms. ``take`` hands out blocks at once only when
no room is waiting ahead and enough are free; otherwise the room emits
``WaitForMemory`` and its engine grants it blocks later, in turn, as a
``MemoryGranted`` event. The engines implement it over any block allocator (the fair
pool of the memory layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks covering ``num_tokens`` tokens (whole blocks, rounded up)."""
    return -(-num_tokens // block_size)


class BlockPool(Protocol):
    """The memory interface of a room machine."""

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        ...

    @property
    def total_blocks(self) -> int:
        """Blocks the pool manages: a floor above this can never be granted."""
        ...

    def take(self, tokens: int, floor_tokens: int) -> list[int] | None:
        """Blocks for ``tokens`` tokens, or for at least ``floor_tokens`` (as many as are
        free, up to ``tokens``), if nobody waits ahead; else None."""
        ...

    def free(self, blocks: Sequence[int]) -> None:
        """Give blocks back; the engine then serves the rooms that wait, in turn."""
        ...
