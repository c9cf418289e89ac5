"""Room handles shaped like SGLang's ``BaseKVSender`` / ``BaseKVReceiver``, so an SGLang
scheduler's disaggregation loop can drive embxfer with its own calls.

SGLang's connectors move data between buffers the *scheduler* allocates; embxfer owns
its buffers and allocator (that is what lets a receiver resume into fresh blocks), so
the index arguments are advisory and the encoder hands over the embedding itself:

==============================================  ==========================================
SGLang                                          embxfer
==============================================  ==========================================
``KVManager`` (one per process)                 ``SenderEngine`` / ``ReceiverEngine``
``KVSender(mgr, bootstrap_addr, room, ...)``    ``mgr.create_room(room)``
``sender.init(num_kv_indices, aux_index)``      the embedding's length in tokens, checked
                                                by ``send``; ``aux_index`` unused (aux
                                                lives in the room's first block)
``sender.send(kv_indices)``                     ``handle.send(embedding)``: the payload,
                                                copied into embxfer's own blocks
``KVReceiver(mgr, bootstrap_addr, room)``       ``mgr.create_room(room, bootstrap_addr,
                                                ...)``: bootstraps, then allocates and asks
``receiver.init(kv_indices, aux_index)``        advisory: the engine has allocated already
                                                (pass ``expected_tokens`` to the
                                                constructor to size the first allocation)
``poll() -> int``                               ``int(handle.poll())``: KVPoll's values
``failure_exception()``                         raises ``TransferFailed`` with the reason
``abort()``                                     ``handle.abort()``
``clear()``                                     ``handle.release()``: frees the room's
                                                blocks once no write can reach them
==============================================  ==========================================

The receiver's embedding is read with ``result()`` (SGLang reads its metadata buffers
instead). A scheduler swapping this in skips its own metadata-buffer allocation and
free; every other step of its loop (poll, MIN all-reduce across ranks, failure
handling) is unchanged. ``abort`` and ``clear`` are idempotent and never revive a room.
"""

from __future__ import annotations

from typing import NoReturn

from embxfer.buffers.payload import EmbeddingPayload
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine


class EmbeddingSender:
    """``BaseKVSender`` over a ``SenderHandle``: one request on the encoder."""

    def __init__(
        self,
        mgr: SenderEngine,
        bootstrap_addr: str,
        bootstrap_room: int,
        dest_tp_ranks: list[int] | None = None,
        pp_rank: int = 0,
    ) -> None:
        """``bootstrap_addr``, ``dest_tp_ranks`` and ``pp_rank`` are accepted for SGLang's
        signature: receivers find this engine by its control address and join the room
        themselves, declaring how many of them there are."""
        self._handle = mgr.create_room(bootstrap_room)
        self._expected_tokens: int | None = None

    def init(self, num_kv_indices: int, aux_index: int | None = None) -> None:
        """Declare the embedding's length in tokens; ``send`` refuses any other length."""
        self._expected_tokens = num_kv_indices

    def send(self, embedding: EmbeddingPayload) -> None:
        """Hand over the embedding (SGLang passes the indices it filled instead)."""
        expected = self._expected_tokens
        if expected is not None and embedding.num_tokens != expected:
            raise ValueError(
                f"room {self._handle.room_id}: init said {expected} tokens, "
                f"send got {embedding.num_tokens}"
            )
        self._handle.send(embedding)

    def poll(self) -> int:
        return int(self._handle.poll())

    def failure_exception(self) -> NoReturn:
        self._handle.failure_exception()

    def abort(self) -> None:
        self._handle.abort()

    def clear(self) -> None:
        self._handle.release()


class EmbeddingReceiver:
    """``BaseKVReceiver`` over a ``ReceiverHandle``: one request on one language rank."""

    def __init__(
        self,
        mgr: ReceiverEngine,
        bootstrap_addr: str,
        bootstrap_room: int,
        required_dst_info_num: int = 1,
        expected_tokens: int | None = None,
    ) -> None:
        """``bootstrap_addr`` is the encoder engine's control address;
        ``required_dst_info_num`` counts the receivers (ranks) of the room, as in SGLang;
        ``expected_tokens``, when the scheduler knows the length (from the image size),
        is allocated up front so the room never resumes."""
        self._handle = mgr.create_room(
            bootstrap_room, bootstrap_addr, required_dst_info_num, expected_tokens
        )

    def init(self, kv_indices: list[int] | None = None, aux_index: int | None = None) -> None:
        """Advisory: embxfer allocates and asks for the first piece as soon as the sender
        accepts this engine; indices from the scheduler's own allocator are not used."""

    def poll(self) -> int:
        return int(self._handle.poll())

    def result(self) -> EmbeddingPayload:
        """The embedding, once ``poll()`` is Success; valid until ``clear()``."""
        return self._handle.result()

    def failure_exception(self) -> NoReturn:
        self._handle.failure_exception()

    def abort(self) -> None:
        self._handle.abort()

    def clear(self) -> None:
        self._handle.release()
