"""embxfer behind SGLang's connector interface: ``BaseKVManager``, ``BaseKVSender``
and ``BaseKVReceiver`` of the released sglang (0.5.23), subclassed when sglang is
installed (``embxfer.sglang_interface``), with the embedding meaning of each call.

A request's embedding lives in blocks of an engine's buffers (``EngineConfig``'s
layout: embeddings, and fill ids with M-RoPE positions, per token; one aux record per
block in host memory, holding the length and M-RoPE delta, which travel to the language
side in the control messages). The schedulers allocate those blocks themselves, from the
manager's ``memory`` (the engine's fair pool: ``take`` returns None while others
wait, and the scheduler keeps the request queued, SGLang's own back-pressure), and
hand them to the room; from then on the room owns them and gives them back when it
ends. When the language side's blocks are too few, the room allocates the rest from
the same memory and resumes: beneath this interface, which never sees it.

==========================================  ============================================
SGLang (``sglang.srt.disaggregation``)      embxfer
==========================================  ============================================
``KVManager(args, mode, server_args,        one engine per process: ``SenderEngine``
is_mla_backend)``                           for ``prefill`` (the encoder side),
                                            ``ReceiverEngine`` for ``decode`` (the
                                            language side); built from
                                            ``EngineConfig.from_env`` and
                                            ``args.ib_device`` (RDMA) unless an
                                            ``engine`` is passed; ``is_mla_backend``
                                            means nothing for embeddings
``mgr.register_to_bootstrap()``             nothing to register: a room's bootstrap
                                            address is the encoder engine's control
                                            address (``mgr.bootstrap_addr``), and
                                            receivers register with it themselves
``KVSender(mgr, bootstrap_addr, room,       ``engine.create_room(room)``;
req_has_disagg_prefill_dp_rank)``           ``bootstrap_addr`` and the dp-rank flag
                                            are not needed: receivers join the room
``sender.init(num_kv_indices, aux_index)``  how many blocks the embedding spans;
                                            ``aux_index`` must be None or the first
                                            block (aux lives there)
``sender.send(kv_indices, state_indices,    ``handle.send_blocks``: the blocks the
num_kv_tokens)``                            scheduler took from ``mgr.memory`` and
                                            wrote (``mgr.buffers.store``), and the
                                            length (``num_kv_tokens``, else the aux
                                            record's) and the aux record's M-RoPE
                                            delta; no copy. Once only; no state
``sender.get_transfer_metric()``            ``KVTransferMetric``: ``transfer_latency_s``
                                            from ``send`` to the poll that saw Success
                                            (as SGLang's own senders measure it),
                                            ``transfer_total_bytes`` written to every
                                            receiver; ``alloc_latency_s`` None (the
                                            encoder's blocks are its scheduler's, the
                                            resumes' the receivers')
``KVReceiver(mgr, bootstrap_addr, room)``   ``engine.create_room(room, bootstrap_addr,
                                            mgr.receivers_per_room,
                                            scheduler_allocates=True)``: bootstraps at
                                            once (registers with the encoder)
``receiver.init(prefill_dp_rank)``          nothing to resolve: one encoder engine per
                                            bootstrap address; the rank is kept
``receiver.send_metadata(kv_indices,        ``handle.provide_blocks``: the first
aux_index, state_indices,                   piece's blocks, taken from ``mgr.memory``
decode_prefix_len, destination)``           (at most the embedding's length; fewer
                                            means a resume); ``aux_index`` None or the
                                            first block; no state, no prefix, DEVICE
``poll()`` (both)                           the room's ``KVPoll`` (same values:
                                            Failed 0 ... Success 4); non-blocking,
                                            only forward, terminal states latch
``failure_exception()`` (both)              raises ``TransferFailed`` with the reason
``clear()`` (both)                          ``handle.release()``: the room gives its
                                            blocks back (after a failure, once no write
                                            can land); idempotent
``abort()`` (both)                          ``handle.abort()``: the room fails on both
                                            sides with a reason; idempotent, never
                                            revives a room
(none)                                      ``receiver.result()``: the embedding, once
                                            Success (views into the blocks until
                                            ``clear``)
==========================================  ============================================

Unlike SGLang's KV pages, blocks handed to ``send`` or ``send_metadata`` are not
freed by the scheduler: ``clear`` gives them back. A call that raises hands nothing
over.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, NoReturn, TypeVar

import numpy as np
import numpy.typing as npt

from embxfer.buffers.fair_pool import FairPool
from embxfer.buffers.metadata import MetadataBuffers
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.config import EngineConfig
from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.sender import SenderEngine
from embxfer.sglang_interface import (
    BaseKVManager,
    BaseKVReceiver,
    BaseKVSender,
    KVTransferDestination,
    KVTransferMetric,
)

EngineT = TypeVar("EngineT", SenderEngine, ReceiverEngine)


class EmbeddingKVManager(BaseKVManager):
    """One embxfer engine for this process: the encoder's (``prefill`` mode) or a
    language rank's (``decode``)."""

    def __init__(
        self,
        args: Any,
        disaggregation_mode: Any,
        server_args: Any,
        is_mla_backend: bool | None = False,
        *,
        engine: SenderEngine | ReceiverEngine | None = None,
        receivers_per_room: int | None = None,
    ) -> None:
        """``args`` (SGLang's ``KVArgs``) is read for ``ib_device`` only; ``server_args``
        for ``host`` (this engine's address) and ``tp_size``. ``engine``: an engine the
        caller built and runs (tests, in-process use); otherwise one is built from the
        environment and started, and ``teardown`` closes it. ``receivers_per_room``:
        language ranks that each receive every embedding (default: ``tp_size``)."""
        mode = getattr(disaggregation_mode, "value", disaggregation_mode)
        if mode not in ("prefill", "decode"):
            raise ValueError(f"embxfer serves the prefill and decode modes, not {mode!r}")
        self.is_sender = mode == "prefill"
        self.receivers_per_room = receivers_per_room or getattr(server_args, "tp_size", 1) or 1
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else self._build(args, server_args)
        if isinstance(self.engine, SenderEngine) != self.is_sender:
            raise TypeError(
                f"a {mode} manager needs a {'Sender' if self.is_sender else 'Receiver'}Engine"
            )
        if self._owns_engine:
            self.engine.start()

    def _build(self, args: Any, server_args: Any) -> SenderEngine | ReceiverEngine:
        ib_device = getattr(args, "ib_device", None) or ""
        network = NetworkConfig(
            host=getattr(server_args, "host", None) or "127.0.0.1",
            data_protocol="rdma" if ib_device else "tcp",
            data_device=ib_device,
        )
        if self.is_sender:
            return remote_sender(EngineConfig.from_env(role="sender"), network)
        return remote_receiver(EngineConfig.from_env(role="receiver"), network)

    @property
    def bootstrap_addr(self) -> str:
        """What a receiver is given as ``bootstrap_addr``: this engine's control address."""
        return self.engine.address

    @property
    def memory(self) -> FairPool[int]:
        """Where schedulers take blocks (``take(tokens, floor_tokens)``) and, for
        blocks never handed to a room, give them back (``free``)."""
        return self.engine.memory

    @property
    def buffers(self) -> MetadataBuffers:
        """The engine's buffers: the encoder writes an embedding into its blocks here."""
        return self.engine.buffers

    def register_to_bootstrap(self) -> None:
        """Nothing to register: receivers find the encoder by ``bootstrap_addr``."""

    def teardown(self) -> None:
        """Close the engine this manager built (one passed in is its owner's)."""
        if self._owns_engine:
            self.engine.close()

    def engine_as(self, kind: type[EngineT]) -> EngineT:
        """The engine, which must be of ``kind`` (a sender needs a prefill manager)."""
        if not isinstance(self.engine, kind):
            raise TypeError(
                f"this is a {type(self.engine).__name__}'s manager, not {kind.__name__}'s"
            )
        return self.engine


