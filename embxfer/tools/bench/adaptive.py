"""The receiver's first allocation: learned from observed lengths (``AdaptiveSizer``),
against a fixed 8192 tokens, against exact sizing (the scheduler's size hint), and with
the encoder announcing each length when it creates the room (``announce``: the adaptive
receiver, told ``T`` early, frees what it over-allocated or replaces its request).

Real engines on the in-process transport run on a virtual clock, so the result is
deterministic and free of the machine's noise. Rooms arrive as a Poisson process with
lognormal lengths. Each room's receiver allocates when the room opens (as a serving
scheduler does when it admits the request); its embedding is ready ``WAIT_S_PER_KTOKEN``
per thousand tokens later (encoder plus transfer); the language model then holds the
result ``HOLD_S_PER_KTOKEN`` per thousand tokens (queue and prefill) and releases it.

Memory is what receivers hold over time: the integral of allocated blocks over the run
(block-seconds), relative to exact sizing on the same arrivals. Over-allocation costs
only until the first piece lands (the receiver frees unused blocks then), so the ratio
depends on how long a room waits for its embedding against how long it holds it; the
benchmark reports the headline for equal phases and the whole curve in its context.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.runtime import Engine
from embxfer.tools.bench.core import BenchSettings, Metric, Number, at_most
from embxfer.tools.workload import token_lengths

LENGTHS = "lognormal:1500:0.6"  # median 1500 tokens (a ~1000x1000 image in Qwen2-VL)
FIXED_TOKENS = 8192
CONCURRENCY = 32
WAIT_S_PER_KTOKEN = 0.010
HOLD_RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # hold phase / wait phase, for the curve
HEADLINE_HOLD = 1.0
HIDDEN = 8
BLOCK_SIZE = 128
POLICIES = ("adaptive", "fixed", "exact", "announce")
QUANTILE = EngineConfig.adaptive_quantile  # the engines' default, which this evaluates
OTHER_QUANTILES = (0.95, 0.98, 0.995)  # what the default is weighed against


@dataclass(frozen=True)
class Outcome:
    """What one policy did to one run of rooms: per room, its length and the blocks its
    receiver held while waiting for the embedding and after it landed."""

    tokens: tuple[int, ...]
    waiting_blocks: tuple[int, ...]
    holding_blocks: tuple[int, ...]
    resumed: int  # rooms that needed at least one resume
    peak_blocks: int  # most receiver blocks allocated at once

    @property
    def resume_rate(self) -> float:
        return self.resumed / len(self.tokens)

    def block_seconds(self, hold_ratio: float) -> float:
        """Receiver blocks integrated over the run when rooms hold their result
        ``hold_ratio`` times as long as they waited for it. Without back-pressure (the
        simulation allows none) this is a sum over rooms, whatever their overlap."""
        return sum(
            _wait_s(tokens) * (waiting + hold_ratio * holding)
            for tokens, waiting, holding in zip(
                self.tokens, self.waiting_blocks, self.holding_blocks, strict=True
            )
        )


def _wait_s(tokens: int) -> float:
    return WAIT_S_PER_KTOKEN * tokens / 1000


class _Simulation:
    """One policy on one list of lengths; see the module docstring for the model."""

    def __init__(self, policy: str, lengths: list[int], seed: int, quantile: float) -> None:
        self.policy = policy
        self.lengths = lengths
        self.now = 0.0
        longest = max(max(lengths), FIXED_TOKENS)
        config = EngineConfig(
            num_blocks=4 * CONCURRENCY * blocks_needed(longest, BLOCK_SIZE),
            block_size=BLOCK_SIZE,
            hidden_size=HIDDEN,
            default_alloc_tokens=FIXED_TOKENS,
            adaptive_alloc=policy in ("adaptive", "announce"),
            adaptive_quantile=quantile,
            write_threads=False,
        )
        self.sender, (self.receiver,), _ = inproc_engines(config, config, clock=lambda: self.now)
        self.engines: tuple[Engine[Any, Any], ...] = (self.sender, self.receiver)
        self.embeddings = torch.zeros(longest, HIDDEN, dtype=torch.bfloat16)
        self.rng = random.Random(seed)
        self.open: dict[int, tuple[SenderHandle, ReceiverHandle]] = {}
        self.waiting = [0] * len(lengths)
        self.holding = [0] * len(lengths)
        self.resumed = 0

    def _pump(self, done: Callable[[], bool]) -> int:
        """Run both engines until ``done``; the receiver blocks this allocated (each
        event settles before the next, so only the one room acting allocates)."""
        before = self.receiver.used_blocks
        for _ in range(100):
            if done():
                return self.receiver.used_blocks - before
            for engine in self.engines:
                engine.run_once(0.0)
        raise RuntimeError(f"{self.policy}: engines did not settle")

    def run(self) -> Outcome:
        mean = sum(self.lengths) / len(self.lengths)
        rate = CONCURRENCY / (_wait_s(round(mean)) * (1 + HEADLINE_HOLD))  # Little's law
        order = itertools.count()
        events: list[tuple[float, int, str, int]] = []
        arrival = 0.0
        for room_id in range(len(self.lengths)):
            arrival += self.rng.expovariate(rate)
            events.append((arrival, next(order), "open", room_id))
        heapq.heapify(events)
        peak = 0
        try:
            while events:
                self.now, _, kind, room_id = heapq.heappop(events)
                tokens = self.lengths[room_id]
                if kind == "open":
                    self._open(room_id)
                    later = self.now + _wait_s(tokens)
                    heapq.heappush(events, (later, next(order), "send", room_id))
                elif kind == "send":
                    self._send(room_id, tokens)
                    later = self.now + _wait_s(tokens) * HEADLINE_HOLD
                    heapq.heappush(events, (later, next(order), "release", room_id))
                else:
                    self._release(room_id)
                peak = max(peak, self.receiver.used_blocks)
        finally:
            for engine in self.engines:
                engine.close()
        return Outcome(
            tuple(self.lengths), tuple(self.waiting), tuple(self.holding), self.resumed, peak
        )

    def _open(self, room_id: int) -> None:
        hint = self.lengths[room_id] if self.policy == "exact" else None
        send = self.sender.create_room(room_id)
        if self.policy == "announce":
            send.announce(self.lengths[room_id])
        recv = self.receiver.create_room(room_id, self.sender.address, expected_tokens=hint)
        self.open[room_id] = (send, recv)
        # Allocated and asked (and, announced, sized for T): back-pressure would distort
        # the comparison, so none is allowed.
        self.waiting[room_id] = self._pump(lambda: self._asked(room_id, recv))

    def _asked(self, room_id: int, recv: ReceiverHandle) -> bool:
        if recv.poll() is not KVPoll.WaitingForInput:
            return False
        tracked = self.receiver.rooms.get(room_id)
        return self.policy != "announce" or (tracked is not None and tracked.room.total_tokens > 0)

    def _send(self, room_id: int, tokens: int) -> None:
        send, recv = self.open[room_id]
        send.send(EmbeddingPayload.from_embeddings(self.embeddings[:tokens]))
        grown = self._pump(lambda: recv.poll() is KVPoll.Success)
        self.holding[room_id] = self.waiting[room_id] + grown
        self.resumed += recv.resumes > 0

    def _release(self, room_id: int) -> None:
        send, recv = self.open.pop(room_id)
        recv.release()
        send.release()
        self._pump(lambda: room_id not in self.sender.rooms and room_id not in self.receiver.rooms)


def simulate(
    policy: str, lengths: list[int], seed: int = 11, quantile: float = QUANTILE
) -> Outcome:
    return _Simulation(policy, lengths, seed, quantile).run()


def run(settings: BenchSettings) -> list[Metric]:
    rooms = settings.pick(2000, 150)
    lengths = token_lengths(LENGTHS, rooms, seed=5)
    outcomes = {policy: simulate(policy, lengths) for policy in POLICIES}

    def memory(policy: str, hold: float) -> float:
        return outcomes[policy].block_seconds(hold) / outcomes["exact"].block_seconds(hold)

    ordered = sorted(lengths)
    model = (
        f"{rooms:,} rooms of {LENGTHS} tokens, {CONCURRENCY} open on average; a room "
        f"waits {WAIT_S_PER_KTOKEN * 1e3:g} ms per 1000 tokens for its embedding and "
        f"is then held {HEADLINE_HOLD:g}x as long"
    )
    curve = {f"memory_ratio_hold_{hold:g}x": memory("adaptive", hold) for hold in HOLD_RATIOS}
    exact = outcomes["exact"].block_seconds(HEADLINE_HOLD)
    sweep: dict[str, Number] = {}
    for quantile in () if settings.quick else OTHER_QUANTILES:
        other = simulate("adaptive", lengths, quantile=quantile)
        sweep[f"q{quantile:g}_resume_rate"] = other.resume_rate
        sweep[f"q{quantile:g}_memory_ratio"] = other.block_seconds(HEADLINE_HOLD) / exact
    return [
        Metric(
            "adaptive_resume_rate",
            outcomes["adaptive"].resume_rate,
            "rooms",
            f"fraction of rooms that resumed at least once with the adaptive first "
            f"allocation (the sizer's {QUANTILE:g} quantile of the last lengths seen); {model}",
            at_most(0.02),
            context={
                "fixed_8192": outcomes["fixed"].resume_rate,
                "exact": outcomes["exact"].resume_rate,
                "p99_tokens": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)))],
                **sweep,
            },
        ),
        Metric(
            "adaptive_memory_ratio",
            memory("adaptive", HEADLINE_HOLD),
            "x",
            "receiver block-seconds (blocks held, integrated from allocation to release) "
            f"with the adaptive first allocation / with exact sizing; {model}",
            at_most(1.25),
            context={
                "fixed_8192": memory("fixed", HEADLINE_HOLD),
                **{f"peak_blocks_{policy}": outcomes[policy].peak_blocks for policy in POLICIES},
                **curve,
            },
        ),
        Metric(
            "announce_memory_ratio",
            memory("announce", HEADLINE_HOLD),
            "x",
            "receiver block-seconds with the adaptive first allocation and the encoder "
            f"announcing each length when it creates the room / with exact sizing; {model}",
            at_most(1.05),
            context={
                "resume_rate": outcomes["announce"].resume_rate,
                "resumed_rooms": outcomes["announce"].resumed,
            },
        ),
    ]
