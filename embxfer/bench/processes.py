"""Rooms per second across processes: an encoder process and a language process, each one
engine on ZeroMQ and Mooncake (``embxfer.remote``) and a scheduler loop as lean as a
serving scheduler's (create, poll, release; no per-room orchestration), started as
``multiprocessing`` spawn children like the cross-process demo's workers."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.receiver import ReceiverEngine, ReceiverHandle
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.sender import SenderEngine, SenderHandle

_IDLE_S = 50e-6  # the scheduler loop yields this long when no room finished
_CHECK_EVERY = 64  # the receiver checks the bytes of every 64th room


@dataclass(frozen=True)
class Plan:
    """What both processes run: ``rooms`` rooms of ``tokens`` tokens, ``window`` open."""

    rooms: int
    tokens: int
    hidden: int
    window: int

    def config(self) -> EngineConfig:
        return EngineConfig(
            num_blocks=2 * self.window,
            hidden_size=self.hidden,
            default_alloc_tokens=self.tokens,
            adaptive_alloc=False,
        )

    def payload(self) -> EmbeddingPayload:
        embeddings = torch.arange(self.tokens * self.hidden, dtype=torch.float32)
        return EmbeddingPayload.from_embeddings(
            embeddings.reshape(self.tokens, self.hidden).to(torch.bfloat16)
        )


def _side(role: str, plan: Plan, conn: Connection) -> None:
    """A worker: build the engine, trade addresses with the parent, run every room on
    "go", report (seconds from go to the last room released, rooms that failed)."""
    torch.set_num_threads(1)
    engine: SenderEngine | ReceiverEngine = (
        remote_sender(plan.config(), NetworkConfig())
        if role == "sender"
        else remote_receiver(plan.config(), NetworkConfig())
    )
    try:
        engine.start()
        conn.send(engine.address)
        sender_address: str = conn.recv()  # the go signal
        payload = plan.payload()
        open_room = _opener(engine, sender_address, payload)
        started = time.perf_counter()
        open_rooms: deque[SenderHandle | ReceiverHandle] = deque()
        created = failed = 0
        while created < plan.rooms or open_rooms:
            while created < plan.rooms and len(open_rooms) < plan.window:
                created += 1
                open_rooms.append(open_room(created))
            finished = 0
            for _ in range(len(open_rooms)):
                handle = open_rooms.popleft()
                state = handle.poll()
                if state not in (KVPoll.Success, KVPoll.Failed):
                    open_rooms.append(handle)
                    continue
                finished += 1
                failed += state is KVPoll.Failed
                if isinstance(handle, ReceiverHandle) and handle.room_id % _CHECK_EVERY == 0:
                    failed += state is KVPoll.Success and not handle.result().equals(payload)
                handle.release()
            if not finished:
                time.sleep(_IDLE_S)
        conn.send((time.perf_counter() - started, failed))
    finally:
        engine.close()


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


def rooms_per_s(plan: Plan, timeout_s: float = 120.0) -> float:
    """Rooms per second the receiver process completed, from go to its last release."""
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for role in ("sender", "receiver"):
        ours, theirs = context.Pipe()
        worker = context.Process(target=_side, args=(role, plan, theirs), daemon=True)
        worker.start()
        theirs.close()
        pipes.append(ours)
        workers.append(worker)
    try:
        for pipe in pipes:
            if not pipe.poll(timeout_s):
                raise TimeoutError("a bench worker did not start")
        sender_address = pipes[0].recv()
        pipes[1].recv()
        for pipe in pipes:
            pipe.send(sender_address)
        results = []
        for pipe in pipes:
            if not pipe.poll(timeout_s):
                raise TimeoutError("a bench worker did not finish")
            results.append(pipe.recv())
        (_, sender_failed), (seconds, receiver_failed) = results
        if sender_failed or receiver_failed:
            raise RuntimeError(f"{sender_failed + receiver_failed} rooms failed or mismatched")
        return float(plan.rooms / seconds)
    finally:
        for worker in workers:
            worker.join(5.0)
            if worker.is_alive():
                worker.kill()
                worker.join()
