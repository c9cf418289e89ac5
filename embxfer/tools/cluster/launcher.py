"""The parent's side of a cluster: it starts the workers, talks to them, and cleans up.

Workers are ``multiprocessing`` "spawn" children (a fresh interpreter each: no forked
ZeroMQ or Mooncake state, and the same start-up on every platform), each with one pipe
to the parent and none to each other: they meet over ZeroMQ and Mooncake only. A
``Cluster`` is a context manager whose exit kills whatever still runs, so no worker
outlives its run however the run ends (Ctrl-C, a crash, a timeout). Workers are
daemonic as well, and stop by themselves when the parent's pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

from embxfer.remote import NetworkConfig
from embxfer.tools.demo import ENCODER, DemoSettings, RoomOutcome
from embxfer.transport.curve_keys import EngineKeys

from .hosts import place
from .messages import (
    Command,
    CountRejected,
    Finish,
    OpenRoom,
    Ready,
    Rejected,
    Report,
    StartFailed,
    WorkerReport,
    WorkerSpec,
)
from .netns import Testbed
from .worker import worker_main

LOG = logging.getLogger("embxfer.tools.cluster")

_STOP_GRACE_S = 3.0  # SIGTERM to SIGKILL, at close


class WorkerStartError(RuntimeError):
    """A worker could not start; the message carries its traceback or exit code."""


@dataclass
class Worker:
    """One child process as the parent sees it."""

    side: str
    process: BaseProcess
    conn: Connection
    ready: Ready | None = None
    report: WorkerReport | None = None
    answering: bool = True  # False once it reported, died, was killed or stopped
    stopped: bool = False  # SIGSTOPped: only SIGKILL ends it
    rejected: dict[str, int] | None = None  # its engine's rejections when last asked
    exit: str = ""  # how it ended, for the summary


class Cluster:
    """An encoder process and ``settings.receivers`` language processes on ``network``;
    with ``keys``, each runs CURVE with its own (``keys[side]``); with ``testbed``, each
    runs on a host of its own (``--hosts netns``)."""

    def __init__(
        self,
        settings: DemoSettings,
        network: NetworkConfig,
        log_level: str = "WARNING",
        testbed: Testbed | None = None,
        keys: Mapping[str, EngineKeys] | None = None,
    ) -> None:
        self.settings = settings
        self._specs = [
            WorkerSpec(
                side,
                config,
                replace(network, curve=keys[side]) if keys else network,
                settings.seed,
                log_level,
            )
            for side, config in zip(
                settings.side_names(),
                [settings.sender_config()] + [settings.receiver_config()] * settings.receivers,
                strict=True,
            )
        ]
        if testbed is not None:
            self._specs = [place(spec, testbed) for spec in self._specs]
        self.workers: dict[str, Worker] = {}
        self._outcomes: list[tuple[str, RoomOutcome]] = []  # received, not yet taken
        self._closed = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- start -------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        """Spawn every worker and wait until each engine is up (all start in parallel)."""
        context = multiprocessing.get_context("spawn")
        for spec in self._specs:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(spec, theirs), name=f"embxfer-{spec.side}", daemon=True
            )
            process.start()
            theirs.close()  # so the parent sees EOF when the worker dies
            self.workers[spec.side] = Worker(spec.side, process, ours)
        deadline = time.monotonic() + timeout_s
        for worker in self.workers.values():
            remaining = deadline - time.monotonic()
            try:
                first = worker.conn.recv() if worker.conn.poll(max(remaining, 0.0)) else None
            except EOFError:
                first = None
            if isinstance(first, StartFailed):
                raise WorkerStartError(f"{worker.side} could not start:\n{first.error}")
            if not isinstance(first, Ready):
                worker.process.join(0.1)
                code = worker.process.exitcode
                state = f"exited with code {code}" if code is not None else "sent nothing"
                raise WorkerStartError(f"{worker.side} {state} within {timeout_s:.0f} s of start")
            worker.ready = first

    @property
    def sender_address(self) -> str:
        """The encoder's control address: the bootstrap address of every room."""
        ready = self.workers[ENCODER].ready
        assert ready is not None, "start() first"
        return ready.address

    # -- run ---------------------------------------------------------------------------
    def open(self, request: int, room_id: int, tokens: int, aborted_by: str = "") -> None:
        """Start request ``request``'s room on every answering worker."""
        settings = self.settings
        command = OpenRoom(
            request,
            room_id,
            tokens,
            self.sender_address,
            settings.receivers,
            settings.announce,
            aborted_by,
        )
        for worker in self.workers.values():
            self._send(worker, command)

    def _send(self, worker: Worker, command: Command) -> None:
        if not worker.answering:
            return
        try:
            worker.conn.send(command)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._gone(worker)

    def receive(self, timeout_s: float) -> None:
        """Take in what workers sent, waiting up to ``timeout_s`` for the first message;
        notice workers that died. Room outcomes wait for ``take_outcomes``."""
        listening = [w for w in self.workers.values() if w.answering]
        if not listening:
            time.sleep(timeout_s)
            return
        ready = wait([w.conn for w in listening], timeout_s)
        for worker in listening:
            if worker.conn in ready and not self._drain(worker):
                self._gone(worker)

    def _drain(self, worker: Worker) -> bool:
        """Take every message waiting in ``worker``'s pipe; False once the pipe is closed.

        Never blocks on a half-written message, even from a stopped worker: messages are
        small, and Linux writes up to PIPE_BUF (4 KiB) bytes to a pipe atomically.
        """
        try:
            while worker.conn.poll():
                self._take(worker, worker.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def take_outcomes(self) -> list[tuple[str, RoomOutcome]]:
        """(side, outcome) of every room reported since the last call, in order."""
        taken, self._outcomes = self._outcomes, []
        return taken

    def _take(self, worker: Worker, message: Report) -> None:
        if isinstance(message, RoomOutcome):
            self._outcomes.append((worker.side, message))
        elif isinstance(message, WorkerReport):
            worker.report = message
            worker.answering = False
        elif isinstance(message, Rejected):
            worker.rejected = message.counts
        else:
            LOG.warning("%s sent an unexpected %r", worker.side, message)

    def _gone(self, worker: Worker) -> None:
        """The worker's pipe closed: it died (or was killed) and will say nothing more."""
        worker.answering = False
        worker.process.join(1.0)
        if not worker.exit:
            code = worker.process.exitcode
            worker.exit = f"died (exit code {code})"
            LOG.warning("%s %s", worker.side, worker.exit)

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each worker still running, in MiB (Linux)."""
        resident: dict[str, float] = {}
        for side, worker in self.workers.items():
            try:
                status = Path(f"/proc/{worker.process.pid}/status").read_text()
            except (OSError, ValueError):  # gone, or no /proc here
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    resident[side] = round(int(line.split()[1]) / 1024, 1)  # kB
        return resident

    def ask_rejected(self, side: str) -> None:
        """Ask ``side`` for its engine's rejections so far; its answer lands in ``rejected``."""
        self._send(self.workers[side], CountRejected())

    def silent_sides(self) -> list[str]:
        """Workers that will report nothing more about rooms (dead, stopped or done)."""
        return [side for side, worker in self.workers.items() if not worker.answering]

    # -- faults ------------------------------------------------------------------------
    def kill(self, side: str, why: str) -> None:
        """SIGKILL one worker now (a fault, or one that stopped answering)."""
        worker = self.workers[side]
        self._signal(worker, signal.SIGKILL)
        worker.exit = f"{worker.exit}, then {why}" if worker.exit else why
        worker.answering = False
        worker.stopped = False
        worker.process.join(5.0)
        self._drain(worker)  # what it said before it died still counts

    def stop(self, side: str, why: str) -> None:
        """SIGSTOP one worker: it answers neither control messages nor Mooncake writes."""
        worker = self.workers[side]
        self._signal(worker, signal.SIGSTOP)
        worker.exit = why
        worker.answering = False
        worker.stopped = True
        self._drain(worker)  # what it said before it stopped still counts

    @staticmethod
    def _signal(worker: Worker, signum: signal.Signals) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # it died on its own meanwhile
                os.kill(pid, signum)

    # -- end ---------------------------------------------------------------------------
    def finish(self, wait_s: float, timeout_s: float) -> None:
        """Tell every answering worker to wrap up and wait for their reports (each waits
        up to ``wait_s`` for its blocks; the whole call takes at most ``timeout_s``)."""
        for worker in self.workers.values():
            self._send(worker, Finish(wait_s))
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0 and any(
            w.answering for w in self.workers.values()
        ):
            self.receive(min(remaining, 0.1))
        for worker in self.workers.values():
            if worker.report is None and not worker.exit:
                worker.exit = "sent no report"
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.report is not None and not worker.exit:
                worker.exit = "finished"

    def close(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL) and reap it; idempotent."""
        if self._closed:
            return
        self._closed = True
        running = [w for w in self.workers.values() if w.process.exitcode is None]
        for worker in running:
            self._signal(worker, signal.SIGKILL if worker.stopped else signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for worker in running:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                self._signal(worker, signal.SIGKILL)
                worker.process.join()
        for worker in self.workers.values():
            worker.conn.close()
            worker.process.close()
