"""Counting by reason what a peer did wrong: the one counter for rejected frames, refused
connections, dropped sends and rejected messages.

Each reason's first occurrence is logged at WARNING, so a misbehaving peer is noticed;
later ones at DEBUG, so it cannot flood the log. A ``Counter`` (read it as one); counts
change under a lock, since a channel counts on its own threads while others read.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter


class Tally(Counter[str]):
    def __init__(self, logger: logging.Logger, what: str) -> None:
        """``what`` starts each log line ("tcp://10.0.0.5:5555 rejected a frame from")."""
        super().__init__()
        self._logger = logger
        self._what = what
        self._lock = threading.Lock()

    def add(
        self, reason: str, peer: str, detail: str = "", count: int = 1, room: int | None = None
    ) -> bool:
        """Count and log ``count`` of ``reason`` from ``peer`` (about ``room``, if one is
        named: such a line starts ``room=<id>``); True if they are its first."""
        first = self.count(reason, count)
        level = logging.WARNING if first else logging.DEBUG
        where = "" if room is None else f"room={room} "
        extra = f" ({detail})" if detail else ""
        self._logger.log(level, "%s%s %s: %s%s", where, self._what, peer, reason, extra)
        return first

    def count(self, reason: str, count: int = 1) -> bool:
        """Count without logging (what was logged where it happened); True if first."""
        with self._lock:
            first = reason not in self
            self[reason] += count
        return first

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts by reason."""
        with self._lock:
            return dict(self)
