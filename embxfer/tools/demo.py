"""The end-to-end demo: an encoder feeds language ranks, every byte is checked.

``run_inproc`` runs all engines in this process over the in-process transport; the
cross-process demo (``embxfer.tools.cluster``: ZeroMQ + Mooncake) has its workers report
``RoomOutcome``s made here, and counts them with the same ``Tally`` into the same
``Summary``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from tqdm import tqdm

from embxfer.buffers.layout import BufferLayout
from embxfer.config import EngineConfig
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Timeouts
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.runtime import Engine, TransferFailed
from embxfer.tools.workload import payload_for, send_in_place, token_lengths

TERMINAL = (KVPoll.Success, KVPoll.Failed)


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the CLI fills it from its options.

    The deadlines are short next to the library's defaults so that a run with a fault
    ends within seconds: ``peer_timeout_s`` declares a silent peer dead,
    ``write_grace_s`` is how long a receiver holds blocks a lost sender might still
    write (its writes are ~ms on loopback; the default of 65 s covers a stalled
    Mooncake write), ``timeout_s`` bounds each phase of a room.
    """

    requests: int = 100
    tokens: str = "100:60000"
    default_alloc: int = 8192
    block_size: int = 128
    hidden: int = 256
    receivers: int = 1
    concurrency: int = 16
    seed: int = 0
    receiver_tokens: int = 0  # receiver buffer capacity; 0: concurrency x 2 x default_alloc
    sender_tokens: int = 0  # encoder buffer capacity; 0: concurrency x the longest request
    timeout_s: float = 10.0
    peer_timeout_s: float = 3.0
    write_grace_s: float = 3.0
    announce: bool = False  # the encoder announces each length when it creates the room
    reuse_ids: bool = False  # room ids from a small set, and scheduler aborts mixed in

    def lengths(self) -> list[int]:
        return token_lengths(self.tokens, self.requests, self.seed)

    def scheduler_aborts(self) -> dict[int, str]:
        """With ``reuse_ids``: the requests (numbered from 1) a scheduler aborts as soon
        as it has opened them, and whose (a side's name; the language side is rank 0)."""
        if not self.reuse_ids:
            return {}
        rng = random.Random(self.seed)
        sides = (ENCODER, language_side(0))
        return {
            request: rng.choice(sides)
            for request in range(1, self.requests + 1)
            if rng.random() < ABORT_SHARE
        }

    @property
    def demand_tokens(self) -> int:
        """What ``concurrency`` open requests of the mean length hold on each side."""
        lengths = self.lengths()
        return self.concurrency * blocks_needed(sum(lengths), len(lengths))

    def sender_config(self) -> EngineConfig:
        if self.sender_tokens:
            return self._config(blocks_needed(self.sender_tokens, self.block_size))
        longest = max(self.lengths())
        blocks = self.concurrency * blocks_needed(longest, self.block_size) + 1
        return self._config(blocks)

    def receiver_config(self) -> EngineConfig:
        tokens = self.receiver_tokens or self.concurrency * 2 * self.default_alloc
        return self._config(blocks_needed(tokens, self.block_size))

    def _config(self, num_blocks: int) -> EngineConfig:
        return EngineConfig(
            num_blocks=num_blocks,
            block_size=self.block_size,
            hidden_size=self.hidden,
            default_alloc_tokens=self.default_alloc,
            adaptive_alloc=False,
            timeouts=Timeouts(
                bootstrap_s=self.timeout_s,
                progress_s=self.timeout_s,
                write_grace_s=self.write_grace_s,
            ),
            heartbeat_s=self.peer_timeout_s / 4,
            peer_timeout_s=self.peer_timeout_s,
        )

    def side_names(self) -> list[str]:
        """The engines of a run, as the summary names them."""
        return [ENCODER, *(language_side(rank) for rank in range(self.receivers))]


ENCODER = "encoder"
SPARE_IDS = 2  # --reuse-ids: room ids come from concurrency + this many
ABORT_SHARE = 0.1  # --reuse-ids: requests a scheduler aborts


