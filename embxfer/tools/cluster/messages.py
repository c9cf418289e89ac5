"""What the parent and its workers tell each other over their pipes.

Pickled: both ends run this code. Each worker has its own pipe, so a worker killed
mid-message can corrupt only its own (a shared ``multiprocessing.Queue`` holds a lock
that a SIGKILLed writer never gives back).
"""

from __future__ import annotations

from dataclasses import dataclass

from embxfer.config import EngineConfig
from embxfer.remote import NetworkConfig
from embxfer.tools.demo import ENCODER, RoomOutcome


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process starts from (its only argument)."""

    side: str  # ENCODER, or language_side(rank)
    config: EngineConfig
    network: NetworkConfig
    seed: int  # the encoder makes payloads from it; language ranks check against them
    log_level: str = "WARNING"
    netns: str = ""  # the network namespace (its file) the worker runs in; "": the parent's

    @property
    def is_encoder(self) -> bool:
        return self.side == ENCODER


# -- parent -> worker ----------------------------------------------------------------
@dataclass(frozen=True)
class OpenRoom:
    """Start request ``request``'s room, of ``tokens`` tokens, under ``room_id``. The encoder
    makes the payload (announcing its length first if ``announce``) and hands it to its
    engine; a language rank joins the room at ``sender`` (the room's bootstrap address,
    as a real request would carry it) and checks what arrives against the same payload.
    The side named ``aborted_by`` aborts the room as soon as it has opened it."""

    request: int
    room_id: int
    tokens: int
    sender: str
    receivers: int
    announce: bool = False
    aborted_by: str = ""


@dataclass(frozen=True)
class Finish:
    """No more rooms: abort any still open, wait up to ``wait_s`` for every block to come
    back (failed rooms may hold some for their write grace), report, exit."""

    wait_s: float


@dataclass(frozen=True)
class CountRejected:
    """Report what the engine rejected so far (``Rejected``)."""


Command = OpenRoom | Finish | CountRejected


# -- worker -> parent ----------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The worker's engine is up; peers reach it at ``address``."""

    address: str


@dataclass(frozen=True)
class StartFailed:
    """The worker could not build its engine (``error`` is the traceback)."""

    error: str


@dataclass(frozen=True)
class WorkerReport:
    """A worker's last word, once its rooms are gone: blocks still allocated (0 unless a
    room leaked them) and the inbound frames or messages its engine rejected, by reason."""

    leaked_blocks: int
    rejected: dict[str, int]


@dataclass(frozen=True)
class Rejected:
    """The inbound frames or messages the engine rejected so far, by reason."""

    counts: dict[str, int]


Report = Ready | StartFailed | RoomOutcome | WorkerReport | Rejected
