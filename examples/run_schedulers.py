"""Both scheduler loops against each other in one process, over the in-process transport.

``python -m examples.run_schedulers`` runs the engines on their own pump threads, as a
server would, while this thread plays both schedulers. ``run(..., threaded=False)``
instead pumps the engines from the scheduler loop on a virtual clock: no threads and no
sleeps, so the same loops run as a deterministic test. Configuration comes from the
environment (``EngineConfig.from_env``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from embxfer import EmbeddingPayload, EngineConfig, ReceiverEngine, SenderEngine
from embxfer.local import inproc_engines
from embxfer.runtime import Engine
from embxfer.tools.workload import payload_for
from examples.encoder_scheduler import EncodeRequest, EncoderScheduler
from examples.language_scheduler import LanguageRequest, LanguageScheduler

SEED = 7


@dataclass
class Report:
    """What happened to every request, on both sides."""

    encoder: dict[int, str] = field(default_factory=dict)  # room -> "" or failure reason
    language: dict[int, str] = field(default_factory=dict)
    verified: dict[int, bool] = field(default_factory=dict)  # room -> bytes as encoded
    resumes: int = 0
    leaked_blocks: int = 0


class VirtualClock:
    """Time that moves only when the loop says so: deadlines and retries stay exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scheduler(Protocol):
    """What ``drive`` needs of a scheduler loop."""

    @property
    def idle(self) -> bool: ...

    def step(self) -> None: ...


@dataclass
class Engines:
    """An encoder engine, language ranks, and the clock they run on."""

    sender: SenderEngine
    receivers: list[ReceiverEngine]
    clock: VirtualClock
    threaded: bool

    @property
    def all(self) -> list[Engine[Any, Any]]:
        return [self.sender, *self.receivers]

    @property
    def leaked_blocks(self) -> int:
        return sum(engine.allocator.used_blocks for engine in self.all)


def make_engines(ranks: int, threaded: bool, **config: Any) -> Engines:
    """In-process engines configured by ``EngineConfig.from_env()`` with ``config`` over it."""
    clock = VirtualClock()
    settings = EngineConfig.from_env(**config)
    if not threaded:
        settings = settings.replace(write_threads=False)  # writes inline: deterministic
    sender, receivers, _ = inproc_engines(
        settings, settings, ranks, clock=time.monotonic if threaded else clock
    )
    return Engines(sender, receivers, clock, threaded)


def drive(engines: Engines, schedulers: Sequence[Scheduler], max_steps: int = 100_000) -> None:
    """Step the schedulers until they and the engines are done, then close the engines.
    Threaded, the engines run on their own pump threads; else this loop pumps them."""
    if engines.threaded:
        for engine in engines.all:
            engine.start()
    try:
        for _ in range(max_steps):
            if all(s.idle for s in schedulers) and not any(e.rooms for e in engines.all):
                return
            if engines.threaded:
                time.sleep(0.0005)  # the engines' own threads do the work
            else:
                engines.clock.now += 0.001
                for engine in engines.all:
                    engine.run_once(0.0)
            for scheduler in schedulers:
                scheduler.step()
        raise RuntimeError(f"requests not finished after {max_steps} steps")
    finally:
        for engine in engines.all:
            engine.close()


def run(
    lengths: Sequence[int],
    ranks: int = 1,
    threaded: bool = True,
    max_steps: int = 100_000,
    **config: Any,
) -> Report:
    """Send one request per entry of ``lengths`` (room ids 1, 2, ...) from an encoder to
    ``ranks`` language ranks; ``config`` overrides ``EngineConfig.from_env()``."""
    engines = make_engines(ranks, threaded, **config)
    layout = engines.sender.layout
    report = Report()

    def encode(request: EncodeRequest) -> EmbeddingPayload:  # stands in for the vision tower
        return payload_for(request.room_id, request.num_tokens, layout, SEED)

    def prefill(room_id: int, embedding: EmbeddingPayload) -> None:
        expected = payload_for(room_id, embedding.num_tokens, layout, SEED)
        report.verified[room_id] = embedding.equals(expected)

    encoder = EncoderScheduler(engines.sender, encode)
    language = LanguageScheduler(engines.receivers, engines.sender.address, prefill)
    for room_id, tokens in enumerate(lengths, start=1):
        language.add(LanguageRequest(room_id))
        encoder.add(EncodeRequest(room_id, tokens))
    drive(engines, [encoder, language], max_steps)
    report.encoder, report.language = encoder.finished, language.finished
    report.resumes = language.resumes
    report.leaked_blocks = engines.leaked_blocks
    return report


def main(run_example: Callable[..., Any] = run, description: str = __doc__) -> int:
    """Run an example's ``run`` from the command line; print its report as JSON."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--tokens", default="500,2000,1024,10000,50000")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    lengths = [int(n) for n in args.tokens.split(",")]
    report = run_example(lengths, args.ranks, hidden_size=256, num_blocks=2048)
    print(json.dumps(dataclasses.asdict(report)))
    ok = all(report.verified.get(room, False) for room in range(1, len(lengths) + 1))
    return 0 if ok and not report.leaked_blocks else 1


if __name__ == "__main__":
    raise SystemExit(main())
