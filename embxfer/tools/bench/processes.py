"""Rooms per second across processes: an encoder process and a language process, each one
engine on ZeroMQ and Mooncake (``embxfer.remote``) and a scheduler loop as lean as a
serving scheduler's (create, poll, release; no per-room orchestration), started as
``multiprocessing`` spawn children like the cross-process demo's workers. The same loop
drives engines in one process (``scheduler_loop``), so both measure alike."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.sender import SenderEngine

_IDLE_S = 50e-6  # the scheduler loop yields this long when no room finished
_CHECK_EVERY = 64  # the receiver checks the bytes of every 64th room


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
    Success or Failed, as its loop saw it) in seconds."""

    seconds: float
    failed: int
    latencies_s: tuple[float, ...]


@dataclass(frozen=True)
class Outcome:
    """One plan as the language side measured it: rooms per second and latencies."""

    rooms_per_s: float
    latencies_s: tuple[float, ...]

    @classmethod
    def of(cls, plan: Plan, sender: SideReport, receiver: SideReport) -> Outcome:
        """The receiver's numbers, if every room succeeded on both sides."""
        if sender.failed or receiver.failed:
            raise RuntimeError(f"{sender.failed + receiver.failed} rooms failed or mismatched")
        return cls(plan.rooms / receiver.seconds, receiver.latencies_s)


def _side(role: str, plans: Sequence[Plan], conn: Connection) -> None:
    """A worker: for each plan, build a fresh engine, trade addresses with the parent,
    run every room on "go", report, and close the engine once the parent says both
    sides are done (a sender closed earlier could drop its last notices unsent)."""
    torch.set_num_threads(1)
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
    runs them: open up to ``plan.window``, poll, release."""
    payload = plan.payload()
    open_room = _opener(engine, sender_address, payload)
    started = time.perf_counter()
    open_rooms: deque[tuple[SenderHandle | ReceiverHandle, float]] = deque()
    latencies: list[float] = []
    created = failed = 0
    while created < plan.rooms or open_rooms:
        while created < plan.rooms and len(open_rooms) < plan.window:
            created += 1
            open_rooms.append((open_room(created), time.perf_counter()))
        finished = 0
        for _ in range(len(open_rooms)):
            handle, opened = open_rooms.popleft()
            state = handle.poll()
            if state not in (KVPoll.Success, KVPoll.Failed):
                open_rooms.append((handle, opened))
                continue
            latencies.append(time.perf_counter() - opened)
            finished += 1
            failed += state is KVPoll.Failed
            if isinstance(handle, ReceiverHandle) and handle.room_id % _CHECK_EVERY == 0:
                failed += state is KVPoll.Success and not handle.result().equals(payload)
            handle.release()
        if not finished:
            time.sleep(_IDLE_S)
    return SideReport(time.perf_counter() - started, failed, tuple(latencies))


def _opener(
    engine: SenderEngine | ReceiverEngine, sender_address: str, payload: EmbeddingPayload
) -> Callable[[int], SenderHandle | ReceiverHandle]:
    """What the scheduler does to start a room on this side."""
    if isinstance(engine, SenderEngine):
        sender = engine

        def send(room_id: int) -> SenderHandle:
            handle = sender.create_room(room_id)
            handle.send(payload)
            return handle

        return send
    receiver = engine
    return lambda room_id: receiver.create_room(room_id, sender_address)


def rooms_per_s(plan: Plan) -> float:
    """Rooms per second the receiver process completed, from go to its last release."""
    (outcome,) = run_plans([plan])
    return outcome.rooms_per_s


def run_plans(plans: Sequence[Plan], timeout_s: float = 120.0) -> list[Outcome]:
    """Each plan in turn through one pair of worker processes (started once: a start
    costs seconds), each plan on fresh engines; what the language process measured."""
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for role in ("sender", "receiver"):
        ours, theirs = context.Pipe()
        worker = context.Process(target=_side, args=(role, tuple(plans), theirs), daemon=True)
        worker.start()
        theirs.close()
        pipes.append(ours)
        workers.append(worker)
    try:
        return [_run_plan(plan, pipes, timeout_s) for plan in plans]
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
