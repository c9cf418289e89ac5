"""``EngineConfig.from_env``: embxfer's variables and the released SGLang's."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from embxfer import EngineConfig, Timeouts
from embxfer.config import VARIABLES


def test_sglang_pool_size_becomes_blocks_through_the_layout() -> None:
    # One block of the default layout: 128 tokens x (4096 bf16 + 1 + 3 int32) + 64 B aux.
    assert EngineConfig().layout.bytes_per_block == 1_050_688
    config = EngineConfig.from_env({"SGLANG_EMBEDDING_POOL_SIZE_MB": "4096"})  # its default
    assert config.num_blocks == 4096 * 2**20 // 1_050_688 == 4087
    smaller = EngineConfig.from_env(
        {"SGLANG_EMBEDDING_POOL_SIZE_MB": "64", "EMBXFER_HIDDEN_SIZE": "1024"}
    )
    assert smaller.num_blocks == 64 * 2**20 // smaller.layout.bytes_per_block == 253


def test_sglang_timeouts_and_heartbeat() -> None:
    env = {
        "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "300",
        "SGLANG_ENCODER_SEND_TIMEOUT": "120",
        "SGLANG_ENCODER_RECV_TIMEOUT": "180",
        "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "600",
        "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "3",
        "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "4",
    }
    sender = EngineConfig.from_env(env, role="sender")
    assert sender.timeouts == Timeouts(bootstrap_s=300, progress_s=120)
    assert EngineConfig.from_env(env, role="receiver").timeouts.progress_s == 180
    assert EngineConfig.from_env(env).timeouts.progress_s == 180  # the longer of the two
    assert (sender.heartbeat_s, sender.peer_timeout_s) == (3.0, 12.0)
    # Without the encoder's own timeouts, the connector's waiting timeout.
    waiting = {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "600"}
    assert EngineConfig.from_env(waiting, role="sender").timeouts.progress_s == 600


def test_sglang_heartbeat_defaults_and_floors_apply_when_one_is_set() -> None:
    only_failures = EngineConfig.from_env({"SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "3"})
    assert (only_failures.heartbeat_s, only_failures.peer_timeout_s) == (5.0, 15.0)
    floors = EngineConfig.from_env(
        {
            "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
            "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "0",
        }
    )
    assert (floors.heartbeat_s, floors.peer_timeout_s) == (2.0, 2.0)


def test_embxfer_names_win_over_sglang_names_and_overrides_over_both() -> None:
    env = {
        "SGLANG_EMBEDDING_POOL_SIZE_MB": "4096",
        "EMBXFER_CACHE_TOKENS": "12800",
        "SGLANG_ENCODER_RECV_TIMEOUT": "180",
        "EMBXFER_PROGRESS_S": "7",
        "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "3",
        "EMBXFER_PEER_TIMEOUT_S": "9",
    }
    config = EngineConfig.from_env(env)
    assert config.num_blocks == 100  # 12800 tokens of 128
    assert config.timeouts.progress_s == 7
    assert (config.heartbeat_s, config.peer_timeout_s) == (3.0, 9.0)
    assert EngineConfig.from_env({**env, "EMBXFER_NUM_BLOCKS": "7"}).num_blocks == 7
    assert EngineConfig.from_env(env, num_blocks=9, block_size=64).num_blocks == 9
    assert EngineConfig.from_env(env, block_size=64).num_blocks == 200


def test_the_seed_designs_variables_are_reported_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "embxfer.config"):
        config = EngineConfig.from_env({"SGLANG_MULTIMODAL_BLOCK_SIZE": "64"})
    assert config == EngineConfig()
    assert "ignoring SGLANG_MULTIMODAL_BLOCK_SIZE" in caplog.text


def test_the_readme_table_lists_exactly_the_variables_read() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    listed = set(re.findall(r"`((?:EMBXFER|SGLANG)_[A-Z_]+)`", table))
    assert listed == VARIABLES
