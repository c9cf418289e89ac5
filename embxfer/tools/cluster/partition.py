"""``--fault partition-receiver|partition-sender``: a host's cable pulled, then put back.

Unlike a kill, a partition leaves every process running and answering the parent, so
the run keeps opening rooms all along. Rooms alive during the cut must end by their
own deadlines (a write stalled by the cut returns when the cable is back, long before
Mooncake's own ~60 s), and rooms opened after the heal must succeed with no process
restarted: the peers find each other again by themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from embxfer.tools.demo import ACROSS_CUT, AFTER_HEAL, BEFORE_CUT, Phase

from .netns import Testbed

LOG = logging.getLogger("embxfer.tools.cluster")


class Partition:
    """One host to be cut off for ``seconds`` (``cut``), and how every request of the run
    ended, by phase."""

    def __init__(self, testbed: Testbed, host: str, seconds: float) -> None:
        self.testbed = testbed
        self.host = host
        self.seconds = seconds
        self.phases = {name: Phase() for name in (BEFORE_CUT, ACROSS_CUT, AFTER_HEAL)}
        self._heal_at: float | None = None  # while cut
        self._healed = False
        self._phase_of: dict[int, str] = {}  # open rooms the cut concerns -> their phase

    @property
    def cut_now(self) -> bool:
        return self._heal_at is not None

    def cut(self, open_rooms: Iterable[int]) -> None:
        """Pull the cable; ``heal_when_due`` puts it back ``seconds`` later."""
        LOG.warning("cutting %s off for %.1f s", self.host, self.seconds)
        self.testbed.cut(self.host)
        self._heal_at = time.monotonic() + self.seconds
        self._phase_of.update(dict.fromkeys(open_rooms, ACROSS_CUT))

    def heal_when_due(self) -> None:
        if self._heal_at is not None and time.monotonic() >= self._heal_at:
            self.testbed.heal(self.host)
            self._heal_at = None
            self._healed = True
            LOG.warning("%s is back", self.host)

    def opened(self, room_id: int) -> None:
        if self._healed:
            self._phase_of[room_id] = AFTER_HEAL
        elif self.cut_now:
            self._phase_of[room_id] = ACROSS_CUT

    def ended(self, room_id: int, ok: bool, seconds: float) -> None:
        """A request is over, ``seconds`` after it was opened."""
        phase = self.phases[self._phase_of.pop(room_id, BEFORE_CUT)]
        if ok:
            phase.succeeded += 1
        else:
            phase.failed += 1
        phase.slowest_s = max(phase.slowest_s, round(seconds, 3))

    @property
    def succeeded_after_heal(self) -> int:
        return self.phases[AFTER_HEAL].succeeded
