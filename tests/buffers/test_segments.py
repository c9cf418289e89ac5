from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.layout import KINDS, BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.buffers.segments import RegionLike, count_runs, plan_segments
from embxfer.transport.base import Segment

from .helpers import SMALL, make_payload, send_piece


def stored(num_tokens: int, blocks: Sequence[int]) -> tuple[MetadataBuffers, EmbeddingPayload]:
    sender = MetadataBuffers(SMALL)
    payload = make_payload(num_tokens)
    sender.store(blocks, payload)
    return sender, payload


def received(
    receiver: MetadataBuffers, blocks: Sequence[int], payload: EmbeddingPayload
) -> EmbeddingPayload:
    """What landed in ``blocks``, with the delta the sender reports in PieceWritten."""
    return receiver.view_payload(blocks, payload.num_tokens, payload.mrope_position_delta)


def test_fresh_allocators_give_two_segments() -> None:
    src = FreeListAllocator(SMALL.num_blocks, SMALL.block_size).alloc(30)
    dst = FreeListAllocator(SMALL.num_blocks, SMALL.block_size).alloc(40)
    assert src is not None and dst is not None
    sender, payload = stored(30, src)
    receiver = MetadataBuffers(SMALL)
    segments = send_piece(sender, receiver, src, dst, 30)
    assert [segment.length for segment in segments] == [8 * 2 * 30, 4 * 4 * 30]
    assert received(receiver, dst, payload).equals(payload)


def test_shifted_run_is_still_one_segment_per_kind() -> None:
    sender, payload = stored(12, [0, 1, 2])
    receiver = MetadataBuffers(SMALL)
    segments = send_piece(sender, receiver, [0, 1, 2], [9, 10, 11], 12)
    assert len(segments) == len(KINDS) == 2
    assert received(receiver, [9, 10, 11], payload).equals(payload)


def test_scattered_blocks_split_into_runs() -> None:
    src, dst = [0, 1, 2, 3, 7], [4, 5, 9, 10, 11]  # runs: 0-1 -> 4-5, 2-3 -> 9-10, 7 -> 11
    sender, payload = stored(18, src)
    receiver = MetadataBuffers(SMALL)
    receiver.poison()
    segments = send_piece(sender, receiver, src, dst, 18)
    assert count_runs(src, dst, len(src)) == 3
    assert len(segments) == 3 * len(KINDS)
    for i, kind in enumerate(KINDS):
        lengths = [segment.length for segment in segments[3 * i : 3 * i + 3]]
        assert lengths == [n * SMALL.token_bytes(kind) for n in (8, 8, 2)]
    assert received(receiver, dst, payload).equals(payload)
    assert receiver.is_poisoned([b for b in range(SMALL.num_blocks) if b not in dst])


def test_a_later_piece_lands_at_its_offset_only() -> None:
    sender, payload = stored(12, [0, 1, 2])
    receiver = MetadataBuffers(SMALL)
    receiver.poison()
    send_piece(sender, receiver, [1, 2], [5, 6], 8)  # tokens [4, 12): a resume's piece
    assert receiver.view_payload([5, 6], 8).fill_ids.equal(payload.fill_ids[4:])
    assert receiver.view_payload([5, 6], 8).mrope_positions.equal(payload.mrope_positions[4:])
    assert receiver.is_poisoned([b for b in range(SMALL.num_blocks) if b not in (5, 6)])


def test_count_runs_looks_only_at_needed_blocks() -> None:
    assert count_runs([0, 1, 5], [0, 1, 2], 2) == 1
    assert count_runs([0, 1, 5], [0, 1, 2], 3) == 2
    assert count_runs([3, 2, 1], [0, 1, 2], 3) == 3


def plan(
    src: Sequence[int],
    dst: Sequence[int],
    num_tokens: int = 8,
    remote: Sequence[RegionLike] | None = None,
) -> list[Segment]:
    regions = MetadataBuffers(SMALL).regions()
    return plan_segments(
        regions,
        regions if remote is None else remote,
        SMALL,
        src,
        dst,
        num_tokens,
        remote_num_blocks=8,
    )


@pytest.mark.parametrize(
    ("src", "dst", "num_tokens", "message"),
    [
        ([0, 1], [7, 8], 8, r"destination blocks: .*\[0, 8\)"),  # past the receiver's end
        ([0, 1], [-1, 0], 8, r"destination blocks: .*\[0, 8\)"),
        ([0, 32], [0, 1], 8, r"source blocks: .*\[0, 32\)"),
        ([0, 1], [0], 8, "destination blocks: 2 blocks needed, 1 given"),
        ([0], [0, 1], 8, "source blocks: 2 blocks needed, 1 given"),
        ([0], [0], 0, "num_tokens"),
    ],
)
def test_rejects_blocks_outside_geometry(
    src: list[int], dst: list[int], num_tokens: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan(src, dst, num_tokens)


def test_accepts_last_block_of_receiver() -> None:
    assert plan([0, 1], [6, 7])


def test_rejects_regions_that_disagree_with_layout() -> None:
    other = MetadataBuffers(BufferLayout(num_blocks=8, block_size=4, hidden_size=16)).regions()
    with pytest.raises(ValueError, match="embeddings blocks of 128 bytes"):
        plan([0, 1], [0, 1], remote=other)
    regions = MetadataBuffers(SMALL).regions()
    with pytest.raises(ValueError, match="each of"):
        plan([0, 1], [0, 1], remote=regions[:1])
    with pytest.raises(ValueError, match="each of"):
        plan([0, 1], [0, 1], remote=[*regions, regions[0]])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_blocks_transfer_byte_exact(data: st.DataObject) -> None:
    num_tokens = data.draw(st.integers(1, 48))
    count = SMALL.tokens_to_blocks(num_tokens)
    src = data.draw(st.permutations(range(SMALL.num_blocks)))[:count]
    dst = data.draw(st.permutations(range(SMALL.num_blocks)))[:count]
    sender, payload = stored(num_tokens, src)
    receiver = MetadataBuffers(SMALL)
    segments = send_piece(sender, receiver, src, dst, num_tokens)
    assert len(segments) == count_runs(src, dst, count) * len(KINDS)
    assert received(receiver, dst, payload).equals(payload)