class RoomIds:
    """The room id of each request: its number, or (``reuse_ids``) one drawn from a set
    barely larger than the requests open at once, so ids are reused all the time."""

    def __init__(self, settings: DemoSettings) -> None:
        self._reuse = settings.reuse_ids
        self._ids = range(1, settings.concurrency + SPARE_IDS + 1)
        self._rng = random.Random(settings.seed + 1)

    def pick(self, request: int, in_use: set[int]) -> int:
        if not self._reuse:
            return request
        return self._rng.choice([room_id for room_id in self._ids if room_id not in in_use])


def language_side(rank: int) -> str:
    return f"language-{rank}"


@dataclass(frozen=True)
class RoomOutcome:
    """How one engine's room ended: what its scheduler reports, in-process or from a worker."""

    request: int  # the request's number (its room id may be another request's too)
    state: str  # a KVPoll name: Success or Failed
    reason: str = ""  # why it failed, or "payload mismatch"
    resumes: int = 0  # receivers: resumes the room took
    bytes: int = 0  # receivers: payload bytes received and verified
    verified: bool = True  # receivers: the result matched what the encoder sent

    @property
    def ok(self) -> bool:
        return self.state == KVPoll.Success.name and self.verified


def sender_outcome(handle: SenderHandle, request: int) -> RoomOutcome:
    """A terminal sender room of request ``request``, as reported."""
    return RoomOutcome(request, handle.poll().name, handle.reason)


def receiver_outcome(
    handle: ReceiverHandle, layout: BufferLayout, seed: int, tokens: int, request: int
) -> RoomOutcome:
    """A terminal receiver room, its result checked against the ``tokens``-token payload
    the encoder made for ``request`` from ``seed`` (every process can rebuild it:
    ``payload_for``)."""
    state = handle.poll()
    if state is not KVPoll.Success:
        return RoomOutcome(request, state.name, handle.reason, handle.resumes)
    try:
        result = handle.result()
    except (TransferFailed, ValueError) as error:  # a room that says Success but cannot show it
        return RoomOutcome(request, state.name, f"bad result: {error}", handle.resumes, 0, False)
    if not result.equals(payload_for(request, tokens, layout, seed)):
        return RoomOutcome(request, state.name, "payload mismatch", handle.resumes, 0, False)
    return RoomOutcome(request, state.name, "", handle.resumes, result.nbytes)


# Faults the engines must absorb: every request still succeeds (spoof-abort: messages
# in other engines' names, which CURVE with per-engine keys refuses).
HARMLESS_FAULTS = frozenset({"spoof-abort"})
SPOOF_REFUSAL = "identity_mismatch"  # how an engine counts a message its sender's key may not send

UNREPORTED = "Unreported"  # a side's room whose engine died (or was stopped) before it ended


@dataclass
class Side:
    """How the rooms of one engine ended, and what it held at the end."""

    rooms: dict[str, int] = field(default_factory=dict)  # state (or UNREPORTED) -> rooms
    failure_reasons: dict[str, int] = field(default_factory=dict)
    leaked_blocks: int | None = None  # None: its process is gone, nothing left to count
    exit: str = ""  # cross-process runs: how its process ended
    address: str = ""  # cross-process runs: where its peers reached it
    # cross-process runs: resident memory (MiB) once it was up ("start"), once a tenth of
    # the requests were done ("warm": every buffer has been written) and at the end
    rss_mib: dict[str, float] = field(default_factory=dict)
    fault_target: bool = False  # the injected fault hit this engine
    rejected: dict[str, int] = field(default_factory=dict)  # cross-process runs: by reason


# The phases of a partition run, by when a request was open.
BEFORE_CUT = "before_cut"  # opened and ended before the cut
ACROSS_CUT = "across_cut"  # open at some moment while the host was cut off
AFTER_HEAL = "after_heal"  # opened once it was back


@dataclass
class Phase:
    """The requests of a partition run that were open at one time relative to the cut."""

    succeeded: int = 0
    failed: int = 0
    slowest_s: float = 0.0  # the longest any of them took to end


