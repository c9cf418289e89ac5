"""The demo's workloads: the vision-language token mix, and buffers sized as a share of
what the open requests hold, and a run that reuses room ids."""

from __future__ import annotations

import pytest

from embxfer.tools.demo import DemoSettings, run_inproc
from embxfer.tools.demo_cli import pool_tokens
from embxfer.tools.workload import IMAGE_TOKENS, VIDEO_TOKENS, token_lengths


def test_the_vision_language_mix_is_images_and_a_few_long_videos() -> None:
    lengths = token_lengths("vl", 20_000, seed=0)
    videos = [n for n in lengths if n > IMAGE_TOKENS[1]]
    images = [n for n in lengths if n <= IMAGE_TOKENS[1]]
    assert min(images) >= IMAGE_TOKENS[0]
    assert all(VIDEO_TOKENS[0] <= n <= VIDEO_TOKENS[1] for n in videos)
    assert 0 < len(videos) < 0.01 * len(lengths)  # a few
    assert len([n for n in token_lengths("vl:0.5", 1000, seed=0) if n > IMAGE_TOKENS[1]]) > 400
    with pytest.raises(ValueError, match="share"):
        token_lengths("vl:2", 10, seed=0)


def test_demand_is_concurrency_times_the_mean_request() -> None:
    settings = DemoSettings(requests=4, tokens="1000,3000", concurrency=10)
    assert settings.demand_tokens == 10 * 2000


def test_buffers_may_be_a_share_of_demand() -> None:
    settings = DemoSettings(requests=4, tokens="1000,3000", concurrency=10)
    assert pool_tokens("25%", settings) == 5000
    assert pool_tokens("6000", settings) == 6000
    assert DemoSettings(receiver_tokens=5000).receiver_config().num_blocks == 40  # of 128
    assert DemoSettings(sender_tokens=6000).sender_config().num_blocks == 47


def test_reused_ids_with_aborts_and_announces_stay_exact() -> None:
    """Room ids from a set of 10 for 150 requests, a tenth aborted by a scheduler at
    once, every length announced: every request ends, every Success is byte-exact."""
    settings = DemoSettings(
        requests=150,
        tokens="16:3000",
        default_alloc=1024,
        hidden=64,
        concurrency=8,
        timeout_s=2.0,
        announce=True,
        reuse_ids=True,
    )
    summary = run_inproc(settings, progress=False)
    assert summary.succeeded + summary.aborted == 150
    assert summary.failed == 0 and summary.aborted > 0
    assert summary.verified and summary.leaked_blocks == 0
