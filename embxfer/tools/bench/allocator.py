"""Block allocation: the cost of an alloc + free pair as the pool grows from 1k to 100k
blocks, and how many transfer segments a piece needs with a fresh or a churned pool."""

from __future__ import annotations

import functools
import random
import time

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.layout import KINDS, BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.segments import count_runs, plan_segments
from embxfer.tools.bench.core import BenchSettings, Metric, Spread, at_most, interleaved

BLOCK_SIZE = 128
REQUEST_TOKENS = 8192  # one default allocation: 64 blocks
TINY_TOKENS = 16  # the rooms of the rooms-per-second benchmarks
POOL_SIZES = (1_000, 10_000, 100_000)


def churned(num_blocks: int, rng: random.Random, fill: float = 0.5) -> FreeListAllocator:
    """An allocator after heavy churn: many rooms of random lengths came and went, in
    random order, and ``fill`` of the pool is still held, so its free list is shuffled."""
    allocator = FreeListAllocator(num_blocks, BLOCK_SIZE)
    held: list[list[int]] = []
    for _ in range(4 * num_blocks // 16):
        if held and (allocator.free_blocks < 64 or rng.random() < 0.5):
            allocator.free(held.pop(rng.randrange(len(held))))
        else:
            blocks = allocator.alloc(rng.randint(1, 32) * BLOCK_SIZE)
            if blocks is not None:
                held.append(blocks)
    while allocator.used_blocks > fill * num_blocks:
        allocator.free(held.pop(rng.randrange(len(held))))
    return allocator


def alloc_free_cost(settings: BenchSettings) -> list[Metric]:
    """Per pool size: us per alloc + free of ``REQUEST_TOKENS`` tokens on a churned pool."""
    rng = random.Random(1)
    pools = {size: churned(size, rng) for size in POOL_SIZES}
    pairs = settings.pick(2000, 100)

    def pair_cost(allocator: FreeListAllocator) -> float:
        start = time.thread_time()
        for _ in range(pairs):
            blocks = allocator.alloc(REQUEST_TOKENS)
            assert blocks is not None
            allocator.free(blocks)
        return (time.thread_time() - start) / pairs * 1e6

    samples = interleaved(
        {str(size): functools.partial(pair_cost, allocator) for size, allocator in pools.items()},
        settings.reps * 2,
    )
    spreads = {int(size): Spread.of(values) for size, values in samples.items()}
    metrics = [
        Metric(
            f"alloc_free_us_{size // 1000}k",
            spread.median,
            "us",
            f"one alloc + free of {REQUEST_TOKENS} tokens ({REQUEST_TOKENS // BLOCK_SIZE} "
            f"blocks) on a pool of {size:,} blocks, half held after heavy churn",
            spread=spread,
        )
        for size, spread in spreads.items()
    ]
    small, large = spreads[POOL_SIZES[0]], spreads[POOL_SIZES[-1]]
    metrics.append(
        Metric(
            "alloc_free_growth_1k_to_100k",
            large.median / small.median,
            "x",
            "alloc + free cost on a 100k-block pool over that on a 1k-block pool "
            "(flat: 1.0; the goal allows this machine's run-to-run noise)",
            at_most(1.5),
            context={f"us_{size // 1000}k": s.median for size, s in spreads.items()},
        )
    )
    return metrics


def _segments(layout: BufferLayout, src: list[int], dst: list[int], tokens: int) -> int:
    """Segments ``plan_segments`` writes for one piece between two engines' buffers."""
    regions = MetadataBuffers(layout).regions()
    return len(
        plan_segments(
            regions,
            regions,
            layout,
            src,
            dst,
            tokens,
            remote_num_blocks=layout.num_blocks,
        )
    )


def segments_per_piece(settings: BenchSettings) -> list[Metric]:
    """Segments per piece when both sides' pools are fresh (contiguous blocks) and after
    heavy churn (blocks scattered), against the coalescing rule: one segment per buffer
    kind per run of blocks adjacent on both sides; and for a tiny room's piece."""
    num_blocks = settings.pick(4096, 512)
    layout = BufferLayout(num_blocks=num_blocks, block_size=BLOCK_SIZE, hidden_size=8)
    tokens = REQUEST_TOKENS
    nblocks = layout.tokens_to_blocks(tokens)
    rng = random.Random(2)
    cases = {
        "fresh": (
            FreeListAllocator(num_blocks, BLOCK_SIZE),
            FreeListAllocator(num_blocks, BLOCK_SIZE),
        ),
        "churned": (churned(num_blocks, rng), churned(num_blocks, rng)),
    }
    metrics: list[Metric] = []
    worst = 0.0
    for case, (sender_pool, receiver_pool) in cases.items():
        src, dst = sender_pool.alloc(tokens), receiver_pool.alloc(tokens)
        assert src is not None and dst is not None
        runs = count_runs(src, dst, nblocks)
        segments = _segments(layout, src, dst, tokens)
        per_kind_run = segments / (len(KINDS) * runs)
        worst = max(worst, per_kind_run)
        metrics.append(
            Metric(
                f"segments_per_piece_{case}",
                segments,
                "segments",
                f"segments written for one {tokens}-token piece ({nblocks} blocks) with "
                f"{case} allocators on both sides",
                context={
                    "blocks": nblocks,
                    "runs": runs,
                    "kinds": len(KINDS),
                    "uncoalesced_segments": len(KINDS) * nblocks,
                },
            )
        )
    metrics.append(
        Metric(
            "segments_per_kind_per_run",
            worst,
            "segments",
            "segments / (buffer kinds x runs of blocks adjacent on both sides), the "
            "worst of the fresh and churned cases (coalescing: exactly 1)",
            at_most(1.0),
        )
    )
    fresh = FreeListAllocator(num_blocks, BLOCK_SIZE)
    src, dst = fresh.alloc(TINY_TOKENS), fresh.alloc(TINY_TOKENS)
    assert src is not None and dst is not None
    metrics.append(
        Metric(
            "segments_per_tiny_piece",
            _segments(layout, src, dst, TINY_TOKENS),
            "segments",
            f"one-sided writes (Mooncake segments) of a {TINY_TOKENS}-token room's only "
            f"piece: one per buffer kind ({', '.join(KINDS)}); the room's aux record (T, "
            "M-RoPE delta) travels in its PieceWritten message, not as a write",
            at_most(2),
        )
    )
    return metrics


def run(settings: BenchSettings) -> list[Metric]:
    return [*alloc_free_cost(settings), *segments_per_piece(settings)]
