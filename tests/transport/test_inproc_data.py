"""In-process data transport: byte-exact writes, and failures that leave the target untouched."""

from __future__ import annotations

import threading

import pytest
import torch

from embxfer.tools.faults import Faults
from embxfer.transport.base import DataTransport, Segment, WriteResult
from embxfer.transport.inproc import InprocDataTransport, InprocNetwork


class Pair:
    """A sender and a receiver transport, each with one registered CPU buffer."""

    def __init__(self, size: int = 4096) -> None:
        self.network = InprocNetwork()
        self.sender = InprocDataTransport(self.network, "E:1")
        self.receiver = InprocDataTransport(self.network, "L:1")
        generator = torch.Generator().manual_seed(0)
        self.source = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator)
        self.target = torch.zeros(size // 4, dtype=torch.int32)
        self.sender.register(self.source.data_ptr(), self.source.nbytes)
        self.receiver.register(self.target.data_ptr(), self.target.nbytes)
        self.before = self.target.clone()

    def segment(self, src_offset: int, dst_offset: int, length: int) -> Segment:
        return Segment(
            self.source.data_ptr() + src_offset, self.target.data_ptr() + dst_offset, length
        )

    def target_bytes(self) -> torch.Tensor:
        return self.target.view(torch.uint8)

    def write(self, *segments: Segment) -> WriteResult:
        return self.sender.write("L:1", segments)


def test_is_a_data_transport() -> None:
    transport: DataTransport = InprocDataTransport(InprocNetwork(), "E:1")
    assert transport.session_id == "E:1"


def test_copies_every_segment_byte_exact() -> None:
    pair = Pair()
    result = pair.write(pair.segment(0, 1024, 512), pair.segment(3000, 7, 1000))
    assert result == WriteResult(True)
    expected = torch.zeros(4096, dtype=torch.uint8)
    expected[1024:1536] = pair.source[0:512]
    expected[7:1007] = pair.source[3000:4000]
    assert torch.equal(pair.target_bytes(), expected)


def test_register_tensor_on_both_sides() -> None:
    network = InprocNetwork()
    sender, receiver = InprocDataTransport(network, "E:1"), InprocDataTransport(network, "L:1")
    source = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    target = torch.zeros(8, 8, dtype=torch.float32)
    sender.register_tensor(source)
    receiver.register_tensor(target)
    row = 8 * 4
    segment = Segment(source.data_ptr() + 2 * row, target.data_ptr() + 5 * row, 3 * row)
    assert sender.write("L:1", [segment]).ok
    assert torch.equal(target[5:8], source[2:5])
    assert not target[:5].any()


def test_register_rejects_empty_or_null_memory() -> None:
    transport = InprocDataTransport(InprocNetwork(), "L:1")
    with pytest.raises(ValueError):
        transport.register(0, 16)
    with pytest.raises(ValueError):
        transport.register(4096, 0)
    with pytest.raises(ValueError):
        transport.register_tensor(torch.zeros(4, 4).t())


@pytest.mark.parametrize(
    ("src_offset", "dst_offset", "length", "reason"),
    [
        (0, 4096 - 8, 9, "target"),  # runs past the end of the target region
        (4096 - 8, 0, 9, "source"),  # runs past the end of the source region
        (0, -1, 4, "target"),  # starts before the target region
        (0, 1 << 20, 4, "target"),  # nowhere near registered memory
        (0, 0, 0, "source"),  # empty segment
    ],
)
def test_out_of_range_fails_the_whole_write_and_touches_nothing(
    src_offset: int, dst_offset: int, length: int, reason: str
) -> None:
    pair = Pair()
    good = pair.segment(0, 0, 256)
    result = pair.write(good, pair.segment(src_offset, dst_offset, length))
    assert not result.ok
    assert reason in result.reason
    assert torch.equal(pair.target, pair.before)


def test_unknown_peer() -> None:
    pair = Pair()
    result = pair.sender.write("L:2", [pair.segment(0, 0, 16)])
    assert not result.ok
    assert "L:2" in result.reason


def test_unregistered_target() -> None:
    pair = Pair()
    other = torch.zeros(64, dtype=torch.uint8)
    result = pair.write(Segment(pair.source.data_ptr(), other.data_ptr(), 16))
    assert not result.ok
    assert not other.any()


def test_closed_transports_neither_send_nor_receive() -> None:
    pair = Pair()
    pair.receiver.close()
    pair.receiver.close()
    assert "L:1" in pair.write(pair.segment(0, 0, 16)).reason
    revived = InprocDataTransport(pair.network, "L:1")
    revived.register(pair.target.data_ptr(), pair.target.nbytes)
    pair.sender.close()
    assert "source" in pair.write(pair.segment(0, 0, 16)).reason
    assert torch.equal(pair.target, pair.before)


def test_session_id_is_exclusive() -> None:
    network = InprocNetwork()
    InprocDataTransport(network, "L:1")
    with pytest.raises(ValueError, match="L:1"):
        InprocDataTransport(network, "L:1")


def test_injected_write_failures_touch_nothing() -> None:
    pair = Pair()
    Faults.on(pair.network).fail_next_writes(2, "peer vanished")
    assert pair.write(pair.segment(0, 0, 64)) == WriteResult(False, "peer vanished")
    assert pair.write(pair.segment(0, 0, 64)) == WriteResult(False, "peer vanished")
    assert torch.equal(pair.target, pair.before)
    assert pair.write(pair.segment(0, 0, 64)).ok


def test_concurrent_writers() -> None:
    pair = Pair(size=1 << 16)
    chunk = 1024

    def write_chunks(start: int) -> None:
        for offset in range(start, 1 << 16, 8 * chunk):
            assert pair.write(pair.segment(offset, offset, chunk)).ok

    threads = [threading.Thread(target=write_chunks, args=(i * chunk,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(pair.target_bytes(), pair.source)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_tensors() -> None:
    network = InprocNetwork()
    sender, receiver = InprocDataTransport(network, "E:1"), InprocDataTransport(network, "L:1")
    source = torch.arange(4096, dtype=torch.int32, device="cuda")
    target = torch.zeros(4096, dtype=torch.int32, device="cuda")
    host = torch.zeros(4096, dtype=torch.int32)
    sender.register_tensor(source)
    receiver.register(host.data_ptr(), host.nbytes)
    receiver.register_tensor(target)
    receiver.register(target.data_ptr(), target.nbytes)  # the runtime's call: a no-op here
    segments = [
        Segment(source.data_ptr(), target.data_ptr(), 8192),
        Segment(source.data_ptr() + 8192, host.data_ptr() + 8192, 8192),
    ]
    assert sender.write("L:1", segments).ok
    assert torch.equal(target[:2048].cpu(), torch.arange(2048, dtype=torch.int32))
    assert torch.equal(host[2048:], torch.arange(2048, 4096, dtype=torch.int32))
