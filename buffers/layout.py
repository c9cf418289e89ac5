"""Geometry of the metadata buffers: which kinds exist and how many bytes each block holds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import torch

from embxfer.fsm.memory import blocks_needed

TokenKind = Literal["embeddings", "fill_ids", "mrope_positions"]
Kind = Literal["embeddings", "fill_ids", "mrope_positions", "aux"]

TOKEN_KINDS: Final[tuple[TokenKind, ...]] = ("embeddings", "fill_ids", "mrope_positions")
AUX_KIND: Final = "aux"
ALL_KINDS: Final[tuple[Kind, ...]] = (*TOKEN_KINDS, AUX_KIND)

AUX_FIELDS: Final = 8
"""int64 values in a block's aux record: total tokens, mrope position delta, hidden size, spare."""

MROPE_AXES: Final = 3
"""M-RoPE positions per token (temporal, height, width)."""


class Region(NamedTuple):
    """One kind's buffer as peers address it: block ``b`` starts at
    ``base_address + b * block_bytes``."""

    kind: Kind
    base_address: int
    block_bytes: int


@dataclass(frozen=True, slots=True)
class BufferLayout:
    """Both sides of a transfer must agree on this geometry for one-sided writes to land."""

    num_blocks: int
    block_size: int = 128
    hidden_size: int = 4096
    embedding_dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"

    def __post_init__(self) -> None:
        if min(self.num_blocks, self.block_size, self.hidden_size) <= 0:
            raise ValueError(f"num_blocks, block_size and hidden_size must be positive: {self}")

    def token_shape(self, kind: TokenKind) -> tuple[int, ...]:
        """Shape of one token's values of ``kind``."""
        # Branches rather than a dict built per call: this runs several times per write.
        if kind == "embeddings":
            return (self.hidden_size,)
        if kind == "fill_ids":
            return ()
        if kind == "mrope_positions":
            return (MROPE_AXES,)
        raise KeyError(kind)

    def dtype(self, kind: Kind) -> torch.dtype:
        """Element type stored for ``kind``."""
        if kind == "embeddings":
            return self.embedding_dtype
        if kind == "fill_ids" or kind == "mrope_positions":
            return torch.int32
        if kind == "aux":
            return torch.int64
        raise KeyError(kind)

    def token_bytes(self, kind: TokenKind) -> int:
        """Bytes one token of ``kind`` takes."""
        return math.prod(self.token_shape(kind)) * self.dtype(kind).itemsize

    def block_bytes(self, kind: Kind) -> int:
        """Bytes one block of ``kind`` takes: the stride between blocks in that buffer."""
        if kind == AUX_KIND:
            return AUX_FIELDS * self.dtype(kind).itemsize
        return self.block_size * self.token_bytes(kind)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes over every token kind: what a transfer moves per token."""
        return sum(self.token_bytes(kind) for kind in TOKEN_KINDS)

    @property
    def bytes_per_block(self) -> int:
        """Memory one block takes over every kind, aux included: sizes a pool in bytes."""
        return sum(self.block_bytes(kind) for kind in ALL_KINDS)

    def tokens_to_blocks(self, num_tokens: int) -> int:
        """Blocks needed for ``num_tokens`` tokens (whole blocks, rounded up)."""
        return blocks_needed(num_tokens, self.block_size)
