"""``embxfer demo --fuzz-frames N``: a stranger floods the live encoder while rooms run.

The fuzzer is a process of its own (on a host of its own with ``--hosts netns``). It
throws N hostile frames (``embxfer.tools.fuzz``) at the encoder's control address from one
identity, then the frames with a wrong ZeroMQ envelope from two more, predicting for
each frame the reason the encoder must count, and reports the prediction. The parent
(``Flood``) keeps real rooms running until the encoder's counters show every frame
judged; the summary sets what was predicted beside what was counted.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType

from embxfer.buffers.layout import BufferLayout
from embxfer.tools.demo import ENCODER
from embxfer.tools.demo import Flood as FloodSummary
from embxfer.tools.fuzz import (
    OVERSIZED,
    WRONG_ENVELOPES,
    HostileFrames,
    Volley,
    predicted_rejection,
    throw,
    unused_address,
    wrong_envelopes,
)

from . import netns
from .launcher import Cluster

HEARTBEAT = "heartbeat"  # a frame that is accepted (and harmless): counted by nobody
_CHUNK = 10_000  # frames made at a time: the flood is thrown while it is made
_ASK_EVERY_S = 0.2  # how often the parent asks the encoder for its counters
_STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class FuzzSpec:
    """Everything the fuzzer process starts from."""

    target: str  # the encoder's control address
    frames: int  # hostile frames from the first identity (the wrong envelopes come on top)
    seed: int
    layout: BufferLayout  # the encoder's: registrations are made to mismatch it
    good_rooms: range  # room ids real requests use, so that frames name live rooms
    host: str  # the address it throws from; its identities claim ports on it
    netns: str = ""  # the namespace it runs in; "": the parent's
    timeout_s: float = 600.0  # for the whole flood


@dataclass(frozen=True)
class FuzzReport:
    """What the fuzzer threw: frames, the rejections it predicts by reason, heartbeats."""

    frames: int
    expected: dict[str, int]
    heartbeats: int
    error: str = ""  # the traceback, if it could not throw everything


def fuzzer_main(spec: FuzzSpec, conn: Connection) -> None:
    """Entry point of the fuzzer process (``multiprocessing`` spawn target)."""
    if spec.netns:
        netns.enter(spec.netns)
    predicted: Counter[str] = Counter()
    try:
        volleys = [
            Volley(unused_address(spec.host).encode(), _flood(spec, predicted)),
            *wrong_envelopes(unused_address(spec.host)),
        ]
        frames = sum(throw(spec.target, volley, spec.timeout_s) for volley in volleys)
        predicted["malformed"] += WRONG_ENVELOPES
        error = ""
    except Exception:
        frames, error = sum(predicted.values()), traceback.format_exc()
    heartbeats = predicted.pop(HEARTBEAT, 0)
    conn.send(FuzzReport(frames, dict(predicted), heartbeats, error))


def _flood(spec: FuzzSpec, predicted: Counter[str]) -> Iterator[list[bytes]]:
    """``spec.frames`` hostile frames, made a chunk at a time, each predicted as it goes."""
    hostile = HostileFrames(random.Random(spec.seed), spec.good_rooms, spec.layout)
    left = spec.frames - len(OVERSIZED)
    chunk = list(OVERSIZED)
    while chunk:
        for frame in chunk:
            predicted[predicted_rejection(frame) or HEARTBEAT] += 1
            yield [frame]
        chunk = hostile.frames(min(_CHUNK, left))
        left -= len(chunk)


class Flood:
    """The parent's side of a flood: it starts the fuzzer, asks the encoder for its
    counters until every frame is judged, and always reaps the fuzzer."""

    def __init__(self, spec: FuzzSpec) -> None:
        self.spec = spec
        self.summary = FloodSummary()
        self.done = False
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._report: FuzzReport | None = None
        self._started = 0.0
        self._asked = 0.0

    def __enter__(self) -> Flood:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=fuzzer_main, args=(self.spec, theirs), name="embxfer-fuzzer", daemon=True
        )
        self._process.start()
        theirs.close()
        self._conn = ours
        self._started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is not None:
            if process.exitcode is None:
                process.terminate()
                process.join(_STOP_GRACE_S)
            if process.exitcode is None:
                process.kill()
                process.join()
            process.close()
        if self._conn is not None:
            self._conn.close()

    def step(self, cluster: Cluster) -> None:
        """Take the fuzzer's report when it comes, then follow the encoder's counters;
        ``done`` once they account for every frame (or the flood failed)."""
        if self.done:
            return
        if self._report is None:
            self._take_report()
            return
        counted = cluster.workers[ENCODER].rejected
        if counted is not None:
            self.summary.counted = dict(counted)
            self.summary.seconds = round(time.monotonic() - self._started, 2)
            if all(counted.get(r, 0) >= n for r, n in self._report.expected.items()):
                self.summary.matched = counted == self._report.expected
                self.done = True
                return
        now = time.monotonic()
        if now - self._asked >= _ASK_EVERY_S:
            self._asked = now
            cluster.ask_rejected(ENCODER)

    def _take_report(self) -> None:
        assert self._conn is not None and self._process is not None
        try:
            report = self._conn.recv() if self._conn.poll() else None
        except (EOFError, OSError):
            report = FuzzReport(0, {}, 0, f"the fuzzer died (exit code {self._process.exitcode})")
        if report is None:
            return
        assert isinstance(report, FuzzReport)
        self._report = report
        self.summary.frames = report.frames
        self.summary.heartbeats = report.heartbeats
        self.summary.expected = report.expected
        self.summary.error = report.error
        self.done = bool(report.error)
