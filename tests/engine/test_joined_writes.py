"""A receiver's writer thread sends the writes queued behind one in flight as one
transport call, and when such a call fails, tries each again alone so that every
room learns its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from embxfer.transport.base import Segment, WriteResult
from embxfer.transport.writer import PeerWriter as _Writer
from embxfer.transport.writer import WriteJob as _WriteJob

WAIT_S = 10.0


class Transport:
    """Records each call; the first blocks until ``release``; joined calls may fail."""

    def __init__(self, fail_joined: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail_joined = fail_joined
        self.release = threading.Event()

    def write(self, peer_session: str, segments: Sequence[Segment]) -> WriteResult:
        self.calls.append([segment.src_address for segment in segments])
        if len(self.calls) == 1:
            self.release.wait(WAIT_S)
        return WriteResult(not (self.fail_joined and len(segments) > 1), "joined")


def run_jobs(transport: Transport, jobs: int) -> list[WriteResult]:
    """Queue ``jobs`` one-segment writes behind a first one that blocks; their results."""
    results: list[WriteResult] = []
    done = threading.Semaphore(0)

    def job(index: int) -> _WriteJob:
        def finished(result: WriteResult) -> None:
            results.append(result)
            done.release()

        return _WriteJob(
            transport.write, "peer", [Segment(index, index, 1)], finished, lambda: True
        )

    writer = _Writer("test-writer")
    try:
        writer.submit(job(0))
        while not transport.calls:
            time.sleep(0.001)
        for index in range(1, jobs):
            writer.submit(job(index))
        transport.release.set()
        for _ in range(jobs):
            assert done.acquire(timeout=WAIT_S)
    finally:
        writer.shutdown()
    return results


def test_writes_queued_behind_one_in_flight_go_out_together_in_order() -> None:
    transport = Transport()
    results = run_jobs(transport, 4)
    assert transport.calls == [[0], [1, 2, 3]]
    assert all(result.ok for result in results)


def test_a_failed_joined_write_is_retried_write_by_write() -> None:
    transport = Transport(fail_joined=True)
    results = run_jobs(transport, 4)
    assert transport.calls == [[0], [1, 2, 3], [1], [2], [3]]
    assert all(result.ok for result in results)
