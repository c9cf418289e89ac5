"""A sender and a receiver engine over ZeroMQ and Mooncake TCP (both in this process,
each with its pump thread, writes on the sender's writer thread), against raw Mooncake
batch writes of the same bytes to the very same receiving engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from embxfer.buffers.payload import EmbeddingPayload, random_payload
from embxfer.buffers.segments import plan_segments
from embxfer.config import EngineConfig
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.poll import KVPoll
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.sender import SenderEngine
from embxfer.tools.bench.core import (
    BenchSettings,
    Metric,
    Spread,
    at_least,
    compare,
    interleaved,
    skipped,
)
from embxfer.tools.workload import write_in_place
from embxfer.transport import mooncake_data
from embxfer.transport.base import Segment

HIDDEN = 4096
E2E_TOKENS = 2000  # 2000 x 4096 x bf16 = 16 MB
RESUME_TOKENS = 50_000
DEFAULT_ALLOC = 8192
BLOCK_SIZE = 128
_POLL_S = 20e-6  # the scheduler's poll loop yields the GIL this long between polls


@dataclass
class Pair:
    """A started sender and receiver engine, registered with each other."""

    sender: SenderEngine
    receiver: ReceiverEngine
    next_room: int = 0

    def transfer(self, payload: EmbeddingPayload, expected_tokens: int | None = None) -> float:
        """Seconds from the sender's ``send()`` until the receiver's ``poll()`` says Success,
        with the receiver's request already waiting at the sender (it allocated first)
        and the payload already in the room's buffer (the zero-copy send)."""
        self.next_room += 1
        room_id = self.next_room
        send = self.sender.create_room(room_id)
        recv = self.receiver.create_room(
            room_id, self.sender.address, expected_tokens=expected_tokens
        )
        _wait(lambda: bool((tracked := self.sender.rooms.get(room_id)) and tracked.room.receivers))
        written = write_in_place(send, payload)  # the encoder's output, in the room's blocks
        assert written is not None, "the sender's pool holds one room"
        started = time.perf_counter()
        send.send(written)  # zero-copy
        while (state := recv.poll()) is not KVPoll.Success:
            if state is KVPoll.Failed:
                raise RuntimeError(f"room {room_id} failed: {recv.reason}")
            time.sleep(_POLL_S)
        seconds = time.perf_counter() - started
        recv.release()
        send.release()
        _wait(lambda: not self.sender.rooms and not self.receiver.rooms)
        return seconds


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("engines did not get there in time")
        time.sleep(_POLL_S)


@contextmanager
def engines(tokens: int, hidden: int, receiver_tokens: int) -> Iterator[Pair]:
    """A sender holding ``tokens`` and a receiver holding ``receiver_tokens``, started."""

    def config(capacity: int) -> EngineConfig:
        return EngineConfig(
            num_blocks=blocks_needed(capacity, BLOCK_SIZE) + 1,
            block_size=BLOCK_SIZE,
            hidden_size=hidden,
            default_alloc_tokens=DEFAULT_ALLOC,
            adaptive_alloc=False,
        )

    network = NetworkConfig()
    sender = remote_sender(config(tokens), network)
    try:
        receiver = remote_receiver(config(receiver_tokens), network)
    except BaseException:
        sender.close()
        raise
    try:
        sender.start()
        receiver.start()
        yield Pair(sender, receiver)
    finally:
        receiver.close()
        sender.close()


def _payload(tokens: int, hidden: int) -> EmbeddingPayload:
    layout = EngineConfig(num_blocks=1, hidden_size=hidden).layout
    return random_payload(tokens, layout, torch.Generator().manual_seed(7))


