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

from typing import Annotated

import msgspec

PROTOCOL_VERSION = 2  # 2: incarnation nonces, request numbers, Announce; aux in PieceWritten

MAX_INT = 2**63 - 1
MAX_STRING_CHARS = 256

# The limits every field obeys, checked by msgspec as it decodes (in C: no field of a
# peer's message reaches Python unchecked). Every integer is one of these two types and
# every string is ``Text``; a test keeps it so for fields added later.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
"""A non-negative int64: ids, nonces, counts, addresses."""
Positive = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
"""A count that is never zero: request numbers, token counts, receivers."""
Signed = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
"""An int64 that may be negative (symmetric limits)."""
Text = Annotated[str, msgspec.Meta(max_length=MAX_STRING_CHARS)]
"""A short string."""


# gc=False: these hold plain values only, so they can never be in a reference cycle and
# the cyclic collector need not track them (a room makes dozens: fewer collections).
class BufferRegion(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """One registered buffer kind on a receiver: where block 0 starts and how big a block is."""

    kind: Text
    base_address: Count
    block_bytes: Count


class Register(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="register"):
    """Receiver -> sender, once per peer: the receiver's buffer geometry for one-sided writes."""

    session_id: Text
    block_size: Count
    num_blocks: Count
    regions: tuple[BufferRegion, ...]


class RegisterAck(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="register_ack"
):
    """Sender -> receiver: the geometry was accepted (or not, with a reason)."""

    accepted: bool
    reason: Text = ""


class PieceRequest(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="piece_request"
):
    """Receiver -> sender: write tokens from ``sent_tokens`` on into ``blocks``.

    ``sent_tokens == 0`` is the initial request (the seeds' "init"); larger values are
    resumes. ``seq`` numbers the requests of one receiver incarnation (1, 2, ...): a
    request with a higher ``seq`` at the same ``sent_tokens`` *replaces* the one before
    (the receiver learned the length and allocated for it), so ``seq``, not
    ``sent_tokens``, identifies duplicates and stale copies.
    """

    room: Count
    nonce: Count
    seq: Positive
    sent_tokens: Count
    blocks: Annotated[tuple[Count, ...], msgspec.Meta(min_length=1)]
    allocated_tokens: Positive
    required_receivers: Positive


class PieceWritten(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="piece_written"
):
    """Sender -> receiver: tokens ``[sent_tokens, sent_tokens + tokens)`` have landed,
    answering the request numbered ``seq``.

    It carries the room's aux record, the total ``T`` and the M-RoPE position delta, so
    that no data write is spent on it (every piece names both; they never change).
    """

    room: Count
    nonce: Count
    seq: Positive
    sent_tokens: Count
    tokens: Positive
    total_tokens: Count
    mrope_position_delta: Signed


class Announce(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="announce"):
    """Sender -> receiver: the embedding will have ``total_tokens`` tokens. Sent once the
    sender knows both the length (its scheduler's ``announce`` or ``send``) and the
    receiver (its first request), unless the receiver's first piece is being written."""

    room: Count
    nonce: Count
    total_tokens: Positive


class Abort(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="abort"):
    """Either direction: the room is over. A sender sends it only with no write in flight."""

    room: Count
    nonce: Count
    reason: Text


class AbortAck(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="abort_ack"):
    """Sender -> receiver: no write for this room is in flight or will be started."""

    room: Count
    nonce: Count


class Heartbeat(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag="heartbeat"):
    """Either direction: the peer is alive."""


Message = (
    Register | RegisterAck | PieceRequest | PieceWritten | Announce | Abort | AbortAck | Heartbeat
)
RoomMessage = PieceRequest | PieceWritten | Announce | Abort | AbortAck
