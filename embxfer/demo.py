"""The end-to-end demo: an encoder feeds language ranks, every byte is checked.

``run_inproc`` runs all engines in this process over the in-process transport; the
cross-process demo (ZeroMQ + Mooncake) reuses ``DemoSettings``, ``Tally`` and
``Summary`` from here.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.local import inproc_engines
from embxfer.receiver import ReceiverEngine, ReceiverHandle
from embxfer.runtime import Runtime
from embxfer.sender import SenderHandle
from embxfer.workload import payload_for, token_lengths

TERMINAL = (KVPoll.Success, KVPoll.Failed)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the CLI fills it from its options."""

    requests: int = 100
    tokens: str = "100:60000"
    default_alloc: int = 8192
    block_size: int = 128
    hidden: int = 256
    receivers: int = 1
    concurrency: int = 16
    seed: int = 0
    receiver_tokens: int = 0  # receiver buffer capacity; 0: concurrency x 2 x default_alloc

    def lengths(self) -> list[int]:
        return token_lengths(self.tokens, self.requests, self.seed)

    def sender_config(self) -> EngineConfig:
        longest = max(self.lengths())
        blocks = self.concurrency * -(-longest // self.block_size) + 1
        return self._config(blocks)

    def receiver_config(self) -> EngineConfig:
        tokens = self.receiver_tokens or self.concurrency * 2 * self.default_alloc
        return self._config(-(-tokens // self.block_size))

    def _config(self, num_blocks: int) -> EngineConfig:
        return EngineConfig(
            num_blocks=num_blocks,
            block_size=self.block_size,
            hidden_size=self.hidden,
            default_alloc_tokens=self.default_alloc,
            adaptive_alloc=False,
        )


@dataclass
class Summary:
    """How the run went; ``--json`` prints it as the last stdout line."""

    transport: str
    requests: int
    succeeded: int = 0
    failed: int = 0
    resumes: int = 0
    bytes: int = 0
    verified: bool = True
    leaked_blocks: int = 0
    seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        rate = self.bytes / self.seconds / 1e9 if self.seconds else 0.0
        lines = [
            f"embxfer demo ({self.transport})",
            f"  requests        {self.requests}",
            f"  succeeded       {self.succeeded}",
            f"  failed          {self.failed}",
            f"  resumes         {self.resumes}",
            f"  bytes           {self.bytes:,} ({rate:.2f} GB/s)",
            f"  verified        {self.verified}",
            f"  leaked blocks   {self.leaked_blocks}",
            f"  seconds         {self.seconds:.2f}",
        ]
        lines += [f"  failure: {reason} x{n}" for reason, n in self.failure_reasons.items()]
        return "\n".join(lines)

    def print(self, as_json: bool) -> None:
        print(self.render())
        if as_json:
            print(json.dumps(asdict(self), sort_keys=True))


class Tally:
    """Counts rooms as they end; verifies each received embedding against the seed."""

    def __init__(self, settings: DemoSettings, summary: Summary) -> None:
        self.settings = settings
        self.summary = summary
        self.reasons: Counter[str] = Counter()

    def receiver_done(self, handle: ReceiverHandle, engine: ReceiverEngine) -> bool:
        """Check one receiver's room; True if it succeeded with the right bytes."""
        if handle.poll() is not KVPoll.Success:
            self.reasons[handle.reason] += 1
            return False
        self.summary.resumes += handle.resumes
        result = handle.result()
        expected = payload_for(handle.room_id, result.num_tokens, engine.layout, self.settings.seed)
        ok = result.equals(expected)
        if ok:
            self.summary.bytes += result.nbytes
        else:
            self.summary.verified = False
            self.reasons["payload mismatch"] += 1
        return ok

    def request_done(self, ok: bool) -> None:
        if ok:
            self.summary.succeeded += 1
        else:
            self.summary.failed += 1

    def finish(self, started: float) -> Summary:
        self.summary.seconds = time.perf_counter() - started
        self.summary.failure_reasons = dict(self.reasons.most_common())
        return self.summary


def leaked_blocks(engines: Sequence[Runtime[Any]], wait_s: float = 5.0) -> int:
    """Blocks still allocated once every engine has forgotten its rooms (or ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(e.rooms for e in engines):
        time.sleep(0.01)
    return sum(e.allocator.used_blocks for e in engines)


def run_inproc(settings: DemoSettings, progress: bool = True) -> Summary:
    """The whole demo in this process: threads for engines, this thread as scheduler."""
    sender, receivers, _ = inproc_engines(
        settings.sender_config(),
        settings.receiver_config().replace(write_threads=False),
        settings.receivers,
    )
    engines: list[Runtime[Any]] = [sender, *receivers]
    for engine in engines:
        engine.start()
    summary = Summary("inproc", settings.requests)
    tally = Tally(settings, summary)
    lengths = settings.lengths()
    started = time.perf_counter()
    in_flight: dict[int, tuple[SenderHandle, list[ReceiverHandle]]] = {}
    next_room = 0
    bar = tqdm(
        total=settings.requests, desc="rooms", unit="room", file=sys.stderr, disable=not progress
    )
    try:
        while next_room < settings.requests or in_flight:
            while next_room < settings.requests and len(in_flight) < settings.concurrency:
                room_id = next_room + 1
                tokens = lengths[next_room]
                next_room += 1
                sent = sender.create_room(room_id)
                got = [
                    r.create_room(room_id, sender.address, required_receivers=settings.receivers)
                    for r in receivers
                ]
                sent.send(payload_for(room_id, tokens, sender.layout, settings.seed))
                in_flight[room_id] = (sent, got)
            for room_id, (sent, got) in list(in_flight.items()):
                if sent.poll() in TERMINAL and all(h.poll() in TERMINAL for h in got):
                    ok = all([tally.receiver_done(h, receivers[0]) for h in got])
                    tally.request_done(ok and sent.poll() is KVPoll.Success)
                    sent.release()
                    for handle in got:
                        handle.release()
                    del in_flight[room_id]
                    bar.update()
            time.sleep(0.0005)
        result = tally.finish(started)
        result.leaked_blocks = leaked_blocks(engines)
        return result
    finally:
        bar.close()
        for engine in engines:
            engine.close()
