"""The worked scheduler loops of examples/, run deterministically (engines pumped by the
loop on a virtual clock), configured through environment variables."""

from __future__ import annotations

import pytest

from embxfer import Timeouts
from examples.run_schedulers import run


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBXFER_DEFAULT_ALLOC_TOKENS", "1024")
    monkeypatch.setenv("EMBXFER_BLOCK_SIZE", "128")
    monkeypatch.setenv("EMBXFER_CACHE_TOKENS", "65536")
    monkeypatch.setenv("EMBXFER_HIDDEN_SIZE", "32")
    monkeypatch.setenv("EMBXFER_ADAPTIVE_ALLOC", "0")


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("ranks", [1, 2])
def test_both_loops_deliver_every_request_byte_exact(ranks: int) -> None:
    lengths = [500, 2000, 1024, 10000, 50000]
    report = run(lengths, ranks, threaded=False)
    rooms = range(1, len(lengths) + 1)
    assert report.encoder == report.language == dict.fromkeys(rooms, "")
    assert report.verified == dict.fromkeys(rooms, True)
    # With the 1024-token default from EMBXFER_DEFAULT_ALLOC_TOKENS,
    # 2000, 10000 and 50000 each resume once on every rank (the rest fits at once).
    assert report.resumes == 3 * ranks
    assert report.leaked_blocks == 0


@pytest.mark.usefixtures("env")
def test_a_request_the_sender_cannot_hold_fails_on_both_sides_and_frees_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBXFER_CACHE_TOKENS", "2048")  # per engine
    timeouts = Timeouts(progress_s=0.5, write_grace_s=1.0)  # virtual seconds
    report = run([500, 5000], threaded=False, timeouts=timeouts)
    assert report.encoder[1] == report.language[1] == ""
    # The sender's whole pool could never hold it: it fails at once instead of waiting
    # for memory until its deadline, and tells the receiver why.
    assert "payload of 5000 tokens can never fit 16 blocks" in report.encoder[2]
    assert "payload of 5000 tokens can never fit 16 blocks" in report.language[2]
    assert report.leaked_blocks == 0
