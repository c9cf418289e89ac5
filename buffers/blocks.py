"""Checks on lists of block indices, shared by buffers, segments and assembly."""

from __future__ import annotations

from collections.abc import Sequence


def check_blocks(blocks: Sequence[int], count: int, limit: int, what: str) -> Sequence[int]:
    """The first ``count`` of ``blocks``, after checking they exist and lie in ``[0, limit)``.

    Tensor indexing would wrap negative indices onto other rooms' blocks, and a remote
    write outside the peer's declared geometry would corrupt its memory, so both are
    rejected here with a ValueError naming ``what``.
    """
    if len(blocks) < count:
        raise ValueError(f"{what}: {count} blocks needed, {len(blocks)} given")
    used = blocks[:count]
    if count and (min(used) < 0 or max(used) >= limit):
        raise ValueError(f"{what}: block indices must lie in [0, {limit}), got {list(used)}")
    return used


def contiguous_start(blocks: Sequence[int]) -> int | None:
    """The first block when ``blocks`` is one ascending run (so one slice covers it), else None."""
    if not blocks:
        return None
    first, count = blocks[0], len(blocks)
    if count == 1:
        return first
    if blocks[-1] != first + count - 1:  # the common refusal, without building lists
        return None
    return first if list(blocks) == list(range(first, first + count)) else None