def _blocks(kv_indices: Iterable[int], aux_index: int | None) -> tuple[int, ...]:
    """The block indices as ints, checked where SGLang would pass its own metadata."""
    blocks = tuple(int(index) for index in kv_indices)
    if not blocks:
        raise ValueError("no blocks handed over")
    if aux_index is not None and aux_index != blocks[0]:
        raise ValueError(
            f"aux_index {aux_index}: the aux record is in the first block, {blocks[0]}"
        )
    return blocks


HandleT = TypeVar("HandleT", SenderHandle, ReceiverHandle)


class _RoomCalls(Generic[HandleT]):
    """The calls both sides answer from their room handle alone."""

    _handle: HandleT

    def poll(self) -> KVPoll:
        return self._handle.poll()

    def failure_exception(self) -> NoReturn:
        self._handle.failure_exception()

    def clear(self) -> None:
        self._handle.release()

    def abort(self) -> None:
        self._handle.abort()


class EmbeddingKVSender(_RoomCalls[SenderHandle], BaseKVSender):
    """One request's embedding on the encoder."""

    def __init__(
        self,
        mgr: EmbeddingKVManager,
        bootstrap_addr: str,
        bootstrap_room: int,
        req_has_disagg_prefill_dp_rank: bool = False,
    ) -> None:
        self._engine = mgr.engine_as(SenderEngine)
        self._handle = self._engine.create_room(bootstrap_room)
        self._num_blocks: int | None = None
        self._aux_index: int | None = None
        self._sent_at: float | None = None
        self._latency: float | None = None

    def init(self, num_kv_indices: int, aux_index: int | None = None) -> None:
        """How many blocks ``send`` will hand over; the aux record's block."""
        self._num_blocks = num_kv_indices
        self._aux_index = aux_index

    def send(
        self,
        kv_indices: npt.NDArray[np.int32],
        state_indices: list[Any] | None = None,
        num_kv_tokens: int | None = None,
    ) -> None:
        """Hand over the embedding the scheduler wrote into ``kv_indices``."""
        if self._sent_at is not None:
            raise RuntimeError(f"room {self._handle.room_id}: the embedding was sent already")
        if state_indices:
            raise ValueError("an embedding has no state to send")
        blocks = _blocks(kv_indices, self._aux_index)
        if self._num_blocks is not None and len(blocks) != self._num_blocks:
            raise ValueError(f"init said {self._num_blocks} blocks, send got {len(blocks)}")
        tokens, delta = self._engine.buffers.read_aux(blocks[0])
        self._sent_at = self._engine.clock()
        self._handle.send_blocks(blocks, tokens if num_kv_tokens is None else num_kv_tokens, delta)

    def get_transfer_metric(self) -> KVTransferMetric:
        return KVTransferMetric(
            transfer_latency_s=self._latency,
            alloc_latency_s=None,
            transfer_total_bytes=self._handle.bytes_written,
        )

    def poll(self) -> KVPoll:
        state = super().poll()
        if state is KVPoll.Success and self._latency is None and self._sent_at is not None:
            self._latency = self._engine.clock() - self._sent_at
        return state


