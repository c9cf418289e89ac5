"""What waiting costs: the CPU share of an engine's pump thread while all its rooms wait,
for memory (its pool fits some of them) or for the encoder (nothing is sent).

Waiting must be an event or a one-shot timer (a grant, a message, the deadline), so an
engine whose rooms all wait should sleep. The engines run as deployed, each on its own
pump thread; the share is that thread's CPU time over a stretch of wall-clock time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverEngine
from embxfer.runtime import Engine
from embxfer.sender import SenderEngine
from embxfer.tools.bench.processes import Plan

_SETTLE_S = 30.0  # at most this long for the rooms to reach their waiting states


@dataclass(frozen=True)
class Shares:
    """CPU seconds per wall-clock second of each engine's pump thread (1.0: one core)."""

    receiver: float
    sender: float
    memory_waits: int  # rooms the receiver queued for memory


def cpu_shares(plan: Plan, seconds: float) -> Shares:
    """Open all ``plan.rooms`` rooms on both sides (each room's first piece one receiver
    block: those beyond the receiver's pool queue for memory), the encoder sending
    nothing; let them settle into waiting, then measure each pump thread's CPU time
    over ``seconds`` of wall clock."""
    sender, (receiver,), _ = inproc_engines(plan.config("sender"), plan.config("receiver"))
    engines: tuple[SenderEngine, ReceiverEngine] = (sender, receiver)
    for engine in engines:
        engine.start()
    try:
        for room_id in range(1, plan.rooms + 1):
            sender.create_room(room_id)  # the encoder has nothing to send yet
            receiver.create_room(room_id, sender.address)
        _settle(receiver, plan.rooms)
        clocks = [time.pthread_getcpuclockid(_pump_thread(engine).ident or 0) for engine in engines]
        cpu = [time.clock_gettime(clock) for clock in clocks]
        started = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - started
        sender_s, receiver_s = (
            time.clock_gettime(clock) - before for clock, before in zip(clocks, cpu, strict=True)
        )
        if receiver.stats.failed or sender.stats.failed:
            raise RuntimeError("rooms failed while waiting: the window outlasted a deadline")
        return Shares(receiver_s / wall, sender_s / wall, receiver.stats.memory_waits)
    finally:
        for engine in engines:
            engine.close()


def _settle(receiver: ReceiverEngine, rooms: int) -> None:
    """Until every receiver room holds its block or waits in the queue."""
    held = min(rooms, receiver.memory.total_blocks)
    queued = rooms - held
    deadline = time.monotonic() + _SETTLE_S
    while receiver.used_blocks < held or receiver.memory.waiting < queued:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rooms did not settle: {receiver.used_blocks} blocks held, "
                f"{receiver.memory.waiting} rooms queued"
            )
        time.sleep(0.01)


def _pump_thread(engine: Engine[Any, Any]) -> threading.Thread:
    """The thread ``engine.start`` made (named after the engine's role)."""
    name = f"embxfer-{engine.role}"
    for thread in threading.enumerate():
        if thread.name == name:
            return thread
    raise RuntimeError(f"no pump thread named {name}")
