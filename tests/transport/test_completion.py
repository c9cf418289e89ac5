"""Waiting for asynchronous writes: the writer's thread asks for status on a schedule of
timers, learnt from how fast large writes went."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from embxfer.transport.completion import CLOSED, PENDING, Completions, Throughput

MIB = 1 << 20


class Batches:
    """Fake Mooncake batches: each pending for its first ``asks`` asks, then its status;
    forgotten once reported (as Mooncake frees a finished batch)."""

    def __init__(self, fates: dict[int, tuple[int, int]]) -> None:
        self._fates = fates  # batch -> (asks while pending, final status)
        self._asked: dict[int, int] = {}
        self._lock = threading.Lock()
        self.asked_after_done: list[int] = []

    def check(self, batch: int) -> int:
        with self._lock:
            asks, status = self._fates[batch]
            asked = self._asked[batch] = self._asked.get(batch, 0) + 1
            if asked > asks + 1:
                self.asked_after_done.append(batch)
            return PENDING if asked <= asks else status

    def asks(self, batch: int) -> int:
        return self._asked.get(batch, 0)


def test_each_write_gets_its_batches_statuses_and_finished_ones_are_not_asked_again() -> None:
    batches = Batches({1: (0, 1), 2: (3, 1), 3: (1, -1), 4: (5, -2)})
    completions = Completions(batches.check)
    with ThreadPoolExecutor(2) as pool:
        alone = pool.submit(completions.wait, [1], 100)
        together = pool.submit(completions.wait, [2, 3, 4], 300)
        assert alone.result(timeout=10) == [1]
        assert together.result(timeout=10) == [1, -1, -2]
    assert batches.asked_after_done == []
    assert [batches.asks(b) for b in (1, 2, 3, 4)] == [1, 4, 2, 6]


def test_close_releases_a_waiting_writer_with_a_failure_and_fails_later_ones_at_once() -> None:
    asked = threading.Event()

    def never_done(batch: int) -> int:
        asked.set()
        return PENDING

    completions = Completions(never_done)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(completions.wait, [5, 6], 64 * MIB)
        assert asked.wait(10)
        completions.close()
        assert waiting.result(timeout=10) == [CLOSED, CLOSED]
    assert completions.wait([8], 100) == [CLOSED]


def test_a_check_that_raises_fails_the_write_instead_of_hanging_it() -> None:
    def broken(batch: int) -> int:
        raise RuntimeError("pybind")

    assert Completions(broken).wait([1, 2], 100) == [CLOSED, CLOSED]


def test_nothing_submitted_asks_nothing() -> None:
    def unexpected(batch: int) -> int:
        raise AssertionError("asked about a batch nobody submitted")

    assert Completions(unexpected).wait([], 0) == []


def first(count: int, expected_s: float) -> list[float]:
    return list(itertools.islice(Completions.schedule(expected_s), count))


def test_without_a_prediction_asks_back_off_from_the_minimum_to_the_maximum() -> None:
    offsets = first(12, 0.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(offsets)]
    assert offsets[0] == Completions.MIN_SLEEP_S
    assert gaps[:3] == pytest.approx([20e-6, 40e-6, 80e-6])
    assert max(gaps) == pytest.approx(Completions.MAX_SLEEP_S)
    assert gaps == sorted(gaps), "never faster again while the write is pending"


def test_a_large_write_is_first_asked_about_well_before_its_expected_end() -> None:
    expected_s = 0.008
    offsets = first(40, expected_s)
    gaps = [later - earlier for earlier, later in itertools.pairwise(offsets)]
    assert offsets[0] == pytest.approx(expected_s * Throughput.EARLY)
    assert gaps[0] == pytest.approx(Completions.MIN_SLEEP_S)
    assert max(gaps) == pytest.approx(expected_s * Completions.CAP_SHARE), (
        "past its expected end, an ask comes at most a small share of it late"
    )


def test_a_prediction_proven_wrong_stops_holding_the_backoff_down() -> None:
    expected_s = 0.001  # a write that stalls far beyond it
    window_s = 0.05
    offsets = itertools.takewhile(lambda at: at < window_s, Completions.schedule(expected_s))
    late = [at for at in offsets if at > 2 * expected_s]
    gaps = [later - earlier for earlier, later in itertools.pairwise(late)]
    assert gaps[-1] == pytest.approx(Completions.MAX_SLEEP_S)
    doublings = 8  # from the capped step up to MAX_SLEEP_S
    assert len(late) <= window_s / Completions.MAX_SLEEP_S + doublings, (
        "once the prediction is proven wrong, asks come no oftener than without one"
    )


def test_throughput_is_learnt_from_large_writes_only() -> None:
    throughput = Throughput()
    throughput.learn(4096, 50e-6, at_first_ask=False)
    assert throughput.expected_s(16 * MIB) == 0.0, "a tiny write's time is latency"
    throughput.learn(16 * MIB, 0.008, at_first_ask=False)
    assert throughput.expected_s(16 * MIB) == pytest.approx(0.008)
    assert throughput.expected_s(4096) == 0.0, "nothing to predict for a tiny write"
    throughput.learn(16 * MIB, 0.010, at_first_ask=False)
    assert 0.008 < throughput.expected_s(16 * MIB) < 0.010


def test_a_write_done_at_the_first_ask_teaches_that_writes_are_faster() -> None:
    throughput = Throughput()
    throughput.learn(16 * MIB, 0.008, at_first_ask=False)
    throughput.learn(16 * MIB, 0.004, at_first_ask=True)  # done by then, maybe long before
    assert throughput.expected_s(16 * MIB) < 0.004


def test_a_waiting_writer_learns_from_its_own_large_writes() -> None:
    completions = Completions(Batches({1: (2, 1), 2: (2, 1)}).check)
    assert completions.wait([1], 2 * MIB) == [1]
    assert completions.throughput.expected_s(2 * MIB) > 0
    assert completions.wait([2], 2 * MIB) == [1]
