"""Scheduler loops shaped like SGLang's disaggregation queues, on ``embxfer.adapter``.

The encoder side follows SGLang's prefill: a bootstrap queue (each request's sender
polled until every receiver has joined: WaitingForInput), then blocks taken from the
manager's memory (none: the request stays queued), the embedding written into them,
``init`` and ``send``, and an in-flight queue polled until Success or Failed. The
language side follows SGLang's decode: a prealloc queue (a receiver per rank, polled
until registered), then the first piece's blocks taken on every rank and handed over
with ``send_metadata``, and a transfer queue decided by the MIN of the ranks' polls.
A request longer than what was handed over resumes inside embxfer. A cancelled
request is aborted and cleared wherever it is.

``python -m examples.sglang_schedulers`` runs both in one process (engines on their own
threads); ``run(..., threaded=False)`` pumps them on a virtual clock, as the tests do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embxfer import EmbeddingPayload, KVPoll, TransferFailed
from embxfer.adapter import EmbeddingKVManager, EmbeddingKVReceiver, EmbeddingKVSender
from embxfer.sglang_interface import SGLANG_INSTALLED, DisaggregationMode
from embxfer.tools.workload import payload_for
from examples import run_schedulers
from examples.language_scheduler import LanguageRequest
from examples.run_schedulers import SEED, drive, make_engines

LOG = logging.getLogger("examples.sglang")

Request = LanguageRequest[EmbeddingKVReceiver]  # a receiver per rank


def _indices(blocks: Sequence[int]) -> np.ndarray[Any, np.dtype[np.int32]]:
    """Block indices as SGLang passes KV indices."""
    return np.asarray(blocks, dtype=np.int32)


def _reason(handle: EmbeddingKVSender | EmbeddingKVReceiver) -> str:
    try:
        handle.failure_exception()
    except TransferFailed as failure:
        return failure.reason
    return "failed"  # pragma: no cover - failure_exception always raises


@dataclass
class EncodeJob:
    """A request on the encoder: its sender and its length (known from the images)."""

    room_id: int
    num_tokens: int
    sender: EmbeddingKVSender


class EncoderScheduler:
    """The encoder's loop: bootstrap queue, encode into blocks, send, in-flight queue."""

    def __init__(
        self, mgr: EmbeddingKVManager, encode: Callable[[int, int], EmbeddingPayload]
    ) -> None:
        self.mgr = mgr
        self.encode = encode
        self.bootstrap_queue: list[EncodeJob] = []
        self.inflight_queue: list[EncodeJob] = []
        self.finished: dict[int, str] = {}  # room -> "" (Success) or the failure reason
        self.metrics: dict[int, dict[str, Any]] = {}  # room -> get_transfer_metric()

    def add(self, room_id: int, num_tokens: int) -> None:
        sender = EmbeddingKVSender(self.mgr, bootstrap_addr="", bootstrap_room=room_id)
        self.bootstrap_queue.append(EncodeJob(room_id, num_tokens, sender))

    @property
    def idle(self) -> bool:
        return not self.bootstrap_queue and not self.inflight_queue

    def step(self) -> None:
        waiting = []
        for job in self.bootstrap_queue:
            state = job.sender.poll()
            if state == KVPoll.Failed:
                self._finish(job, _reason(job.sender))
            elif state == KVPoll.Bootstrapping or not self._encode(job):
                waiting.append(job)  # receivers not all there, or no memory yet
        self.bootstrap_queue = waiting
        inflight = []
        for job in self.inflight_queue:
            state = job.sender.poll()
            if state == KVPoll.Success:
                self._finish(job, "")
            elif state == KVPoll.Failed:
                self._finish(job, _reason(job.sender))
            else:
                inflight.append(job)
        self.inflight_queue = inflight

    def _encode(self, job: EncodeJob) -> bool:
        """Run the encoder into fresh blocks and send them; False if memory is short."""
        blocks = self.mgr.memory.take(job.num_tokens, job.num_tokens)
        if blocks is None:
            return False
        self.mgr.buffers.store(blocks, self.encode(job.room_id, job.num_tokens))
        job.sender.init(len(blocks), aux_index=blocks[0])
        job.sender.send(_indices(blocks), num_kv_tokens=job.num_tokens)  # the room's now
        self.inflight_queue.append(job)
        return True

    def _finish(self, job: EncodeJob, reason: str) -> None:
        if reason:
            LOG.warning("room=%d send failed: %s", job.room_id, reason)
        self.finished[job.room_id] = reason
        self.metrics[job.room_id] = asdict(job.sender.get_transfer_metric())
        job.sender.clear()  # the room frees its blocks once no write reads them


