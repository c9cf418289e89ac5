"""Waiting for asynchronous writes without spinning.

Mooncake's synchronous batch write busy-waits on its completion (Mooncake issues 1033,
2478): a core spins for every write in flight. Submitting asynchronously and asking for
the status is cheap, but somebody has to ask, and every ask after the write finished
is time the room waits for nothing. ``Completions`` lets the thread that submitted a
write ask for itself: it sleeps until the write should be done (its bytes at the
throughput this transport has seen), then asks, backing off while it stays pending.
Every sleep is a timer that fires once; no other thread is involved, so nothing is
handed over between seeing a write finish and reporting it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

PENDING: Final = 0
"""What ``check`` returns while a batch is in flight; anything else ends the wait."""
CLOSED: Final = -1
"""The status of a batch still pending when ``Completions.close`` is called."""


class Throughput:
    """How fast large writes go here, learnt from those that finished: an EWMA of
    bytes per second, so a waiting writer can sleep until its write should be done.

    Small writes teach nothing: their time is Mooncake's fixed latency (tens of
    microseconds), not bytes. A write found finished at the first ask took at most
    that long, maybe much less: it is learnt as faster (``EARLY`` of its time), so a
    prediction that came to be too slow is corrected within a few writes.
    """

    LEARN_FROM_BYTES: Final = 1 << 20
    WEIGHT: Final = 0.5  # of the newest write: loads change, and a wrong guess is cheap
    EARLY: Final = 0.5  # when the first ask comes, as a share of the expected time

    def __init__(self) -> None:
        self._bytes_per_s = 0.0  # 0: nothing learnt yet

    def expected_s(self, nbytes: int) -> float:
        """How long a write of ``nbytes`` should take (0: no idea, or too small to say)."""
        if nbytes < self.LEARN_FROM_BYTES or not self._bytes_per_s:
            return 0.0
        return nbytes / self._bytes_per_s

    def learn(self, nbytes: int, seconds: float, at_first_ask: bool) -> None:
        """A write of ``nbytes`` was found finished ``seconds`` after it was submitted,
        ``at_first_ask`` or later (then ``seconds`` is about how long it took)."""
        if nbytes < self.LEARN_FROM_BYTES or seconds <= 0:
            return
        rate = nbytes / (seconds * self.EARLY if at_first_ask else seconds)
        known = self._bytes_per_s  # writers on other threads may learn at the same time
        self._bytes_per_s = rate if not known else known + self.WEIGHT * (rate - known)


class Completions:
    """Waits for the batches a thread submitted, on that thread, asking
    ``check(batch_id)`` only when a timer says so.

    The first ask comes well before the write's expected end (``Throughput.EARLY`` of
    it: the same write takes 5 to 10 ms here from one time to the next), or after
    ``MIN_SLEEP_S`` without a prediction; then the sleeps double from ``MIN_SLEEP_S``
    up to a cap, a small share of the expected time (a late ask costs the room its
    lateness) or ``MAX_SLEEP_S`` without a prediction. Asks keep to an absolute
    schedule, so timer overshoot (about 75 us a sleep here) does not add up, but never
    come sooner than ``MIN_SLEEP_S`` after the last (no burst after a stall). ``check``
    may free a batch once it reported it finished (Mooncake does): it is never asked
    about that batch again.
    """

    MIN_SLEEP_S: Final = 20e-6
    MAX_SLEEP_S: Final = 1e-3
    CAP_SHARE: Final = 1 / 32  # of the expected time: the most an ask may come late

    def __init__(self, check: Callable[[int], int]) -> None:
        self._check = check
        self._closed = threading.Event()
        self.throughput = Throughput()

    def wait(self, batch_ids: Sequence[int], nbytes: int) -> list[int]:
        """Block until every batch of ``batch_ids`` (``nbytes`` in all) has finished;
        their final statuses, in order (``CLOSED`` for those pending at ``close``)."""
        statuses = [PENDING] * len(batch_ids)
        pending = list(range(len(batch_ids)))
        started = asked = time.perf_counter()
        asks = 0
        for offset_s in self.schedule(self.throughput.expected_s(nbytes)):
            if not pending:
                break
            ask_at = max(started + offset_s, asked + self.MIN_SLEEP_S)
            if self._closed.wait(max(ask_at - time.perf_counter(), 0.0)):
                for index in pending:
                    statuses[index] = CLOSED
                return statuses
            pending = [i for i in pending if self._settle(batch_ids[i], statuses, i)]
            asked = time.perf_counter()
            asks += 1
        self.throughput.learn(nbytes, asked - started, asks == 1)
        return statuses

    @classmethod
    def schedule(cls, expected_s: float) -> Iterator[float]:
        """When to ask, in seconds after submitting, about a write expected to take
        ``expected_s`` (0: unknown); endless. Past twice the expected time the
        prediction was wrong (a stall, a slower peer): the sleeps grow to
        ``MAX_SLEEP_S`` as without one."""
        cap_s = cls.MAX_SLEEP_S
        if expected_s:
            cap_s = min(max(expected_s * cls.CAP_SHARE, cls.MIN_SLEEP_S), cap_s)
        step_s = cls.MIN_SLEEP_S
        offset_s = max(expected_s * Throughput.EARLY, step_s)
        while True:
            yield offset_s
            offset_s += step_s
            if offset_s > 2 * expected_s:
                cap_s = cls.MAX_SLEEP_S
            step_s = min(2 * step_s, cap_s)

    def _settle(self, batch_id: int, statuses: list[int], index: int) -> bool:
        """Whether ``batch_id`` is still pending; if not, record its status."""
        try:
            status = self._check(batch_id)
        except Exception:  # a check that raises must not strand its writer
            status = CLOSED
        statuses[index] = status
        return status == PENDING

    def close(self) -> None:
        """Release every waiting writer (their pending batches fail) and any later one."""
        self._closed.set()
