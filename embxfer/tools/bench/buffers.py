"""Moving bytes within one process: the in-process transport and the receiver's assembly
of pieces, each against a plain ``copy_`` of the same bytes on the same device.

Runs on the CPU always and again on CUDA when a device is present (buffers, pieces and
the baseline copy all on the GPU: a device-to-device copy); without one the CUDA
metrics say they were skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from embxfer.buffers.assembly import StoredPiece, assemble
from embxfer.buffers.layout import KINDS, BufferLayout
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import random_payload
from embxfer.buffers.segments import plan_segments
from embxfer.fsm.memory import blocks_needed
from embxfer.tools.bench.core import (
    BenchSettings,
    Metric,
    Spread,
    at_least,
    compare,
    interleaved,
    skipped,
)
from embxfer.transport.base import Segment
from embxfer.transport.inproc import InprocDataTransport, InprocNetwork

HIDDEN = 4096
TOKENS = 2000  # 2000 x 4096 x bf16: the 16 MB embedding of the issue
BLOCK_SIZE = 128


def _layout(settings: BenchSettings, device: str, tokens: int) -> BufferLayout:
    blocks = 2 * blocks_needed(tokens, BLOCK_SIZE) + 2
    return BufferLayout(blocks, BLOCK_SIZE, settings.pick(HIDDEN, 256), torch.bfloat16, device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timer(call: Callable[[], object], device: str) -> Callable[[], float]:
    """A measurement of ``call`` in seconds, waiting for the device to finish."""

    def measure() -> float:
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        return time.perf_counter() - start

    return measure


def _filled(layout: BufferLayout, blocks: list[int], tokens: int) -> MetadataBuffers:
    buffers = MetadataBuffers(layout)
    payload = random_payload(tokens, layout, torch.Generator().manual_seed(5))
    buffers.store(blocks, payload)
    return buffers


def _bytes_at(buffers: MetadataBuffers, address: int, length: int) -> torch.Tensor:
    """The ``length`` bytes at ``address``, inside one of ``buffers``' tensors."""
    for kind in KINDS:
        tensor = buffers.tensor(kind)
        offset = address - tensor.data_ptr()
        if offset >= 0 and offset + length <= tensor.nbytes:
            return tensor.view(-1).view(torch.uint8)[offset : offset + length]
    raise ValueError(f"{length} bytes at {address:#x} are in none of the buffers")


def inproc_vs_memcpy(settings: BenchSettings, device: str) -> Metric:
    """One piece written by ``InprocDataTransport`` between two engines' buffers, against
    ``copy_`` of the same bytes between the same buffers."""
    name = "inproc_vs_memcpy" + ("" if device == "cpu" else f"_{device}")
    tokens = settings.pick(TOKENS, 500)
    layout = _layout(settings, device, tokens)
    blocks = list(range(layout.tokens_to_blocks(tokens)))
    source = _filled(layout, blocks, tokens)
    target = MetadataBuffers(layout)
    network = InprocNetwork()
    sender = InprocDataTransport(network, "encoder")
    receiver = InprocDataTransport(network, "language")
    for transport, buffers in ((sender, source), (receiver, target)):
        for kind in KINDS:
            transport.register_tensor(buffers.tensor(kind))
    segments: list[Segment] = plan_segments(
        source.regions(),
        target.regions(),
        layout,
        blocks,
        blocks,
        tokens,
        remote_num_blocks=layout.num_blocks,
    )
    nbytes = sum(segment.length for segment in segments)
    # The baseline moves the very same bytes between the very same memory: one copy_
    # per segment, with none of the transport's lookups and checks.
    pairs = [
        (
            _bytes_at(target, seg.dst_address, seg.length),
            _bytes_at(source, seg.src_address, seg.length),
        )
        for seg in segments
    ]

    def write() -> None:
        result = sender.write("language", segments)
        assert result.ok, result.reason

    def plain_copy() -> None:
        for into, out_of in pairs:
            into.copy_(out_of)

    write()
    assert target.view_payload(blocks, tokens).equals(source.view_payload(blocks, tokens)), (
        "the in-process write must land byte-exact"
    )
    samples = interleaved(
        {
            "inproc": _timer(write, device),
            "copy": _timer(plain_copy, device),
        },
        settings.reps * 5,
    )
    value, ratio = compare(samples["copy"], samples["inproc"])
    inproc, copy = Spread.of(samples["inproc"]), Spread.of(samples["copy"])
    return Metric(
        name,
        value,
        "x",
        f"time of torch copy_ of {nbytes:,} bytes / time of InprocDataTransport.write of "
        f"the same bytes between the same buffers ({len(segments)} segments, one copy_ "
        f"each: one {tokens}-token piece, {device}); ratio of medians of interleaved runs",
        at_least(0.90),
        ratio,
        {
            "inproc_ms": inproc.median * 1e3,
            "copy_ms": copy.median * 1e3,
            "inproc_gb_s": nbytes / inproc.median / 1e9,
            "copy_gb_s": nbytes / copy.median / 1e9,
            "bytes": nbytes,
        },
    )


