"""Control messages exchanged by sender and receiver engines.

Pure data (the schema): ``wire`` frames, versions and
validates them. Each message names its room; the sending peer is known from the
channel, never taken from the message body.

Every room message also names the receiver *incarnation* it belongs to (``nonce``): a
receiver room draws a random nonce when its scheduler creates it, and the sender echoes
the nonce of the receiver it answers. Room ids are the schedulers' and get reused; the
nonce tells a message of the room that uses an id now from one of a room that used it
before, whose messages may still be in flight.
"""

from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 2  # 2: incarnation nonces, request numbers, Announce; aux in PieceWritten


class BufferRegion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One registered buffer kind on a receiver: where block 0 starts and how big a block is."""

    kind: str
    base_address: int
    block_bytes: int


class Register(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="register"):
    """Receiver -> sender, once per peer: the receiver's buffer geometry for one-sided writes."""

    session_id: str
    block_size: int
    num_blocks: int
    regions: tuple[BufferRegion, ...]


class RegisterAck(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="register_ack"):
    """Sender -> receiver: the geometry was accepted (or not, with a reason)."""

    accepted: bool
    reason: str = ""


class PieceRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="piece_request"):
    """Receiver -> sender: write tokens from ``sent_tokens`` on into ``blocks``.

    ``sent_tokens == 0`` is the initial request (the seeds' "init"); larger values are
    resumes. ``seq`` numbers the requests of one receiver incarnation (1, 2, ...): a
    request with a higher ``seq`` at the same ``sent_tokens`` *replaces* the one before
    (the receiver learned the length and allocated for it), so ``seq``, not
    ``sent_tokens``, identifies duplicates and stale copies.
    """

    room: int
    nonce: int
    seq: int
    sent_tokens: int
    blocks: tuple[int, ...]
    allocated_tokens: int
    required_receivers: int


class PieceWritten(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="piece_written"):
    """Sender -> receiver: tokens ``[sent_tokens, sent_tokens + tokens)`` have landed,
    answering the request numbered ``seq``.

    It carries the room's aux record, the total ``T`` and the M-RoPE position delta, so
    that no data write is spent on it (every piece names both; they never change).
    """

    room: int
    nonce: int
    seq: int
    sent_tokens: int
    tokens: int
    total_tokens: int
    mrope_position_delta: int


class Announce(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="announce"):
    """Sender -> receiver: the embedding will have ``total_tokens`` tokens. Sent once the
    sender knows both the length (its scheduler's ``announce`` or ``send``) and the
    receiver (its first request), unless the receiver's first piece is being written."""

    room: int
    nonce: int
    total_tokens: int


class Abort(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="abort"):
    """Either direction: the room is over. A sender sends it only with no write in flight."""

    room: int
    nonce: int
    reason: str


class AbortAck(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="abort_ack"):
    """Sender -> receiver: no write for this room is in flight or will be started."""

    room: int
    nonce: int


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="heartbeat"):
    """Either direction: the peer is alive."""


SIGNED_FIELDS: frozenset[tuple[str, str]] = frozenset({("PieceWritten", "mrope_position_delta")})
"""(message, field) of the integers that may be negative; every other integer is not."""

Message = (
    Register | RegisterAck | PieceRequest | PieceWritten | Announce | Abort | AbortAck | Heartbeat
)
RoomMessage = PieceRequest | PieceWritten | Announce | Abort | AbortAck
