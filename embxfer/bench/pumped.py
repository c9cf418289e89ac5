"""Rooms through a sender and a receiver engine on the in-process transport, pumped by
hand on this thread as a scheduler would drive them: created, sent, polled to Success
and released. All the engines' work runs on this thread, so its CPU clock measures what
one core sustains, whatever else the machine runs."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverHandle
from embxfer.sender import SenderHandle


@dataclass(frozen=True)
class Batch:
    """One batch of rooms: this thread's CPU seconds and the wall seconds it took, and
    each room's latency (creation to both sides Success) on this thread's CPU clock."""

    rooms: int
    cpu_s: float
    wall_s: float
    latencies_s: tuple[float, ...]

    @property
    def rooms_per_cpu_s(self) -> float:
        return self.rooms / self.cpu_s

    @property
    def rooms_per_wall_s(self) -> float:
        return self.rooms / self.wall_s


class PumpedPair:
    """A SenderEngine and a ReceiverEngine, never started: ``batch`` pumps them."""

    def __init__(
        self, sender_config: EngineConfig, receiver_config: EngineConfig, tokens: int
    ) -> None:
        self.sender, (self.receiver,), _ = inproc_engines(
            sender_config.replace(write_threads=False),
            receiver_config.replace(write_threads=False),
        )
        hidden = sender_config.hidden_size
        self.payload = EmbeddingPayload.from_embeddings(
            torch.ones(tokens, hidden, dtype=torch.bfloat16)
        )
        self._next_id = 0

    def batch(self, rooms: int, window: int) -> Batch:
        """``rooms`` rooms, at most ``window`` open at once; raises if one fails."""
        sender, receiver = self.sender, self.receiver
        open_rooms: deque[tuple[SenderHandle, ReceiverHandle, float]] = deque()
        latencies: list[float] = []
        started, cpu_started = time.perf_counter(), time.thread_time()
        created = 0
        while len(latencies) < rooms:
            while created < rooms and len(open_rooms) < window:
                self._next_id += 1
                created += 1
                send = sender.create_room(self._next_id)
                recv = receiver.create_room(self._next_id, sender.address)
                send.send(self.payload)
                open_rooms.append((send, recv, time.thread_time()))
            self._pump()
            now = time.thread_time()
            for _ in range(len(open_rooms)):
                send, recv, opened = open_rooms.popleft()
                state = recv.poll()
                if state is KVPoll.Failed:
                    raise RuntimeError(f"room {recv.room_id} failed: {recv.reason}")
                if state is KVPoll.Success and send.poll() is KVPoll.Success:
                    recv.release()
                    send.release()
                    latencies.append(now - opened)
                else:
                    open_rooms.append((send, recv, opened))
        while sender.rooms or receiver.rooms:  # releases are part of the work
            self._pump()
        cpu, wall = time.thread_time() - cpu_started, time.perf_counter() - started
        return Batch(rooms, cpu, wall, tuple(latencies))

    def _pump(self) -> None:
        self.sender.run_once(0.0)
        self.receiver.run_once(0.0)

    @property
    def used_blocks(self) -> int:
        """Blocks either engine holds: 0 once every room is released."""
        return self.sender.used_blocks + self.receiver.used_blocks

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()
