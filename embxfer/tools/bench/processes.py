"""Rooms per second across processes: an encoder process and a language process, each one
engine on ZeroMQ and Mooncake (``embxfer.remote``) and a scheduler loop as lean as a
serving scheduler's (create; release each room as it is told the room ended; no
per-room orchestration), started as ``multiprocessing`` spawn children like the
cross-process demo's workers. The same loop drives engines in one process
(``scheduler_loop``), so both measure alike."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
import zmq

from embxfer.buffers.layout import KINDS
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.messages import PieceWritten
from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.sender import SenderEngine
from embxfer.tools.bench.core import freeze_start_up_heap
from embxfer.tools.workload import send_in_place
from embxfer.transport import mooncake_data
from embxfer.transport.base import Segment
from embxfer.transport.wire import encode

_WAIT_S = 0.05  # the longest a scheduler loop waits for a room to end
_CHECK_EVERY = 64  # the receiver checks the bytes of every 64th room
RAW_TOKENS = 16  # the raw rates' writes are those of a room of 16 tokens
RAW_HIDDEN = 64  # x 64 bf16: the rooms-per-second benchmark's rooms
_CHUNKS = 5  # the raw writes are timed in this many runs; the fastest sets the rate


@dataclass(frozen=True)
class Plan:
    """What both processes run: ``rooms`` rooms of ``tokens`` tokens, ``window`` open,
    the receiver's pool ``receiver_blocks`` blocks (0: two per open room, no waiting)."""

    rooms: int
    tokens: int
    hidden: int
    window: int
    receiver_blocks: int = 0

    def config(self, role: str) -> EngineConfig:
        blocks = self.receiver_blocks if role == "receiver" and self.receiver_blocks else 0
        return EngineConfig(
            num_blocks=blocks or 2 * self.window,
            hidden_size=self.hidden,
            default_alloc_tokens=self.tokens,
            adaptive_alloc=False,
        )

    def payload(self) -> EmbeddingPayload:
        embeddings = torch.arange(self.tokens * self.hidden, dtype=torch.float32)
        return EmbeddingPayload.from_embeddings(
            embeddings.reshape(self.tokens, self.hidden).to(torch.bfloat16)
        )


@dataclass(frozen=True)
class SideReport:
    """What one side's scheduler loop saw: seconds from go to its last release, rooms
    that failed (or whose bytes did not match), each room's latency (creation to
    Success or Failed, as its loop saw it) in seconds, and the CPU seconds its whole
    process spent meanwhile (every thread: scheduler, pump, writers, Mooncake's)."""

    seconds: float
    failed: int
    latencies_s: tuple[float, ...]
    cpu_s: float


@dataclass(frozen=True)
class Outcome:
    """One plan as the language side measured it: rooms per second and latencies; and
    the encoder process's CPU seconds per room."""

    rooms_per_s: float
    latencies_s: tuple[float, ...]
    sender_cpu_s_per_room: float

    @classmethod
    def of(cls, plan: Plan, sender: SideReport, receiver: SideReport) -> Outcome:
        """The receiver's numbers, if every room succeeded on both sides."""
        if sender.failed or receiver.failed:
            raise RuntimeError(f"{sender.failed + receiver.failed} rooms failed or mismatched")
        return cls(plan.rooms / receiver.seconds, receiver.latencies_s, sender.cpu_s / plan.rooms)


@dataclass(frozen=True)
class RawRates:
    """The physical limits between the two worker processes, measured in them: ZeroMQ
    one-way messages per second (PUSH to PULL, a PieceWritten's frame), sequential raw
    Mooncake writes per second of a tiny room's segments (``batch_transfer_sync_write``,
    the fastest of a few runs), and the encoder process's CPU seconds per write, raw
    (Mooncake busy-waits) and through ``MooncakeDataTransport`` (asynchronous, waiting
    on timers)."""

    zmq_messages_per_s: float
    mooncake_writes_per_s: float
    sync_cpu_s_per_write: float
    transport_cpu_s_per_write: float
    transport_writes_per_s: float


def _side(role: str, plans: Sequence[Plan], raw: int, conn: Connection) -> None:
    """A worker: for each plan, build a fresh engine, trade addresses with the parent,
    run every room on "go", report, and close the engine once the parent says both
    sides are done (a sender closed earlier could drop its last notices unsent); then,
    if ``raw``, measure the raw rates (``raw`` messages and writes of each kind)."""
    torch.set_num_threads(1)
    freeze_start_up_heap()
    _plans(role, plans, conn)
    if raw:
        (_raw_sender if role == "sender" else _raw_receiver)(raw, conn)


