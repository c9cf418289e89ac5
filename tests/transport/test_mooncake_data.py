"""MooncakeDataTransport: two engines in this process writing over TCP on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from embxfer.transport.base import DataTransport, Segment, WriteResult
from embxfer.transport.mooncake_data import MooncakeDataTransport, available

MIB = 1 << 20
BUFFER_BYTES = 4 * MIB


@dataclass
class Pair:
    sender: MooncakeDataTransport
    receiver: MooncakeDataTransport
    src: torch.Tensor
    dst: torch.Tensor

    def src_at(self, offset: int) -> int:
        return self.src.data_ptr() + offset

    def dst_at(self, offset: int) -> int:
        return self.dst.data_ptr() + offset


@pytest.fixture(scope="module")
def engines() -> Iterator[Pair]:
    """Two engines for the whole module: initialising and destroying one takes up to a second."""
    if not available():
        pytest.skip("mooncake-transfer-engine is not installed or cannot load")
    src = torch.randint(
        0, 256, (BUFFER_BYTES,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    dst = torch.zeros(BUFFER_BYTES, dtype=torch.uint8)
    sender = MooncakeDataTransport()
    receiver = MooncakeDataTransport()
    try:
        sender.register(src.data_ptr(), BUFFER_BYTES)
        receiver.register(dst.data_ptr(), BUFFER_BYTES)
        yield Pair(sender, receiver, src, dst)
    finally:
        sender.close()
        receiver.close()


@pytest.fixture
def pair(engines: Pair) -> Pair:
    """The module's engines with the destination cleared."""
    engines.dst.zero_()
    return engines


def dead_session() -> str:
    """A loopback port nobody listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_is_a_data_transport_named_by_host_and_rpc_port(pair: Pair) -> None:
    transport: DataTransport = pair.receiver
    assert transport is pair.receiver
    host, port = pair.receiver.session_id.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert pair.sender.session_id != pair.receiver.session_id


def test_three_segments_in_one_write_land_byte_exact(pair: Pair) -> None:
    # (src offset, dst offset, length): out of order, odd sizes, not adjacent.
    plan = [(0, MIB, 64 * 1024), (100_000, 0, 300_001), (2 * MIB, 3 * MIB, MIB)]
    segments = [Segment(pair.src_at(s), pair.dst_at(d), n) for s, d, n in plan]

    result = pair.sender.write(pair.receiver.session_id, segments)

    assert result.ok, result.reason
    expected = torch.zeros_like(pair.dst)
    for s, d, n in plan:
        expected[d : d + n] = pair.src[s : s + n]
    assert torch.equal(pair.dst, expected)


def test_writes_from_two_threads_at_once(pair: Pair) -> None:
    half = BUFFER_BYTES // 2
    results = []

    def write_half(offset: int) -> None:
        segment = Segment(pair.src_at(offset), pair.dst_at(offset), half)
        results.append(pair.sender.write(pair.receiver.session_id, [segment]))

    writers = [threading.Thread(target=write_half, args=(offset,)) for offset in (0, half)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    assert all(result.ok for result in results) and len(results) == 2
    assert torch.equal(pair.dst, pair.src)


def test_write_to_an_unknown_session_fails(pair: Pair) -> None:
    peer = dead_session()
    result = pair.sender.write(peer, [Segment(pair.src_at(0), pair.dst_at(0), 4096)])
    assert not result.ok
    assert result.reason == f"mooncake could not submit a write to {peer}"


def test_write_past_the_registered_range_fails_and_leaves_memory_untouched(pair: Pair) -> None:
    straddling = Segment(pair.src_at(0), pair.dst_at(BUFFER_BYTES - 8), 16)
    result = pair.sender.write(pair.receiver.session_id, [straddling])
    assert not result.ok
    assert "status=-1" in result.reason
    assert not pair.dst.any()


def test_an_invalid_argument_is_a_failed_result_not_an_exception(pair: Pair) -> None:
    result = pair.sender.write(
        pair.receiver.session_id, [Segment(pair.src_at(0), pair.dst_at(0), -1)]
    )
    assert not result.ok
    assert result.reason.startswith("TypeError(")


def test_an_empty_write_succeeds_without_a_transfer(pair: Pair) -> None:
    assert pair.sender.write(dead_session(), []).ok


def test_overlapping_registration_raises(pair: Pair) -> None:
    with pytest.raises(RuntimeError, match="register_memory"):
        pair.receiver.register(pair.dst.data_ptr(), BUFFER_BYTES)


def test_close_is_idempotent_and_a_closed_transport_refuses_work(engines: Pair) -> None:
    buffer = torch.zeros(4096, dtype=torch.uint8)
    transport = MooncakeDataTransport()
    transport.register(buffer.data_ptr(), buffer.numel())
    transport.close()
    transport.close()
    result = transport.write(
        engines.receiver.session_id, [Segment(buffer.data_ptr(), engines.dst_at(0), 16)]
    )
    assert result == WriteResult(False, "transport is closed")
    with pytest.raises(RuntimeError, match="closed"):
        transport.register(buffer.data_ptr(), buffer.numel())


def test_a_missing_wheel_is_reported_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mooncake.engine", None)  # makes the import fail
    assert not available()
    with pytest.raises(
        RuntimeError, match=r"mooncake-transfer-engine-non-cuda.*libibverbs1 libnuma1"
    ):
        MooncakeDataTransport()


def test_import_drops_mc_log_dir_which_would_abort_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mooncake.engine", None)
    monkeypatch.setenv("MC_LOG_DIR", "/tmp/mooncake-logs")
    monkeypatch.delenv("MC_LOG_LEVEL", raising=False)
    available()
    assert "MC_LOG_DIR" not in os.environ
    assert os.environ["MC_LOG_LEVEL"] == "ERROR"