@dataclass
class Flood:
    """Hostile frames thrown at the encoder during a run, and how it counted them."""

    frames: int = 0
    heartbeats: int = 0  # frames that were valid heartbeats: accepted, and harmless
    expected: dict[str, int] = field(default_factory=dict)  # rejections predicted, by reason
    counted: dict[str, int] = field(default_factory=dict)  # rejections the encoder counted
    matched: bool = False  # every frame counted, by the predicted reason
    seconds: float = 0.0  # from the fuzzer's start to the last frame judged
    requests: int = 0  # real requests that ran meanwhile
    error: str = ""  # why the fuzzer could not throw everything


@dataclass
class Summary:
    """How the run went; ``--json`` prints it as the last stdout line."""

    transport: str
    requests: int
    succeeded: int = 0
    failed: int = 0
    aborted: int = 0  # requests a scheduler aborted on purpose (--reuse-ids) that failed
    not_started: int = 0  # requests a fault stopped before they began
    resumes: int = 0
    bytes: int = 0
    verified: bool = True
    leaked_blocks: int = 0
    seconds: float = 0.0
    latency_p50_ms: float = 0.0  # from opening a request to every engine's end of it
    latency_p99_ms: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    fault: str = ""
    spoofed: int = 0  # messages the spoof-abort fault sent in other engines' names
    rejected: dict[str, int] = field(default_factory=dict)  # all engines, by reason
    sides: dict[str, Side] = field(default_factory=dict)
    # partition faults: how long the cable was out, and the requests by phase
    partition_s: float = 0.0
    partition: dict[str, Phase] = field(default_factory=dict)
    succeeded_after_heal: int | None = None
    flood: Flood | None = None  # --fuzz-frames

    def render(self) -> str:
        rate = self.bytes / self.seconds / 1e9 if self.seconds else 0.0
        lines = [
            f"embxfer demo ({self.transport}{', fault ' + self.fault if self.fault else ''})",
            f"  requests        {self.requests}",
            f"  succeeded       {self.succeeded}",
            f"  failed          {self.failed}",
            f"  resumes         {self.resumes}",
            f"  bytes           {self.bytes:,} ({rate:.2f} GB/s)",
            f"  verified        {self.verified}",
            f"  leaked blocks   {self.leaked_blocks}",
            f"  seconds         {self.seconds:.2f}",
            f"  latency p50/p99 {self.latency_p50_ms:.1f} / {self.latency_p99_ms:.1f} ms",
        ]
        if self.aborted:
            lines.insert(4, f"  aborted         {self.aborted} (by their schedulers)")
        if self.not_started:
            lines.insert(4, f"  not started     {self.not_started}")
        if self.spoofed:
            refused = self.rejected.get(SPOOF_REFUSAL, 0)
            lines.append(
                f"  spoofed         {self.spoofed} sent, {refused} refused ({SPOOF_REFUSAL})"
            )
        if self.rejected:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items()))
            lines.append(f"  rejected        {counts}")
        rss = [
            f"{name} {' -> '.join(f'{mib:.0f}' for mib in side.rss_mib.values())}"
            for name, side in self.sides.items()
            if side.rss_mib
        ]
        if rss:
            points = " -> ".join(next(s for s in self.sides.values() if s.rss_mib).rss_mib)
            lines.append(f"  rss MiB ({points}) {', '.join(rss)}")
        if self.partition:
            lines.append(f"  cut for         {self.partition_s:.1f} s")
            lines += [
                f"    {name:<13} succeeded {p.succeeded}, failed {p.failed}, "
                f"slowest {p.slowest_s:.2f} s"
                for name, p in self.partition.items()
            ]
            lines.append(f"  succeeded after heal {self.succeeded_after_heal}")
        if self.flood is not None:
            flood = self.flood
            lines.append(
                f"  flood           {flood.frames:,} frames in {flood.seconds:.1f} s beside "
                f"{flood.requests} requests; all counted as predicted: {flood.matched}"
            )
            lines += [f"    {n:>9,} x {reason}" for reason, n in flood.counted.items()]
            lines.append(f"    {flood.heartbeats:>9,} x heartbeat (accepted)")
        if self.failed or self.fault:
            for name, side in self.sides.items():
                rooms = ", ".join(f"{state} {n}" for state, n in side.rooms.items())
                leaked = "?" if side.leaked_blocks is None else side.leaked_blocks
                lines.append(f"  {name:<15} {rooms}; leaked {leaked}; {side.exit or 'ran'}")
                lines += [f"    {n:>4} x {reason}" for reason, n in side.failure_reasons.items()]
        return "\n".join(lines)

    def ok(self) -> bool:
        """The run did what it must: every byte checked out, every engine the fault spared
        accounted for each of its rooms and leaked no block, without a fault (or with a
        harmless one) every request succeeded, every spoofed message was refused, after
        a partition healed every new request succeeded, and a flood's every frame was
        counted as predicted."""
        # A partition kills nobody: every engine must account for its rooms.
        spared = [s for s in self.sides.values() if not s.fault_target or self.partition]
        accounted = all(s.leaked_blocks is not None and UNREPORTED not in s.rooms for s in spared)
        harmful = bool(self.fault) and self.fault not in HARMLESS_FAULTS
        complete = harmful or (self.failed == 0 and self.not_started == 0)
        refused = self.rejected.get(SPOOF_REFUSAL, 0) == self.spoofed
        # After a partition heals, the rooms opened from then on all succeed.
        after_heal = self.partition.get(AFTER_HEAL)
        healed = after_heal is None or (after_heal.succeeded > 0 and after_heal.failed == 0)
        flood = self.flood is None or self.flood.matched
        return (
            self.verified
            and self.leaked_blocks == 0
            and accounted
            and complete
            and refused
            and healed
            and flood
        )

    def print(self, as_json: bool) -> None:
        print(self.render())
        if as_json:
            print(json.dumps(asdict(self), sort_keys=True))