def e2e_vs_raw(settings: BenchSettings, pair: Pair, hidden: int) -> list[Metric]:
    """One 16 MB piece end to end against a raw Mooncake batch write of the same segments
    (same bytes, addresses and receiving engine), with the sender transport's own write
    of them beside it; then the receiver's assembly."""
    tokens = settings.pick(E2E_TOKENS, 500)
    payload = _payload(tokens, hidden)
    pair.transfer(payload)  # first write to a new peer pays Mooncake's handshake
    layout = pair.sender.layout
    blocks = list(range(layout.tokens_to_blocks(tokens)))  # where a fresh pool puts them
    segments: list[Segment] = plan_segments(
        pair.sender.buffers.regions(),
        pair.receiver.buffers.regions(),
        layout,
        blocks,
        blocks,
        tokens,
        remote_num_blocks=pair.receiver.layout.num_blocks,
    )
    session = pair.receiver.data.session_id

    def through_transport() -> None:
        result = pair.sender.data.write(session, segments)
        assert result.ok, result.reason

    cpu: dict[str, list[float]] = {"raw": [], "transport": []}
    with _raw_writer(pair, segments) as raw_write:
        samples = interleaved(
            {
                "e2e": lambda: pair.transfer(payload),
                "raw": _timed(raw_write, cpu["raw"]),
                "transport": _timed(through_transport, cpu["transport"]),
            },
            settings.reps * 5,
        )
    value, ratio = compare(samples["raw"], samples["e2e"])
    e2e, raw_s = Spread.of(samples["e2e"]), Spread.of(samples["raw"])
    transport_s = Spread.of(samples["transport"])
    nbytes = sum(segment.length for segment in segments)
    return [
        Metric(
            "mooncake_e2e_vs_raw",
            value,
            "x",
            f"time of a raw Mooncake batch write of the {len(segments)} segments embxfer "
            f"writes ({nbytes:,} bytes: {tokens} tokens x {hidden} bf16 with fill ids and "
            "positions; batch_transfer_sync_write, which busy-waits, from a second engine "
            "on the sender's memory) / time from the sender's send() of its zero-copy "
            "buffer to the receiver's poll() == Success, same receiving engine; ratio of "
            "medians of interleaved runs. Beside it, the same write through the sender's "
            "MooncakeDataTransport (asynchronous, no spinning: transport_write_*), and the "
            "process CPU ms of both writes",
            at_least(0.95),
            ratio,
            {
                "e2e_ms": e2e.median * 1e3,
                "raw_ms": raw_s.median * 1e3,
                "transport_write_ms": transport_s.median * 1e3,
                "e2e_vs_transport_write": transport_s.median / e2e.median,
                "raw_cpu_ms": Spread.of(cpu["raw"]).median * 1e3,
                "transport_write_cpu_ms": Spread.of(cpu["transport"]).median * 1e3,
                "e2e_gb_s": nbytes / e2e.median / 1e9,
                "raw_gb_s": nbytes / raw_s.median / 1e9,
                "bytes": nbytes,
            },
        ),
        _assembly(settings, pair, payload),
    ]


@contextmanager
def _raw_writer(pair: Pair, segments: list[Segment]) -> Iterator[Callable[[], None]]:
    """Mooncake's own batch write of ``segments`` to the receiver, from a second engine
    registered on the sender's memory (the sender's engine has it registered already),
    its handshake done."""
    engine = mooncake_data.raw_engine()
    ranges = pair.sender.buffers.memory_ranges()
    for address, length in ranges:
        assert engine.register_memory(address, length) == 0
    session = pair.receiver.data.session_id
    addresses = (
        [s.src_address for s in segments],
        [s.dst_address for s in segments],
        [s.length for s in segments],
    )

    def write() -> None:
        rc = engine.batch_transfer_sync_write(session, *addresses)
        assert rc == 0, f"raw Mooncake write failed (rc={rc})"

    try:
        write()  # the new engine's handshake
        yield write
    finally:
        for address, _ in ranges:
            engine.unregister_memory(address)


def _timed(write: Callable[[], None], cpu_s: list[float]) -> Callable[[], float]:
    """``write`` as a measurement: its wall seconds, its process CPU seconds kept in
    ``cpu_s``."""

    def run() -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        write()
        seconds = time.perf_counter() - started
        cpu_s.append(time.process_time() - cpu_started)
        return seconds

    return run


