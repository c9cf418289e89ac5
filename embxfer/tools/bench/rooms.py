"""Rooms per second through the real engines: in this process on the in-process transport
(pumped by hand, so the count is the engines' CPU cost, not thread hand-offs), and across
processes over ZeroMQ and Mooncake."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.layout import KINDS
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.messages import Message, PieceRequest, PieceWritten
from embxfer.fsm.poll import KVPoll
from embxfer.local import inproc_engines
from embxfer.tools.bench import processes
from embxfer.tools.bench.core import BenchSettings, Metric, Number, Spread, at_least, skipped
from embxfer.tools.bench.processes import Plan
from embxfer.tools.cluster.demo import ProcessOptions, run_processes
from embxfer.tools.demo import DemoSettings
from embxfer.transport.wire import decode, encode

TOKENS = 16
HIDDEN = 64
CONCURRENCY = 256


def rooms_per_s_inproc(settings: BenchSettings) -> list[Metric]:
    """Tiny rooms through a sender and a receiver engine, ``CONCURRENCY`` open at once,
    each created, sent, its end told (``watch_ended``), its result taken and released as
    a scheduler would; against the floor loop (``_floor``), in interleaved batches of the
    same thread.

    The encoder side takes the zero-copy path README shows: its output lands in the
    room's ``buffer()`` (the encoder's own work, not timed here, as the floor too starts
    from the embedding in the sender's blocks), and ``send`` hands that over."""
    config = EngineConfig(num_blocks=4 * CONCURRENCY, hidden_size=HIDDEN, write_threads=False)
    sender, (receiver,), _ = inproc_engines(config, config)
    payload = EmbeddingPayload.from_embeddings(torch.ones(TOKENS, HIDDEN, dtype=torch.bfloat16))
    engines = (sender, receiver)
    next_id = 0

    sent_rooms, received_rooms = sender.watch_ended(), receiver.watch_ended()

    def batch(rooms: int) -> tuple[float, float]:
        """Rooms per second of this thread's CPU time (all the engines' work runs on it)
        and of wall-clock time (which other jobs on the machine also take)."""
        nonlocal next_id
        started, cpu_started = time.perf_counter(), time.thread_time()
        created = done = 0
        while done < rooms:
            while created < rooms and created - done < CONCURRENCY:
                next_id += 1
                created += 1
                send = sender.create_room(next_id)
                receiver.create_room(next_id, sender.address)
                send.send(send.buffer(TOKENS) or payload)
            for engine in engines:
                engine.run_once(0.0)
            for sent in sent_rooms.take():  # told as they end, as a scheduler may be
                sent.release()
            for received in received_rooms.take():
                if received.poll() is KVPoll.Failed:
                    raise RuntimeError(f"room {received.room_id} failed: {received.reason}")
                received.result()  # what a scheduler hands its model
                received.release()
                done += 1
        while sender.rooms or receiver.rooms:  # releases are part of the work
            for engine in engines:
                engine.run_once(0.0)
            for sent in sent_rooms.take():
                sent.release()
        cpu, wall = time.thread_time() - cpu_started, time.perf_counter() - started
        return rooms / cpu, rooms / wall

    floor = _floor(config, payload)
    try:
        batch(settings.pick(2000, 100))  # warm up; the adaptive sizer learns the length
        floor(settings.pick(2000, 100))
        rooms = settings.pick(5000, 200)
        rates: list[tuple[float, float]] = []
        floors: list[float] = []
        for _ in range(settings.reps):
            rates.append(batch(rooms))
            floors.append(floor(rooms))
        spread = Spread.of([cpu for cpu, _ in rates])
        wall = Spread.of([wall for _, wall in rates])
        leaked = sender.used_blocks + receiver.used_blocks
        assert leaked == 0, f"{leaked} blocks leaked"
    finally:
        for engine in engines:
            engine.close()
    floor_spread = Spread.of(floors)
    ratios = Spread.of([rate / least for (rate, _), least in zip(rates, floors, strict=True)])
    return [
        Metric(
            "rooms_per_s",
            spread.median,
            "rooms/s",
            f"{TOKENS}-token rooms completed, their results taken and released per "
            "CPU-second through a SenderEngine and a ReceiverEngine on the in-process "
            f"transport (wire codec included), {CONCURRENCY} open at once, the encoder's "
            "output in the room's buffer() (zero-copy send), pumped by hand on one thread "
            "(its CPU time: what one core sustains, whatever else the machine runs); no "
            "goal: CPU rates differ 2-3x between machines, rooms_per_s_vs_floor is the goal",
            None,
            spread,
            {
                "rooms_per_batch": rooms,
                "concurrency": CONCURRENCY,
                "wall_clock_rooms_per_s": wall.median,
            },
        ),
        Metric(
            "rooms_per_s_vs_floor",
            spread.median / floor_spread.median,
            "x",
            "rooms_per_s / the floor's rooms per CPU-second: a loop on the same thread, "
            "in interleaved batches, doing only the unavoidable work of a tiny room "
            f"({', '.join(_FLOOR_WORK)}); ratio of medians",
            at_least(0.2),
            ratios,
            {"floor_rooms_per_s": floor_spread.median, "messages_per_room": len(_messages())},
        ),
    ]