def assembly_vs_copy(settings: BenchSettings, device: str) -> list[Metric]:
    """A received room's result: one piece in one block run (views, no copy), and two
    pieces (one resume) joined, against ``copy_`` of the same bytes on the device."""
    suffix = "" if device == "cpu" else f"_{device}"
    tokens = settings.pick(TOKENS, 500)
    layout = _layout(settings, device, tokens)
    nblocks = layout.tokens_to_blocks(tokens)
    first = layout.tokens_to_blocks(tokens // 2) * BLOCK_SIZE  # a resume after whole blocks
    # One run for the single piece; the two pieces of a resume in separate runs.
    single = [StoredPiece(0, tokens, blocks=tuple(range(nblocks)))]
    split = [
        StoredPiece(0, first, blocks=tuple(range(first // BLOCK_SIZE))),
        StoredPiece(first, tokens - first, blocks=tuple(range(nblocks + 1, 2 * nblocks + 1))),
    ]
    buffers = _filled(layout, list(range(nblocks)), tokens)
    buffers.store(
        list(range(nblocks + 1, 2 * nblocks + 1)),
        random_payload(tokens, layout, torch.Generator().manual_seed(6)),
    )
    view = assemble(buffers, single, tokens, 0)
    shared = view.embeddings.data_ptr() == buffers.tensor("embeddings").data_ptr()
    nbytes = view.nbytes
    plain_src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    plain_dst = torch.empty_like(plain_src)
    samples = interleaved(
        {
            "single": _timer(lambda: assemble(buffers, single, tokens, 0), device),
            "split": _timer(lambda: assemble(buffers, split, tokens, 0), device),
            "copy": _timer(lambda: plain_dst.copy_(plain_src), device),
        },
        settings.reps * 3,
    )
    value, ratio = compare(samples["copy"], samples["split"])
    single_us = Spread.of(samples["single"]).scaled(1e6)
    return [
        Metric(
            f"assembly_vs_copy{suffix}",
            value,
            "x",
            f"time of copy_ of {nbytes:,} bytes / time of assembling a {tokens}-token result "
            f"received in two pieces (one resume) that lie in two block runs ({device})",
            spread=ratio,
            context={
                "assembly_ms": Spread.of(samples["split"]).median * 1e3,
                "copy_ms": Spread.of(samples["copy"]).median * 1e3,
            },
        ),
        Metric(
            f"assembly_single_run_us{suffix}",
            single_us.median,
            "us",
            f"assembling a {tokens}-token result received in one piece in one block run "
            f"({device}): views into the receive buffers, no copy",
            spread=single_us,
            context={"zero_copy": shared, "bytes": nbytes},
        ),
    ]


def run(settings: BenchSettings) -> list[Metric]:
    metrics = [inproc_vs_memcpy(settings, "cpu"), *assembly_vs_copy(settings, "cpu")]
    if torch.cuda.is_available():
        metrics += [inproc_vs_memcpy(settings, "cuda"), *assembly_vs_copy(settings, "cuda")]
    else:
        why = "no CUDA device on this machine"
        metrics += [
            skipped(
                "inproc_vs_memcpy_cuda", "x", "as inproc_vs_memcpy, on the GPU", at_least(0.90), why
            ),
            skipped("assembly_vs_copy_cuda", "x", "as assembly_vs_copy, on the GPU", None, why),
        ]
    return metrics
