"""``SenderHandle.buffer``: the encoder writes into the room's registered blocks and
``send()`` of that payload copies nothing; any other payload is still copied once."""

from __future__ import annotations

import dataclasses

import pytest

from embxfer import EngineConfig, KVPoll
from embxfer.buffers.layout import FIELDS
from embxfer.buffers.payload import EmbeddingPayload
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


def test_a_buffer_is_views_into_the_registered_blocks_and_its_send_copies_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, (receiver,), _ = inproc_engines(CONFIG, RECEIVER)
    payload = payload_for(1, 40, sender.layout, seed=3)
    sent = sender.create_room(1)
    got = receiver.create_room(1, sender.address)
    buffer = sent.buffer(40)
    assert buffer is not None
    registered = sender.buffers.tensor("embeddings")
    start = registered.data_ptr()
    assert start <= buffer.embeddings.data_ptr() < start + registered.nbytes
    no_copies(sender, monkeypatch)
    sent.send(fill(buffer, payload))
    finish([sender, receiver], sent, got)
    assert got.poll() is KVPoll.Success
    assert got.result().equals(payload)
    sent.release()
    got.release()
    drain([sender, receiver])
    assert sender.used_blocks == 0


def test_another_payload_sent_with_a_buffer_held_is_copied_into_its_blocks() -> None:
    sender, (receiver,), _ = inproc_engines(CONFIG, RECEIVER)
    payload = payload_for(2, 40, sender.layout, seed=3)
    sent = sender.create_room(2)
    got = receiver.create_room(2, sender.address)
    assert sent.buffer(40) is not None
    with pytest.raises(ValueError, match="holds 40 tokens"):
        sent.send(payload_for(2, 39, sender.layout, seed=3))
    sent.send(payload)
    finish([sender, receiver], sent, got)
    assert got.result().equals(payload)


def test_scattered_blocks_give_memory_of_its_own_which_send_copies_once() -> None:
    sender, (receiver,), _ = inproc_engines(CONFIG, RECEIVER)
    first, second = sender.memory.take(16, 16), sender.memory.take(16, 16)
    assert first is not None and second is not None
    sender.memory.free(first)  # free blocks now: [0] and [2, 7]: 48 tokens are not a run
    payload = payload_for(3, 48, sender.layout, seed=3)
    sent = sender.create_room(3)
    got = receiver.create_room(3, sender.address)
    buffer = sent.buffer(48)
    assert buffer is not None
    registered = sender.buffers.tensor("embeddings")
    assert (
        not registered.data_ptr()
        <= buffer.embeddings.data_ptr()
        < registered.nbytes + (registered.data_ptr())
    )
    sent.send(fill(buffer, payload))
    finish([sender, receiver], sent, got)
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
