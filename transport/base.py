"""What the runtime needs from a control channel and a data transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from embxfer.fsm.messages import Message


# gc=False: these hold plain values only, so they can never be in a reference cycle and
# the cyclic collector need not track them (a room makes dozens: fewer collections).
class Segment(msgspec.Struct, frozen=True, gc=False):
    """One contiguous one-sided write: ``length`` bytes from local ``src_address``
    to the peer's ``dst_address``."""

    src_address: int
    dst_address: int
    length: int


class WriteResult(msgspec.Struct, frozen=True, gc=False):
    """Outcome of a write; transports report failures here and never raise."""

    ok: bool
    reason: str = ""


class Inbound(msgspec.Struct, frozen=True, gc=False):
    """A validated control message and the address of the peer that sent it."""

    peer: str
    message: Message


class ControlChannel(Protocol):
    """Ordered, per-peer control messages. Called from the runtime's one pump thread,
    except ``wake`` which any thread may call."""

    @property
    def address(self) -> str:
        """Where peers send to reach this channel."""
        ...

    def send(self, peer: str, message: Message) -> None:
        """Queue ``message`` for ``peer``; never blocks on, or raises for, a bad peer."""
        ...

    def receive(self, timeout_s: float) -> list[Inbound]:
        """Messages that arrived, waiting up to ``timeout_s`` for the first one (or a wake).

        Frames that fail validation are dropped, logged once per reason and counted
        in ``rejected``; they are never returned and never raise."""
        ...

    def wake(self) -> None:
        """Make a blocked ``receive`` return early (thread-safe)."""
        ...

    @property
    def rejected(self) -> dict[str, int]:
        """Count of rejected inbound frames by reason."""
        ...

    def close(self) -> None:
        """Release sockets; idempotent."""
        ...


class DataTransport(Protocol):
    """One-sided writes into memory a peer registered. ``write`` may block (a stalled
    peer can hold it for a minute), so the runtime calls it off the pump thread."""

    @property
    def session_id(self) -> str:
        """How peers name this transport's memory (``"ip:port"`` for Mooncake)."""
        ...

    def register(self, address: int, length: int) -> None:
        """Make local memory ``[address, address + length)`` a source or target of writes."""
        ...

    def write(self, peer_session: str, segments: Sequence[Segment]) -> WriteResult:
        """Write every segment into ``peer_session``'s registered memory."""
        ...

    def close(self) -> None:
        """Release the engine; idempotent."""
        ...
