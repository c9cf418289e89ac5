"""The receiver room: one request's embedding, received in as many pieces as needed.

The receiver allocates (a hint, or the adaptive default), asks for a piece at
``sent_tokens`` and, when a piece lands short of ``T``, allocates the rest and asks
again: the resume. ``T`` is learned from the sender's announce or the first piece, the
M-RoPE position delta (with ``T``, the room's aux record) from the first piece's
``PieceWritten``; both are kept here. A room told ``T`` before its first piece is served
sizes its first request for it: it frees the blocks beyond ``T``, or takes the missing
ones (if free, without passing a room that waits) and replaces its request with a
larger one; the resume takes whatever the announce did not cover. Pieces stay in their
blocks unless memory is short (then they are spilled to staging memory). Blocks a write
may still target are freed only once the sender has confirmed no write is in flight,
or after a grace period longer than any write can take.

The room is one *incarnation* of its room id, named by a random ``nonce`` its engine
draws: every message it sends carries it, and a message for another incarnation (a room
that used the id before) is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from embxfer.fsm.actions import SendMessage, SpillPiece, StopWaiting, WaitForMemory
from embxfer.fsm.events import (
    AbortAckReceived,
    AbortReceived,
    AbortRequested,
    AnnounceArrived,
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
        # The sender announces the length: size the first request for it (or, before the
        # first request, remember it). Once a piece came, the length is known already.
        ("announce", ACTIVE, None, "stale", "_ignore"),
        ("announce", ACTIVE, F, "violation", ""),
        ("announce", [B, W], None, "act", "_learn_length"),
        ("announce", TERMINAL, None, "", "_ignore"),
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
    """The piece the sender may be writing right now: the requests sent for it
    (``asked``: ``(seq, allocated_tokens)``, oldest first; a later one replaced the one
    before it, and a piece may answer either), the blocks held for them (the last
    request's, less those beyond ``T``; an earlier request's are a prefix), and when the
    last was sent."""

    sent_tokens: int
    blocks: tuple[int, ...]
    asked: tuple[tuple[int, int], ...]
    asked_at: float

    @property
    def allocated_tokens(self) -> int:
        """What the last request asked for."""
        return self.asked[-1][1]

    def allocation(self, seq: int) -> int | None:
        """Tokens request ``seq`` allocated, if it was sent for this piece."""
        for asked_seq, tokens in self.asked:
            if asked_seq == seq:
                return tokens
        return None


class ReceiverRoom(Room):
    """One request on the language side; see the module docstring and RECEIVER_TABLE."""

    __slots__ = (
        "initial_tokens",
        "memory",
        "mrope_position_delta",
        "nonce",
        "outstanding",
        "pieces",
        "policy",
        "provided",
        "quarantine",
        "quarantine_until",
        "queued",
        "received",
        "required_receivers",
        "sender",
        "seq",
        "total_tokens",
        "waiting_for_memory",
    )

    TRIGGERS: ClassVar[dict[type, str]] = {
        PeerReady: "peer_ready",
        AnnounceArrived: "announce",
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
        nonce: int = 0,
    ) -> None:
        """``initial_tokens``: what the first request allocates; None when the scheduler
        hands over the first piece's blocks itself (``MemoryGranted``). ``nonce``: this
        incarnation of ``room_id`` (its engine draws it at random)."""
        super().__init__(room_id, timeouts, now)
        if initial_tokens is not None and initial_tokens <= 0:
            raise ValueError(f"initial_tokens must be positive, got {initial_tokens}")
        self.sender = sender
        self.memory = memory
        self.initial_tokens = initial_tokens
        self.policy = policy or ResumePolicy()
        self.required_receivers = required_receivers
        self.nonce = nonce
        self.seq = 0  # of the last request sent
        self.total_tokens = 0  # T, learned from the announce or the first piece
        self.mrope_position_delta = 0  # learned with the first piece
        self.received = 0
        self.pieces: list[Piece] = []
        self.outstanding: Outstanding | None = None
        self.provided: tuple[int, ...] = ()  # the scheduler's blocks, before the sender is ready
        self.waiting_for_memory = False
        self.queued = False  # waiting in the engine's memory queue (not for the scheduler)
        self.quarantine: tuple[int, ...] = ()
        self.quarantine_until = 0.0

    @property
    def finished(self) -> bool:
        """Released, terminal, and holding no block: the runtime may forget the room."""
        return self.released and self.terminal and not self.held_blocks()

    def names(self, peer: str, nonce: int) -> bool:
        """This incarnation (the room judges the peer)."""
        return nonce == self.nonce

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
        elif isinstance(event, AnnounceArrived):
            self._classify_announce(event)
        elif isinstance(event, (AbortReceived, AbortAckReceived, PeerLost)):
            if event.peer != self.sender:
                self._decide(Verdict.STALE, f"{event.peer} is not this room's sender")
            elif not isinstance(event, PeerLost) and (
                stale := self._other_incarnation(event.nonce, self.nonce)
            ):
                self._decide(Verdict.STALE, stale)
            elif isinstance(event, AbortReceived):
                self._decide(Verdict.ACT, f"aborted by sender: {event.reason}")
            elif isinstance(event, PeerLost):
                self._decide(Verdict.VIOLATION, f"sender {event.peer} lost")
            else:
                self._decide(Verdict.ACT, "the sender confirmed no write is in flight")
        elif isinstance(event, PeerReady):
            tokens = self._first_tokens()
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
        allocated = None if out is None else out.allocation(msg.seq)
        if event.peer != self.sender:
            self._decide(Verdict.STALE, f"{event.peer} is not this room's sender")
        elif stale := self._other_incarnation(msg.nonce, self.nonce):
            self._decide(Verdict.STALE, stale)
        elif out is None or msg.sent_tokens < out.sent_tokens:
            self._decide(Verdict.STALE, f"piece at sent_tokens={msg.sent_tokens} not awaited")
        elif msg.sent_tokens > out.sent_tokens:
            self._decide(
                Verdict.VIOLATION,
                f"piece at sent_tokens={msg.sent_tokens} but {out.sent_tokens} requested",
            )
        elif allocated is None:
            self._decide(Verdict.VIOLATION, f"piece answers request {msg.seq}, not one sent for it")
        elif not 0 < msg.tokens <= allocated or end > msg.total_tokens:
            self._decide(
                Verdict.VIOLATION,
                f"piece of {msg.tokens} tokens at {msg.sent_tokens} of {msg.total_tokens} "
                f"does not fit {allocated} allocated",
            )
        elif self.total_tokens and msg.total_tokens != self.total_tokens:
            self._decide(
                Verdict.VIOLATION, f"total changed from {self.total_tokens} to {msg.total_tokens}"
            )
        elif self.received and msg.mrope_position_delta != self.mrope_position_delta:
            self._decide(
                Verdict.VIOLATION,
                f"mrope delta changed from {self.mrope_position_delta} "
                f"to {msg.mrope_position_delta}",
            )
        elif msg.tokens < allocated and end != msg.total_tokens:
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

    def _classify_announce(self, event: AnnounceArrived) -> None:
        """The sender's length: new (act), known (stale), or not the one known."""
        total = event.message.total_tokens
        if event.peer != self.sender:
            self._decide(Verdict.STALE, f"{event.peer} is not this room's sender")
        elif stale := self._other_incarnation(event.message.nonce, self.nonce):
            self._decide(Verdict.STALE, stale)
        elif self.total_tokens and total != self.total_tokens:
            self._decide(
                Verdict.VIOLATION, f"announced {total} tokens, but {self.total_tokens} known"
            )
        elif self.total_tokens:
            self._decide(Verdict.STALE, f"{total} tokens known already")
        else:
            self._decide(Verdict.ACT)

    def _servable(self, tokens: int) -> tuple[Verdict, str]:
        """ACT if a piece of ``tokens`` tokens can ever be granted here, else why not."""
        floor = self.policy.floor_tokens(tokens, self._pool_tokens())
        if floor > self._pool_tokens():
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

    def _first_tokens(self) -> int | None:
        """What the first request allocates: the length once announced, else the initial
        size; None when the scheduler hands over the blocks (sized for ``T`` later)."""
        return None if self.initial_tokens is None else self.total_tokens or self.initial_tokens

    def _pool_tokens(self) -> int:
        return self.memory.total_blocks * self.memory.block_size

    def _request_next(self, _event: Event) -> None:
        """Allocate for the next piece and ask for it, or wait for memory in turn (the
        scheduler's blocks, for a first piece it allocates itself)."""
        first = self._first_tokens()
        if first is None and not self.received:
            if self.provided:
                provided, self.provided = self.provided, ()
                self._ask_for(provided)
            else:
                self.waiting_for_memory = True
            return
        wanted = self._resume_tokens(self.total_tokens - self.received)
        if not self.received:
            assert first is not None
            wanted = first
        floor = self.policy.floor_tokens(wanted, self._pool_tokens())
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
        """Request the next piece into ``blocks`` (replacing the request for it, if one
        was sent); blocks beyond the length, once known, are freed first."""
        bs = self.memory.block_size
        if self.total_tokens:
            blocks = self._trimmed(blocks, blocks_needed(self.total_tokens - self.received, bs))
        allocated = len(blocks) * bs
        self.seq += 1
        out = self.outstanding
        earlier = out.asked if out is not None and out.sent_tokens == self.received else ()
        asked = (*earlier, (self.seq, allocated))
        self.outstanding = Outstanding(self.received, blocks, asked, self.now)
        self._progressed()
        request = PieceRequest(
            self.room_id,
            self.nonce,
            self.seq,
            self.received,
            blocks,
            allocated,
            self.required_receivers,
        )
        self._actions.append(SendMessage(self.sender, request))

    def _trimmed(self, blocks: tuple[int, ...], needed: int) -> tuple[int, ...]:
        """``blocks`` less those beyond the first ``needed``, which go back at once."""
        if len(blocks) > needed:
            self.memory.free(blocks[needed:])
        return blocks[:needed]

    def _learn_length(self, event: AnnounceArrived) -> None:
        """Keep ``T``; if the first request is out and unanswered, size it for ``T``:
        free what lies beyond, or take what is missing (only if it is free now and no
        room waits: the announce never makes a room wait) and replace the request. What
        the replacement cannot cover, or a piece that answers the old request, is left
        to the resume."""
        self.total_tokens = event.message.total_tokens
        out = self.outstanding
        if out is None or self.received:
            return  # not asked yet: the first request will ask for T
        bs = self.memory.block_size
        needed = blocks_needed(self.total_tokens, bs)
        if needed <= len(out.blocks):
            self.outstanding = replace(out, blocks=self._trimmed(out.blocks, needed))
            return
        missing = (needed - len(out.blocks)) * bs
        more = self.memory.take(missing, self.policy.floor_tokens(missing, self._pool_tokens()))
        if more is not None:
            self._ask_for(out.blocks + tuple(more))

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
            abort = Abort(self.room_id, self.nonce, self.reason)
            self._actions.append(SendMessage(self.sender, abort))


RECEIVER_MACHINE = build_machine("receiver", RECEIVER_TABLE, {FAILED: "_enter_failed"})

ReceiverRoom.bind(RECEIVER_MACHINE)
