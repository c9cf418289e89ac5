"""Memory pressure: rooms/s and room latency as more rooms are open than the receiver's
pool can serve at once (it fits a quarter of them: the rest wait in its memory queue),
in this process and across processes, and what an engine costs while its rooms wait.

Rooms wait for blocks in one FIFO queue, granted as an event when blocks come back, so
throughput should hold as concurrency grows (latency grows with the queue, as Little's
law says it must) and waiting should cost no CPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from embxfer.local import inproc_engines
from embxfer.tools.bench import processes, waiting
from embxfer.tools.bench.core import (
    BenchSettings,
    Metric,
    Number,
    Spread,
    at_least,
    at_most,
    compare,
    interleaved,
    skipped,
)
from embxfer.tools.bench.processes import Outcome, Plan

TOKENS = 16  # a room's piece fits one block
HIDDEN = 64
CONCURRENCY = (16, 64, 256, 1024)
POOL_SHARE = 4  # the receiver's pool fits one open room in this many
RATIO = (16, 256)  # pressure_rooms_per_s_ratio: rooms/s at the second over the first
WAITING_ROOMS, WAITING_POOL = 1000, 200
INPROC, MOONCAKE = TRANSPORTS = ("inproc", "mooncake")
MEASURES = ("rooms_per_s", "p50_ms", "p99_ms")  # of each point of the sweep


def pool_blocks(concurrency: int) -> int:
    return max(1, concurrency // POOL_SHARE)


def run(settings: BenchSettings) -> list[Metric]:
    inproc, ratio = _inproc(settings)
    return [*inproc, ratio, *_processes(settings), _waiting(settings)]


# -- in this process ------------------------------------------------------------------
def _inproc(settings: BenchSettings) -> tuple[list[Metric], Metric]:
    """The points taking turns (so load changes hit all alike), each run on fresh
    engines on their own pump threads, one scheduler thread per side."""
    rooms = settings.pick(1536, 128)
    plans = {c: _plan(rooms, c) for c in CONCURRENCY}
    outcomes: dict[int, list[Outcome]] = {c: [] for c in CONCURRENCY}

    def point(concurrency: int) -> float:
        outcome = inproc_run(plans[concurrency])
        outcomes[concurrency].append(outcome)
        return rooms / outcome.rooms_per_s

    for concurrency in CONCURRENCY:
        inproc_run(_plan(settings.pick(rooms // 2, 64), concurrency))  # warm up
    seconds = interleaved({str(c): partial(point, c) for c in CONCURRENCY}, settings.reps)
    where = (
        f"{TOKENS}-token rooms between a SenderEngine and a ReceiverEngine in this process "
        "(in-process transport), each on its pump thread, each side's scheduler a lean loop "
        "on a thread of its own; wall clock of the receiver's loop"
    )
    metrics = _sweep(INPROC, where, outcomes, {c: {"rooms_per_run": rooms} for c in CONCURRENCY})
    low, high = RATIO
    value, spread = compare(seconds[str(low)], seconds[str(high)])  # same rooms: time ~ 1/rate
    ratio = Metric(
        "pressure_rooms_per_s_ratio",
        value,
        "x",
        f"in-process rooms/s at concurrency {high} over rooms/s at {low}, the receiver's pool "
        f"fitting a quarter of the open rooms ({pool_blocks(high)} and {pool_blocks(low)} "
        "blocks), interleaved runs of one bench run (1.0: throughput holds under pressure)",
        at_least(0.8),
        spread,
        {f"rooms_per_s_{c}": statistics.median(o.rooms_per_s for o in outcomes[c]) for c in RATIO},
    )
    return metrics, ratio


def inproc_run(plan: Plan) -> Outcome:
    """``plan`` through a sender and a receiver engine on the in-process transport."""
    sender, (receiver,), _ = inproc_engines(plan.config("sender"), plan.config("receiver"))
    engines = (sender, receiver)
    try:
        for engine in engines:
            engine.start()
        with ThreadPoolExecutor(len(engines), thread_name_prefix="scheduler") as pool:
            sides = [
                pool.submit(processes.scheduler_loop, plan, engine, sender.address)
                for engine in engines
            ]
            sent, received = (side.result() for side in sides)
    finally:
        for engine in engines:
            engine.close()
    return Outcome.of(plan, sent, received)


def _plan(rooms: int, concurrency: int) -> Plan:
    return Plan(rooms, TOKENS, HIDDEN, concurrency, pool_blocks(concurrency))


# -- across processes -----------------------------------------------------------------
def _processes(settings: BenchSettings) -> list[Metric]:
    """Each repeat one encoder and one language process (ZeroMQ + Mooncake) that run
    every concurrency in turn, each on fresh engines."""
    where = (
        f"{TOKENS}-token rooms between an encoder process and a language process (ZeroMQ "
        "control, Mooncake TCP writes on 127.0.0.1), each a lean scheduler loop; wall clock "
        "of the language process"
    )
    why = settings.processes_skip_reason()
    if why:
        return [
            skipped(name, unit, definition, None, why)
            for concurrency in CONCURRENCY
            for name, unit, definition in _names(MOONCAKE, concurrency, where)
        ]
    rooms = settings.pick(1536, 128)
    plans = [_plan(rooms, c) for c in CONCURRENCY]
    repeats = [processes.run_plans(plans) for _ in range(settings.pick(3, 1))]
    outcomes = {c: list(runs) for c, *runs in zip(CONCURRENCY, *repeats, strict=True)}
    return _sweep(MOONCAKE, where, outcomes, {c: {"rooms_per_run": rooms} for c in CONCURRENCY})


# -- one point of the sweep -----------------------------------------------------------
def point_name(transport: str, concurrency: int, measure: str) -> str:
    """The metric of ``measure`` (one of ``MEASURES``) at one point of the sweep."""
    return f"pressure_{transport}_c{concurrency}_{measure}"


def _names(transport: str, concurrency: int, where: str) -> list[tuple[str, str, str]]:
    """(name, unit, definition) of each of ``MEASURES`` at one point."""
    setting = (
        f"{concurrency} rooms open at once, the receiver's pool {pool_blocks(concurrency)} "
        f"blocks (a quarter of them); {where}"
    )
    latency = (
        "percentile of room latency (creation to Success, queueing for memory included; "
        "the median over runs of each run's percentile)"
    )
    rate, p50, p99 = (point_name(transport, concurrency, m) for m in MEASURES)
    return [
        (rate, "rooms/s", f"rooms completed and released per second, {setting}"),
        (p50, "ms", f"50th {latency}, {setting}"),
        (p99, "ms", f"99th {latency}, {setting}"),
    ]


def _sweep(
    transport: str,
    where: str,
    runs: dict[int, list[Outcome]],
    context: dict[int, dict[str, Number]],
) -> list[Metric]:
    """Rooms/s (with its ``context``) and p50/p99 latency at each concurrency, each the
    median over its runs."""
    metrics = []
    for concurrency in CONCURRENCY:
        spreads = [
            Spread.of([run.rooms_per_s for run in runs[concurrency]]),
            *(
                Spread.of([_percentile(run.latencies_s, q) * 1e3 for run in runs[concurrency]])
                for q in (50, 99)
            ),
        ]
        contexts = [{"pool_blocks": pool_blocks(concurrency), **context[concurrency]}, {}, {}]
        metrics += [
            Metric(name, spread.median, unit, definition, spread=spread, context=extra)
            for (name, unit, definition), spread, extra in zip(
                _names(transport, concurrency, where), spreads, contexts, strict=True
            )
        ]
    return metrics


def _percentile(values: Sequence[float], q: int) -> float:
    """The ``q``th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))]


