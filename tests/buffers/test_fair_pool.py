"""The fair pool: first come, first served; the head keeps what is freed for it."""

from __future__ import annotations

import pytest

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.fair_pool import Ask, FairPool

BLOCK = 4


def pool(blocks: int) -> FairPool[str]:
    return FairPool(FreeListAllocator(blocks, BLOCK))


def serve(memory: FairPool[str]) -> list[tuple[str, int]]:
    """Grant in turn while the head fits, as an engine does after blocks come back."""
    granted = []
    while (waiter := memory.ready()) is not None:
        granted.append((waiter, len(memory.grant(waiter))))
    return granted


def test_take_serves_at_once_while_nobody_waits() -> None:
    memory = pool(8)
    assert memory.take(5 * BLOCK, 5 * BLOCK) == [0, 1, 2, 3, 4]
    assert memory.take(4 * BLOCK, 4 * BLOCK) is None  # 3 free: all or nothing
    assert memory.take(4 * BLOCK, 2 * BLOCK) == [5, 6, 7]  # the floor fits: all that is free


def test_nobody_passes_a_waiting_head() -> None:
    memory = pool(8)
    held = memory.take(6 * BLOCK, 6 * BLOCK)
    assert held is not None
    memory.wait("large", 4 * BLOCK, 4 * BLOCK)  # 2 free: waits
    assert memory.take(1, 1) is None, "a small request would delay the head"
    memory.wait("small", 1, 1)
    assert serve(memory) == []
    memory.free(held[:1])
    assert serve(memory) == [], "the head keeps the freed block for itself"
    memory.free(held[1:2])
    assert serve(memory) == [("large", 4)]
    memory.free(held[2:3])
    assert serve(memory) == [("small", 1)]


def test_waiters_are_served_in_arrival_order() -> None:
    memory = pool(4)
    held = memory.take(4 * BLOCK, 4 * BLOCK)
    assert held is not None
    for name in ("a", "b", "c"):
        memory.wait(name, BLOCK, BLOCK)
    memory.free(held)
    assert serve(memory) == [("a", 1), ("b", 1), ("c", 1)]


def test_the_head_takes_a_partial_grant_once_its_floor_fits() -> None:
    memory = pool(8)
    held = memory.take(8 * BLOCK, 8 * BLOCK)
    assert held is not None
    memory.wait("head", 8 * BLOCK, 2 * BLOCK)
    memory.free(held[:1])
    assert serve(memory) == []
    memory.free(held[1:3])
    assert serve(memory) == [("head", 3)], "every free block, at least the floor"


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    memory = pool(2)
    held = memory.take(2 * BLOCK, 2 * BLOCK)
    assert held is not None
    memory.wait("gone", BLOCK, BLOCK)
    memory.wait("next", BLOCK, BLOCK)
    assert memory.cancel("gone") and not memory.cancel("gone")
    memory.free(held)
    assert serve(memory) == [("next", 1)]
    assert memory.take(BLOCK, BLOCK) is not None, "an empty queue serves at once again"


def test_misuse_is_refused() -> None:
    memory = pool(2)
    held = memory.take(2 * BLOCK, 2 * BLOCK)
    assert held is not None
    memory.wait("a", BLOCK, BLOCK)
    with pytest.raises(ValueError, match="waiting already"):
        memory.wait("a", BLOCK, BLOCK)
    memory.wait("b", BLOCK, BLOCK)
    memory.free(held)
    with pytest.raises(ValueError, match="not the head"):
        memory.grant("b")


def test_asks_round_to_blocks_and_the_floor_never_exceeds_the_ask() -> None:
    memory = pool(8)
    assert memory.ask(5, 1) == Ask(2, 1)
    assert memory.ask(5, 100) == Ask(2, 2)
    assert memory.ask(5, 0) == Ask(2, 1)


def test_every_free_is_reported() -> None:
    frees: list[int] = []
    memory: FairPool[str] = FairPool(FreeListAllocator(4, BLOCK), on_free=lambda: frees.append(1))
    held = memory.take(BLOCK, BLOCK)
    assert held is not None
    memory.free(held)
    assert frees == [1]
