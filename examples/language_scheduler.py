"""A language-side scheduler loop: prealloc queue, transfer queue, poll, take the
result, release.

One scheduler drives a request on every tensor-parallel rank (one receiver engine per
rank, ``required_receivers`` = ranks) and decides by the MIN of the ranks' polls, as
SGLang's all-reduce does: Failed (0) anywhere fails the request, and it is Success only
when every rank has its embedding. Requests wait in the prealloc queue while their rooms
bootstrap; embxfer allocates by itself (and resumes when the default was too small), so
the scheduler only moves requests along and frees nothing but through ``release``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from embxfer import EmbeddingPayload, KVPoll, ReceiverEngine, ReceiverHandle, TransferFailed

LOG = logging.getLogger("examples.language")


class Polled(Protocol):
    """A room seen from one rank: a handle, or the SGLang adapter's receiver."""

    def poll(self) -> KVPoll: ...


HandleT = TypeVar("HandleT", bound=Polled)


@dataclass
class LanguageRequest(Generic[HandleT]):
    """A request waiting for its embedding on every rank (one handle per rank)."""

    room_id: int
    handles: list[HandleT] = field(default_factory=list)
    expected_tokens: int | None = None  # a size hint, when the scheduler knows it

    def poll(self) -> KVPoll:
        """The MIN over ranks (SGLang all-reduces exactly this across its TP group)."""
        return min(handle.poll() for handle in self.handles)


class LanguageScheduler:
    """Moves requests from the prealloc queue to the transfer queue to prefill."""

    def __init__(
        self,
        ranks: Sequence[ReceiverEngine],
        encoder_address: str,
        prefill: Callable[[int, EmbeddingPayload], None],
    ) -> None:
        self.ranks = list(ranks)
        self.encoder_address = encoder_address
        self.prefill = prefill
        self.prealloc_queue: list[LanguageRequest[ReceiverHandle]] = []
        self.transfer_queue: list[LanguageRequest[ReceiverHandle]] = []
        self.finished: dict[int, str] = {}  # room -> "" (Success) or the failure reason
        self.resumes = 0

    def add(self, request: LanguageRequest[ReceiverHandle]) -> None:
        request.handles = [
            rank.create_room(
                request.room_id, self.encoder_address, len(self.ranks), request.expected_tokens
            )
            for rank in self.ranks
        ]
        self.prealloc_queue.append(request)

    @property
    def idle(self) -> bool:
        return not self.prealloc_queue and not self.transfer_queue

    def step(self) -> None:
        """One scheduler iteration over both queues."""
        still_bootstrapping = []
        for request in self.prealloc_queue:
            state = request.poll()
            if state is KVPoll.Failed:
                self._fail(request)
            elif state is KVPoll.Bootstrapping:
                still_bootstrapping.append(request)
            else:  # WaitingForInput or later: registered, memory allocated, piece asked for
                self.transfer_queue.append(request)
        self.prealloc_queue = still_bootstrapping
        in_flight = []
        for request in self.transfer_queue:
            state = request.poll()
            if state is KVPoll.Success:
                self._take(request)
            elif state is KVPoll.Failed:
                self._fail(request)
            else:
                in_flight.append(request)
        self.transfer_queue = in_flight

    def _take(self, request: LanguageRequest[ReceiverHandle]) -> None:
        """Every rank has the embedding: prefill with it, then give the blocks back."""
        self.prefill(request.room_id, request.handles[0].result())
        self.resumes += sum(handle.resumes for handle in request.handles)
        self.finished[request.room_id] = ""
        for handle in request.handles:
            handle.release()  # results are views into the blocks: only after prefill

    def _fail(self, request: LanguageRequest[ReceiverHandle]) -> None:
        """One rank failed: abort the others (idempotent on ended rooms) and release all."""
        failed = next(h for h in request.handles if h.poll() is KVPoll.Failed)
        try:
            failed.failure_exception()
        except TransferFailed as failure:
            LOG.warning("room=%d receive failed: %s", request.room_id, failure.reason)
            self.finished[request.room_id] = failure.reason
        for handle in request.handles:
            handle.abort()
            handle.release()
