"""The sender room: one request's embedding, written to every receiver in pieces.

Each receiver asks for pieces with ``PieceRequest(sent_tokens, blocks)``; the sender
writes ``min(T - sent_tokens, allocated_tokens)`` tokens into those blocks, then
reports ``PieceWritten``. A receiver's requests are numbered (``seq``), so a request at
or below the last one accepted from that receiver is a duplicate or stale copy and is
ignored; one at the same offset with a higher number replaces the request before it,
unless that one is being served already.

A receiver's first request binds its incarnation (``nonce``): a message of any other
incarnation of that receiver (a room that used the same id before) is stale. Once the
room knows both the length (the scheduler's ``announce`` or payload) and a receiver, it
announces the length to that receiver, unless it is writing that receiver's piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from embxfer.fsm.actions import SendMessage, StopWaiting, StorePayload, WaitForMemory, WritePiece
from embxfer.fsm.events import (
    AbortReceived,
    AbortRequested,
    CallbackFailed,
    Event,
    LengthAnnounced,
    MemoryGranted,
    PayloadReady,
    PeerLost,
    Released,
    RequestReceived,
    Tick,
    WriteFinished,
)
from embxfer.fsm.memory import BlockPool, blocks_needed
from embxfer.fsm.messages import Abort, AbortAck, Announce, PieceWritten
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

# (trigger, source, dest, condition, callback). Per trigger and source state, rows are
# tried top to bottom; the first whose condition holds fires. dest None: no state change.
SENDER_TABLE = verdict_table(
    [
        # A receiver asks for a piece (sent_tokens 0: joins the room; above: resumes; the
        # same offset again: replaces its request, the length being announced).
        ("request", [B, W, T], None, "stale", "_ignore"),
        ("request", [B, W, T], F, "violation", ""),
        ("request", B, W, "last_receiver", "_accept_request"),
        ("request", [B, W, T], None, "act", "_accept_request"),
        ("request", OK, None, "", "_ignore"),
        ("request", F, None, "", "_answer_late_request"),
        # The scheduler announces the length before the embedding is computed: every
        # receiver that joined (and each one that joins later) is told.
        ("announce", [B, W, T], None, "stale", "_ignore"),
        ("announce", [B, W, T], F, "violation", ""),
        ("announce", [B, W], None, "act", "_learn_length"),
        ("announce", TERMINAL, None, "", "_ignore"),
        # The scheduler hands over the embedding; it is stored once source blocks are
        # granted (at once, or in turn in the memory queue), or comes in blocks the
        # scheduler filled. Blocks handed over with a payload the room refuses go back.
        ("payload", [B, W], None, "stale", "_refuse_payload"),
        ("payload", [B, W], F, "violation", "_free_payload_blocks"),
        ("payload", [B, W], None, "act", "_take_payload"),
        ("payload", [T, *TERMINAL], None, "", "_refuse_payload"),
        ("granted", [B, W], None, "act", "_store_payload"),
        ("granted", [*ACTIVE, *TERMINAL], None, "", "_return_grant"),
        # The data transport finished writing a piece. Each receiver is served as soon
        # as it asks, also while others have yet to join (Bootstrapping).
        ("write_done", ACTIVE, None, "stale", "_ignore"),
        ("write_done", ACTIVE, F, "violation", "_settle_write"),
        ("write_done", [W, T], OK, "all_done", "_report_piece"),
        ("write_done", [W, T], T, "more_owed", "_report_piece"),
        ("write_done", ACTIVE, None, "", "_report_piece"),
        ("write_done", F, None, "stale", "_ignore"),
        ("write_done", F, None, "", "_settle_write"),  # over: owed notices, free memory
        ("write_done", OK, None, "", "_ignore"),
        # Aborts: from the scheduler, or from a receiver (answered with AbortAck).
        ("abort", ACTIVE, F, "", ""),
        ("abort", TERMINAL, None, "", "_ignore"),
        # Before every receiver joined, one may abort before its request arrives.
        ("peer_abort", B, F, "", ""),
        ("peer_abort", [W, T], None, "stale", "_ignore"),
        ("peer_abort", [W, T], F, "", ""),
        ("peer_abort", TERMINAL, None, "", "_acknowledge_abort"),
        ("peer_lost", ACTIVE, F, "violation", ""),
        ("peer_lost", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        # A callback raised (a bug): the room fails with the error.
        ("crash", ACTIVE, F, "", ""),
        ("crash", TERMINAL, None, "", "_ignore"),
        # Time passes.
        ("tick", ACTIVE, F, "deadline_passed", ""),
        ("tick", [*ACTIVE, *TERMINAL], None, "", "_ignore"),
        # The scheduler lets go of the room.
        ("release", ACTIVE, F, "", "_mark_released"),
        ("release", TERMINAL, None, "", "_mark_released"),
    ]
)


@dataclass(slots=True)
class ReceiverProgress:
    """What the sender knows of one receiver of the room: the incarnation its first
    request bound, and its last accepted request."""

    nonce: int
    seq: int  # of the last accepted request
    requested_at: int  # sent_tokens of the last accepted request
    blocks: tuple[int, ...]
    allocated_tokens: int
    accepted_at: float  # when that request was accepted
    written: int = 0  # tokens written and confirmed by the transport
    in_flight: bool = False
    announced: bool = False  # told the length (or its first piece is on its way)
    owed_notice: str = ""  # "abort" or "ack", sent once no write to it is in flight

    def served(self) -> bool:
        """The last accepted request is being or has been written: too late to replace."""
        return self.in_flight or self.written > self.requested_at


class SenderRoom(Room):
    """One request on the encoder side; see the module docstring and SENDER_TABLE."""

    __slots__ = (
        "_pending_payload",
        "handed",
        "heard",
        "memory",
        "mrope_position_delta",
        "receivers",
        "required_receivers",
        "src_blocks",
        "total_tokens",
        "writes_in_flight",
    )

    TRIGGERS: ClassVar[dict[type, str]] = {
        RequestReceived: "request",
        LengthAnnounced: "announce",
        PayloadReady: "payload",
        WriteFinished: "write_done",
        AbortRequested: "abort",
        AbortReceived: "peer_abort",
        PeerLost: "peer_lost",
        MemoryGranted: "granted",
        CallbackFailed: "crash",
        Tick: "tick",
        Released: "release",
    }

    def __init__(self, room_id: int, memory: BlockPool, timeouts: Timeouts, now: float) -> None:
        super().__init__(room_id, timeouts, now)
        self.memory = memory
        self.receivers: dict[str, ReceiverProgress] = {}
        # peer -> the incarnation of it this room bound, or answered once it had failed:
        # a receiver is in a room with one incarnation, so another one is a later room's
        self.heard: dict[str, int] = {}
        self.required_receivers = 0  # learned from the first request
        self.total_tokens = 0  # T: known once announced or handed over
        self.handed = False  # the scheduler handed over the payload
        self.mrope_position_delta = 0  # with the payload: it travels in every PieceWritten
        self.src_blocks: tuple[int, ...] = ()
        self._pending_payload: PayloadReady | None = None  # queued for source blocks
        self.writes_in_flight = 0

    @property
    def finished(self) -> bool:
        """Released, terminal, and holding nothing: the runtime may forget the room."""
        return self.released and self.terminal and not self.src_blocks and not self.writes_in_flight

    def names(self, peer: str, nonce: int) -> bool:
        """A receiver incarnation this room bound (or answered, once failed)."""
        return self.heard.get(peer) == nonce

    def knows_other(self, peer: str, nonce: int) -> bool:
        """This room heard from another incarnation of ``peer``: ``nonce`` is a later
        room's (a receiver engine ends one room under an id before it makes the next,
        and its messages arrive in order)."""
        return self.heard.get(peer, nonce) != nonce

    def owed_receivers(self) -> list[str]:
        """Receivers still owed a piece (or a write's outcome): they must stay alive."""
        total = self.total_tokens
        return [
            peer
            for peer, progress in self.receivers.items()
            if progress.in_flight or not total or progress.written < total
        ]

    @property
    def waiting_for_memory(self) -> bool:
        """The payload is in, its source blocks are not: the room waits in the queue."""
        return self._pending_payload is not None

    @property
    def wakeup(self) -> float:
        """When this room next needs a Tick: only its deadline (memory comes as an event)."""
        return float("inf") if self.terminal else self.deadline

    # -- classification: what each event means in the current state ------------------
    def _classify_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._classify_request(event)
        elif isinstance(event, LengthAnnounced):
            self._classify_length(event.total_tokens, "announced")
        elif isinstance(event, PayloadReady):
            self._classify_payload(event)
        elif isinstance(event, WriteFinished):
            self._classify_write(event)
        elif isinstance(event, AbortRequested):
            self._decide(Verdict.ACT, f"aborted by scheduler: {event.reason}")
        elif isinstance(event, AbortReceived):
            known = self.receivers.get(event.peer)
            stale = "" if known is None else self._other_incarnation(event.nonce, known.nonce)
            if stale:
                self._decide(Verdict.STALE, stale)
            elif known is not None:
                self._decide(Verdict.ACT, f"aborted by receiver {event.peer}: {event.reason}")
            else:
                self._decide(
                    Verdict.STALE,
                    f"aborted by receiver {event.peer}, which has not joined: {event.reason}",
                )
        elif isinstance(event, PeerLost):
            if event.peer in self.receivers:
                self._decide(Verdict.VIOLATION, f"receiver {event.peer} lost")
            else:
                self._decide(Verdict.STALE, f"{event.peer} is not a receiver of this room")
        elif isinstance(event, Tick):
            if self.now >= self.deadline:
                waiting = " waiting for memory" if self._pending_payload is not None else ""
                self._decide(Verdict.DEADLINE, f"deadline passed in {self.state}{waiting}")
            else:
                self._decide(Verdict.STALE, "nothing due")
        elif isinstance(event, MemoryGranted):
            if self._pending_payload is not None:
                self._decide(Verdict.ACT)
            else:
                self._decide(Verdict.STALE, "blocks the room did not wait for")
        else:
            self._decide(Verdict.ACT, "released before completion")

    def _classify_request(self, event: RequestReceived) -> None:
        req = event.request
        known = self.receivers.get(event.receiver)
        bs = self.memory.block_size
        stale = "" if known is None else self._other_incarnation(req.nonce, known.nonce)
        if stale:
            self._decide(Verdict.STALE, stale)
        elif known is not None and req.seq <= known.seq:
            self._decide(Verdict.STALE, f"request {req.seq} already seen")
        elif self.required_receivers and req.required_receivers != self.required_receivers:
            self._decide(
                Verdict.VIOLATION,
                f"receiver {event.receiver} says {req.required_receivers} receivers, "
                f"room has {self.required_receivers}",
            )
        elif req.allocated_tokens != len(req.blocks) * bs or not req.blocks:
            self._decide(
                Verdict.VIOLATION,
                f"allocated_tokens={req.allocated_tokens} is not {len(req.blocks)} blocks of {bs}",
            )
        elif known is None and req.sent_tokens != 0:
            self._decide(Verdict.VIOLATION, f"resume from unknown receiver {event.receiver}")
        elif known is None and len(self.receivers) >= req.required_receivers:
            self._decide(Verdict.VIOLATION, f"more than {req.required_receivers} receivers")
        elif known is not None and req.sent_tokens == known.requested_at and known.served():
            self._decide(
                Verdict.STALE,
                f"request {req.seq} replaces request {known.seq}, which is served already",
            )
        elif (
            known is not None
            and req.sent_tokens != known.requested_at
            and (known.in_flight or req.sent_tokens != known.written)
        ):
            self._decide(
                Verdict.VIOLATION,
                f"resume at sent_tokens={req.sent_tokens} but {known.written} written",
            )
        elif self.total_tokens and req.sent_tokens >= self.total_tokens:
            self._decide(Verdict.VIOLATION, f"resume past the end ({self.total_tokens} tokens)")
        elif known is None and len(self.receivers) + 1 == req.required_receivers:
            self._decide(Verdict.LAST_RECEIVER)
        else:
            self._decide(Verdict.ACT)

    def _classify_payload(self, event: PayloadReady) -> None:
        if self.handed:
            self._decide(Verdict.STALE, "payload already handed over")
        elif event.blocks and len(event.blocks) != blocks_needed(
            event.total_tokens, self.memory.block_size
        ):
            self._decide(
                Verdict.VIOLATION,
                f"payload of {event.total_tokens} tokens handed over in "
                f"{len(event.blocks)} blocks of {self.memory.block_size}",
            )
        else:
            self._classify_length(event.total_tokens, "payload of", handing_over=True)

    def _classify_length(self, total: int, what: str, handing_over: bool = False) -> None:
        """The scheduler gives the length ``total`` (announced, or with the payload): one
        the room already knows is stale when only announced again; a different one, or
        one the pool can never hold, fails the room."""
        if total <= 0:
            self._decide(Verdict.VIOLATION, f"{what} {total} tokens")
        elif self.total_tokens and total != self.total_tokens:
            self._decide(
                Verdict.VIOLATION, f"{what} {total} tokens, but {self.total_tokens} announced"
            )
        elif self.total_tokens and not handing_over:
            self._decide(Verdict.STALE, f"{total} tokens announced already")
        elif blocks_needed(total, self.memory.block_size) > self.memory.total_blocks:
            self._decide(
                Verdict.VIOLATION,
                f"{what} {total} tokens can never fit "
                f"{self.memory.total_blocks} blocks of {self.memory.block_size}",
            )
        else:
            self._decide(Verdict.ACT)

    def _classify_write(self, event: WriteFinished) -> None:
        progress = self.receivers.get(event.receiver)
        if progress is None or not progress.in_flight or progress.requested_at != event.sent_tokens:
            self._decide(Verdict.STALE, "no such write in flight")
        elif not event.ok:
            self._decide(Verdict.VIOLATION, f"write to {event.receiver} failed: {event.reason}")
        else:
            written = event.sent_tokens + self._piece_tokens(progress)
            others_done = all(
                p.written == self.total_tokens and not p.in_flight
                for peer, p in self.receivers.items()
                if peer != event.receiver
            )
            if written < self.total_tokens:
                self._decide(Verdict.MORE_OWED)
            elif others_done and len(self.receivers) == self.required_receivers:
                self._decide(Verdict.ALL_DONE)
            else:
                self._decide(Verdict.ACT)

    # -- callbacks -------------------------------------------------------------------
    def _accept_request(self, event: RequestReceived) -> None:
        """A receiver joins (binding its incarnation), replaces its request, or resumes."""
        req = event.request
        progress = self.receivers.get(event.receiver)
        # A request that waited for the room is as old as its arrival: the receiver's
        # quarantine counts from when it asked (see _start_writes).
        accepted_at = self.now if event.arrived_at is None else min(self.now, event.arrived_at)
        if progress is None:
            self.heard[event.receiver] = req.nonce
            self.required_receivers = req.required_receivers
            progress = self.receivers[event.receiver] = ReceiverProgress(
                req.nonce, req.seq, req.sent_tokens, req.blocks, req.allocated_tokens, accepted_at
            )
        else:
            if req.sent_tokens != progress.requested_at:
                self.resumes += 1
            progress.seq = req.seq
            progress.requested_at = req.sent_tokens
            progress.blocks = req.blocks
            progress.allocated_tokens = req.allocated_tokens
            progress.accepted_at = accepted_at
        self._progressed()
        self._serve()

    def _learn_length(self, event: LengthAnnounced) -> None:
        self.total_tokens = event.total_tokens
        self._serve()

    def _take_payload(self, event: PayloadReady) -> None:
        self.handed = True
        self.total_tokens = event.total_tokens
        self._pending_payload = event
        self._progressed()
        if event.blocks:  # stored by the scheduler already
            self._store_payload(MemoryGranted(event.blocks))
            return
        total = event.total_tokens
        blocks = self.memory.take(total, total)
        if blocks is None:
            self._actions.append(WaitForMemory(total, total))
            self._serve()  # nothing to write yet: the receivers may size for it meanwhile
        else:
            self._store_payload(MemoryGranted(tuple(blocks)))

    def _store_payload(self, event: MemoryGranted) -> None:
        pending = self._pending_payload
        assert pending is not None
        self._pending_payload = None
        self.mrope_position_delta = pending.mrope_position_delta
        self.src_blocks = event.blocks
        if not pending.blocks:
            self._actions.append(StorePayload(self.src_blocks))
        self._serve()

    def _serve(self) -> None:
        """Write what can be written, then announce the length to receivers that are
        not getting a piece now (a piece tells its receiver the length)."""
        self._start_writes()
        if not self.total_tokens:
            return
        for peer, progress in self.receivers.items():
            if not (progress.announced or progress.in_flight or progress.written):
                progress.announced = True
                announce = Announce(self.room_id, progress.nonce, self.total_tokens)
                self._actions.append(SendMessage(peer, announce))

    def _refuse_payload(self, event: PayloadReady) -> None:
        self._free_payload_blocks(event)
        self._ignore(event)

    def _free_payload_blocks(self, event: PayloadReady) -> None:
        if event.blocks:
            self.memory.free(event.blocks)

    def _return_grant(self, event: MemoryGranted) -> None:
        self.memory.free(event.blocks)
        self._ignore(event)

    def _start_writes(self) -> None:
        """Once the payload is stored, serve each receiver whose latest request has no
        piece yet, whether or not the room's other receivers have joined: a receiver's
        blocks are then never held waiting on another receiver's memory.

        A request that waited ``progress_s`` (for the payload) is never served: its
        receiver has given up on it, and may free the blocks it names
        ``write_grace_s`` after that; a write started later could land in them."""
        if not self.src_blocks:
            return
        expired = self.now - self.timeouts.progress_s
        for peer, progress in self.receivers.items():
            if (
                not progress.in_flight
                and progress.written == progress.requested_at
                and progress.accepted_at > expired
            ):
                self._write(peer, progress)

    def _write(self, peer: str, progress: ReceiverProgress) -> None:
        bs = self.memory.block_size
        start = progress.requested_at
        tokens = self._piece_tokens(progress)
        first = start // bs
        nblocks = blocks_needed(tokens, bs)
        progress.in_flight = True
        self.writes_in_flight += 1
        self._actions.append(
            WritePiece(
                receiver=peer,
                sent_tokens=start,
                tokens=tokens,
                src_blocks=self.src_blocks[first : first + nblocks],
                dst_blocks=progress.blocks[:nblocks],
            )
        )

    def _piece_tokens(self, progress: ReceiverProgress) -> int:
        return min(self.total_tokens - progress.requested_at, progress.allocated_tokens)

    def _report_piece(self, event: WriteFinished) -> None:
        progress = self.receivers[event.receiver]
        tokens = self._piece_tokens(progress)
        self._settle_write(event)
        progress.written = event.sent_tokens + tokens
        self._progressed()
        written = PieceWritten(
            self.room_id,
            progress.nonce,
            progress.seq,
            event.sent_tokens,
            tokens,
            self.total_tokens,
            self.mrope_position_delta,
        )
        self._actions.append(SendMessage(event.receiver, written))

    def _settle_write(self, event: WriteFinished) -> None:
        """A write is over: send what the receiver is owed, free memory once idle."""
        progress = self.receivers[event.receiver]
        progress.in_flight = False
        self.writes_in_flight -= 1
        if progress.owed_notice:
            self._notify(event.receiver, progress.owed_notice)
        self._free_if_idle()

    def _free_if_idle(self) -> None:
        if self.src_blocks and not self.writes_in_flight and self.terminal:
            self.memory.free(self.src_blocks)
            self.src_blocks = ()

    def _notify(self, peer: str, notice: str, nonce: int | None = None) -> None:
        """Send abort or ack to ``peer``'s incarnation ``nonce`` (None: the one bound)
        now, or, for the bound one, once its write in flight is over."""
        progress = self.receivers.get(peer)
        bound = progress is not None and nonce in (None, progress.nonce)
        if progress is not None and bound:
            nonce = progress.nonce
            if progress.in_flight:
                progress.owed_notice = notice
                return
            progress.owed_notice = ""
        assert nonce is not None, "an unbound incarnation is named by its message"
        message = (
            AbortAck(self.room_id, nonce)
            if notice == "ack"
            else Abort(self.room_id, nonce, self.reason)
        )
        self._actions.append(SendMessage(peer, message))

    def _acknowledge_abort(self, event: AbortReceived) -> None:
        self.heard.setdefault(event.peer, event.nonce)
        self._notify(event.peer, "ack", event.nonce)

    def _answer_late_request(self, event: RequestReceived) -> None:
        """A receiver incarnation that joins a failed room learns at once that it is over."""
        known = self.receivers.get(event.receiver)
        if known is not None and known.nonce == event.request.nonce:
            self._ignore(event)  # it was told already, or will be once its write is over
        else:
            self.heard.setdefault(event.receiver, event.request.nonce)
            self._notify(event.receiver, "abort", event.request.nonce)

    def _mark_released(self, _event: Event) -> None:
        self.released = True

    def _enter_failed(self, event: Event) -> None:
        self._record_failure()
        if self._pending_payload is not None:
            self._actions.append(StopWaiting())
            self._pending_payload = None
        aborter = event.peer if isinstance(event, AbortReceived) else None
        for peer in self.receivers:
            self._notify(peer, "ack" if peer == aborter else "abort")
        if isinstance(event, AbortReceived) and event.peer not in self.receivers:
            self.heard.setdefault(event.peer, event.nonce)
            self._notify(event.peer, "ack", event.nonce)
        self._free_if_idle()

    def _enter_success(self, _event: Event) -> None:
        self._free_if_idle()


SENDER_MACHINE = build_machine(
    "sender", SENDER_TABLE, {FAILED: "_enter_failed", SUCCESS: "_enter_success"}
)

SenderRoom.bind(SENDER_MACHINE)
