"""Rooms that ended, told to a scheduler as they end, so that it need not poll every
open room to find the few that did (vLLM's connectors report finished requests per step
alike). ``poll()`` stays: SGLang's interface is per request."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

HandleT = TypeVar("HandleT")


class EndedRooms(Generic[HandleT]):
    """Handles of rooms that reached Success or Failed, in the order they did: the pump
    puts each once its status shows the end; one scheduler thread takes them. Waiting
    for the next one is an event, not a loop over rooms."""

    def __init__(self) -> None:
        self._ended: deque[HandleT] = deque()
        self._signal = threading.Event()

    def put(self, handle: HandleT) -> None:
        """The room of ``handle`` ended (its status shows it)."""
        self._ended.append(handle)
        if not self._signal.is_set():
            self._signal.set()

    def take(self, timeout_s: float = 0.0) -> list[HandleT]:
        """Every handle put since the last take, oldest first; when there is none yet,
        wait up to ``timeout_s`` for one (the list may still be empty)."""
        if not self._ended and timeout_s > 0:
            self._signal.wait(timeout_s)
        self._signal.clear()  # what is put from here on sets it again
        ended = self._ended
        return [ended.popleft() for _ in range(len(ended))]
