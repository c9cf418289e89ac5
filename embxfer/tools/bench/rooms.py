"""Rooms per second through the real engines: in this process on the in-process transport
(pumped by hand, so the count is the engines' CPU cost, not thread hand-offs), and across
processes over ZeroMQ and Mooncake."""

from __future__ import annotations

import time
from collections import deque

import torch

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.tools.bench import processes
from embxfer.tools.bench.core import BenchSettings, Metric, Number, Spread, at_least, skipped
from embxfer.tools.bench.processes import Plan
from embxfer.tools.cluster.demo import ProcessOptions, run_processes
from embxfer.tools.demo import DemoSettings
from embxfer.transport import mooncake_data

TOKENS = 16
HIDDEN = 64
CONCURRENCY = 256


def rooms_per_s_inproc(settings: BenchSettings) -> Metric:
    """Tiny rooms through a sender and a receiver engine, ``CONCURRENCY`` open at once,
    each created, sent, polled to Success and released as a scheduler would."""
    config = EngineConfig(num_blocks=4 * CONCURRENCY, hidden_size=HIDDEN, write_threads=False)
    sender, (receiver,), _ = inproc_engines(config, config)
    payload = EmbeddingPayload.from_embeddings(torch.ones(TOKENS, HIDDEN, dtype=torch.bfloat16))
    engines = (sender, receiver)
    next_id = 0

    def batch(rooms: int) -> tuple[float, float]:
        """Rooms per second of this thread's CPU time (all the engines' work runs on it)
        and of wall-clock time (which other jobs on the machine also take)."""
        nonlocal next_id
        open_rooms: deque[tuple[SenderHandle, ReceiverHandle]] = deque()
        started, cpu_started = time.perf_counter(), time.thread_time()
        created = done = 0
        while done < rooms:
            while created < rooms and len(open_rooms) < CONCURRENCY:
                next_id += 1
                created += 1
                send = sender.create_room(next_id)
                recv = receiver.create_room(next_id, sender.address)
                send.send(payload)
                open_rooms.append((send, recv))
            for engine in engines:
                engine.run_once(0.0)
            for _ in range(len(open_rooms)):
                send, recv = open_rooms.popleft()
                state = recv.poll()
                if state is KVPoll.Failed:
                    raise RuntimeError(f"room {recv.room_id} failed: {recv.reason}")
                if state is KVPoll.Success and send.poll() is KVPoll.Success:
                    recv.release()
                    send.release()
                    done += 1
                else:
                    open_rooms.append((send, recv))
        while sender.rooms or receiver.rooms:  # releases are part of the work
            for engine in engines:
                engine.run_once(0.0)
        cpu, wall = time.thread_time() - cpu_started, time.perf_counter() - started
        return rooms / cpu, rooms / wall

    try:
        batch(settings.pick(2000, 100))  # warm up; the adaptive sizer learns the length
        rooms = settings.pick(5000, 200)
        rates = [batch(rooms) for _ in range(settings.reps)]
        spread = Spread.of([cpu for cpu, _ in rates])
        wall = Spread.of([wall for _, wall in rates])
        leaked = sender.used_blocks + receiver.used_blocks
        assert leaked == 0, f"{leaked} blocks leaked"
    finally:
        for engine in engines:
            engine.close()
    return Metric(
        "rooms_per_s",
        spread.median,
        "rooms/s",
        f"{TOKENS}-token rooms completed and released per CPU-second through a SenderEngine "
        f"and a ReceiverEngine on the in-process transport (wire codec included), "
        f"{CONCURRENCY} open at once, pumped by hand on one thread (its CPU time: what one "
        "core sustains, whatever else the machine runs)",
        at_least(10_000),
        spread,
        {
            "rooms_per_batch": rooms,
            "concurrency": CONCURRENCY,
            "wall_clock_rooms_per_s": wall.median,
        },
    )


def rooms_per_s_processes(settings: BenchSettings) -> Metric:
    """Tiny rooms between an encoder process and a language process (ZeroMQ control,
    Mooncake writes over TCP on 127.0.0.1): each runs a lean scheduler loop; beside it,
    the rate of the cross-process demo, whose orchestrator opens every room over pipes
    and whose language rank checks every byte."""
    name, unit, goal = "rooms_per_s_mooncake", "rooms/s", at_least(3000)
    definition = (
        f"{TOKENS}-token rooms per second between an encoder process and a language "
        f"process (ZeroMQ control, Mooncake TCP writes on 127.0.0.1), {CONCURRENCY} open "
        "at once, each process a scheduler loop that creates, polls and releases rooms "
        "(every 64th room's bytes checked); wall clock of the language process"
    )
    if not settings.processes:
        return skipped(name, unit, definition, goal, "worker processes disabled")
    if not settings.mooncake or not mooncake_data.available():
        return skipped(name, unit, definition, goal, "Mooncake is not usable here")
    plan = Plan(settings.pick(6000, 300), TOKENS, HIDDEN, CONCURRENCY)
    spread = Spread.of([processes.rooms_per_s(plan) for _ in range(settings.pick(3, 1))])
    context: dict[str, Number] = {"rooms_per_run": plan.rooms, "concurrency": CONCURRENCY}
    if not settings.quick:
        context["demo_launcher_rooms_per_s"] = _demo_rate(plan)
    return Metric(name, spread.median, unit, definition, goal, spread, context)


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
    return [rooms_per_s_inproc(settings), rooms_per_s_processes(settings)]
