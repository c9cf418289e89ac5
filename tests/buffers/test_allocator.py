from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embxfer.buffers.allocator import BlockAllocator, BlockFreeError, FreeListAllocator


def snapshot(allocator: FreeListAllocator) -> tuple[int, list[bool], int]:
    """Everything observable, to show a rejected call changed nothing."""
    owned = [allocator.is_allocated(b) for b in range(allocator.total_blocks)]
    return allocator.free_blocks, owned, allocator.high_water_mark


def test_satisfies_protocol() -> None:
    allocator: BlockAllocator = FreeListAllocator(4, block_size=16)
    assert allocator.block_size == 16
    assert allocator.free_blocks == 4


def test_fresh_allocator_hands_out_consecutive_blocks() -> None:
    allocator = FreeListAllocator(16, block_size=4)
    assert allocator.alloc(10) == [0, 1, 2]
    assert allocator.alloc(4) == [3]
    assert allocator.alloc(17) == [4, 5, 6, 7, 8]


def test_freed_blocks_come_back_first_in_order() -> None:
    allocator = FreeListAllocator(16, block_size=4)
    assert allocator.alloc(32) == list(range(8))
    allocator.free([5, 6, 7])
    assert allocator.alloc(12) == [5, 6, 7]
    assert allocator.alloc(4) == [8]


def test_same_indices_return_after_free() -> None:
    allocator = FreeListAllocator(64, block_size=128)
    blocks = allocator.alloc(8192)
    assert blocks is not None
    allocator.free(blocks)
    assert allocator.alloc(8192) == blocks


def test_counters_and_high_water_mark() -> None:
    allocator = FreeListAllocator(10, block_size=128)
    assert allocator.blocks_for(2000) == 16
    assert allocator.blocks_for(1024) == 8
    first = allocator.alloc(129)
    second = allocator.alloc(3 * 128)
    assert first is not None and second is not None
    assert (allocator.used_blocks, allocator.free_blocks) == (5, 5)
    assert allocator.free_tokens == 5 * 128
    allocator.free(second)
    assert (allocator.used_blocks, allocator.high_water_mark) == (2, 5)


def test_free_order_is_the_order_blocks_come_back() -> None:
    allocator = FreeListAllocator(4, block_size=1)
    assert allocator.alloc(3) == [0, 1, 2]
    allocator.free([1, 0])
    assert allocator.free_order == (1, 0, 3)
    assert allocator.alloc(3) == [1, 0, 3]


def test_restore_puts_back_what_the_snapshot_took() -> None:
    allocator = FreeListAllocator(8, block_size=2)
    allocator.alloc(6)
    allocator.free([1])
    taken, before = allocator.snapshot(), snapshot(allocator)
    order = allocator.free_order
    allocator.free([0, 2])
    allocator.alloc(16)
    allocator.restore(taken)
    assert (snapshot(allocator), allocator.free_order) == (before, order)
    with pytest.raises(ValueError, match="4 blocks"):
        allocator.restore(FreeListAllocator(4).snapshot())


def test_returns_none_when_full_and_changes_nothing() -> None:
    allocator = FreeListAllocator(4, block_size=4)
    assert allocator.alloc(12) == [0, 1, 2]
    before = snapshot(allocator)
    assert allocator.alloc(5) is None
    assert snapshot(allocator) == before
    assert allocator.alloc(4) == [3]


@pytest.mark.parametrize("num_tokens", [0, -1])
def test_rejects_non_positive_tokens(num_tokens: int) -> None:
    with pytest.raises(ValueError):
        FreeListAllocator(4).alloc(num_tokens)


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0)])
def test_rejects_bad_geometry(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError):
        FreeListAllocator(num_blocks, block_size)


@pytest.mark.parametrize(
    "bad_free",
    [
        [3],  # never allocated
        [0, 3],  # one good block, then one never allocated
        [1, 1],  # duplicate inside one call
        [2, 16],  # past the end
        [-1],  # negative
    ],
)
def test_bad_free_raises_and_changes_nothing(bad_free: list[int]) -> None:
    allocator = FreeListAllocator(16, block_size=4)
    assert allocator.alloc(12) == [0, 1, 2]
    before = snapshot(allocator)
    with pytest.raises(BlockFreeError):
        allocator.free(bad_free)
    assert snapshot(allocator) == before
    assert allocator.alloc(4) == [3]


def test_double_free_raises() -> None:
    allocator = FreeListAllocator(8, block_size=4)
    blocks = allocator.alloc(8)
    assert blocks is not None
    allocator.free(blocks)
    with pytest.raises(BlockFreeError, match="double free"):
        allocator.free(blocks)
    assert issubclass(BlockFreeError, ValueError)


def test_is_allocated_outside_range_is_false() -> None:
    allocator = FreeListAllocator(2)
    assert not allocator.is_allocated(-1)
    assert not allocator.is_allocated(2)


# An operation is ("alloc", tokens) or ("free", which held allocation to free).
operations = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, 40)),
        st.tuples(st.just("free"), st.integers(0, 1000)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_matches_set_model(ops: list[tuple[str, int]]) -> None:
    allocator = FreeListAllocator(24, block_size=4)
    free = set(range(24))
    held: list[list[int]] = []
    high = 0
    for op, value in ops:
        if op == "alloc":
            blocks = allocator.alloc(value)
            needed = -(-value // 4)
            if needed > len(free):
                assert blocks is None
                continue
            assert blocks is not None and len(blocks) == needed
            assert set(blocks) <= free and len(set(blocks)) == needed
            free -= set(blocks)
            held.append(blocks)
        elif held:
            blocks = held.pop(value % len(held))
            allocator.free(blocks)
            free |= set(blocks)
            assert allocator.alloc(len(blocks) * 4) == blocks  # LIFO reuse
            allocator.free(blocks)
            with pytest.raises(BlockFreeError):
                allocator.free(blocks[:1])
        high = max(high, 24 - len(free))
        assert allocator.free_blocks == len(free)
        assert allocator.high_water_mark == high
        assert all(allocator.is_allocated(b) != (b in free) for b in range(24))
