"""Mutants: deliberately broken machines the verification tools must catch.

Each mutant patches one or more methods of the room machines (or of ``FairPool``) for the
duration of a ``with mutant(name):`` block; the Hypothesis machines and the explorer
must find a violation in each. The breakers replace private methods on purpose: a mutant
is the real machine with one rule undone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

from embxfer.buffers.fair_pool import FairPool
from embxfer.fsm.events import Event, PieceArrived, RequestReceived
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import Room, Verdict
from embxfer.fsm.sender import ReceiverProgress, SenderRoom


def _dedup_on_blocks(original: Callable[..., None]) -> Callable[..., None]:
    """The seeds' wrong dedup rule: a request naming the blocks of the last one is taken
    for a duplicate, though the allocator hands the same blocks back after a free."""

    def classify(room: SenderRoom, event: RequestReceived) -> None:
        known = room.receivers.get(event.receiver)
        if known is not None and event.request.blocks == known.blocks:
            room._decide(Verdict.STALE, "same blocks as the last request")
        else:
            original(room, event)

    return classify


def _no_resume_request(_original: Callable[..., None]) -> Callable[..., None]:
    """The receiver takes a short piece and never asks for the rest."""

    def take(room: ReceiverRoom, event: PieceArrived) -> None:
        room._take_piece(event)
        room.resumes += 1

    return take


def _no_resume_write(original: Callable[..., None]) -> Callable[..., None]:
    """The seeds' bug #1: a resume updates the room but enqueues no write."""

    def accept(room: SenderRoom, event: RequestReceived) -> None:
        progress = room.receivers.get(event.receiver)
        if progress is None:
            original(room, event)
            return
        progress.seq = event.request.seq
        progress.requested_at = event.request.sent_tokens
        progress.blocks = event.request.blocks
        progress.allocated_tokens = event.request.allocated_tokens
        progress.accepted_at = room.now
        room.resumes += 1
        room._progressed()

    return accept


def _serve_stale_requests(original: Callable[..., None]) -> Callable[..., None]:
    """The sender serves a request however long it waited (no request ever expires)."""

    def start_writes(room: SenderRoom) -> None:
        for progress in room.receivers.values():
            progress.accepted_at = room.now
        original(room)

    return start_writes


def _quarantine_from_failure(original: Callable[..., None]) -> Callable[..., None]:
    """The receiver counts its grace period from its failure, not from the last moment a
    write for its request may start."""

    def enter_failed(room: ReceiverRoom, event: Event) -> None:
        original(room, event)
        if room.quarantine:
            room.quarantine_until = room.now + room.timeouts.write_grace_s

    return enter_failed


def _lifo_ready(_original: Callable[..., Any]) -> Callable[..., Any]:
    """The memory queue serves the newest waiter first (a stack, not a queue)."""

    def ready(pool: FairPool[int]) -> int | None:
        queue = pool.queue()
        if not queue:
            return None
        waiter, ask = queue[-1]
        return waiter if pool.free_blocks >= ask.floor else None

    return ready


def _grant_any(original: Callable[..., Any]) -> Callable[..., Any]:
    """Grant ``ready``'s choice wherever it stands in the queue."""

    def grant(pool: FairPool[int], waiter: int) -> list[int]:
        queue = pool.queue()
        pool.restore_queue(
            [e for e in queue if e[0] == waiter] + [e for e in queue if e[0] != waiter]
        )
        blocks: list[int] = original(pool, waiter)
        return blocks

    return grant


def _hold_while_waiting(_original: Callable[..., Any]) -> Callable[..., Any]:
    """The receiver waits for memory keeping the pieces it holds (it never spills first)."""

    def take(room: ReceiverRoom, wanted: int, floor: int) -> list[int] | None:
        return room.memory.take(wanted, wanted) or room.memory.take(wanted, floor)

    return take


def _writes_wait_for_every_receiver(original: Callable[..., None]) -> Callable[..., None]:
    """The sender writes nothing until every receiver of the room has joined."""

    def start_writes(room: SenderRoom) -> None:
        if room.state != "Bootstrapping":
            original(room)

    return start_writes


def _ignore_the_nonce(_original: Callable[..., str]) -> Callable[..., str]:
    """Rooms take a message of another incarnation of their room id (a room that used
    the id before) for their own."""

    def other_incarnation(_room: Room, _nonce: int, _expected: int) -> str:
        return ""

    return other_incarnation


def _replace_a_served_request(_original: Callable[..., bool]) -> Callable[..., bool]:
    """The sender applies an announce after the first piece was requested from its
    transport: it takes the receiver's replacement (its request for the announced
    length) while the write of the request it replaces is in flight."""

    def served(progress: ReceiverProgress) -> bool:
        return progress.written > progress.requested_at

    return served


Breaker: TypeAlias = Callable[[Callable[..., Any]], Callable[..., Any]]
MUTANTS: dict[str, tuple[tuple[type, str, Breaker], ...]] = {
    "dedup-on-blocks": ((SenderRoom, "_classify_request", _dedup_on_blocks),),
    "no-resume-request": ((ReceiverRoom, "_take_piece_and_resume", _no_resume_request),),
    "no-resume-write": ((SenderRoom, "_accept_request", _no_resume_write),),
    # Both halves of the fix for the use-after-free the explorer found, undone.
    "late-write": (
        (SenderRoom, "_start_writes", _serve_stale_requests),
        (ReceiverRoom, "_enter_failed", _quarantine_from_failure),
    ),
    # Memory pressure: the progress and fairness rules, each undone.
    "lifo-queue": ((FairPool, "ready", _lifo_ready), (FairPool, "grant", _grant_any)),
    "hold-while-waiting": ((ReceiverRoom, "_take", _hold_while_waiting),),
    "writes-wait-for-all": ((SenderRoom, "_start_writes", _writes_wait_for_every_receiver),),
    # Protocol v2: incarnations and the announce.
    "ignore-nonce": ((Room, "_other_incarnation", _ignore_the_nonce),),
    "replace-after-write": ((ReceiverProgress, "served", _replace_a_served_request),),
}
"""name -> the (class, method, breaker) patches that make the broken machines; a breaker
makes the broken method from the original."""


@contextmanager
def mutant(name: str | None) -> Iterator[None]:
    """Run the body with the machines broken as ``MUTANTS[name]`` says (None: intact).
    The machines look callbacks up by name on each event, so patching the class works."""
    patches = MUTANTS[name] if name is not None else ()
    originals = [(cls, method, cls.__dict__[method]) for cls, method, _ in patches]
    for (cls, method, original), (_, _, breaker) in zip(originals, patches, strict=True):
        setattr(cls, method, breaker(original))
    try:
        yield
    finally:
        for cls, method, original in originals:
            setattr(cls, method, original)