# -- waiting --------------------------------------------------------------------------
def _waiting(settings: BenchSettings) -> Metric:
    """The pump thread's CPU share while every room waits, for memory and for the encoder."""
    rooms = settings.pick(WAITING_ROOMS, 100)
    pool = rooms * WAITING_POOL // WAITING_ROOMS
    seconds = 0.25 if settings.quick else 3.0
    memory = waiting.cpu_shares(Plan(rooms, TOKENS, HIDDEN, rooms, pool), seconds)
    encoder = waiting.cpu_shares(Plan(rooms, TOKENS, HIDDEN, rooms, rooms), seconds)
    return Metric(
        "waiting_cpu_share",
        max(memory.receiver, encoder.receiver),
        "cores",
        f"CPU time of a receiver engine's pump thread per wall-clock second (1.0: a whole "
        f"core) while its {rooms} rooms wait, measured over {seconds} s, the worse of two "
        f"cases: waiting for memory (a pool of {pool} blocks, one per room: {rooms - pool} "
        "rooms queue) and waiting for the encoder (a block for every room, nothing sent); "
        "both engines on their own pump threads, in-process transport",
        at_most(0.05),
        context={
            "memory_receiver_share": memory.receiver,
            "memory_sender_share": memory.sender,
            "memory_waits": memory.memory_waits,
            "encoder_receiver_share": encoder.receiver,
            "encoder_sender_share": encoder.sender,
        },
    )