class EmbeddingKVReceiver(_RoomCalls[ReceiverHandle], BaseKVReceiver):
    """One request's embedding on one language rank."""

    def __init__(
        self,
        mgr: EmbeddingKVManager,
        bootstrap_addr: str,
        bootstrap_room: int | None = None,
    ) -> None:
        if bootstrap_room is None:
            raise ValueError("embxfer needs the request's bootstrap_room")
        self._handle = mgr.engine_as(ReceiverEngine).create_room(
            bootstrap_room, bootstrap_addr, mgr.receivers_per_room, scheduler_allocates=True
        )
        self.prefill_dp_rank: int | None = None
        self._provided = False

    def init(self, prefill_dp_rank: int) -> None:
        """Nothing to resolve (the room registered with the encoder when made)."""
        self.prefill_dp_rank = prefill_dp_rank

    def send_metadata(
        self,
        kv_indices: npt.NDArray[np.int32],
        aux_index: int | None = None,
        state_indices: list[Any] | None = None,
        decode_prefix_len: int | None = None,
        destination: KVTransferDestination = KVTransferDestination.DEVICE,
    ) -> None:
        """Hand over the first piece's blocks, taken from the manager's ``memory``."""
        if self._provided:
            raise RuntimeError(f"room {self._handle.room_id}: blocks were handed over already")
        if state_indices:
            raise ValueError("an embedding has no state to receive")
        if decode_prefix_len:
            raise ValueError("an embedding has no cached prefix")
        if getattr(destination, "value", destination) != "device":
            raise ValueError(f"embxfer writes into its buffers only, not to {destination!r}")
        blocks = _blocks(kv_indices, aux_index)
        self._provided = True
        self._handle.provide_blocks(blocks)

    def result(self) -> EmbeddingPayload:
        """The embedding, once ``poll()`` is Success; valid until ``clear()``."""
        return self._handle.result()

    @property
    def resumes(self) -> int:
        """Resumes of this room so far (beneath the interface)."""
        return self._handle.resumes
