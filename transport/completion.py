"""Waiting for asynchronous writes without spinning.

Mooncake's synchronous batch write busy-waits on its completion (Mooncake issues 1033,
2478): a core spins for every write in flight. Submitting asynchronously and asking for
the status is cheap, but somebody has to ask. ``CompletionPoller`` is that somebody, one
thread for every write in flight on a transport: it asks often right after a write is
submitted (small writes finish in tens of microseconds), backs off exponentially while
they stay pending (a large write takes milliseconds), and sleeps on a condition when
nothing is in flight. Writers wait on an event, never on a loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

PENDING: Final = 0
"""What ``check`` returns while a batch is in flight; anything else ends the wait."""


class _Waiter:
    """The batches one writer submitted, their statuses as they finish, and its event."""

    __slots__ = ("done", "remaining", "statuses")

    def __init__(self, batches: int) -> None:
        self.done = threading.Event()
        self.remaining = batches
        self.statuses = [PENDING] * batches


class CompletionPoller:
    """Asks ``check(batch_id)`` until it stops returning ``PENDING``, for every batch a
    writer ``wait``s on, on one thread of its own.

    ``check`` may free a batch once it has reported it finished (Mooncake does, and may
    hand the same id to the next batch): it is never asked about that batch again, and
    a finished batch is forgotten here before a new batch can register under its id.
    """

    MIN_SLEEP_S: Final = 20e-6
    MAX_SLEEP_S: Final = 1e-3

    def __init__(self, check: Callable[[int], int], name: str = "embxfer-completion") -> None:
        self._check = check
        self._name = name
        self._cond = threading.Condition()
        self._waiting: dict[int, tuple[_Waiter, int]] = {}  # batch -> (its writer, index)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._fresh = False  # a batch arrived since the last sleep: start the backoff over

    def wait(self, batch_ids: Sequence[int]) -> list[int]:
        """Block the calling thread until every batch of ``batch_ids`` has finished; their
        final statuses, in order."""
        waiter = _Waiter(len(batch_ids))
        if not batch_ids:
            return waiter.statuses
        with self._cond:
            if self._closed:  # nobody will ask any more: failed, as close() fails the rest
                return [-1] * len(batch_ids)
            for index, batch in enumerate(batch_ids):
                self._waiting[batch] = (waiter, index)
            self._fresh = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        waiter.done.wait()
        return waiter.statuses

    def _run(self) -> None:
        sleep_s = self.MIN_SLEEP_S
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                if self._fresh:
                    self._fresh, sleep_s = False, self.MIN_SLEEP_S
                # Checked under the lock: a batch freed by its check leaves ``_waiting``
                # before any writer can register a new batch under the same id.
                finished = [batch for batch in list(self._waiting) if self._settle(batch)]
            if finished:
                sleep_s = self.MIN_SLEEP_S
            time.sleep(sleep_s)
            sleep_s = min(2 * sleep_s, self.MAX_SLEEP_S)

    def _settle(self, batch_id: int) -> bool:
        """Whether ``batch_id`` has finished; if so, record its status and forget it."""
        try:
            status = self._check(batch_id)
        except Exception:  # a check that raises must not strand its writer
            status = -1
        if status == PENDING:
            return False
        waiter, index = self._waiting.pop(batch_id)
        waiter.statuses[index] = status
        waiter.remaining -= 1
        if not waiter.remaining:
            waiter.done.set()
        return True

    def close(self) -> None:
        """Stop the thread; writers still waiting are released with status -1."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = self._waiting, {}
            self._cond.notify()
        for waiter, index in waiting.values():
            waiter.statuses[index] = -1
            waiter.done.set()
