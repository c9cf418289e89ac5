"""The receiver room: one request's embedding, received in as many pieces as needed.

The receiver allocates (a hint, or the adaptive default), asks for a piece at
``sent_tokens`` and, when a piece lands short of ``T``, allocates the rest and asks
again: the resume. ``T`` and the M-RoPE position delta (the room's aux record) are
learned from the first piece's ``PieceWritten`` and kept here. Pieces stay
in their blocks unless memory is short (then they are spilled to staging memory).
Blocks a write may still target are freed only once the sender has confirmed no
write is in flight, or after a grace period longer than any write can take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from embxfer.fsm.actions import SendMessage, SpillPiece, StopWaiting, WaitForMemory
from embxfer.fsm.events import (
    AbortAckReceived,
    AbortReceived,
    AbortRequested,
    CallbackFailed,
    Event,
    MemoryGranted,
    PeerLost,
    PeerReady,
    PieceArrived,
    Released,
    Tick,
)
from embxfer.fsm.memory import BlockPool, blocks_needed
from embxfer.fsm.messages import Abort, PieceRequest
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.room import (
    ACTIVE,
    BOOTSTRAPPING,
    FAILED,
    SUCCESS,
    TERMINAL,
    TRANSFERRING,
    WAITING,
    Room,
    Timeouts,
    Verdict,
    build_machine,
    verdict_table,
)

B, W, T, OK, F = BOOTSTRAPPING, WAITING, TRANSFERRING, SUCCESS, FAILED

# (trigger, source, dest, condition, callback); see SENDER_TABLE for how rows are read.
RECEIVER_TABLE = verdict_table(
    [
        # The sender accepted this engine's registration: allocate and ask (or fail if
        # the first piece can never fit this engine's memory).
        ("peer_ready", B, F, "violation", ""),
        ("peer_ready", B, W, "", "_request_next"),
        ("peer_ready", [W, T, *TERMINAL], None, "", "_ignore"),
        # The sender reports a piece written (keyed by its sent_tokens offset).
        ("piece", ACTIVE, None, "stale", "_ignore"),
        ("piece", [W, T], F, "violation", ""),
        ("piece", [W, T], OK, "all_done", "_take_piece"),
        ("piece", [W, T], T, "more_owed", "_take_piece_and_resume"),
        ("piece", TERMINAL, None, "", "_ignore"),
        # The sender aborted (it has no write in flight) or confirmed our abort: a
        # failed room's quarantine ends.
        ("peer_abort", ACTIVE, F, "act", ""),
        ("peer_abort", F, None, "act", "_free_quarantine"),
        ("peer_abort", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        ("abort_ack", F, None, "act", "_free_quarantine"),
        ("abort_ack", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        # The scheduler aborts; the sender is lost.
        ("abort", ACTIVE, F, "", ""),
        ("abort", TERMINAL, None, "", "_ignore"),
        ("peer_lost", ACTIVE, F, "violation", ""),
        ("peer_lost", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        # Blocks the room waited for: its turn in the memory queue came, or the scheduler
        # handed over the first piece's blocks (kept until the sender is ready). Blocks
        # the room does not await go back at once.
        ("granted", B, None, "act", "_keep_provided"),
        ("granted", [W, T], None, "act", "_use_grant"),
        ("granted", [*ACTIVE, *TERMINAL], None, "", "_return_grant"),
        # A callback raised (a bug): the room fails with the error.
        ("crash", ACTIVE, F, "", ""),
        ("crash", TERMINAL, None, "", "_ignore"),
        # Time passes: deadlines, end of quarantine.
        ("tick", ACTIVE, F, "deadline_passed", ""),
        ("tick", F, None, "settle", "_free_quarantine"),
        ("tick", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        # The scheduler lets go of the room (after taking the result).
        ("release", ACTIVE, F, "", "_mark_released"),
        ("release", TERMINAL, None, "", "_mark_released"),
    ]
)


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens ``[sent_tokens, sent_tokens + tokens)``: in ``blocks``, or spilled when empty."""

    sent_tokens: int
    tokens: int
    blocks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Outstanding:
    """The request the sender may be writing for right now, sent at ``asked_at``."""

    sent_tokens: int
    blocks: tuple[int, ...]
    allocated_tokens: int
    asked_at: float