class LanguageScheduler:
    """A language server's loop over its ranks: prealloc queue, transfer queue."""

    def __init__(
        self,
        ranks: Sequence[EmbeddingKVManager],
        encoder_addr: str,
        prefill: Callable[[int, EmbeddingPayload], None],
        default_tokens: int,
    ) -> None:
        self.ranks = list(ranks)
        self.encoder_addr = encoder_addr
        self.prefill = prefill
        self.default_tokens = default_tokens  # the first piece, without a hint
        self.prealloc_queue: list[Request] = []
        self.transfer_queue: list[Request] = []
        self.finished: dict[int, str] = {}  # room -> "" (Success) or the failure reason
        self.resumes = 0

    def add(self, request: Request) -> None:
        request.handles = [
            EmbeddingKVReceiver(mgr, self.encoder_addr, request.room_id) for mgr in self.ranks
        ]
        for receiver in request.handles:
            receiver.init(prefill_dp_rank=0)
        self.prealloc_queue.append(request)

    def cancel(self, room_id: int) -> None:
        """The client went away: abort the request wherever it is."""
        for queue in (self.prealloc_queue, self.transfer_queue):
            for request in [r for r in queue if r.room_id == room_id]:
                queue.remove(request)
                self._end(request, "cancelled")

    @property
    def idle(self) -> bool:
        return not self.prealloc_queue and not self.transfer_queue

    def step(self) -> None:
        waiting = []
        for request in self.prealloc_queue:
            state = request.poll()
            if state == KVPoll.Failed:
                self._end(request, self._failure(request))
            elif state == KVPoll.Bootstrapping or not self._preallocate(request):
                waiting.append(request)
            else:
                self.transfer_queue.append(request)
        self.prealloc_queue = waiting
        in_flight = []
        for request in self.transfer_queue:
            state = request.poll()
            if state == KVPoll.Success:
                self.prefill(request.room_id, request.handles[0].result())
                self.resumes += sum(receiver.resumes for receiver in request.handles)
                self._end(request, "")
            elif state == KVPoll.Failed:
                self._end(request, self._failure(request))
            else:
                in_flight.append(request)
        self.transfer_queue = in_flight

    def _preallocate(self, request: Request) -> bool:
        """The first piece's blocks on every rank, or none at all (then it waits)."""
        tokens = request.expected_tokens or self.default_tokens
        taken: list[tuple[EmbeddingKVManager, list[int]]] = []
        for mgr in self.ranks:
            blocks = mgr.memory.take(tokens, tokens)
            if blocks is None:
                for owner, held in taken:
                    owner.memory.free(held)  # never handed over: still the scheduler's
                return False
            taken.append((mgr, blocks))
        for receiver, (_, blocks) in zip(request.handles, taken, strict=True):
            receiver.send_metadata(_indices(blocks), aux_index=blocks[0])
        return True

    def _failure(self, request: Request) -> str:
        failed = next(r for r in request.handles if r.poll() == KVPoll.Failed)
        return _reason(failed)

    def _end(self, request: Request, reason: str) -> None:
        """Abort (idempotent on ended rooms) on failure, then clear every rank."""
        if reason:
            LOG.warning("room=%d receive failed: %s", request.room_id, reason)
        self.finished[request.room_id] = reason
        for receiver in request.handles:
            if reason:
                receiver.abort()
            receiver.clear()  # the rooms free their blocks: results are used by now


@dataclass
class Report:
    """What happened to every request, on both sides."""

    sglang_bases: bool
    encoder: dict[int, str] = field(default_factory=dict)  # room -> "" or failure reason
    language: dict[int, str] = field(default_factory=dict)
    verified: dict[int, bool] = field(default_factory=dict)  # room -> bytes as encoded
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    resumes: int = 0
    leaked_blocks: int = 0


def run(
    lengths: Sequence[int],
    ranks: int = 1,
    cancel: Collection[int] = (),
    threaded: bool = True,
    max_steps: int = 100_000,
    **config: Any,
) -> Report:
    """Requests of ``lengths`` tokens (room ids 1, 2, ...) through the adapter; rooms in
    ``cancel`` are cancelled by the language side as soon as they are added."""
    engines = make_engines(ranks, threaded, **config)
    encoder_mgr = EmbeddingKVManager(None, DisaggregationMode.PREFILL, None, engine=engines.sender)
    rank_mgrs = [
        EmbeddingKVManager(
            None, DisaggregationMode.DECODE, None, engine=engine, receivers_per_room=ranks
        )
        for engine in engines.receivers
    ]
    layout = engines.sender.layout
    report = Report(sglang_bases=SGLANG_INSTALLED)

    def encode(room_id: int, num_tokens: int) -> EmbeddingPayload:  # the vision tower
        return payload_for(room_id, num_tokens, layout, SEED)

    def prefill(room_id: int, embedding: EmbeddingPayload) -> None:
        expected = payload_for(room_id, embedding.num_tokens, layout, SEED)
        report.verified[room_id] = embedding.equals(expected)

    encoder = EncoderScheduler(encoder_mgr, encode)
    language = LanguageScheduler(
        rank_mgrs, encoder_mgr.bootstrap_addr, prefill, engines.sender.config.default_alloc_tokens
    )
    for room_id, tokens in enumerate(lengths, start=1):
        language.add(Request(room_id))
        if room_id in cancel:
            language.cancel(room_id)
        encoder.add(room_id, tokens)
    drive(engines, [encoder, language], max_steps)
    report.encoder, report.language = encoder.finished, language.finished
    report.metrics = encoder.metrics
    report.resumes = language.resumes
    report.leaked_blocks = engines.leaked_blocks
    return report


def main() -> int:
    return run_schedulers.main(run, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
