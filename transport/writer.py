"""Writes to one peer, in order, on a thread of that peer's: a stalled peer holds up
only its own writes, and writes queued while one is under way go out together.

The sender's pump never blocks on a write: it hands each ``WriteJob`` to its peer's
``PeerWriter`` and learns the outcome as an event (``done`` is called on the writer's
thread; it only queues a command for the pump). ``Writers`` keeps one per peer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from embxfer.transport.base import Segment, WriteResult

LOG = logging.getLogger("embxfer.transport.writer")


@dataclass(frozen=True)
class WriteJob:
    """A write and what to do with its outcome; transports never raise, this double-checks.

    ``wanted`` turns False once the receiver is declared lost (or registers another
    geometry): a write still queued then fails at once instead of being tried, because
    each try at a dead Mooncake peer holds the writer thread about a second, and its
    room keeps its source blocks until the write is over.
    """

    write: Callable[[str, list[Segment]], WriteResult]
    session_id: str
    segments: list[Segment]
    done: Callable[[WriteResult], None]
    wanted: Callable[[], bool]

    def run(self) -> None:
        if not self.wanted():
            self.done(WriteResult(False, "receiver lost before the write started"))
            return
        try:
            result = self.write(self.session_id, self.segments)
        except Exception as exc:
            result = WriteResult(False, f"transport raised {exc!r}")
        self.done(result)


class PeerWriter:
    """The writer thread of one receiver, which sends the writes queued while one was in
    flight together, as one transport call.

    A Mooncake write costs a fixed round trip and the wait for its completion on top
    of its segments; rooms of a few tokens each pay it in full, so writing one room at
    a time caps a receiver at a few hundred rooms a second when cores are contended.
    Joined writes are the same writes in the same order; if a joined call fails, each
    is tried again on its own (a one-sided write may be repeated) so every room learns
    its own outcome.
    """

    MAX_SEGMENTS = 1024  # per joined call: bounds the bytes a failed call makes us retry

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._queue: deque[WriteJob] = deque()
        self._draining = False
        # What the thread waits on between drains: True, drain the queue; False, end.
        # A bare queue, not an executor: the pump hands over a write with one put.
        self._kicks: queue.SimpleQueue[bool] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, job: WriteJob) -> None:
        with self._lock:
            self._queue.append(job)
            if self._draining:
                return
            self._draining = True
        self._kicks.put(True)

    def _run(self) -> None:
        while self._kicks.get():
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                jobs = [self._queue.popleft()]
                segments = len(jobs[0].segments)
                while self._queue and segments + len(self._queue[0].segments) <= self.MAX_SEGMENTS:
                    segments += len(self._queue[0].segments)
                    jobs.append(self._queue.popleft())
            try:
                _run_joined(jobs)
            except Exception:  # the thread must go on draining whatever one job did
                LOG.exception("writer failed on %d jobs", len(jobs))

    def shutdown(self) -> None:
        """Drop the writes not started; one under way finishes on its own, then the
        thread ends."""
        with self._lock:
            self._queue.clear()
        self._kicks.put(False)


def _run_joined(jobs: list[WriteJob]) -> None:
    """Run ``jobs`` (queued for one receiver, in order) as one write."""
    first = jobs[0]
    if len(jobs) == 1 or any(
        job.session_id != first.session_id or not job.wanted() for job in jobs
    ):
        for job in jobs:  # a receiver lost or registered anew: one by one, as ever
            job.run()
        return
    try:
        result = first.write(first.session_id, [s for job in jobs for s in job.segments])
    except Exception as exc:
        result = WriteResult(False, f"transport raised {exc!r}")
    for job in jobs:
        if result.ok:
            job.done(result)
        else:
            job.run()


class Writers:
    """One ``PeerWriter`` per peer, made on first use; or none (``threaded=False``: each
    write runs at once on the caller's thread, for in-process transports)."""

    def __init__(self, threaded: bool) -> None:
        self._threaded = threaded
        self._writers: dict[str, PeerWriter] = {}

    def submit(self, peer: str, job: WriteJob) -> None:
        if not self._threaded:
            job.run()
            return
        writer = self._writers.get(peer)
        if writer is None:
            writer = self._writers[peer] = PeerWriter(f"embxfer-write-{len(self._writers)}")
        writer.submit(job)

    def shutdown(self) -> None:
        """Drop the writes not started; ones under way finish on their own."""
        for writer in self._writers.values():
            writer.shutdown()