_FLOOR_WORK = (
    "encode and decode its control messages (a PieceRequest and a PieceWritten)",
    "one alloc and one free of its blocks per side",
    f"the copy of its {TOKENS} tokens from the sender's blocks into the receiver's",
)


def _messages() -> tuple[Message, ...]:
    """The control messages of one tiny room (Register and heartbeats are per peer)."""
    return (
        PieceRequest(1, 0, 1, 0, (0,), TOKENS, 1),
        PieceWritten(1, 0, 1, 0, TOKENS, TOKENS, 0),
    )


def _floor(config: EngineConfig, payload: EmbeddingPayload) -> Callable[[int], float]:
    """A loop doing only what no implementation of a tiny room can skip; returns rooms
    per CPU-second of this thread for a batch of ``rooms``."""
    sides = [FreeListAllocator(config.num_blocks, config.block_size) for _ in range(2)]
    source, target = MetadataBuffers(config.layout), MetadataBuffers(config.layout)
    messages = _messages()

    def run(rooms: int) -> float:
        cpu_started = time.thread_time()
        for _ in range(rooms):
            for message in messages:
                decode(encode(message))
            src, dst = (side.alloc(TOKENS) for side in sides)
            assert src is not None and dst is not None
            for kind in KINDS:
                target.tensor(kind)[dst[0], :TOKENS].copy_(source.tensor(kind)[src[0], :TOKENS])
            sides[0].free(src)
            sides[1].free(dst)
        return rooms / (time.thread_time() - cpu_started)

    source.store([0], payload)  # real bytes to copy
    return run


