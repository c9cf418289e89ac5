"""The SGLang adapter without sglang installed: the stand-in base classes, rooms run by
the SGLang-style scheduler loops, and what the adapter refuses. (``tests/sglang`` runs
the same report against sglang 0.5.23's own classes.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from embxfer import EngineConfig, KVPoll
from embxfer.adapter import EmbeddingKVManager, EmbeddingKVReceiver, EmbeddingKVSender
from embxfer.sglang_interface import DisaggregationMode, KVTransferDestination
from embxfer.transport.mooncake_data import available
from tests.integration.pumping import Rig
from tests.sglang import conformance

PREFILL, DECODE = DisaggregationMode.PREFILL, DisaggregationMode.DECODE


def test_the_adapter_conforms_to_the_stand_in_interface() -> None:
    conformance.verify(json.loads(json.dumps(conformance.check())), sglang=False)


def test_the_readme_maps_every_method_of_the_interface() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Using it from SGLang\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    mapped = set(re.findall(r"^\| `(?:\w+\.)?(\w+)\(", "\n".join(rows), re.MULTILINE))
    for _, methods in conformance.INTERFACE.values():
        for method in methods:
            if method != "__init__":
                assert method in mapped, method
    assert {"KVManager", "KVSender", "KVReceiver"} <= mapped


@pytest.fixture
def rig() -> Rig:
    return Rig(EngineConfig(num_blocks=64, block_size=16, hidden_size=8, adaptive_alloc=False))


def managers(rig: Rig) -> tuple[EmbeddingKVManager, EmbeddingKVManager]:
    return (
        EmbeddingKVManager(None, PREFILL, None, engine=rig.sender),
        EmbeddingKVManager(None, DECODE, None, engine=rig.receiver),
    )


def test_the_sender_refuses_what_would_not_hand_over_one_embedding(rig: Rig) -> None:
    encoder, _ = managers(rig)
    sender = EmbeddingKVSender(encoder, "", bootstrap_room=1)
    sender.init(num_kv_indices=2, aux_index=4)
    with pytest.raises(ValueError, match="aux record is in the first block, 3"):
        sender.send(np.array([3, 4], dtype=np.int32), num_kv_tokens=20)
    with pytest.raises(ValueError, match="init said 2 blocks, send got 1"):
        sender.send(np.array([4], dtype=np.int32), num_kv_tokens=10)
    with pytest.raises(ValueError, match="no state"):
        sender.send(np.array([4, 5], dtype=np.int32), state_indices=[[1]])
    sender.init(num_kv_indices=2)
    sender.send(np.array(encoder.memory.take(20, 20) or [], dtype=np.int32), num_kv_tokens=20)
    with pytest.raises(RuntimeError, match="sent already"):
        sender.send(np.array([9, 10], dtype=np.int32), num_kv_tokens=20)


def test_the_receiver_refuses_what_an_embedding_does_not_have(rig: Rig) -> None:
    _, language = managers(rig)
    with pytest.raises(ValueError, match="bootstrap_room"):
        EmbeddingKVReceiver(language, rig.sender.address)
    receiver = EmbeddingKVReceiver(language, rig.sender.address, bootstrap_room=2)
    blocks = np.array([0, 1], dtype=np.int32)
    with pytest.raises(ValueError, match="no cached prefix"):
        receiver.send_metadata(blocks, decode_prefix_len=5)
    with pytest.raises(ValueError, match="its buffers only"):
        receiver.send_metadata(blocks, destination=KVTransferDestination.HOST)
    receiver.send_metadata(np.array(language.memory.take(32, 32) or [], dtype=np.int32))
    with pytest.raises(RuntimeError, match="handed over already"):
        receiver.send_metadata(blocks)
    receiver.abort()
    receiver.clear()
    rig.pump_until(lambda: receiver.poll() == KVPoll.Failed)
    rig.drain()
    assert rig.receiver.used_blocks == 0  # the room freed the blocks it was handed


def test_a_manager_serves_one_role_with_the_matching_engine(rig: Rig) -> None:
    with pytest.raises(ValueError, match="not 'null'"):
        EmbeddingKVManager(None, DisaggregationMode.NULL, None, engine=rig.sender)
    with pytest.raises(TypeError, match="decode manager needs a ReceiverEngine"):
        EmbeddingKVManager(None, DECODE, None, engine=rig.sender)
    encoder, _ = managers(rig)
    with pytest.raises(TypeError, match="not ReceiverEngine"):
        EmbeddingKVReceiver(encoder, rig.sender.address, bootstrap_room=3)


@pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here")
def test_a_manager_builds_its_engine_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBXFER_NUM_BLOCKS", "8")
    monkeypatch.setenv("EMBXFER_HIDDEN_SIZE", "16")
    monkeypatch.setenv("SGLANG_ENCODER_RECV_TIMEOUT", "42")
    server_args = SimpleNamespace(host="127.0.0.1", tp_size=2)
    language = EmbeddingKVManager(SimpleNamespace(ib_device=None), "decode", server_args)
    try:
        assert language.bootstrap_addr.startswith("tcp://127.0.0.1:")
        assert language.receivers_per_room == 2
        assert language.engine.config.timeouts.progress_s == 42
        assert language.memory.total_blocks == 8
    finally:
        language.teardown()
