"""The demo across processes: real ZeroMQ, real Mooncake writes, optional faults.

The parent is the orchestrator: it paces the requests (at most ``concurrency`` rooms
open at once), opens each room on the encoder and on every language rank, counts each
room as every engine reports how it ended, and, with a fault, hits one worker mid-run.
After a kill or stall it opens no new room (they could not complete) and waits for the
survivors to end every open room by their own deadlines and to give back every block.
A partition (``--hosts netns`` only) kills nobody: rooms go on opening through the cut
and after the heal (``partition``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from embxfer.remote import NetworkConfig
from embxfer.tools.demo import (
    ENCODER,
    DemoSettings,
    RoomIds,
    RoomOutcome,
    Summary,
    Tally,
    language_side,
    progress_bar,
)

from . import hosts
from .fuzzer import Flood, FuzzSpec
from .keys import free_addresses, run_keys
from .launcher import Cluster
from .netns import Testbed
from .partition import Partition
from .spoofer import SPOOFER, Spoofer

LOG = logging.getLogger("embxfer.tools.cluster")


class Fault(enum.Enum):
    """What ``--fault`` does, once a third of the requests (or ``fault_after``) are done."""

    KILL_RECEIVER = "kill-receiver"  # SIGKILL the last language rank
    KILL_SENDER = "kill-sender"  # SIGKILL the encoder
    # SIGSTOP the last language rank: it answers no control message, and its Mooncake
    # server holds every write to it (for ~60 s); it is killed once the others are done.
    STALL_RECEIVER = "stall-receiver"
    # An extra process (with --curve: a valid key of its own) aborts every live room in
    # other engines' names; no engine is hit, and every room must still succeed.
    SPOOF_ABORT = "spoof-abort"
    # Unplug the host of the last language rank, or of the encoder, for ``partition_s``
    # (``--hosts netns`` only), then plug it back.
    PARTITION_RECEIVER = "partition-receiver"
    PARTITION_SENDER = "partition-sender"

    def target(self, settings: DemoSettings) -> str:
        on_encoder = self in (Fault.KILL_SENDER, Fault.PARTITION_SENDER)
        return ENCODER if on_encoder else language_side(settings.receivers - 1)

    @property
    def is_partition(self) -> bool:
        return self in (Fault.PARTITION_RECEIVER, Fault.PARTITION_SENDER)


@dataclass(frozen=True)
class ProcessOptions:
    """How the cross-process demo runs, beyond what both demos share."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    curve: bool = False  # per-engine CURVE keys, made for the run (network.curve unused)
    fault: Fault | None = None
    fault_after: int = 0  # requests finished before the fault; 0: a third of them
    deadline_s: float = 600.0  # for the requests; start-up and wrap-up have their own bounds
    start_timeout_s: float = 120.0
    log_level: str = "WARNING"
    netns: bool = False  # each process on a host of its own (a network namespace)
    fuzz_frames: int = 0  # hostile frames a fuzzer throws at the encoder meanwhile
    partition_s: float = 5.0  # how long a partition fault keeps the host cut off

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault.is_partition and not self.netns:
            raise ValueError(f"--fault {self.fault.value} needs --hosts netns")
        if self.partition_s <= 0:
            raise ValueError(f"--partition-s must be positive, not {self.partition_s:g}")
        if self.fuzz_frames and self.curve:
            # A stranger without a key gets no frame past the handshake to be judged.
            raise ValueError("--fuzz-frames throws its frames in the clear: not with --curve")


