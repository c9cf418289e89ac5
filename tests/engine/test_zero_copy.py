"""``SenderHandle.buffer``: the encoder writes into the room's registered blocks and
``send()`` of that payload copies nothing; any other payload is still copied once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from embxfer import EngineConfig, KVPoll
from embxfer.buffers.layout import FIELDS
from embxfer.buffers.payload import EmbeddingPayload
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.local import inproc_engines
from embxfer.sender import SenderEngine
from embxfer.tools.workload import payload_for

from .test_inproc_engines import drain, finish

CONFIG = EngineConfig(num_blocks=8, block_size=16, hidden_size=32, write_threads=False)
RECEIVER = EngineConfig(num_blocks=64, block_size=16, hidden_size=32, write_threads=False)


def fill(buffer: EmbeddingPayload, payload: EmbeddingPayload) -> EmbeddingPayload:
    """What an encoder does: write its output into ``buffer``, set the delta."""
    for field in FIELDS:
        buffer.tensor(field).copy_(payload.tensor(field))
    return dataclasses.replace(buffer, mrope_position_delta=payload.mrope_position_delta)


def no_copies(sender: SenderEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the payload was copied")

    monkeypatch.setattr(sender.buffers, "store", refuse)


def registered(sender: SenderEngine, payload: EmbeddingPayload) -> bool:
    """Whether ``payload``'s embeddings lie in the sender's registered buffer."""
    buffer = sender.buffers.tensor("embeddings")
    return 0 <= payload.embeddings.data_ptr() - buffer.data_ptr() < buffer.nbytes


def room(
    tokens: int, taken_first: int = 0
) -> tuple[list[Any], SenderHandle, ReceiverHandle, EmbeddingPayload, EmbeddingPayload]:
    """Engines with a room of ``tokens`` and its buffer (after ``taken_first`` tokens'
    blocks were taken and the first block given back: a pool with a hole)."""
    sender, (receiver,), _ = inproc_engines(CONFIG, RECEIVER)
    if taken_first:
        first = sender.memory.take(16, 16)
        assert first is not None and sender.memory.take(taken_first, taken_first) is not None
        sender.memory.free(first)
    payload = payload_for(7, tokens, sender.layout, seed=3)
    sent, got = sender.create_room(7), receiver.create_room(7, sender.address)
    buffer = sent.buffer(tokens)
    assert buffer is not None
    return [sender, receiver], sent, got, buffer, payload


def test_a_buffer_is_views_into_the_registered_blocks_and_its_send_copies_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engines, sent, got, buffer, payload = room(40)
    assert registered(engines[0], buffer)
    no_copies(engines[0], monkeypatch)
    sent.send(fill(buffer, payload))
    finish(engines, sent, got)
    assert got.poll() is KVPoll.Success and got.result().equals(payload)
    sent.release()
    got.release()
    drain(engines)
    assert engines[0].used_blocks == 0


def test_another_payload_sent_with_a_buffer_held_is_copied_into_its_blocks() -> None:
    engines, sent, got, _, payload = room(40)
    with pytest.raises(ValueError, match="holds 40 tokens"):
        sent.send(payload_for(7, 39, engines[0].layout, seed=3))
    sent.send(payload)
    finish(engines, sent, got)
    assert got.result().equals(payload)


def test_scattered_blocks_give_memory_of_its_own_which_send_copies_once() -> None:
    engines, sent, got, buffer, payload = room(48, taken_first=16)  # free: [0], [2, 8)
    assert not registered(engines[0], buffer)
    sent.send(fill(buffer, payload))
    finish(engines, sent, got)
    assert got.result().equals(payload)


def test_no_buffer_while_memory_is_short_and_an_unsent_buffer_goes_back_on_release() -> None:
    sender, _, _ = inproc_engines(CONFIG, RECEIVER)
    held = sender.create_room(4)
    assert held.buffer(8 * 16) is not None  # the whole pool
    waiting = sender.create_room(5)
    assert waiting.buffer(16) is None  # the scheduler keeps the request queued
    with pytest.raises(ValueError, match="can never fit"):
        waiting.buffer(8 * 16 + 1)
    with pytest.raises(RuntimeError, match="has a buffer already"):
        held.buffer(16)
    held.release()  # never sent: its blocks go back with the room
    assert sender.used_blocks == 0
    assert waiting.buffer(16) is not None
    waiting.release()
    drain([sender])
    assert sender.used_blocks == 0