class Tally:
    """Counts requests as every engine's room of them ends."""

    def __init__(self, settings: DemoSettings, summary: Summary) -> None:
        self.summary = summary
        self.reasons: Counter[str] = Counter()
        self._latencies: list[float] = []
        self._rooms = {name: Counter[str]() for name in settings.side_names()}
        self._reasons = {name: Counter[str]() for name in settings.side_names()}
        summary.sides = {name: Side() for name in settings.side_names()}

    def request_done(
        self, outcomes: Mapping[str, RoomOutcome | None], seconds: float, aborted: bool = False
    ) -> bool:
        """One request is over, ``seconds`` after it was opened: each side's outcome
        (None: it will never report). True if it succeeded everywhere with the right
        bytes. A request its scheduler ``aborted`` that did not is counted apart: its
        failures are expected (a Success must still be byte-exact)."""
        self._latencies.append(seconds)
        ok = True
        for side, outcome in outcomes.items():
            if outcome is None:
                self._rooms[side][UNREPORTED] += 1
                ok = False
                continue
            self._rooms[side][outcome.state] += 1
            self.summary.resumes += outcome.resumes
            self.summary.bytes += outcome.bytes
            self.summary.verified &= outcome.verified
            if not outcome.ok:
                self._reasons[side][outcome.reason] += 1
                self.reasons[outcome.reason] += 1
                ok = False
        if ok:
            self.summary.succeeded += 1
        elif aborted and all(o is not None and o.verified for o in outcomes.values()):
            self.summary.aborted += 1
        else:
            self.summary.failed += 1
        return ok

    def leaked(self, side: str, blocks: int) -> None:
        """What ``side``'s engine still held once it had forgotten its rooms."""
        self.summary.sides[side].leaked_blocks = blocks
        self.summary.leaked_blocks += blocks

    def rejected(self, side: str, counts: Mapping[str, int]) -> None:
        """Inbound messages ``side``'s engine refused, by reason (cross-process runs)."""
        self.summary.sides[side].rejected = dict(counts)
        for reason, count in counts.items():
            self.summary.rejected[reason] = self.summary.rejected.get(reason, 0) + count

    def finish(self, seconds: float) -> Summary:
        """The summary, once every request is counted; ``seconds`` the requests took."""
        self.summary.seconds = seconds
        latencies = sorted(self._latencies)
        self.summary.latency_p50_ms = round(_percentile(latencies, 0.50) * 1000, 2)
        self.summary.latency_p99_ms = round(_percentile(latencies, 0.99) * 1000, 2)
        self.summary.failure_reasons = dict(self.reasons.most_common())
        for name, side in self.summary.sides.items():
            side.rooms = dict(sorted(self._rooms[name].items()))
            side.failure_reasons = dict(self._reasons[name].most_common())
        return self.summary


