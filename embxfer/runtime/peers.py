"""Which peers are alive: when each was last heard from, and whose silence means it is lost.

Every inbound message counts as a sign of life. Once per heartbeat period the engine
names the peers it needs (a role's choice); each of those is sent a heartbeat, unless
it has been silent past the peer timeout: then it is lost, and the rooms that need it
fail. A peer heard from again later starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Round:
    """One heartbeat round's verdicts."""

    alive: list[str]  # send these a heartbeat
    lost: list[str]  # silent past the peer timeout


class PeerMonitor:
    def __init__(self, clock: Callable[[], float], heartbeat_s: float, peer_timeout_s: float):
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        self._last_seen: dict[str, float] = {}
        self._next_round = 0.0

    def heard(self, peer: str) -> None:
        self._last_seen[peer] = self.clock()

    def heard_since(self, peer: str, since: float) -> bool:
        return self._last_seen.get(peer, -float("inf")) >= since

    def silent_for(self, peer: str) -> float:
        return self.clock() - self._last_seen.get(peer, self.clock())

    def round(self, needed: Iterable[str]) -> Round | None:
        """The heartbeat round, if one is due (None: not yet). A needed peer never heard
        from starts its clock now."""
        now = self.clock()
        if now < self._next_round:
            return None
        self._next_round = now + self.heartbeat_s
        alive: list[str] = []
        lost: list[str] = []
        for peer in needed:
            seen = self._last_seen.setdefault(peer, now)
            (lost if now - seen > self.peer_timeout_s else alive).append(peer)
        return Round(alive, lost)

    def forget(self, peer: str) -> None:
        self._last_seen.pop(peer, None)
