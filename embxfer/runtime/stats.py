"""What an engine counts: rooms ended and why, bytes moved, rejected messages, waits for
memory; and the exception a failed room raises."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from embxfer.fsm.poll import KVPoll
from embxfer.fsm.room import Room
from embxfer.metrics import EngineMetrics, NoMetrics
from embxfer.transport.tally import Tally


class TransferFailed(RuntimeError):
    """A room ended in Failed; ``reason`` says why."""

    def __init__(self, room_id: int, reason: str) -> None:
        super().__init__(f"room {room_id} failed: {reason}")
        self.room_id = room_id
        self.reason = reason


_DETAILS = re.compile(r"\S+://[^\s:]+(?::\d+)?|\d+")  # peer addresses and numbers


def reason_category(reason: str) -> str:
    """A failure reason without its details (addresses, offsets, counts): a bounded set
    of values for counters and metric labels."""
    return " ".join(_DETAILS.sub(" ", reason).split(":")[0].split())


@dataclass
class EngineStats:
    """Counters of one engine; read them from any thread (values may lag by an event).

    Updated only through its methods, which also feed ``sink`` (Prometheus or nothing),
    so the counters here and the exported metrics cannot disagree."""

    rejected: Tally  # inbound messages and frames that could not be used, by reason
    succeeded: int = 0
    failed: int = 0
    resumes: int = 0
    memory_waits: int = 0  # times a room queued for blocks
    payload_bytes: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    sink: EngineMetrics = field(default_factory=NoMetrics, repr=False, compare=False)

    def room_ended(self, room: Room, seconds: float) -> None:
        """``room`` just reached Success or Failed, ``seconds`` after it was adopted."""
        reason = ""
        if room.state == KVPoll.Success.name:
            self.succeeded += 1
        else:
            self.failed += 1
            reason = reason_category(room.reason)
            self.failure_reasons[reason] += 1
        self.resumes += room.resumes
        self.sink.room_ended(room.state, reason, room.resumes, seconds)

    def bytes_moved(self, nbytes: int) -> None:
        self.payload_bytes += nbytes
        self.sink.bytes_moved(nbytes)

    def rejected_message(
        self, reason: str, peer: str, detail: str = "", room: int | None = None
    ) -> None:
        """One inbound message this engine could not use (logged once per reason)."""
        self.rejected.add(reason, peer, detail, room=room)
        self.sink.message_rejected(reason)

    def rejected_by_channel(self, reason: str, count: int) -> None:
        """``count`` frames the control channel dropped (and logged) since last asked."""
        self.rejected.count(reason, count)
        self.sink.message_rejected(reason, count)