def _assembly(settings: BenchSettings, pair: Pair, payload: EmbeddingPayload) -> Metric:
    """The receiver's ``result()`` on a room received in one piece, timed apart from the
    transfer: views into the receive buffers when the room's blocks are one run."""
    pair.next_room += 1
    room_id = pair.next_room
    send = pair.sender.create_room(room_id)
    recv = pair.receiver.create_room(room_id, pair.sender.address)
    send.send(payload)
    _wait(lambda: recv.poll() is KVPoll.Success)
    result = recv.result()
    assert result.equals(payload), "the received embedding must be byte-exact"
    buffer = pair.receiver.buffers.tensor("embeddings")
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.nbytes
    zero_copy = start <= result.embeddings.data_ptr() < end

    def assemble() -> float:
        started = time.perf_counter()
        recv.result()
        return time.perf_counter() - started

    spread = Spread.of([assemble() for _ in range(settings.reps * 5)]).scaled(1e6)
    recv.release()
    send.release()
    _wait(lambda: not pair.sender.rooms and not pair.receiver.rooms)
    return Metric(
        "mooncake_assembly_us",
        spread.median,
        "us",
        f"the receiver's result() for the {payload.num_tokens}-token room received in one "
        "block run: views into the receive buffers (zero_copy), timed apart from the transfer",
        spread=spread,
        context={"zero_copy": zero_copy, "bytes": payload.nbytes},
    )


def resume_vs_exact(settings: BenchSettings) -> Metric:
    """50,000 tokens into a receiver that allocates the 8192-token default (one resume
    for the rest) against one that allocates exactly (the scheduler's size hint)."""
    tokens = settings.pick(RESUME_TOKENS, 3 * DEFAULT_ALLOC)
    hidden = settings.pick(HIDDEN, 256)
    payload = _payload(tokens, hidden)
    with engines(tokens, hidden, tokens + DEFAULT_ALLOC) as pair:
        pair.transfer(payload, tokens)  # handshake
        samples = interleaved(
            {
                "resume": lambda: pair.transfer(payload),
                "exact": lambda: pair.transfer(payload, tokens),
            },
            settings.reps + 4,  # 400 MB a run, and noisy: a few more pairs
        )
        resumes = pair.receiver.stats.resumes
    value, ratio = compare(samples["exact"], samples["resume"])
    return Metric(
        "resume_vs_exact",
        value,
        "x",
        f"time of a {tokens:,}-token transfer (x {hidden} bf16) into an exact allocation / "
        f"time of the same transfer into the {DEFAULT_ALLOC}-token default, which resumes "
        "once for the rest; send() to Success over Mooncake TCP; ratio of medians of "
        "interleaved runs",
        at_least(0.90),
        ratio,
        {
            "resume_ms": Spread.of(samples["resume"]).median * 1e3,
            "exact_ms": Spread.of(samples["exact"]).median * 1e3,
            "resumes": resumes,
            "bytes": payload.nbytes,
        },
    )


_E2E_DEFINITION = "send() to Success over Mooncake TCP against a raw Mooncake batch write"


def run(settings: BenchSettings) -> list[Metric]:
    if not settings.mooncake_usable():
        why = "Mooncake transfer engine is not usable here"
        return [
            skipped("mooncake_e2e_vs_raw", "x", _E2E_DEFINITION, at_least(0.95), why),
            skipped("mooncake_assembly_us", "us", "the receiver's result()", None, why),
            skipped("resume_vs_exact", "x", "resume against exact", at_least(0.90), why),
        ]
    hidden = settings.pick(HIDDEN, 256)
    tokens = settings.pick(E2E_TOKENS, 500)
    with engines(tokens, hidden, DEFAULT_ALLOC) as pair:
        metrics = e2e_vs_raw(settings, pair, hidden)
    return [*metrics, resume_vs_exact(settings)]