def _percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``ordered`` (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def leaked_blocks(engine: Engine[Any, Any], wait_s: float = 5.0) -> int:
    """Blocks still allocated once the engine has forgotten its rooms (or ``wait_s``):
    failed rooms may hold blocks until their write grace ends."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and engine.rooms:
        time.sleep(0.01)
    return engine.used_blocks


def run_inproc(settings: DemoSettings, progress: bool = True) -> Summary:
    """The whole demo in this process: threads for engines, this thread as scheduler."""
    sender, receivers, _ = inproc_engines(
        settings.sender_config(),
        settings.receiver_config().replace(write_threads=False),
        settings.receivers,
    )
    engines: list[Engine[Any, Any]] = [sender, *receivers]
    for engine in engines:
        engine.start()
    summary = Summary("inproc", settings.requests)
    tally = Tally(settings, summary)
    lengths = settings.lengths()
    layout = sender.layout
    ids = RoomIds(settings)
    aborts = settings.scheduler_aborts()
    started = time.perf_counter()
    # request -> its room id, handles, and when it was opened
    in_flight: dict[int, tuple[int, SenderHandle, list[ReceiverHandle], float]] = {}
    next_request = 1
    bar = progress_bar(settings.requests, progress)
    try:
        while next_request <= settings.requests or in_flight:
            while next_request <= settings.requests and len(in_flight) < settings.concurrency:
                request, tokens = next_request, lengths[next_request - 1]
                next_request += 1
                room_id = ids.pick(request, {entry[0] for entry in in_flight.values()})
                sent = sender.create_room(room_id)
                got = [
                    r.create_room(room_id, sender.address, required_receivers=settings.receivers)
                    for r in receivers
                ]
                if settings.announce:
                    sent.announce(tokens)
                send_in_place(sent, payload_for(request, tokens, sender.layout, settings.seed))
                in_flight[request] = (room_id, sent, got, time.perf_counter())
                if request in aborts:
                    (sent if aborts[request] == ENCODER else got[0]).abort("the demo aborts")
            for request, (_, sent, got, opened_at) in list(in_flight.items()):
                if sent.poll() in TERMINAL and all(h.poll() in TERMINAL for h in got):
                    tokens = lengths[request - 1]
                    outcomes = {ENCODER: sender_outcome(sent, request)} | {
                        language_side(rank): receiver_outcome(
                            h, layout, settings.seed, tokens, request
                        )
                        for rank, h in enumerate(got)
                    }
                    tally.request_done(outcomes, time.perf_counter() - opened_at, request in aborts)
                    sent.release()
                    for handle in got:
                        handle.release()
                    del in_flight[request]
                    bar.update()
            time.sleep(0.0005)
        seconds = time.perf_counter() - started
        for name, engine in zip(settings.side_names(), engines, strict=True):
            tally.leaked(name, leaked_blocks(engine))
        return tally.finish(seconds)
    finally:
        bar.close()
        for engine in engines:
            engine.close()


def progress_bar(requests: int, enabled: bool) -> tqdm[NoReturn]:
    """Requests done, on stderr (stdout carries the summary)."""
    return tqdm(total=requests, desc="rooms", unit="room", file=sys.stderr, disable=not enabled)
