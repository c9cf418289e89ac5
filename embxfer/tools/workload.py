"""Synthetic requests for demos and benchmarks: token lengths and reproducible payloads.

A payload is a pure function of (seed, room id, length), so every process can rebuild
what the encoder sent and check the received bytes without shipping them twice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Iterator

import torch

from embxfer.buffers.layout import FIELDS, BufferLayout
from embxfer.buffers.payload import EmbeddingPayload, random_payload
from embxfer.handles import SenderHandle

# A vision-language mix: images of IMAGE_TOKENS, and a few videos of VIDEO_TOKENS.
IMAGE_TOKENS = (256, 2500)
VIDEO_TOKENS = (8000, 30000)
VIDEO_SHARE = 0.005


def token_lengths(spec: str, count: int, seed: int) -> list[int]:
    """``count`` lengths from a spec: ``"500,2000"`` (cycled), ``"LO:HI"`` (uniform,
    inclusive), ``"lognormal:MEDIAN:SIGMA"``, or ``"vl"`` / ``"vl:SHARE"``: images of
    256 to 2,500 tokens and a ``SHARE`` (default 0.005) of videos of 8,000 to 30,000."""
    return list(_lengths(spec, count, random.Random(seed)))


def _lengths(spec: str, count: int, rng: random.Random) -> Iterator[int]:
    parts = spec.split(":")
    if parts[0] == "vl" and len(parts) <= 2:
        share = float(parts[1]) if len(parts) == 2 else VIDEO_SHARE
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"bad video share in {spec!r}: need 0 <= SHARE <= 1")
        for _ in range(count):
            video = rng.random() < share
            yield rng.randint(*(VIDEO_TOKENS if video else IMAGE_TOKENS))
    elif parts[0] == "lognormal" and len(parts) == 3:
        median, sigma = float(parts[1]), float(parts[2])
        for _ in range(count):
            yield max(1, round(rng.lognormvariate(math.log(median), sigma)))
    elif len(parts) == 2:
        low, high = int(parts[0]), int(parts[1])
        if not 0 < low <= high:
            raise ValueError(f"bad range {spec!r}: need 0 < LO <= HI")
        for _ in range(count):
            yield rng.randint(low, high)
    elif len(parts) == 1:
        cycle = [int(x) for x in spec.split(",") if x.strip()]
        if not cycle or min(cycle) <= 0:
            raise ValueError(f"bad length list {spec!r}")
        for i in range(count):
            yield cycle[i % len(cycle)]
    else:
        raise ValueError(
            f"bad token spec {spec!r}: use 'A,B,...', 'LO:HI', 'lognormal:MEDIAN:SIGMA' "
            "or 'vl[:SHARE]'"
        )


_POOL_TOKENS = 1 << 16


@functools.lru_cache(maxsize=4)
def _pool(layout: BufferLayout, seed: int) -> EmbeddingPayload:
    """Random tokens generated once; each room reads a room-specific window of them,
    which is as cheap as a copy (generating fresh random data per room is not)."""
    return random_payload(_POOL_TOKENS, layout, torch.Generator().manual_seed(seed))


def payload_for(room_id: int, num_tokens: int, layout: BufferLayout, seed: int) -> EmbeddingPayload:
    """The embedding the demo encoder produces for ``room_id`` (a pure function)."""
    pool = _pool(layout, seed)
    start = (room_id * 7919) % _POOL_TOKENS
    index = (torch.arange(num_tokens) + start) % _POOL_TOKENS
    positions = torch.arange(num_tokens, dtype=torch.int32) + room_id % 1000
    return EmbeddingPayload(
        embeddings=pool.embeddings.index_select(0, index),
        fill_ids=(pool.fill_ids.index_select(0, index) + room_id) & 0x7FFFFFFF,
        mrope_positions=torch.stack([positions, positions // 2, positions // 3], dim=1),
        mrope_position_delta=room_id % 97 - 48,
    )


def write_in_place(handle: SenderHandle, payload: EmbeddingPayload) -> EmbeddingPayload | None:
    """``payload`` written as an encoder writes its output: into the room's buffer
    (``SenderHandle.buffer``), which ``send()`` then hands over without a copy; None
    when memory is short (no buffer now)."""
    buffer = handle.buffer(payload.num_tokens)
    if buffer is None:
        return None
    for field in FIELDS:
        buffer.tensor(field).copy_(payload.tensor(field))
    return dataclasses.replace(buffer, mrope_position_delta=payload.mrope_position_delta)


def send_in_place(handle: SenderHandle, payload: EmbeddingPayload) -> None:
    """Send ``payload`` as the demo's encoder does: written straight into the room's
    registered blocks, so ``send()`` copies nothing; when memory is short, handed over
    as it is, to be copied once when the room's turn for blocks comes."""
    handle.send(write_in_place(handle, payload) or payload)
