"""Control channels and data transports inside one process, for tests, the demo and
benchmarks. Every control message still crosses the real wire codec, and every write is
bounds-checked like a one-sided engine would, so what passes here passes on the wire.
Messages go straight to their peer unless an ``Interposer`` stands between (the tools'
fault injection, ``embxfer.tools.faults``).
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
import torch

from embxfer.fsm.messages import Message
from embxfer.transport.base import Inbound, Segment, WriteResult
from embxfer.transport.wire import decode_inbound, encode, reject_tally


# gc=False: these hold plain values only, so they can never be in a reference cycle and
# the cyclic collector need not track them (a room makes dozens: fewer collections).
class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One encoded control message on its way from ``sender`` to ``peer``."""

    sender: str
    peer: str
    frame: bytes
    kind: type[Message]


class Interposer(Protocol):
    """What may stand between an ``InprocNetwork``'s senders and their peers."""

    def send(self, delivery: Delivery) -> None:
        """Deliver ``delivery`` (``InprocNetwork.deliver``): now, later, twice or never."""
        ...

    def write_failure(self) -> str | None:
        """Why the write about to start must fail, or None when it may proceed."""
        ...


class _Mailbox:
    """Frames waiting for one control address; ``take`` sleeps until one arrives or a wake."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._frames: deque[tuple[str, bytes]] = deque()
        self._woken = False

    def put(self, sender: str, frame: bytes) -> None:
        with self._ready:
            self._frames.append((sender, frame))
            self._ready.notify_all()

    def wake(self) -> None:
        with self._ready:
            self._woken = True
            self._ready.notify_all()

    def take(self, timeout_s: float) -> list[tuple[str, bytes]]:
        with self._ready:
            self._ready.wait_for(lambda: bool(self._frames) or self._woken, timeout=timeout_s)
            frames = list(self._frames)
            self._frames.clear()
            self._woken = False
        return frames


class InprocNetwork:
    """The hub that channels (by address) and data transports (by session id) attach to.

    ``interposer``, when set, sits between every control send and its delivery, and is
    asked before every write whether it fails; None (the default) delivers directly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._transports: dict[str, InprocDataTransport] = {}
        self._undeliverable = 0
        self.interposer: Interposer | None = None

    @property
    def undeliverable(self) -> int:
        """Control messages dropped because no channel had their peer's address."""
        with self._lock:
            return self._undeliverable

    def send(self, delivery: Delivery) -> None:
        """Deliver a control message, through the interposer if there is one."""
        if self.interposer is None:
            self.deliver(delivery)
        else:
            self.interposer.send(delivery)

    def deliver(self, delivery: Delivery) -> None:
        """Put ``delivery`` in its peer's mailbox now, bypassing the interposer."""
        self.inject_frame(delivery.sender, delivery.peer, delivery.frame)

    def write_failure(self) -> str | None:
        """Why the write about to start must fail (the interposer's say), or None."""
        return None if self.interposer is None else self.interposer.write_failure()

    def inject_frame(self, sender: str, peer: str, frame: bytes) -> None:
        """Put raw bytes (garbage included) in ``peer``'s mailbox as if ``sender`` sent them,
        bypassing the interposer: the last step of every delivery."""
        with self._lock:
            mailbox = self._mailboxes.get(peer)
            if mailbox is None:
                self._undeliverable += 1
                return
        mailbox.put(sender, frame)

    def _attach_mailbox(self, address: str) -> _Mailbox:
        with self._lock:
            if address in self._mailboxes:
                raise ValueError(f"control address {address!r} is already attached")
            mailbox = self._mailboxes[address] = _Mailbox()
            return mailbox

    def _detach_mailbox(self, address: str, mailbox: _Mailbox) -> None:
        with self._lock:
            if self._mailboxes.get(address) is mailbox:
                del self._mailboxes[address]

    def _attach_transport(self, transport: InprocDataTransport) -> None:
        with self._lock:
            if transport.session_id in self._transports:
                raise ValueError(f"session {transport.session_id!r} is already attached")
            self._transports[transport.session_id] = transport

    def _detach_transport(self, transport: InprocDataTransport) -> None:
        with self._lock:
            if self._transports.get(transport.session_id) is transport:
                del self._transports[transport.session_id]

    def _transport(self, session_id: str) -> InprocDataTransport | None:
        with self._lock:
            return self._transports.get(session_id)