def rooms_per_s_processes(settings: BenchSettings) -> list[Metric]:
    """Tiny rooms between an encoder process and a language process (ZeroMQ control,
    Mooncake writes over TCP on 127.0.0.1): each runs a lean scheduler loop; then the raw
    rates between the same two processes, the floor; beside it, the rate of the
    cross-process demo, whose orchestrator opens every room over pipes and whose
    language rank checks every byte."""
    name, unit = "rooms_per_s_mooncake", "rooms/s"
    definition = (
        f"{TOKENS}-token rooms per second between an encoder process and a language "
        f"process (ZeroMQ control, Mooncake TCP writes on 127.0.0.1), {CONCURRENCY} open "
        "at once, each process a scheduler loop that creates rooms and releases each as it "
        "is told the room ended (watch_ended; the encoder writes each embedding into its "
        "room's buffer and sends it without a copy; every room's result taken, every 64th "
        "room's bytes checked); wall clock of the language process; no goal: "
        "rooms_per_s_mooncake_vs_floor is the goal"
    )
    floor = (
        "rooms_per_s_mooncake / the floor between the same two processes, measured right "
        "after the rooms in the same run: min(raw ZeroMQ one-way messages/s (PUSH to "
        "PULL, a PieceWritten's frame) / 2 messages per room, raw Mooncake tiny writes/s "
        "(sequential batch_transfer_sync_write of a room's 2 segments, the fastest of 5 "
        "runs) / 1 write per room); "
        "ratio of medians"
    )
    cpu = (
        "CPU time of the whole encoder process (scheduler, pump, writer, Mooncake's and "
        "ZeroMQ's threads) per room while the language process counted "
        "rooms_per_s_mooncake"
    )
    write_cpu = (
        "CPU time of the encoder process per write of a tiny room's 2 segments through "
        "MooncakeDataTransport (asynchronous submission, waiting on timers), "
        "sequential; raw_sync_cpu_us_per_write: the same through Mooncake's "
        "batch_transfer_sync_write, which busy-waits"
    )
    why = settings.processes_skip_reason()
    if why:
        return [
            skipped(name, unit, definition, None, why),
            skipped(f"{name}_vs_floor", "x", floor, at_least(0.5), why),
            skipped("sender_cpu_us_per_room", "us", cpu, None, why),
            skipped("sender_cpu_us_per_write", "us", write_cpu, None, why),
        ]
    plan = Plan(settings.pick(6000, 300), TOKENS, HIDDEN, CONCURRENCY)
    raw = settings.pick(5000, 200)
    runs = [processes.against_raw([plan], raw) for _ in range(settings.pick(3, 1))]
    outcomes = [outcome for (outcome,), _ in runs]
    rates = [rate for _, rate in runs]
    floors = [min(r.zmq_messages_per_s / len(_messages()), r.mooncake_writes_per_s) for r in rates]
    spread = Spread.of([o.rooms_per_s for o in outcomes])
    floor_spread = Spread.of(floors)
    context: dict[str, Number] = {"rooms_per_run": plan.rooms, "concurrency": CONCURRENCY}
    if not settings.quick:
        context["demo_launcher_rooms_per_s"] = _demo_rate(plan)
    return [
        Metric(name, spread.median, unit, definition, None, spread, context),
        Metric(
            f"{name}_vs_floor",
            spread.median / floor_spread.median,
            "x",
            floor,
            at_least(0.5),
            Spread.of([o.rooms_per_s / f for o, f in zip(outcomes, floors, strict=True)]),
            {
                "floor_rooms_per_s": floor_spread.median,
                "zmq_messages_per_s": middle([r.zmq_messages_per_s for r in rates]),
                "mooncake_raw_writes_per_s": middle([r.mooncake_writes_per_s for r in rates]),
                "transport_writes_per_s": middle([r.transport_writes_per_s for r in rates]),
            },
        ),
        _microseconds("sender_cpu_us_per_room", cpu, [o.sender_cpu_s_per_room for o in outcomes]),
        _microseconds(
            "sender_cpu_us_per_write",
            write_cpu,
            [r.transport_cpu_s_per_write for r in rates],
            {"raw_sync_cpu_us_per_write": middle([r.sync_cpu_s_per_write * 1e6 for r in rates])},
        ),
    ]


def _microseconds(
    name: str, definition: str, seconds: list[float], context: dict[str, Number] | None = None
) -> Metric:
    """A metric of ``seconds`` measured once per run, reported in microseconds."""
    spread = Spread.of([value * 1e6 for value in seconds])
    return Metric(name, spread.median, "us", definition, spread=spread, context=context or {})


def middle(values: list[float]) -> float:
    """The median of ``values``."""
    return Spread.of(values).median


def _demo_rate(plan: Plan) -> float:
    """Rooms per second of ``embxfer demo --transport mooncake`` on the same rooms."""
    demo = DemoSettings(
        requests=plan.rooms,
        tokens=str(plan.tokens),
        hidden=plan.hidden,
        default_alloc=plan.tokens,
        concurrency=plan.window,
    )
    summary = run_processes(demo, ProcessOptions(), progress=False)
    if not summary.ok():
        raise RuntimeError(f"cross-process demo failed:\n{summary.render()}")
    return summary.succeeded / summary.seconds


def run(settings: BenchSettings) -> list[Metric]:
    return [*rooms_per_s_inproc(settings), *rooms_per_s_processes(settings)]
