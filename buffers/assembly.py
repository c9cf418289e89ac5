"""The receiver's side of a multi-piece transfer: pieces kept in blocks or spilled, joined."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from embxfer.buffers.blocks import contiguous_start
from embxfer.buffers.layout import FIELDS
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload


@dataclass(frozen=True, slots=True)
class StoredPiece:
    """Tokens ``[sent_tokens, sent_tokens + tokens)`` of a room: either still in ``blocks``
    of the receiver's buffers (no copy) or ``staged`` out of them (its delta is unused)."""

    sent_tokens: int
    tokens: int
    blocks: tuple[int, ...] | None = None
    staged: EmbeddingPayload | None = None

    def __post_init__(self) -> None:
        if self.sent_tokens < 0 or self.tokens <= 0:
            raise ValueError(f"bad piece range: offset {self.sent_tokens}, {self.tokens} tokens")
        if (self.blocks is None) == (self.staged is None):
            raise ValueError("a piece is either kept in blocks or staged, not both or neither")
        if self.staged is not None and self.staged.num_tokens != self.tokens:
            raise ValueError(f"staged piece has {self.staged.num_tokens} tokens, not {self.tokens}")

    def payload(self, buffers: MetadataBuffers) -> EmbeddingPayload:
        """This piece's tokens, views into ``buffers`` when kept in a run."""
        if self.staged is not None:
            return self.staged
        assert self.blocks is not None  # __post_init__ guarantees one of the two
        return buffers.view_payload(self.blocks, self.tokens)


def stage_piece(buffers: MetadataBuffers, blocks: Sequence[int], tokens: int) -> EmbeddingPayload:
    """Copy a piece out of ``blocks`` into memory of its own, so the blocks can be freed
    and reused (spilling) while the piece waits for the rest of the room."""
    return buffers.view_payload(blocks, tokens, copy=True)


def assemble(
    buffers: MetadataBuffers,
    pieces: Sequence[StoredPiece],
    total_tokens: int,
    mrope_position_delta: int,
) -> EmbeddingPayload:
    """Join ``pieces`` in offset order into the room's ``total_tokens`` tokens.

    ``total_tokens`` and ``mrope_position_delta`` are what the sender reported with the
    pieces. Pieces kept in blocks that form one ascending run together (one piece in one
    run, or a resume whose blocks follow the first piece's) come back as views into
    ``buffers``, without a copy: those stay valid only until the room's blocks are
    released. Raises ValueError unless the pieces tile ``[0, total_tokens)`` exactly.
    """
    ordered = sorted(pieces, key=lambda piece: piece.sent_tokens)
    covered = 0
    for piece in ordered:
        if piece.sent_tokens != covered:
            raise ValueError(f"pieces leave a gap or overlap at token {covered}")
        covered += piece.tokens
    if covered != total_tokens or not ordered:
        raise ValueError(f"pieces cover {covered} tokens, room has {total_tokens}")
    size = buffers.layout.block_size
    blocks = [block for piece in ordered for block in piece.blocks or ()]
    if (
        all(piece.blocks for piece in ordered)
        and all(len(piece.blocks or ()) * size == piece.tokens for piece in ordered[:-1])
        and contiguous_start(blocks) is not None
    ):  # the pieces' blocks, each but the last full, hold the room's tokens in order
        return buffers.view_payload(blocks, total_tokens, mrope_position_delta)
    parts = [piece.payload(buffers) for piece in ordered]
    embeddings, fill_ids, mrope_positions = (
        _join([part.tensor(field) for part in parts]) for field in FIELDS
    )
    return EmbeddingPayload(embeddings, fill_ids, mrope_positions, mrope_position_delta)


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    """One part as is (keeps a view a view), several concatenated."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class PieceRecord(Protocol):
    """A received piece as the receiver room records it: kept in ``blocks``, or spilled
    (``blocks`` empty) and then staged under its ``sent_tokens``."""

    @property
    def sent_tokens(self) -> int: ...

    @property
    def tokens(self) -> int: ...

    @property
    def blocks(self) -> tuple[int, ...]: ...


def assemble_room(
    buffers: MetadataBuffers,
    pieces: Sequence[PieceRecord],
    staged: Mapping[int, EmbeddingPayload],
    total_tokens: int,
    mrope_position_delta: int,
) -> EmbeddingPayload:
    """A receiver room's result: kept pieces read in place, spilled ones from ``staged``;
    the length and M-RoPE delta as the sender's ``PieceWritten`` reported them (the room
    keeps both). Raises ValueError if the pieces do not tile ``[0, total_tokens)``."""
    if len(pieces) == 1:  # one piece kept in its blocks: what ``assemble`` would return
        (piece,) = pieces
        if piece.blocks and piece.sent_tokens == 0 and piece.tokens == total_tokens:
            return buffers.view_payload(piece.blocks, total_tokens, mrope_position_delta)
    stored = [
        StoredPiece(p.sent_tokens, p.tokens, blocks=p.blocks)
        if p.blocks
        else StoredPiece(p.sent_tokens, p.tokens, staged=staged[p.sent_tokens])
        for p in pieces
    ]
    return assemble(buffers, stored, total_tokens, mrope_position_delta)
