"""Plans the one-sided writes of one piece: as few segments as block adjacency allows."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from embxfer.buffers.blocks import check_blocks
from embxfer.buffers.layout import KINDS, BufferLayout, Kind
from embxfer.transport.base import Segment


class RegionLike(Protocol):
    """A buffer region, as ``MetadataBuffers.regions`` or a peer's register message gives it."""

    @property
    def kind(self) -> str:
        """Buffer kind, one of ``KINDS``."""
        ...

    @property
    def base_address(self) -> int:
        """Address of block 0."""
        ...

    @property
    def block_bytes(self) -> int:
        """Stride between blocks."""
        ...


Run = tuple[int, int, int]
"""(first source block, first destination block, blocks) of blocks adjacent on both sides."""


def _runs(src_blocks: Sequence[int], dst_blocks: Sequence[int], nblocks: int) -> list[Run]:
    """Maximal runs where source and destination block indices both advance by one."""
    runs: list[Run] = []
    start = 0
    for i in range(1, nblocks):
        if src_blocks[i] != src_blocks[i - 1] + 1 or dst_blocks[i] != dst_blocks[i - 1] + 1:
            runs.append((src_blocks[start], dst_blocks[start], i - start))
            start = i
    if nblocks:
        runs.append((src_blocks[start], dst_blocks[start], nblocks - start))
    return runs


def count_runs(src_blocks: Sequence[int], dst_blocks: Sequence[int], nblocks: int) -> int:
    """Segments per token kind that a piece over the first ``nblocks`` blocks needs."""
    return len(_runs(src_blocks, dst_blocks, nblocks))


def _bases(regions: Sequence[RegionLike], layout: BufferLayout, side: str) -> Mapping[Kind, int]:
    """Base address per kind, after checking each kind appears once with the layout's
    block bytes: a peer with another geometry would have our writes land out of place.

    A sender plans every write to a peer with the same regions, so the checked answer is
    cached (regions are immutable: ``Region`` tuples or frozen message structs)."""
    return _checked_bases(tuple(regions), layout, side)


@functools.lru_cache(maxsize=256)
def _checked_bases(
    regions: tuple[RegionLike, ...], layout: BufferLayout, side: str
) -> Mapping[Kind, int]:
    by_kind = {region.kind: region for region in regions}
    if len(by_kind) != len(regions) or set(by_kind) != set(KINDS):
        raise ValueError(f"{side} regions must name each of {KINDS} once: {list(regions)}")
    bases: dict[Kind, int] = {}
    for kind in KINDS:
        region = by_kind[kind]
        if region.block_bytes != layout.block_bytes(kind):
            raise ValueError(
                f"{side} regions: {kind} blocks of {region.block_bytes} bytes, "
                f"layout says {layout.block_bytes(kind)}"
            )
        bases[kind] = region.base_address
    return MappingProxyType(bases)


def plan_segments(
    local: Sequence[RegionLike],
    remote: Sequence[RegionLike],
    layout: BufferLayout,
    src_blocks: Sequence[int],
    dst_blocks: Sequence[int],
    num_tokens: int,
    *,
    remote_num_blocks: int,
) -> list[Segment]:
    """Segments writing ``num_tokens`` tokens from slot 0 of ``src_blocks`` to slot 0 of
    ``dst_blocks`` (token i in block i // block_size, slot i % block_size on both sides).

    Each kind gets one segment per run of blocks adjacent on both sides, the last one
    cut to the tokens left: a piece in one run is two writes. Raises ValueError for too
    few blocks, indices outside either side's geometry (``remote_num_blocks`` is the
    receiver's declared block count), or regions that disagree with ``layout``.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    nblocks = layout.tokens_to_blocks(num_tokens)
    src = check_blocks(src_blocks, nblocks, layout.num_blocks, "source blocks")
    dst = check_blocks(dst_blocks, nblocks, remote_num_blocks, "destination blocks")
    src_bases = _bases(local, layout, "local")
    dst_bases = _bases(remote, layout, "remote")
    spans: list[Run] = []  # as runs, but counting tokens (the last run may be partial)
    end = 0
    for src_start, dst_start, count in _runs(src, dst, nblocks):
        start, end = end, end + count * layout.block_size
        spans.append((src_start, dst_start, min(end, num_tokens) - start))

    return [
        Segment(
            src_bases[kind] + src_start * block_bytes,
            dst_bases[kind] + dst_start * block_bytes,
            tokens * token_bytes,
        )
        for kind, block_bytes, token_bytes in _strides(layout)
        for src_start, dst_start, tokens in spans
    ]


@functools.cache
def _strides(layout: BufferLayout) -> tuple[tuple[Kind, int, int], ...]:
    """(kind, bytes per block, bytes per token) of every kind, in ``KINDS`` order."""
    return tuple((kind, layout.block_bytes(kind), layout.token_bytes(kind)) for kind in KINDS)
