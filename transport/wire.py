"""The wire codec every control channel shares: versioned msgpack frames, validated on
the way in so that no peer's bytes can reach a room's state machine unchecked.

A frame is the msgpack of ``{"v": PROTOCOL_VERSION, "m": <tagged message>}``. The
envelope's shape is fixed across versions (only ``m`` may change), so a frame from a
peer on another version is always reported as ``bad_version``, not as garbage.
"""

from __future__ import annotations

import logging
import re
from typing import Generic, Literal, TypeVar

import msgspec

from embxfer.fsm.messages import (
    MAX_INT,
    MAX_STRING_CHARS,
    PROTOCOL_VERSION,
    Message,
    PieceRequest,
    PieceWritten,
    Register,
)
from embxfer.transport.base import Inbound
from embxfer.transport.tally import Tally

__all__ = ["MAX_INT", "MAX_STRING_CHARS", "WireError", "decode", "encode", "validate"]

MAX_FRAME_BYTES = 1 << 20
MAX_BLOCKS_PER_REQUEST = 1 << 20
MAX_REGIONS = 16
MAX_BLOCK_SIZE = 65536
MAX_DETAIL_CHARS = 200

RejectReason = Literal[
    "too_large",  # frame longer than MAX_FRAME_BYTES
    "malformed",  # not msgpack, or not a {"v", "m"} envelope
    "bad_version",  # envelope from another protocol version
    "invalid_field",  # message does not match the schema (unknown kind, wrong type, ...)
    "out_of_range",  # a value or count outside its limits
    "inconsistent",  # fields contradict each other
]

LOG = logging.getLogger("embxfer.wire")

MessageT = TypeVar("MessageT")


class Envelope(
    msgspec.Struct,
    Generic[MessageT],
    frozen=True,
    forbid_unknown_fields=True,
    rename={"version": "v", "message": "m"},
):
    """What goes on the wire: the protocol version beside the message."""

    version: int
    message: MessageT


class WireError(Exception):
    """A frame was rejected; ``reason`` is a stable code for counting, ``detail`` is for humans."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        detail = detail[:MAX_DETAIL_CHARS]  # it may quote a peer's bytes into our logs
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: RejectReason = reason
        self.detail = detail


_ENCODER = msgspec.msgpack.Encoder()
# Two stages, so the version is checked before a message of an unknown version is parsed.
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope[msgspec.Raw])
_MESSAGE_DECODER = msgspec.msgpack.Decoder(Message)
# What msgspec raises on bad input: DecodeError, and (found by fuzzing) these two for
# invalid UTF-8 in a key and for nesting too deep.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
# How msgspec words a field outside the schema's limits ("Expected `int` >= 0", "Expected
# `str` of length <= 256"), as opposed to a field of the wrong type ("Expected `int`, got
# `str`").
_LIMIT = re.compile(r"Expected `\w+` (>=|<=|of length)")


def encode(message: Message) -> bytes:
    """One frame for ``message``."""
    return _ENCODER.encode(Envelope(version=PROTOCOL_VERSION, message=message))


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """The validated message in ``frame``; raises only ``WireError``, whatever the bytes."""
    if len(frame) > MAX_FRAME_BYTES:
        raise WireError("too_large", f"{len(frame)} bytes")
    try:
        envelope = _ENVELOPE_DECODER.decode(frame)
    except _DECODE_ERRORS as error:
        raise WireError("malformed", str(error)) from None
    if envelope.version != PROTOCOL_VERSION:
        raise WireError(
            "bad_version", f"version {envelope.version}; this engine speaks {PROTOCOL_VERSION}"
        )
    try:
        message: Message = _MESSAGE_DECODER.decode(envelope.message)
    except _DECODE_ERRORS as error:
        reason: RejectReason = "out_of_range" if _LIMIT.match(str(error)) else "invalid_field"
        raise WireError(reason, str(error)) from None
    validate(message)
    return message


def validate(message: Message) -> None:
    """Raise ``WireError`` unless ``message`` obeys the rules beyond its fields' types and
    limits (which the schema states and decoding checks): how its values relate."""
    match message:
        case Register(
            session_id=session_id, block_size=size, num_blocks=num_blocks, regions=regions
        ):
            _in_range(session_id != "", "Register.session_id is empty")
            _in_range(1 <= size <= MAX_BLOCK_SIZE, f"Register.block_size={size}")
            _in_range(num_blocks >= 1, "Register.num_blocks < 1")
            _in_range(1 <= len(regions) <= MAX_REGIONS, f"Register has {len(regions)} regions")
            kinds = [region.kind for region in regions]
            _in_range("" not in kinds, "Register has a region with an empty kind")
            _in_range(min(r.block_bytes for r in regions) >= 1, "Register has block_bytes < 1")
            _consistent(len(set(kinds)) == len(kinds), f"Register repeats a region kind: {kinds}")
        case PieceRequest(blocks=blocks):
            # (what the schema's types bound is checked as msgspec decodes: only what
            # relates several values is left to this function)
            _in_range(
                len(blocks) <= MAX_BLOCKS_PER_REQUEST, f"PieceRequest has {len(blocks)} blocks"
            )
            _consistent(len(set(blocks)) == len(blocks), "PieceRequest repeats a block index")
        case PieceWritten(sent_tokens=sent, tokens=tokens, total_tokens=total):
            _consistent(sent + tokens <= total, f"PieceWritten ends at {sent + tokens} > {total}")


def _in_range(condition: bool, detail: str) -> None:
    if not condition:
        raise WireError("out_of_range", detail)


def _consistent(condition: bool, detail: str) -> None:
    if not condition:
        raise WireError("inconsistent", detail)


def reject_tally(local: str) -> Tally:
    """The counter of frames a channel at ``local`` rejects."""
    return Tally(LOG, f"{local} rejected a frame from")


def decode_inbound(
    peer: str, frame: bytes | bytearray | memoryview, rejects: Tally
) -> Inbound | None:
    """What a channel's receive does with each frame: the message, or None once counted."""
    try:
        return Inbound(peer, decode(frame))
    except WireError as error:
        rejects.add(error.reason, peer, error.detail)
        return None