def run_processes(
    settings: DemoSettings, options: ProcessOptions | None = None, progress: bool = True
) -> Summary:
    """Run the demo on an encoder process and ``settings.receivers`` language processes."""
    options = options or ProcessOptions()
    fault = options.fault.value if options.fault else ""
    summary = Summary("mooncake", settings.requests, fault=fault)
    spoofing = options.fault is Fault.SPOOF_ABORT
    extra = [*([SPOOFER] if spoofing else []), *([hosts.FUZZER] if options.fuzz_frames else [])]
    with contextlib.ExitStack() as stack:
        bed = stack.enter_context(hosts.testbed(settings, extra)) if options.netns else None
        keys = None
        if options.curve:
            names = [*settings.side_names(), *([SPOOFER] if spoofing else [])]
            addresses = (
                hosts.control_addresses(bed, names)
                if bed is not None
                else free_addresses(options.network.reachable_host, names)
            )
            keys = stack.enter_context(run_keys(addresses))
        cluster = stack.enter_context(
            Cluster(settings, options.network, options.log_level, bed, keys)
        )
        spoofer = None
        if spoofing:
            where = bed.hosts[hosts.host_name(SPOOFER)].path if bed is not None else ""
            spoofer = stack.enter_context(Spoofer(keys[SPOOFER] if keys else None, where))
        cluster.start(options.start_timeout_s)
        flood = None
        if options.fuzz_frames:
            flood = stack.enter_context(Flood(_fuzz_spec(settings, options, cluster, bed)))
        with progress_bar(settings.requests, progress) as bar:
            tally = Tally(settings, summary)
            run = _Run(settings, options, cluster, tally, bar, bed, flood, spoofer)
            started = time.perf_counter()
            run.requests()
            seconds = time.perf_counter() - started
        run.wrap_up()
        return run.tally.finish(seconds)


def _fuzz_spec(
    settings: DemoSettings, options: ProcessOptions, cluster: Cluster, bed: Testbed | None
) -> FuzzSpec:
    """The fuzzer aims at the encoder from its own host (or the cluster's address)."""
    host = bed.hosts[hosts.host_name(hosts.FUZZER)] if bed is not None else None
    return FuzzSpec(
        target=cluster.sender_address,
        frames=options.fuzz_frames,
        seed=settings.seed,
        layout=settings.sender_config().layout,
        good_rooms=range(1, settings.requests + 1),
        host=host.address if host is not None else options.network.reachable_host,
        netns=host.path if host is not None else "",
        timeout_s=options.deadline_s,
    )


