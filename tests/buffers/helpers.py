"""Shared test helpers: small layouts, seeded payloads and a byte-copying fake transport."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from embxfer.buffers.layout import KINDS, BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload, random_payload
from embxfer.buffers.segments import plan_segments
from embxfer.transport.base import Segment

SMALL = BufferLayout(num_blocks=32, block_size=4, hidden_size=8)


def make_payload(num_tokens: int, seed: int = 0, layout: BufferLayout = SMALL) -> EmbeddingPayload:
    return random_payload(num_tokens, layout, torch.Generator().manual_seed(seed))


def _bytes_at(buffers: MetadataBuffers, address: int, length: int) -> torch.Tensor:
    """The uint8 view of ``buffers`` memory at ``[address, address + length)``."""
    for kind in KINDS:
        tensor = buffers.tensor(kind)
        base, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        if base <= address and address + length <= base + size:
            offset = address - base
            return tensor.flatten().view(torch.uint8)[offset : offset + length]
    raise AssertionError(f"[{address}, +{length}) is outside every registered buffer")


def execute(segments: Sequence[Segment], src: MetadataBuffers, dst: MetadataBuffers) -> None:
    """Carry out one-sided writes the way a transport would: raw bytes, by address."""
    for segment in segments:
        source = _bytes_at(src, segment.src_address, segment.length)
        _bytes_at(dst, segment.dst_address, segment.length).copy_(source)


def send_piece(
    sender: MetadataBuffers,
    receiver: MetadataBuffers,
    src_blocks: Sequence[int],
    dst_blocks: Sequence[int],
    num_tokens: int,
) -> list[Segment]:
    """Plan and execute one piece from ``sender`` to ``receiver``; returns the segments."""
    segments = plan_segments(
        sender.regions(),
        receiver.regions(),
        sender.layout,
        src_blocks,
        dst_blocks,
        num_tokens,
        remote_num_blocks=receiver.layout.num_blocks,
    )
    execute(segments, sender, receiver)
    return segments