def _plans(role: str, plans: Sequence[Plan], conn: Connection) -> None:
    for plan in plans:
        engine: SenderEngine | ReceiverEngine = (
            remote_sender(plan.config(role), NetworkConfig())
            if role == "sender"
            else remote_receiver(plan.config(role), NetworkConfig())
        )
        try:
            engine.start()
            conn.send(engine.address)
            sender_address: str = conn.recv()  # the go signal
            conn.send(scheduler_loop(plan, engine, sender_address))
            conn.recv()  # both sides are done
        finally:
            engine.close()


def scheduler_loop(
    plan: Plan, engine: SenderEngine | ReceiverEngine, sender_address: str
) -> SideReport:
    """Every room of ``plan`` through ``engine`` (started), as a lean serving scheduler
    runs them: open up to ``plan.window``; release each as it is told the room ended
    (``watch_ended``), not polling every open room."""
    payload = plan.payload()
    open_room = _opener(engine, sender_address, payload)
    ended_rooms = engine.watch_ended()
    started, cpu_started = time.perf_counter(), time.process_time()
    opened: dict[int, float] = {}  # open rooms' ids: when each was created
    latencies: list[float] = []
    created = failed = 0
    while created < plan.rooms or opened:
        while created < plan.rooms and len(opened) < plan.window:
            created += 1
            open_room(created)
            opened[created] = time.perf_counter()
        # Told which rooms ended, as they end: no pass over every open room.
        ended = ended_rooms.take(_WAIT_S)
        now = time.perf_counter()
        for handle in ended:
            latencies.append(now - opened.pop(handle.room_id))
            state = handle.poll()
            failed += state is KVPoll.Failed
            if isinstance(handle, ReceiverHandle) and state is KVPoll.Success:
                result = handle.result()  # what a scheduler hands its model, every room
                failed += handle.room_id % _CHECK_EVERY == 0 and not result.equals(payload)
            handle.release()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return SideReport(seconds, failed, tuple(latencies), cpu_s)


def _opener(
    engine: SenderEngine | ReceiverEngine, sender_address: str, payload: EmbeddingPayload
) -> Callable[[int], SenderHandle | ReceiverHandle]:
    """What the scheduler does to start a room on this side: the encoder writes each
    embedding into the room's buffer and sends it without a copy, as the demo's encoder
    does (the zero-copy send of issue 13); the language side creates its room."""
    if isinstance(engine, SenderEngine):
        sender = engine

        def send(room_id: int) -> SenderHandle:
            handle = sender.create_room(room_id)
            send_in_place(handle, payload)
            return handle

        return send
    receiver = engine
    return lambda room_id: receiver.create_room(room_id, sender_address)


def against_raw(
    plans: Sequence[Plan], raw: int, timeout_s: float = 120.0
) -> tuple[list[Outcome], RawRates]:
    """``run_plans``, then the raw rates between the same two processes (``raw``
    messages and writes of each kind)."""
    outcomes, rates = _run(plans, raw, timeout_s)
    assert rates is not None
    return outcomes, rates


def run_plans(plans: Sequence[Plan], timeout_s: float = 120.0) -> list[Outcome]:
    """Each plan in turn through one pair of worker processes (started once: a start
    costs seconds), each plan on fresh engines; what the language process measured."""
    return _run(plans, 0, timeout_s)[0]


def _run(
    plans: Sequence[Plan], raw: int, timeout_s: float
) -> tuple[list[Outcome], RawRates | None]:
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for role in ("sender", "receiver"):
        ours, theirs = context.Pipe()
        worker = context.Process(target=_side, args=(role, tuple(plans), raw, theirs), daemon=True)
        worker.start()
        theirs.close()
        pipes.append(ours)
        workers.append(worker)
    try:
        outcomes = [_run_plan(plan, pipes, timeout_s) for plan in plans]
        return outcomes, _run_raw(pipes, timeout_s) if raw else None
    finally:
        for worker in workers:
            worker.join(5.0)
            if worker.is_alive():
                worker.kill()
                worker.join()


def _run_plan(plan: Plan, pipes: Sequence[Connection], timeout_s: float) -> Outcome:
    """Wait for both engines, say go, collect both reports, let the engines close."""
    addresses = [_receive(pipe, timeout_s, "start its engine") for pipe in pipes]
    for pipe in pipes:
        pipe.send(addresses[0])  # the sender's address
    sender, receiver = (_receive(pipe, timeout_s, "finish") for pipe in pipes)
    for pipe in pipes:
        pipe.send(None)  # the engines may close
    return Outcome.of(plan, sender, receiver)


def _receive(pipe: Connection, timeout_s: float, what: str) -> Any:
    if not pipe.poll(timeout_s):
        raise TimeoutError(f"a bench worker did not {what}")
    return pipe.recv()


