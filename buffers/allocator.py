"""Block allocation: hands out block indices for a number of tokens and takes them back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class BlockAllocator(Protocol):
    """What a room needs from an allocator. Implementations need not be thread-safe:
    each engine calls its allocator from one thread."""

    @property
    def block_size(self) -> int:
        """Tokens per block."""
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