class InprocControlChannel:
    """A ``ControlChannel`` on an ``InprocNetwork``: FIFO per peer unless an interposer
    reorders."""

    def __init__(self, network: InprocNetwork, address: str) -> None:
        self._network = network
        self._address = address
        self._mailbox = network._attach_mailbox(address)
        self._rejects = reject_tally(address)

    @property
    def address(self) -> str:
        return self._address

    def send(self, peer: str, message: Message) -> None:
        self._network.send(Delivery(self._address, peer, encode(message), type(message)))

    def receive(self, timeout_s: float) -> list[Inbound]:
        frames = self._mailbox.take(timeout_s)
        inbound = (decode_inbound(sender, frame, self._rejects) for sender, frame in frames)
        return [item for item in inbound if item is not None]

    def wake(self) -> None:
        self._mailbox.wake()

    @property
    def rejected(self) -> dict[str, int]:
        return self._rejects.snapshot()

    def close(self) -> None:
        self._network._detach_mailbox(self._address, self._mailbox)


@dataclass(frozen=True, slots=True, eq=False)
class _Region:
    """Registered memory, with a byte view of it that torch can copy into or out of."""

    address: int
    length: int
    view: torch.Tensor
    host: bool  # CPU memory: a write between two host regions is one memmove

    def holds(self, address: int, length: int) -> bool:
        return address >= self.address and address + length <= self.address + self.length

    def bytes(self, address: int, length: int) -> torch.Tensor:
        """The view of ``[address, address + length)``, which this region holds."""
        offset = address - self.address
        return self.view[offset : offset + length]


class InprocDataTransport:
    """A ``DataTransport`` on an ``InprocNetwork``. Unlike Mooncake it checks every segment,
    source side included, before copying any, so a failed write leaves the target untouched."""

    def __init__(self, network: InprocNetwork, session_id: str) -> None:
        self._network = network
        self._session_id = session_id
        self._lock = threading.Lock()
        # Replaced, never mutated, so a peer's writer thread can read it without the lock.
        self._regions: tuple[_Region, ...] = ()
        network._attach_transport(self)

    @property
    def session_id(self) -> str:
        return self._session_id

    def register(self, address: int, length: int) -> None:
        """Register host memory by raw address: a raw address cannot tell host from device
        memory, so device memory must come through ``register_tensor``, whose regions are
        searched first and make a later ``register`` of the same range a no-op."""
        if address <= 0 or length <= 0:
            raise ValueError(f"bad region [{address:#x}, +{length})")
        if _find(self._regions, address, length) is not None:
            return
        host_bytes = (ctypes.c_uint8 * length).from_address(address)
        region = _Region(address, length, torch.frombuffer(host_bytes, dtype=torch.uint8), True)
        with self._lock:
            self._regions = (*self._regions, region)

    def register_tensor(self, tensor: torch.Tensor) -> None:
        """Register a contiguous tensor's memory, on any device torch can copy to."""
        if not tensor.is_contiguous() or tensor.numel() == 0:
            raise ValueError("register_tensor needs a non-empty contiguous tensor")
        view = tensor.detach().reshape(-1).view(torch.uint8)
        region = _Region(view.data_ptr(), view.numel(), view, not view.is_cuda)
        with self._lock:
            self._regions = (region, *self._regions)

    def write(self, peer_session: str, segments: Sequence[Segment]) -> WriteResult:
        failure = self._network.write_failure()
        if failure is not None:
            return WriteResult(False, failure)
        peer = self._network._transport(peer_session)
        if peer is None:
            return WriteResult(False, f"unknown peer session {peer_session!r}")
        copies: list[tuple[_Region, _Region, Segment]] = []
        for segment in segments:
            source = _find(self._regions, segment.src_address, segment.length)
            if source is None:
                return WriteResult(False, f"source of {segment} is not registered memory")
            target = _find(peer._regions, segment.dst_address, segment.length)
            if target is None:
                return WriteResult(False, f"target of {segment} is not registered memory")
            copies.append((target, source, segment))
        devices = set()
        for target, source, segment in copies:
            src, dst, length = segment.src_address, segment.dst_address, segment.length
            if target.host and source.host:  # checked bounds, plain bytes: no tensor needed
                ctypes.memmove(dst, src, length)
                continue
            into = target.bytes(dst, length)
            into.copy_(source.bytes(src, length))
            devices |= {view.device for view in (into, source.view) if view.is_cuda}
        for device in devices:
            torch.cuda.synchronize(device)  # a one-sided write has landed when it returns
        return WriteResult(True)

    def close(self) -> None:
        self._network._detach_transport(self)
        with self._lock:
            self._regions = ()


def _find(regions: tuple[_Region, ...], address: int, length: int) -> _Region | None:
    """The first region holding all of ``[address, address + length)``; regions are few
    (one per buffer kind), so a scan is enough."""
    if length > 0:
        for region in regions:
            if region.holds(address, length):
                return region
    return None
