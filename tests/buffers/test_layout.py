from __future__ import annotations

import pytest
import torch

from embxfer.buffers.layout import FIELDS, KINDS, PLACES, BufferLayout


def test_kinds_in_wire_order() -> None:
    assert KINDS == ("embeddings", "fill_mrope")
    assert FIELDS == ("embeddings", "fill_ids", "mrope_positions")


def test_fill_ids_and_positions_share_one_kind_four_int32_per_token() -> None:
    assert [PLACES[field].kind for field in FIELDS] == ["embeddings", "fill_mrope", "fill_mrope"]
    assert PLACES["fill_ids"].columns == 0
    assert PLACES["mrope_positions"].columns == slice(1, 4)


def test_default_geometry() -> None:
    layout = BufferLayout(num_blocks=64)
    assert layout.token_bytes("embeddings") == 4096 * 2
    assert layout.token_bytes("fill_mrope") == 16
    assert layout.block_bytes("embeddings") == 128 * 4096 * 2
    assert layout.block_bytes("fill_mrope") == 128 * 16
    assert layout.bytes_per_token == 4096 * 2 + 16
    assert layout.aux_bytes == 64  # host memory beside each block, never written to a peer
    assert layout.bytes_per_block == 128 * (4096 * 2 + 16) + 64


def test_embedding_dtype_sets_token_bytes() -> None:
    layout = BufferLayout(num_blocks=1, hidden_size=10, embedding_dtype=torch.float32)
    assert layout.token_bytes("embeddings") == 40


@pytest.mark.parametrize(("tokens", "blocks"), [(1, 1), (128, 1), (129, 2), (976, 8), (2000, 16)])
def test_tokens_to_blocks_rounds_up(tokens: int, blocks: int) -> None:
    assert BufferLayout(num_blocks=1).tokens_to_blocks(tokens) == blocks


@pytest.mark.parametrize(
    ("num_blocks", "block_size", "hidden_size"), [(0, 4, 4), (4, 0, 4), (4, 4, -1)]
)
def test_rejects_non_positive_sizes(num_blocks: int, block_size: int, hidden_size: int) -> None:
    with pytest.raises(ValueError):
        BufferLayout(num_blocks, block_size, hidden_size)
