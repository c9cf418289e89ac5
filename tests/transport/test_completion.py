"""The completion poller: writers wait on an event while one thread asks for status."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from embxfer.transport.completion import PENDING, CompletionPoller


class Batches:
    """Fake Mooncake batches: pending until ``finish`` gives them a status; forgotten
    once reported (as Mooncake frees a finished batch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status: dict[int, int] = {}
        self.asked_after_done: list[int] = []
        self.reported: set[int] = set()

    def finish(self, batch: int, status: int) -> None:
        with self._lock:
            self.status[batch] = status

    def check(self, batch: int) -> int:
        with self._lock:
            if batch in self.reported:
                self.asked_after_done.append(batch)
            status = self.status.get(batch, PENDING)
            if status != PENDING:
                self.reported.add(batch)
            return status


def test_each_writer_gets_its_batches_statuses_and_finished_ones_are_not_asked_again() -> None:
    batches = Batches()
    poller = CompletionPoller(batches.check)
    try:
        with ThreadPoolExecutor(3) as pool:
            alone = pool.submit(poller.wait, [1])
            together = pool.submit(poller.wait, [2, 3, 4])
            batches.finish(3, -1)
            batches.finish(1, 1)
            assert alone.result(timeout=10) == [1]
            assert not together.done(), "a writer waits for every batch it submitted"
            batches.finish(2, 1)
            batches.finish(4, -2)
            assert together.result(timeout=10) == [1, -1, -2]
        assert batches.asked_after_done == []
    finally:
        poller.close()


def test_an_idle_poller_asks_nothing() -> None:
    batches = Batches()
    calls = []

    def check(batch: int) -> int:
        calls.append(batch)
        return batches.check(batch)

    poller = CompletionPoller(check)
    try:
        batches.finish(7, 1)
        assert poller.wait([7]) == [1]
        asked = len(calls)
        threading.Event().wait(0.05)  # nothing in flight: the thread sleeps on its condition
        assert len(calls) == asked
    finally:
        poller.close()


def test_close_releases_waiting_writers_with_a_failure() -> None:
    poller = CompletionPoller(lambda batch: PENDING)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(poller.wait, [5, 6])
        while not poller._waiting:  # until the writer is registered
            threading.Event().wait(0.001)
        poller.close()
        assert waiting.result(timeout=10) == [-1, -1]
    assert poller.wait([8]) == [-1], "a closed poller fails new waits at once"


def test_a_check_that_raises_fails_the_write_instead_of_hanging_it() -> None:
    def broken(batch: int) -> int:
        raise RuntimeError("pybind")

    poller = CompletionPoller(broken)
    try:
        assert poller.wait([1]) == [-1]
    finally:
        poller.close()
