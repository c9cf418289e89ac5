"""The engine's one thread: commands from other threads, timers, and the loop that runs them.

Everything that touches rooms runs on the pump thread, so no room is ever touched by
two threads and a room's actions run in order before its next event. Other threads
(schedulers, writers) only ``submit`` commands. Nothing polls: the loop sleeps on its
input (the control channel) until a message arrives, a command wakes it, or the
earliest timer is due.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable

LOG = logging.getLogger("embxfer.runtime")

_IDLE_WAIT_S = 0.05  # longest sleep: how soon a stopped pump notices it should end


class Timers:
    """At most one wake-up per key, the earliest asked for; a heap with lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._at: dict[int, float] = {}
        self._seq = itertools.count()

    def schedule(self, key: int, at: float) -> None:
        """Wake ``key`` at ``at``, unless it is due earlier already (inf: never)."""
        current = self._at.get(key)
        if at != math.inf and (current is None or at < current):
            self._at[key] = at
            heapq.heappush(self._heap, (at, next(self._seq), key))

    def cancel(self, key: int) -> None:
        self._at.pop(key, None)

    def next_at(self) -> float:
        """When the earliest timer is due (inf: none)."""
        while self._heap and self._at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded or cancelled
        return self._heap[0][0] if self._heap else math.inf

    def due(self, now: float) -> list[int]:
        """Take every key due by ``now``, earliest first."""
        keys = []
        while self.next_at() <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._at[key]
            keys.append(key)
        return keys


class Pump:
    """Runs ``step(max_wait_s)`` on a daemon thread until stopped, and ``submit``'s
    commands on it. ``wake`` interrupts the step's sleep (the control channel's wake)."""

    def __init__(self, name: str, step: Callable[[float], None], wake: Callable[[], None]):
        self.name = name
        self._step = step
        self._wake = wake
        self._commands: deque[Callable[[], None]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    @property
    def busy(self) -> bool:
        """Commands wait to run: the next step must not sleep."""
        return bool(self._commands)

    def submit(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the pump thread (thread-safe). Only another thread's
        command wakes the pump: the pump runs its commands before it sleeps, and an
        engine pumped by hand (never started) has no sleeper."""
        self._commands.append(command)
        if self._ident is not None and not self.on_pump_thread():
            self._wake()

    def on_pump_thread(self) -> bool:
        return self._ident == threading.get_ident()

    def woken_from_elsewhere(self) -> None:
        """Something another thread did needs the pump (blocks freed): wake it."""
        if self._ident is not None and not self.on_pump_thread():
            self._wake()

    def run_commands(self) -> None:
        while self._commands:
            self._commands.popleft()()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and wait for the thread; idempotent."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        self._ident = threading.get_ident()
        while not self._stop.is_set():
            try:
                self._step(_IDLE_WAIT_S)
            except Exception:  # the pump must outlive any bug in one message or room
                LOG.exception("%s iteration failed", self.name)