def _run_raw(pipes: Sequence[Connection], timeout_s: float) -> RawRates:
    """Hand the receiver's addresses to the sender, collect both halves of the rates."""
    sender, receiver = pipes
    sender.send(_receive(receiver, timeout_s, "set up the raw rates"))
    rates: RawRates = _receive(sender, timeout_s, "write the raw rates")
    zmq_rate: float = _receive(receiver, timeout_s, "count the raw messages")
    receiver.send(None)  # the sender is done writing: the receiver may close
    return dataclasses.replace(rates, zmq_messages_per_s=zmq_rate)


def _tiny_segments(hidden: int) -> list[int]:
    """Byte lengths of a tiny room's two segments: embeddings, fill ids with positions."""
    layout = EngineConfig(num_blocks=1, hidden_size=hidden).layout
    return [RAW_TOKENS * layout.token_bytes(kind) for kind in KINDS]


def _raw_receiver(count: int, conn: Connection) -> None:
    """Bind a PULL socket and register memory for the sender's writes; time ``count``
    messages from the first to the last."""
    pull: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    engine = mooncake_data.raw_engine()
    target = torch.zeros(sum(_tiny_segments(RAW_HIDDEN)), dtype=torch.uint8)
    engine.register_memory(target.data_ptr(), target.nbytes)
    try:
        session = f"127.0.0.1:{engine.get_rpc_port()}"
        conn.send((f"tcp://127.0.0.1:{port}", session, target.data_ptr()))
        pull.recv()
        started = time.perf_counter()
        for _ in range(count - 1):
            pull.recv()
        conn.send((count - 1) / (time.perf_counter() - started))
        conn.recv()
    finally:
        pull.close(linger=0)
        engine.unregister_memory(target.data_ptr())


def _raw_sender(count: int, conn: Connection) -> None:
    """Push ``count`` frames, then time ``count`` raw and transport writes of a tiny
    room's segments, with this process's CPU time."""
    address, session, target = conn.recv()
    push: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(address)
    frame = encode(PieceWritten(1, 0, 1, 0, RAW_TOKENS, RAW_TOKENS, 0))
    for _ in range(count):
        push.send(frame)
    push.close(linger=-1)  # every frame delivered
    lengths = _tiny_segments(RAW_HIDDEN)
    engine = mooncake_data.raw_engine()
    source = torch.ones(sum(lengths), dtype=torch.uint8)
    engine.register_memory(source.data_ptr(), source.nbytes)
    transport = mooncake_data.MooncakeDataTransport()
    second = torch.ones(sum(lengths), dtype=torch.uint8)
    transport.register(second.data_ptr(), second.nbytes)
    try:
        offsets = [0, lengths[0]]
        sources = [source.data_ptr() + offset for offset in offsets]
        targets = [target + offset for offset in offsets]
        segments = [
            Segment(second.data_ptr() + offset, target + offset, length)
            for offset, length in zip(offsets, lengths, strict=True)
        ]

        def raw() -> None:
            rc = engine.batch_transfer_sync_write(session, sources, targets, lengths)
            assert rc == 0, f"raw Mooncake write failed (rc={rc})"

        def through_transport() -> None:
            result = transport.write(session, segments)
            assert result.ok, result.reason

        sync_per_s, sync_cpu_s_per_write = _timed(raw, count)
        transport_per_s, transport_cpu_s_per_write = _timed(through_transport, count)
        conn.send(
            RawRates(
                zmq_messages_per_s=0.0,  # the receiver counts those
                mooncake_writes_per_s=sync_per_s,
                sync_cpu_s_per_write=sync_cpu_s_per_write,
                transport_cpu_s_per_write=transport_cpu_s_per_write,
                transport_writes_per_s=transport_per_s,
            )
        )
    finally:
        transport.close()
        engine.unregister_memory(source.data_ptr())


def _timed(write: Callable[[], None], count: int) -> tuple[float, float]:
    """Calls per second of ``write`` and its process CPU seconds per call, over ``count``
    calls after one (the handshake). The rate is that of the fastest of ``_CHUNKS``
    equal runs: the limit, as the machine allows it at its best (a busy-waiting write
    runs at half speed for a while when it lands on the core Mooncake's thread needs)."""
    write()
    chunk = max(count // _CHUNKS, 1)
    fastest_s, cpu_started = float("inf"), time.process_time()
    for _ in range(_CHUNKS):
        started = time.perf_counter()
        for _ in range(chunk):
            write()
        fastest_s = min(fastest_s, time.perf_counter() - started)
    return chunk / fastest_s, (time.process_time() - cpu_started) / (chunk * _CHUNKS)
