"""The per-request embedding a scheduler hands to the sender and gets back from the receiver."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from embxfer.buffers.layout import FIELDS, MROPE_AXES, BufferLayout, Field


@dataclass(frozen=True, slots=True, eq=False)
class EmbeddingPayload:
    """T tokens of embeddings with their fill ids and M-RoPE positions.

    ``eq`` is off because tensor ``==`` is elementwise; use ``equals``.
    """

    embeddings: torch.Tensor
    """(T, hidden_size) of the layout's embedding dtype."""
    fill_ids: torch.Tensor
    """(T,) int32."""
    mrope_positions: torch.Tensor
    """(T, 3) int32, token-major."""
    mrope_position_delta: int = 0

    @classmethod
    def from_embeddings(
        cls,
        embeddings: torch.Tensor,
        fill_ids: torch.Tensor | None = None,
        mrope_positions: torch.Tensor | None = None,
        mrope_position_delta: int = 0,
    ) -> EmbeddingPayload:
        """A payload with defaults for callers that only have embeddings: zero fill ids and
        positions 0..T-1 on every M-RoPE axis (plain 1-D RoPE)."""
        num_tokens, device = embeddings.shape[0], embeddings.device
        if fill_ids is None:
            fill_ids = torch.zeros(num_tokens, dtype=torch.int32, device=device)
        if mrope_positions is None:
            positions = torch.arange(num_tokens, dtype=torch.int32, device=device)
            mrope_positions = positions.unsqueeze(1).repeat(1, MROPE_AXES)
        return cls(embeddings, fill_ids, mrope_positions, mrope_position_delta)

    @classmethod
    def empty(cls, num_tokens: int, layout: BufferLayout) -> EmbeddingPayload:
        """Uninitialised tensors of ``num_tokens`` tokens as ``layout`` stores them, on
        its device: memory an encoder writes its output into."""
        embeddings, fill_ids, mrope_positions = (
            torch.empty(
                (num_tokens, *layout.field_shape(field)),
                dtype=layout.field_dtype(field),
                device=layout.device,
            )
            for field in FIELDS
        )
        return cls(embeddings, fill_ids, mrope_positions)

    @property
    def num_tokens(self) -> int:
        """T, the number of tokens."""
        return int(self.embeddings.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of all token data (what crosses the wire, aux aside)."""
        return sum(self.tensor(field).nbytes for field in FIELDS)

    def tensor(self, field: Field) -> torch.Tensor:
        """The tensor of ``field``, so buffers can treat all fields alike."""
        if field == "embeddings":
            return self.embeddings
        if field == "fill_ids":
            return self.fill_ids
        if field == "mrope_positions":
            return self.mrope_positions
        raise KeyError(field)

    def validate(self, layout: BufferLayout) -> None:
        """Raise ValueError unless every field has the shape and dtype ``layout`` stores."""
        if self.embeddings.dim() != 2:
            raise ValueError(
                f"embeddings: expected (T, hidden), got {tuple(self.embeddings.shape)}"
            )
        num_tokens = self.embeddings.shape[0]
        if num_tokens == 0:
            raise ValueError("payload has no tokens")
        for field, token_shape, dtype in field_specs(layout):
            tensor = self.tensor(field)
            if tensor.dtype != dtype or tensor.shape != (num_tokens, *token_shape):
                raise ValueError(
                    f"{field}: expected shape {(num_tokens, *token_shape)} of {dtype}, "
                    f"got {tuple(tensor.shape)} of {tensor.dtype}"
                )

    def equals(self, other: EmbeddingPayload) -> bool:
        """Byte-exact equality of every field (same shapes, dtypes and values)."""
        return self.mrope_position_delta == other.mrope_position_delta and all(
            torch.equal(self.tensor(field), other.tensor(field)) for field in FIELDS
        )


@functools.cache
def field_specs(layout: BufferLayout) -> tuple[tuple[Field, tuple[int, ...], torch.dtype], ...]:
    """(field, shape of one token's values, dtype) of every field ``layout`` stores:
    what ``validate`` checks for every payload handed over, worked out once."""
    return tuple((f, layout.field_shape(f), layout.field_dtype(f)) for f in FIELDS)


def random_payload(
    num_tokens: int, layout: BufferLayout, generator: torch.Generator
) -> EmbeddingPayload:
    """A seeded payload for demos and tests, on the CPU.

    Embeddings are random 16-bit patterns (drawn 64 bits at a time, the cheapest way torch
    offers) with bit 14 cleared: that is the top exponent bit of fp16 and bf16, so every
    value is finite and ``torch.equal`` works (NaN is unequal to itself). Wider dtypes
    get the patterns as integers, converted exactly.
    """
    shape = (num_tokens, layout.hidden_size)
    count = num_tokens * layout.hidden_size
    words = torch.empty(-(-count // 4), dtype=torch.int64)
    words.random_(-(2**63), None, generator=generator)
    bits = words.view(torch.int16)[:count].view(shape).bitwise_and_(~0x4000)
    dtype = layout.embedding_dtype
    embeddings = bits.view(dtype) if dtype.itemsize == bits.element_size() else bits.to(dtype)
    fill_ids = torch.randint(0, 1 << 20, (num_tokens,), dtype=torch.int32, generator=generator)
    positions = torch.randint(
        0, 1 << 20, (num_tokens, MROPE_AXES), dtype=torch.int32, generator=generator
    )
    delta = int(torch.randint(-num_tokens, num_tokens + 1, (), generator=generator))
    return EmbeddingPayload(embeddings, fill_ids, positions, delta)
