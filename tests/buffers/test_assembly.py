from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.assembly import StoredPiece, assemble, stage_piece
from embxfer.buffers.layout import FIELDS, PLACES
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload

from .helpers import SMALL, make_payload, send_piece

TOTAL = 30  # tokens in the room: 8 blocks of 4 on the sender


class Room:
    """A sender holding one payload and a receiver with its own allocator."""

    def __init__(self) -> None:
        self.payload = make_payload(TOTAL, seed=7)
        self.sender = MetadataBuffers(SMALL)
        self.src_blocks = list(range(8))
        self.sender.store(self.src_blocks, self.payload)
        self.receiver = MetadataBuffers(SMALL)
        self.allocator = FreeListAllocator(SMALL.num_blocks, SMALL.block_size)

    def receive(self, sent: int, tokens: int, dst: Sequence[int] | None = None) -> StoredPiece:
        """Transfer tokens [sent, sent + tokens) into fresh or given receiver blocks."""
        blocks = self.allocator.alloc(tokens) if dst is None else list(dst)
        assert blocks is not None
        first = sent // SMALL.block_size
        send_piece(self.sender, self.receiver, self.src_blocks[first:], blocks, tokens)
        return StoredPiece(sent, tokens, blocks=tuple(blocks))

    def spill(self, piece: StoredPiece) -> StoredPiece:
        """Copy a kept piece out and give its blocks back, as a receiver short of memory does."""
        assert piece.blocks is not None
        staged = stage_piece(self.receiver, piece.blocks, piece.tokens)
        self.allocator.free(piece.blocks)
        self.receiver.poison(piece.blocks)
        return StoredPiece(piece.sent_tokens, piece.tokens, staged=staged)

    def assemble(self, pieces: Sequence[StoredPiece]) -> EmbeddingPayload:
        """The result, with (T, delta) as the sender's PieceWritten reported them."""
        return assemble(self.receiver, pieces, TOTAL, self.payload.mrope_position_delta)


def inside(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    start = buffer.data_ptr()
    return start <= tensor.data_ptr() < start + buffer.numel() * buffer.element_size()


def test_single_contiguous_piece_is_returned_as_views() -> None:
    room = Room()
    result = room.assemble([room.receive(0, TOTAL)])
    assert result.equals(room.payload)
    for field in FIELDS:
        assert inside(result.tensor(field), room.receiver.tensor(PLACES[field].kind))


def test_single_scattered_piece() -> None:
    room = Room()
    result = room.assemble([room.receive(0, TOTAL, [9, 2, 3, 4, 20, 21, 22, 30])])
    assert result.equals(room.payload)
    assert not inside(result.embeddings, room.receiver.tensor("embeddings"))


def test_two_kept_pieces_in_one_run_of_blocks_are_views_too() -> None:
    room = Room()
    pieces = [room.receive(0, 16), room.receive(16, 14)]  # blocks 0-3, then 4-7
    result = room.assemble(pieces)
    assert result.equals(room.payload)
    assert inside(result.embeddings, room.receiver.tensor("embeddings"))


def test_two_kept_pieces_out_of_order_blocks_are_joined() -> None:
    room = Room()
    pieces = [room.receive(0, 16, [4, 5, 6, 7]), room.receive(16, 14, [0, 1, 2, 3])]
    result = room.assemble(pieces)
    assert result.equals(room.payload)
    assert not inside(result.embeddings, room.receiver.tensor("embeddings"))


def test_three_pieces_staged_and_kept_in_any_order() -> None:
    room = Room()
    first = room.receive(0, 8)
    second = room.receive(8, 12)
    first = room.spill(first)
    third = room.receive(20, 10)  # reuses the first piece's freed (and poisoned) blocks
    assert third.blocks == (0, 1, 5)
    assert room.assemble([third, first, second]).equals(room.payload)


def test_all_pieces_staged() -> None:
    room = Room()
    kept = [room.receive(0, 12), room.receive(12, 12), room.receive(24, 6)]
    pieces = [room.spill(piece) for piece in kept]
    assert room.receiver.is_poisoned(range(8))
    assert room.assemble(pieces).equals(room.payload)


def test_staged_piece_is_a_copy() -> None:
    room = Room()
    piece = room.receive(0, 8)
    assert piece.blocks is not None
    staged = stage_piece(room.receiver, piece.blocks, 8)
    room.receiver.poison(piece.blocks)
    assert torch.equal(staged.fill_ids, room.payload.fill_ids[:8])


@pytest.mark.parametrize(
    ("ranges", "total", "message"),
    [
        ([(0, 10), (12, 18)], 30, "gap or overlap at token 10"),
        ([(0, 12), (10, 20)], 30, "gap or overlap at token 12"),
        ([(4, 26)], 30, "gap or overlap at token 0"),
        ([(0, 10), (10, 10)], 30, "cover 20 tokens, room has 30"),
        ([], 30, "cover 0 tokens"),
    ],
)
def test_pieces_must_tile_the_room(ranges: list[tuple[int, int]], total: int, message: str) -> None:
    payload = make_payload(30)
    pieces = [
        StoredPiece(sent, tokens, staged=stage_like(payload, sent, tokens))
        for sent, tokens in ranges
    ]
    with pytest.raises(ValueError, match=message):
        assemble(MetadataBuffers(SMALL), pieces, total, 0)


def stage_like(payload: EmbeddingPayload, sent: int, tokens: int) -> EmbeddingPayload:
    end = sent + tokens
    return EmbeddingPayload(
        payload.embeddings[sent:end], payload.fill_ids[sent:end], payload.mrope_positions[sent:end]
    )


def test_piece_is_kept_or_staged() -> None:
    staged = make_payload(4)
    with pytest.raises(ValueError, match="either"):
        StoredPiece(0, 4)
    with pytest.raises(ValueError, match="either"):
        StoredPiece(0, 4, blocks=(0,), staged=staged)
    with pytest.raises(ValueError, match="4 tokens, not 5"):
        StoredPiece(0, 5, staged=staged)
    with pytest.raises(ValueError, match="bad piece range"):
        StoredPiece(-1, 4, blocks=(0,))