class _Run:
    """The bookkeeping of one run: which rooms are open and who has reported on them."""

    def __init__(
        self,
        settings: DemoSettings,
        options: ProcessOptions,
        cluster: Cluster,
        tally: Tally,
        bar: tqdm[object],
        testbed: Testbed | None = None,
        flood: Flood | None = None,
        spoofer: Spoofer | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.cluster = cluster
        self.tally = tally
        self.bar = bar
        self.spoofer = spoofer
        self.lengths = settings.lengths()
        self.ids = RoomIds(settings)
        self.aborts = settings.scheduler_aborts()
        self.room_ids: dict[int, int] = {}  # open request -> its room id
        self.opened = 0
        self.finished = 0
        # open room -> the outcome of each side so far (None: that side went silent)
        self.outcomes: dict[int, dict[str, RoomOutcome | None]] = {}
        self.opened_at: dict[int, float] = {}
        self.fault_after = options.fault_after or max(1, settings.requests // 3)
        self.faulted = False
        self.flood = flood
        self.partition: Partition | None = None
        if options.fault is not None and options.fault.is_partition:
            assert testbed is not None  # ProcessOptions checks
            host = hosts.host_name(options.fault.target(settings))
            self.partition = Partition(testbed, host, options.partition_s)
        for side, worker in cluster.workers.items():
            tally.summary.sides[side].address = worker.ready.address if worker.ready else ""
        self.warm_after = max(1, settings.requests // 10)
        self._sample_rss("start")

    def requests(self) -> None:
        """Open rooms as others end, until every request is done (or no more can start)."""
        deadline = time.monotonic() + self.options.deadline_s
        while (
            self.outcomes
            or (self._wanted() and self._healthy())
            or (self.partition is not None and self.partition.cut_now)
        ):
            if time.monotonic() >= deadline:
                LOG.warning("run deadline passed with %d rooms open", len(self.outcomes))
                return
            self._open_rooms()
            self.cluster.receive(0.01)
            self._count()
            self._inject_fault()
            if self.partition is not None:
                self.partition.heal_when_due()
            if self.flood is not None:
                self.flood.step(self.cluster)

    def _wanted(self) -> bool:
        """More rooms to open: requests left, or a flood still to judge beside them."""
        flooding = self.flood is not None and not self.flood.done
        return self.opened < self.settings.requests or flooding

    def _healthy(self) -> bool:
        return not self.cluster.silent_sides()

    def _open_rooms(self) -> None:
        while self._wanted() and len(self.outcomes) < self.settings.concurrency and self._healthy():
            request = self.opened + 1
            room_id = self.ids.pick(request, set(self.room_ids.values()))
            tokens = self.lengths[self.opened % len(self.lengths)]
            self.cluster.open(request, room_id, tokens, self.aborts.get(request, ""))
            self.room_ids[request] = room_id
            self.outcomes[request] = {}
            self.opened_at[request] = time.perf_counter()
            if self.partition is not None:
                self.partition.opened(request)
            self.opened += 1

    def _count(self) -> None:
        """Record what workers reported; count every room each side is done with."""
        for side, outcome in self.cluster.take_outcomes():
            self.outcomes[outcome.request][side] = outcome
        silent = self.cluster.silent_sides()
        for request, outcomes in list(self.outcomes.items()):
            for side in silent:
                outcomes.setdefault(side, None)
            if len(outcomes) == len(self.cluster.workers):
                seconds = time.perf_counter() - self.opened_at.pop(request)
                ok = self.tally.request_done(
                    {side: outcomes[side] for side in self.cluster.workers},
                    seconds,
                    request in self.aborts,
                )
                if self.partition is not None:
                    self.partition.ended(request, ok, seconds)
                del self.outcomes[request]
                del self.room_ids[request]
                self.finished += 1
                if self.finished == self.warm_after:
                    self._sample_rss("warm")
                self.bar.update()

    def _sample_rss(self, point: str) -> None:
        for side, rss in self.cluster.rss_mib().items():
            self.tally.summary.sides[side].rss_mib[point] = rss

    def _inject_fault(self) -> None:
        fault = self.options.fault
        if fault is None or self.faulted or self.finished < self.fault_after:
            return
        self.faulted = True
        if self.spoofer is not None:
            self._spoof(self.spoofer)
            return
        target = fault.target(self.settings)
        self.tally.summary.sides[target].fault_target = True
        LOG.warning("injecting %s into %s", fault.value, target)
        if self.partition is not None:
            self.partition.cut(self.outcomes)
        elif fault is Fault.STALL_RECEIVER:
            self.cluster.stop(target, "stopped by the fault")
        else:
            self.cluster.kill(target, "killed by the fault")

    def _spoof(self, spoofer: Spoofer) -> None:
        """Abort every live room: at the encoder in each language rank's name, at each
        language rank in the encoder's."""
        addresses = {side: w.ready.address for side, w in self.cluster.workers.items() if w.ready}
        encoder = addresses.pop(ENCODER)
        claims = [(encoder, rank) for rank in addresses.values()]
        claims += [(rank, encoder) for rank in addresses.values()]
        LOG.warning("spoofing aborts of %d live rooms", len(self.outcomes))
        self.tally.summary.spoofed = spoofer.spoof(tuple(self.outcomes), tuple(claims))

    def wrap_up(self) -> None:
        """End the stalled worker, have the others end what is open and report their
        blocks; rooms nobody reported on are counted as such."""
        self._sample_rss("end")
        if self.partition is not None:
            self.tally.summary.partition_s = self.partition.seconds
            self.tally.summary.partition = self.partition.phases
            self.tally.summary.succeeded_after_heal = self.partition.succeeded_after_heal
        for side, worker in self.cluster.workers.items():
            if worker.stopped:  # its peers are done with it; now its writes may fail
                self.cluster.kill(side, "killed at the end")
        grace = self.settings.write_grace_s + self.settings.timeout_s
        self.cluster.finish(wait_s=grace, timeout_s=grace + 30.0)
        self._count()
        self.tally.summary.not_started = max(0, self.settings.requests - self.opened)
        if self.flood is not None:  # rooms ran as long as the flood did
            self.tally.summary.requests = max(self.settings.requests, self.opened)
            self.flood.summary.requests = self.opened
            self.tally.summary.flood = self.flood.summary
        for side, worker in self.cluster.workers.items():
            self.tally.summary.sides[side].exit = worker.exit
            if worker.report is not None:
                self.tally.leaked(side, worker.report.leaked_blocks)
                self.tally.rejected(side, worker.report.rejected)
