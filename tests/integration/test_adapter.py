"""The SGLang-shaped adapter driven the way an SGLang scheduler drives its connectors,
configured through SGLang's environment variable names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embxfer import EngineConfig, KVPoll, TransferFailed
from embxfer.adapter import EmbeddingReceiver, EmbeddingSender
from embxfer.workload import payload_for
from tests.integration.pumping import Rig

TERMINAL = (KVPoll.Success, KVPoll.Failed)


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setenv("SGLANG_EMBEDDING_DEFAULT_ALLOCATE_BUFFER_SIZE", "1024")
    monkeypatch.setenv("SGLANG_MULTIMODAL_BLOCK_SIZE", "64")
    monkeypatch.setenv("SGLANG_EMBEDDING_CACHE_BUFFER_SIZE", "8")  # 8 buffers of 1024 tokens
    config = EngineConfig.from_env(hidden_size=16, adaptive_alloc=False)
    assert (config.default_alloc_tokens, config.block_size, config.num_blocks) == (1024, 64, 128)
    rig = Rig(config)
    yield rig
    rig.close()


def test_a_resumed_transfer_through_sglang_calls(rig: Rig) -> None:
    payload = payload_for(7, 2000, rig.sender.layout, seed=1)
    # Language scheduler: the receiver bootstraps on creation ...
    receiver = EmbeddingReceiver(rig.receiver, rig.sender.address, bootstrap_room=7)
    sender = EmbeddingSender(rig.sender, "unused", bootstrap_room=7)
    rig.pump_until(lambda: receiver.poll() >= KVPoll.WaitingForInput)
    receiver.init(kv_indices=None)  # ... and its prealloc queue hands it on
    # Encoder scheduler: the embedding is computed, then sent.
    sender.init(num_kv_indices=payload.num_tokens)
    sender.send(payload)
    rig.pump_until(lambda: sender.poll() in TERMINAL and receiver.poll() in TERMINAL)
    assert sender.poll() == receiver.poll() == 4  # plain ints, as SGLang compares them
    assert receiver.result().equals(payload)
    # 2000 tokens into SGLang's 1024-token default: one resume, in 64-token blocks:
    # 16 blocks held by the first piece, 16 more for the remaining 976 tokens.
    assert rig.receiver.stats.resumes == 1
    assert rig.receiver.allocator.high_water_mark == 32
    receiver.clear()
    sender.clear()
    receiver.clear()  # idempotent
    rig.drain()
    assert rig.sender.allocator.used_blocks == rig.receiver.allocator.used_blocks == 0


def test_abort_fails_both_sides_with_a_reason_and_frees_everything(rig: Rig) -> None:
    receiver = EmbeddingReceiver(rig.receiver, rig.sender.address, bootstrap_room=3)
    sender = EmbeddingSender(rig.sender, "unused", bootstrap_room=3)
    rig.pump_until(lambda: sender.poll() == KVPoll.WaitingForInput)
    receiver.abort()
    rig.pump_until(lambda: sender.poll() == receiver.poll() == KVPoll.Failed)
    with pytest.raises(TransferFailed, match="aborted by scheduler"):
        receiver.failure_exception()
    with pytest.raises(TransferFailed, match="aborted by receiver"):
        sender.failure_exception()
    sender.abort()  # on an ended room: nothing happens
    for handle in (sender, receiver):
        handle.clear()
    rig.drain()
    assert sender.poll() == KVPoll.Failed
    assert rig.sender.allocator.used_blocks == rig.receiver.allocator.used_blocks == 0


def test_send_refuses_a_length_other_than_init_declared(rig: Rig) -> None:
    sender = EmbeddingSender(rig.sender, "unused", bootstrap_room=5)
    sender.init(num_kv_indices=100)
    with pytest.raises(ValueError, match="init said 100 tokens, send got 99"):
        sender.send(payload_for(5, 99, rig.sender.layout, seed=1))


def test_a_size_hint_avoids_the_resume(rig: Rig) -> None:
    payload = payload_for(9, 2000, rig.sender.layout, seed=1)
    receiver = EmbeddingReceiver(
        rig.receiver, rig.sender.address, bootstrap_room=9, expected_tokens=2000
    )
    sender = EmbeddingSender(rig.sender, "unused", bootstrap_room=9)
    sender.send(payload)
    rig.pump_until(lambda: receiver.poll() in TERMINAL)
    assert receiver.poll() == KVPoll.Success
    assert receiver.result().equals(payload)
    assert rig.receiver.stats.resumes == 0