class ReceiverRoom(Room):
    """One request on the language side; see the module docstring and RECEIVER_TABLE."""

    __slots__ = (
        "initial_tokens",
        "memory",
        "mrope_position_delta",
        "outstanding",
        "pieces",
        "policy",
        "provided",
        "quarantine",
        "quarantine_until",
        "queued",
        "received",
        "released",
        "required_receivers",
        "sender",
        "total_tokens",
        "waiting_for_memory",
    )

    TRIGGERS: ClassVar[dict[type, str]] = {
        PeerReady: "peer_ready",
        PieceArrived: "piece",
        AbortReceived: "peer_abort",
        AbortAckReceived: "abort_ack",
        AbortRequested: "abort",
        PeerLost: "peer_lost",
        MemoryGranted: "granted",
        CallbackFailed: "crash",
        Tick: "tick",
        Released: "release",
    }

    def __init__(
        self,
        room_id: int,
        sender: str,
        memory: BlockPool,
        initial_tokens: int | None,
        timeouts: Timeouts,
        now: float,
        policy: ResumePolicy | None = None,
        required_receivers: int = 1,
    ) -> None:
        """``initial_tokens``: what the first request allocates; None when the scheduler
        hands over the first piece's blocks itself (``MemoryGranted``)."""
        super().__init__(room_id, timeouts, now)
        if initial_tokens is not None and initial_tokens <= 0:
            raise ValueError(f"initial_tokens must be positive, got {initial_tokens}")
        self.sender = sender
        self.memory = memory
        self.initial_tokens = initial_tokens
        self.policy = policy or ResumePolicy()
        self.required_receivers = required_receivers
        self.total_tokens = 0  # T, learned from the first piece
        self.mrope_position_delta = 0  # learned with it
        self.received = 0
        self.pieces: list[Piece] = []
        self.outstanding: Outstanding | None = None
        self.provided: tuple[int, ...] = ()  # the scheduler's blocks, before the sender is ready
        self.waiting_for_memory = False
        self.queued = False  # waiting in the engine's memory queue (not for the scheduler)
        self.quarantine: tuple[int, ...] = ()
        self.quarantine_until = 0.0
        self.released = False

    @property
    def finished(self) -> bool:
        """Released, terminal, and holding no block: the runtime may forget the room."""
        return self.released and self.terminal and not self.held_blocks()

    def held_blocks(self) -> list[int]:
        """Every block this room owns right now."""
        held = [b for piece in self.pieces for b in piece.blocks]
        if self.outstanding is not None:
            held.extend(self.outstanding.blocks)
        held.extend(self.provided)
        held.extend(self.quarantine)
        return held

    @property
    def wakeup(self) -> float:
        """When this room next needs a Tick: waiting for memory costs no timer but the
        deadline's, since a grant comes as an event."""
        if self.state in ACTIVE:
            return self.deadline
        return self.quarantine_until if self.quarantine else float("inf")

    # -- classification: what each event means in the current state ------------------
    def _classify_event(self, event: Event) -> None:
        if isinstance(event, PieceArrived):
            self._classify_piece(event)
        elif isinstance(event, (AbortReceived, AbortAckReceived, PeerLost)):
            if event.peer != self.sender:
                self._decide(Verdict.STALE, f"{event.peer} is not this room's sender")
            elif isinstance(event, AbortReceived):
                self._decide(Verdict.ACT, f"aborted by sender: {event.reason}")
            elif isinstance(event, PeerLost):
                self._decide(Verdict.VIOLATION, f"sender {event.peer} lost")
            else:
                self._decide(Verdict.ACT, "the sender confirmed no write is in flight")
        elif isinstance(event, PeerReady):
            tokens = self.initial_tokens
            self._decide(*self._servable(tokens) if tokens is not None else (Verdict.ACT,))
        elif isinstance(event, MemoryGranted):
            self._classify_grant()
        elif isinstance(event, Tick):
            self._classify_tick()
        elif isinstance(event, AbortRequested):
            self._decide(Verdict.ACT, f"aborted by scheduler: {event.reason}")
        elif isinstance(event, Released):
            self._decide(Verdict.ACT, "released before completion")
        else:
            self._decide(Verdict.ACT)

    def _classify_piece(self, event: PieceArrived) -> None:
        msg = event.message
        out = self.outstanding
        end = msg.sent_tokens + msg.tokens
        if event.peer != self.sender:
            self._decide(Verdict.STALE, f"{event.peer} is not this room's sender")
        elif out is None or msg.sent_tokens < out.sent_tokens:
            self._decide(Verdict.STALE, f"piece at sent_tokens={msg.sent_tokens} not awaited")
        elif msg.sent_tokens > out.sent_tokens:
            self._decide(
                Verdict.VIOLATION,
                f"piece at sent_tokens={msg.sent_tokens} but {out.sent_tokens} requested",
            )
        elif not 0 < msg.tokens <= out.allocated_tokens or end > msg.total_tokens:
            self._decide(
                Verdict.VIOLATION,
                f"piece of {msg.tokens} tokens at {msg.sent_tokens} of {msg.total_tokens} "
                f"does not fit {out.allocated_tokens} allocated",
            )
        elif self.total_tokens and msg.total_tokens != self.total_tokens:
            self._decide(
                Verdict.VIOLATION, f"total changed from {self.total_tokens} to {msg.total_tokens}"
            )
        elif self.total_tokens and msg.mrope_position_delta != self.mrope_position_delta:
            self._decide(
                Verdict.VIOLATION,
                f"mrope delta changed from {self.mrope_position_delta} "
                f"to {msg.mrope_position_delta}",
            )
        elif msg.tokens < out.allocated_tokens and end != msg.total_tokens:
            self._decide(Verdict.VIOLATION, "short piece that is not the last")
        elif end == msg.total_tokens:
            self._decide(Verdict.ALL_DONE)
        elif self.policy.spill is SpillMode.NEVER_SPILL and (
            blocks_needed(msg.total_tokens, self.memory.block_size) > self.memory.total_blocks
        ):
            self._decide(
                Verdict.VIOLATION,
                f"{msg.total_tokens} tokens kept in place can never fit "
                f"{self.memory.total_blocks} blocks of {self.memory.block_size}",
            )
        else:
            verdict, reason = self._servable(self._resume_tokens(msg.total_tokens - end))
            self._decide(Verdict.MORE_OWED if verdict is Verdict.ACT else verdict, reason)

    def _servable(self, tokens: int) -> tuple[Verdict, str]:
        """ACT if a piece of ``tokens`` tokens can ever be granted here, else why not."""
        floor = self.policy.floor_tokens(tokens, self.memory.total_blocks * self.memory.block_size)
        if floor > self.memory.total_blocks * self.memory.block_size:
            return Verdict.VIOLATION, (
                f"a piece of {floor} tokens can never fit {self.memory.total_blocks} blocks "
                f"of {self.memory.block_size} (partial pieces are off)"
            )
        return Verdict.ACT, ""

    def _classify_grant(self) -> None:
        first_blocks_due = self.initial_tokens is None and not (
            self.provided or self.outstanding or self.received
        )
        if self.waiting_for_memory or first_blocks_due:
            self._decide(Verdict.ACT)
        else:
            self._decide(Verdict.STALE, "blocks the room did not wait for")

    def _classify_tick(self) -> None:
        if self.now >= self.deadline:
            waiting = " waiting for memory" if self.waiting_for_memory else ""
            self._decide(Verdict.DEADLINE, f"deadline passed in {self.state}{waiting}")
        elif self.quarantine and self.now >= self.quarantine_until:
            self._decide(Verdict.SETTLE)
        else:
            self._decide(Verdict.STALE, "nothing due")

    # -- callbacks -------------------------------------------------------------------
    def _resume_tokens(self, rest: int) -> int:
        cap = self.policy.max_resume_tokens
        return min(rest, cap) if cap else rest

    def _request_next(self, _event: Event) -> None:
        """Allocate for the next piece and ask for it, or wait for memory in turn (the
        scheduler's blocks, for a first piece it allocates itself)."""
        if self.initial_tokens is None and not self.received:
            if self.provided:
                provided, self.provided = self.provided, ()
                self._ask_for(provided)
            else:
                self.waiting_for_memory = True
            return
        wanted = self._resume_tokens(self.total_tokens - self.received)
        if not self.received:
            assert self.initial_tokens is not None
            wanted = self.initial_tokens
        floor = self.policy.floor_tokens(wanted, self.memory.total_blocks * self.memory.block_size)
        blocks = self._take(wanted, floor)
        if blocks is None:
            self.waiting_for_memory = self.queued = True
            self._actions.append(WaitForMemory(wanted, floor))
        else:
            self._ask_for(tuple(blocks))

    def _take(self, wanted: int, floor: int) -> list[int] | None:
        """Blocks now, if that is fair: the whole ask, after spilling kept pieces when
        the policy says so, else at least the floor. A room that must wait first spills
        what it may, so that no waiting room holds blocks it could give up."""
        spill = self.policy.spill
        if spill is SpillMode.ALWAYS_SPILL:
            self._spill_pieces()
        blocks = self.memory.take(wanted, wanted)
        if blocks is None and spill is SpillMode.KEEP_THEN_SPILL and self._spill_pieces():
            blocks = self.memory.take(wanted, wanted)
        if blocks is None and floor < wanted:
            blocks = self.memory.take(wanted, floor)
        return blocks

    def _ask_for(self, blocks: tuple[int, ...]) -> None:
        allocated = len(blocks) * self.memory.block_size
        self.outstanding = Outstanding(self.received, blocks, allocated, self.now)
        self._progressed()
        request = PieceRequest(
            self.room_id, self.received, blocks, allocated, self.required_receivers
        )
        self._actions.append(SendMessage(self.sender, request))

    def _keep_provided(self, event: MemoryGranted) -> None:
        self.provided = event.blocks

    def _use_grant(self, event: MemoryGranted) -> None:
        self.waiting_for_memory = self.queued = False
        self._ask_for(event.blocks)

    def _return_grant(self, event: MemoryGranted) -> None:
        self.memory.free(event.blocks)
        self._ignore(event)

    def _spill_pieces(self) -> bool:
        """Copy kept pieces to staging memory and free their blocks; True if any were."""
        kept = [p for p in self.pieces if p.blocks]
        for piece in kept:
            self._actions.append(SpillPiece(piece.sent_tokens, piece.tokens, piece.blocks))
            self.memory.free(piece.blocks)
        self.pieces = [Piece(p.sent_tokens, p.tokens, ()) for p in self.pieces]
        return bool(kept)

    def _take_piece(self, event: PieceArrived) -> None:
        msg = event.message
        out = self.outstanding
        assert out is not None
        used = blocks_needed(msg.tokens, self.memory.block_size)
        if used < len(out.blocks):
            self.memory.free(out.blocks[used:])  # over-allocated: give back at once
        self.total_tokens = msg.total_tokens
        self.mrope_position_delta = msg.mrope_position_delta
        self.pieces.append(Piece(msg.sent_tokens, msg.tokens, out.blocks[:used]))
        self.received += msg.tokens
        self.outstanding = None
        self._progressed()

    def _take_piece_and_resume(self, event: PieceArrived) -> None:
        self._take_piece(event)
        self.resumes += 1
        self._request_next(event)

    def _free_quarantine(self, _event: Event) -> None:
        if self.quarantine:
            self.memory.free(self.quarantine)
            self.quarantine = ()

    def _mark_released(self, _event: Event) -> None:
        self.released = True
        if self.state == SUCCESS:
            self._free_pieces()

    def _free_pieces(self) -> None:
        # One free, in token order: the allocator hands them out again in this order,
        # so the next room's blocks form a run when these did (views, not copies).
        ordered = sorted(self.pieces, key=lambda piece: piece.sent_tokens)
        blocks = [block for piece in ordered for block in piece.blocks]
        if blocks:
            self.memory.free(blocks)
        self.pieces = []

    def _enter_failed(self, event: Event) -> None:
        """Leave the memory queue, free what no write can target, and hold the
        outstanding blocks until it is safe.

        Without the sender's word, that is ``write_grace_s`` after the last moment a
        write for the request may start: the sender starts none once the request has
        waited ``progress_s`` (see ``SenderRoom._start_writes``)."""
        self._record_failure()
        if self.queued:
            self._actions.append(StopWaiting())
        self.waiting_for_memory = self.queued = False
        self._free_pieces()
        if self.provided:
            self.memory.free(self.provided)
            self.provided = ()
        sender_quiet = isinstance(event, AbortReceived)
        if self.outstanding is not None:
            last_start = max(self.now, self.outstanding.asked_at + self.timeouts.progress_s)
            self.quarantine = self.outstanding.blocks
            self.quarantine_until = last_start + self.timeouts.write_grace_s
            self.outstanding = None
        if sender_quiet:
            self._free_quarantine(event)
        else:
            self._actions.append(SendMessage(self.sender, Abort(self.room_id, self.reason)))


RECEIVER_MACHINE = build_machine("receiver", RECEIVER_TABLE, {FAILED: "_enter_failed"})

ReceiverRoom.MACHINE = RECEIVER_MACHINE
