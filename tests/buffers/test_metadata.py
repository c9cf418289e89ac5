from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embxfer.buffers.layout import KINDS
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload

from .helpers import SMALL, make_payload


def read_back(buffers: MetadataBuffers, blocks: list[int], num_tokens: int) -> EmbeddingPayload:
    _, delta = buffers.read_aux(blocks[0])
    return buffers.view_payload(blocks, num_tokens, delta)


def shares_memory(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    ("blocks", "num_tokens"),
    [
        ([0], 4),  # one full block
        ([2, 3, 4], 10),  # contiguous, partial last block
        ([9, 10, 11, 12], 16),  # contiguous, all full
        ([7, 1, 12], 9),  # scattered, partial last block
        ([5, 4, 3], 12),  # descending is not a run
        ([3, 4, 6, 7, 20], 17),  # runs with a gap
    ],
)
def test_store_then_view_round_trips(blocks: list[int], num_tokens: int) -> None:
    buffers = MetadataBuffers(SMALL)
    payload = make_payload(num_tokens)
    buffers.store(blocks, payload)
    assert read_back(buffers, blocks, num_tokens).equals(payload)
    assert buffers.read_aux(blocks[0]) == (num_tokens, payload.mrope_position_delta)


def test_extra_blocks_are_ignored() -> None:
    buffers = MetadataBuffers(SMALL)
    payload = make_payload(5)
    buffers.store([0, 1, 2, 3], payload)
    assert read_back(buffers, [0, 1, 2, 3], 5).equals(payload)


def test_contiguous_view_is_a_view_and_scattered_is_a_copy() -> None:
    buffers = MetadataBuffers(SMALL)
    buffers.store([2, 3, 4], make_payload(10))
    buffers.store([8, 6], make_payload(6))
    for field, kind in (
        ("embeddings", "embeddings"),
        ("fill_ids", "fill_mrope"),
        ("mrope_positions", "fill_mrope"),
    ):
        whole = buffers.tensor(kind)
        assert shares_memory(buffers.view_payload([2, 3, 4], 10).tensor(field), whole)
        run_copy = buffers.view_payload([2, 3, 4], 10, copy=True)
        assert not shares_memory(run_copy.tensor(field), whole)
        assert not shares_memory(buffers.view_payload([8, 6], 6).tensor(field), whole)


def test_a_view_of_one_run_is_writable_in_place() -> None:
    buffers = MetadataBuffers(SMALL)
    payload = make_payload(10)
    views = buffers.view_payload([2, 3, 4], 10)
    for field in ("embeddings", "fill_ids", "mrope_positions"):
        views.tensor(field).copy_(payload.tensor(field))
    assert buffers.view_payload([2, 3, 4], 10, payload.mrope_position_delta).equals(payload)


def test_store_writes_only_its_tokens() -> None:
    buffers = MetadataBuffers(SMALL)
    buffers.poison()
    buffers.store([7, 1, 12], make_payload(9))
    untouched = [b for b in range(SMALL.num_blocks) if b not in (7, 1, 12)]
    assert buffers.is_poisoned(untouched)
    assert not buffers.is_poisoned([12])
    tail = buffers.tensor("fill_mrope")[12, 1:].flatten().view(torch.uint8)
    assert bool((tail == 0xA5).all())  # slots past token 9 are left alone


def test_poison_marks_only_given_blocks() -> None:
    buffers = MetadataBuffers(SMALL)
    buffers.poison([3, 5])
    assert buffers.is_poisoned([3, 5])
    assert not buffers.is_poisoned([3, 4])
    buffers.store([5], make_payload(1))
    assert not buffers.is_poisoned([5])


@pytest.mark.parametrize(
    ("blocks", "message"),
    [([1, 2], "3 blocks needed"), ([1, -1, 2], r"\[0, 32\)"), ([1, 2, 32], r"\[0, 32\)")],
)
def test_store_rejects_bad_blocks(blocks: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetadataBuffers(SMALL).store(blocks, make_payload(9))


def test_rejects_bad_blocks_everywhere() -> None:
    buffers = MetadataBuffers(SMALL)
    with pytest.raises(ValueError):
        buffers.view_payload([-1], 2)
    with pytest.raises(ValueError):
        buffers.poison([32])
    with pytest.raises(ValueError):
        buffers.is_poisoned([-2])
    with pytest.raises(ValueError):
        buffers.read_aux(-1)


def test_store_validates_payload() -> None:
    payload = EmbeddingPayload.from_embeddings(torch.zeros(3, 9, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="embeddings"):
        MetadataBuffers(SMALL).store([0], payload)


def test_regions_describe_block_addresses() -> None:
    buffers = MetadataBuffers(SMALL)
    regions = buffers.regions()
    assert [kind for kind, _, _ in regions] == list(KINDS)
    for kind, base, block_bytes in regions:
        tensor = buffers.tensor(kind)
        assert block_bytes == SMALL.block_bytes(kind)
        assert tensor[5].data_ptr() == base + 5 * block_bytes
    assert buffers.memory_ranges() == [
        (base, SMALL.num_blocks * block_bytes) for _, base, block_bytes in regions
    ]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_round_trip_any_blocks(data: st.DataObject) -> None:
    num_tokens = data.draw(st.integers(1, 40))
    count = SMALL.tokens_to_blocks(num_tokens)
    blocks = data.draw(st.permutations(range(SMALL.num_blocks)))[:count]
    buffers = MetadataBuffers(SMALL)
    payload = make_payload(num_tokens, seed=num_tokens)
    buffers.store(blocks, payload)
    assert read_back(buffers, blocks, num_tokens).equals(payload)
