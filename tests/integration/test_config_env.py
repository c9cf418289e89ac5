"""``EngineConfig.from_env``: embxfer's variables and SGLang's aliases."""

from __future__ import annotations

from embxfer import EngineConfig


def test_sglang_names_set_allocation_block_size_and_capacity() -> None:
    config = EngineConfig.from_env(
        {
            "SGLANG_EMBEDDING_DEFAULT_ALLOCATE_BUFFER_SIZE": "2048",
            "SGLANG_MULTIMODAL_BLOCK_SIZE": "256",
            "SGLANG_EMBEDDING_CACHE_BUFFER_SIZE": "16",  # buffers of 2048 tokens
        }
    )
    assert config.default_alloc_tokens == 2048
    assert config.block_size == 256
    assert config.num_blocks == 16 * 2048 // 256


def test_the_defaults_agree_with_sglangs_default_buffer_count() -> None:
    assert EngineConfig.from_env({"SGLANG_EMBEDDING_CACHE_BUFFER_SIZE": "64"}) == EngineConfig()


def test_embxfer_names_win_over_sglang_aliases_and_overrides_over_both() -> None:
    env = {
        "SGLANG_EMBEDDING_DEFAULT_ALLOCATE_BUFFER_SIZE": "2048",
        "EMBXFER_DEFAULT_ALLOC_TOKENS": "4096",
        "SGLANG_EMBEDDING_CACHE_BUFFER_SIZE": "16",
        "EMBXFER_CACHE_TOKENS": "12800",
    }
    config = EngineConfig.from_env(env)
    assert config.default_alloc_tokens == 4096
    assert config.num_blocks == 100  # 12800 tokens of 128
    assert EngineConfig.from_env({**env, "EMBXFER_NUM_BLOCKS": "7"}).num_blocks == 7
    assert EngineConfig.from_env(env, num_blocks=9, block_size=64).num_blocks == 9
    assert EngineConfig.from_env(env, block_size=64).num_blocks == 200
