"""Geometry of the metadata buffers: which kinds exist, how many bytes each block holds,
and where each field of an embedding payload lives in them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import torch

from embxfer.fsm.memory import blocks_needed

Kind = Literal["embeddings", "fill_mrope"]
Field = Literal["embeddings", "fill_ids", "mrope_positions"]

KINDS: Final[tuple[Kind, ...]] = ("embeddings", "fill_mrope")
"""The buffers a peer writes into, one segment each per run of blocks: a tiny room's
piece is two writes. ``fill_mrope`` holds four int32 per token, the fill id and then the
three M-RoPE positions, so that those two small fields cost one write, not two."""

FIELDS: Final[tuple[Field, ...]] = ("embeddings", "fill_ids", "mrope_positions")
"""The fields of an embedding payload, as schedulers hand them over and get them back."""

MROPE_AXES: Final = 3
"""M-RoPE positions per token (temporal, height, width)."""

AUX_FIELDS: Final = 8
"""int64 values in a block's aux record: total tokens, mrope position delta, hidden size,
spare. Host memory of the encoder's scheduler (SGLang's ``aux_index``), never written to
a peer: a room's length and delta travel in its ``PieceWritten`` messages."""


class Region(NamedTuple):
    """One kind's buffer as peers address it: block ``b`` starts at
    ``base_address + b * block_bytes``."""

    kind: Kind
    base_address: int
    block_bytes: int


class Place(NamedTuple):
    """Where a payload field lives: in buffer ``kind``, in ``columns`` of each token's row
    (None: the whole row)."""

    kind: Kind
    columns: int | slice | None


PLACES: Final[dict[Field, Place]] = {
    "embeddings": Place("embeddings", None),
    "fill_ids": Place("fill_mrope", 0),
    "mrope_positions": Place("fill_mrope", slice(1, 1 + MROPE_AXES)),
}


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

    def token_shape(self, kind: Kind) -> tuple[int, ...]:
        """Shape of one token's values of ``kind``."""
        # Branches rather than a dict built per call: this runs several times per write.
        if kind == "embeddings":
            return (self.hidden_size,)
        if kind == "fill_mrope":
            return (1 + MROPE_AXES,)
        raise KeyError(kind)

    def dtype(self, kind: Kind) -> torch.dtype:
        """Element type stored for ``kind``."""
        if kind == "embeddings":
            return self.embedding_dtype
        if kind == "fill_mrope":
            return torch.int32
        raise KeyError(kind)

    def field_shape(self, field: Field) -> tuple[int, ...]:
        """Shape of one token's values of payload ``field``."""
        if field == "embeddings":
            return (self.hidden_size,)
        if field == "fill_ids":
            return ()
        if field == "mrope_positions":
            return (MROPE_AXES,)
        raise KeyError(field)

    def field_dtype(self, field: Field) -> torch.dtype:
        """Element type of payload ``field``: that of the buffer it lives in."""
        return self.dtype(PLACES[field].kind)

    def token_bytes(self, kind: Kind) -> int:
        """Bytes one token of ``kind`` takes."""
        return math.prod(self.token_shape(kind)) * self.dtype(kind).itemsize

    def block_bytes(self, kind: Kind) -> int:
        """Bytes one block of ``kind`` takes: the stride between blocks in that buffer."""
        return self.block_size * self.token_bytes(kind)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes over every kind: what a transfer moves per token."""
        return sum(self.token_bytes(kind) for kind in KINDS)

    @property
    def aux_bytes(self) -> int:
        """Bytes of one block's aux record (host memory, never transferred)."""
        return AUX_FIELDS * torch.int64.itemsize

    @property
    def bytes_per_block(self) -> int:
        """Memory one block takes over every kind, its aux record included: sizes a pool
        in bytes."""
        return sum(self.block_bytes(kind) for kind in KINDS) + self.aux_bytes

    def tokens_to_blocks(self, num_tokens: int) -> int:
        """Blocks needed for ``num_tokens`` tokens (whole blocks, rounded up)."""
        return blocks_needed(num_tokens, self.block_size)
