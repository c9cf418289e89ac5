"""The wire codec: round trips, every rejection reason, and the reject counter."""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec
import pytest

from embxfer.fsm.messages import (
    PROTOCOL_VERSION,
    Abort,
    AbortAck,
    Announce,
    BufferRegion,
    Heartbeat,
    Message,
    PieceRequest,
    PieceWritten,
    Register,
    RegisterAck,
)
from embxfer.transport.base import Inbound
from embxfer.transport.wire import (
    MAX_BLOCKS_PER_REQUEST,
    MAX_DETAIL_CHARS,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_REGIONS,
    MAX_STRING_CHARS,
    RejectReason,
    WireError,
    decode,
    decode_inbound,
    encode,
    reject_tally,
    validate,
)

from .message_samples import EXAMPLES, REGIONS


def reject_reason(frame: bytes) -> str:
    with pytest.raises(WireError) as caught:
        decode(frame)
    return caught.value.reason


def raw(envelope: Any) -> bytes:
    return msgspec.msgpack.encode(envelope)


def test_examples_cover_every_message_kind() -> None:
    assert {type(message) for message in EXAMPLES} == set(Message.__args__)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    frame = encode(message)
    assert decode(frame) == message
    assert decode(bytearray(frame)) == message
    assert decode(memoryview(frame)) == message


def test_frame_is_a_versioned_envelope() -> None:
    assert msgspec.msgpack.decode(encode(AbortAck(room=5, nonce=0))) == {
        "v": PROTOCOL_VERSION,
        "m": {"type": "abort_ack", "room": 5, "nonce": 0},
    }


LONG = "x" * (MAX_STRING_CHARS + 1)
REQUEST = PieceRequest(
    room=1,
    nonce=7,
    seq=1,
    sent_tokens=0,
    blocks=(1, 2),
    allocated_tokens=256,
    required_receivers=1,
)
REGISTER = Register("host:1", block_size=128, num_blocks=8, regions=REGIONS)
PIECE = PieceWritten(
    room=1, nonce=7, seq=1, sent_tokens=0, tokens=3, total_tokens=5, mrope_position_delta=-4
)

INVALID: list[tuple[str, Message, RejectReason]] = [
    ("empty session id", msgspec.structs.replace(REGISTER, session_id=""), "out_of_range"),
    ("long session id", msgspec.structs.replace(REGISTER, session_id=LONG), "out_of_range"),
    ("block size 0", msgspec.structs.replace(REGISTER, block_size=0), "out_of_range"),
    ("block size 65537", msgspec.structs.replace(REGISTER, block_size=65537), "out_of_range"),
    ("no blocks to register", msgspec.structs.replace(REGISTER, num_blocks=0), "out_of_range"),
    ("no regions", msgspec.structs.replace(REGISTER, regions=()), "out_of_range"),
    (
        "too many regions",
        msgspec.structs.replace(
            REGISTER,
            regions=tuple(BufferRegion(f"k{i}", 4096, 1) for i in range(MAX_REGIONS + 1)),
        ),
        "out_of_range",
    ),
    (
        "empty region kind",
        msgspec.structs.replace(REGISTER, regions=(BufferRegion("", 4096, 1),)),
        "out_of_range",
    ),
    (
        "long region kind",
        msgspec.structs.replace(REGISTER, regions=(BufferRegion(LONG, 4096, 1),)),
        "out_of_range",
    ),
    (
        "zero block bytes",
        msgspec.structs.replace(REGISTER, regions=(BufferRegion("aux", 4096, 0),)),
        "out_of_range",
    ),
    (
        "address past 2**63",
        msgspec.structs.replace(REGISTER, regions=(BufferRegion("aux", 2**63, 1),)),
        "out_of_range",
    ),
    (
        "duplicate region kinds",
        msgspec.structs.replace(REGISTER, regions=(REGIONS[0], REGIONS[0])),
        "inconsistent",
    ),
    ("long ack reason", RegisterAck(accepted=False, reason=LONG), "out_of_range"),
    ("negative room", msgspec.structs.replace(REQUEST, room=-1), "out_of_range"),
    ("room 2**63", msgspec.structs.replace(REQUEST, room=2**63), "out_of_range"),
    ("negative sent tokens", msgspec.structs.replace(REQUEST, sent_tokens=-1), "out_of_range"),
    ("no blocks", msgspec.structs.replace(REQUEST, blocks=()), "out_of_range"),
    ("negative block", msgspec.structs.replace(REQUEST, blocks=(1, -1)), "out_of_range"),
    ("block 2**63", msgspec.structs.replace(REQUEST, blocks=(2**63, 1)), "out_of_range"),
    ("duplicate blocks", msgspec.structs.replace(REQUEST, blocks=(4, 2, 4)), "inconsistent"),
    ("nothing allocated", msgspec.structs.replace(REQUEST, allocated_tokens=0), "out_of_range"),
    ("no receivers", msgspec.structs.replace(REQUEST, required_receivers=0), "out_of_range"),
    ("empty piece", msgspec.structs.replace(PIECE, tokens=0), "out_of_range"),
    ("piece past total", msgspec.structs.replace(PIECE, sent_tokens=3), "inconsistent"),
    ("negative total", msgspec.structs.replace(PIECE, total_tokens=-5), "out_of_range"),
    ("delta -2**63", msgspec.structs.replace(PIECE, mrope_position_delta=-(2**63)), "out_of_range"),
    ("delta 2**63", msgspec.structs.replace(PIECE, mrope_position_delta=2**63), "out_of_range"),
    ("piece seq 0", msgspec.structs.replace(PIECE, seq=0), "out_of_range"),
    ("request seq 0", msgspec.structs.replace(REQUEST, seq=0), "out_of_range"),
    ("announce of 0 tokens", Announce(room=1, nonce=0, total_tokens=0), "out_of_range"),
    ("long abort reason", Abort(room=1, nonce=0, reason=LONG), "out_of_range"),
    ("negative ack room", AbortAck(room=-5, nonce=0), "out_of_range"),
    ("negative nonce", AbortAck(room=5, nonce=-1), "out_of_range"),
]


@pytest.mark.parametrize(
    ("message", "reason"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_rule_rejects_with_its_reason(message: Message, reason: RejectReason) -> None:
    assert reject_reason(encode(message)) == reason


def test_limits_are_inclusive() -> None:
    edge = msgspec.structs.replace(
        REQUEST, room=MAX_INT, blocks=(0, MAX_INT), required_receivers=MAX_INT
    )
    assert decode(encode(edge)) == edge
    for delta in (-MAX_INT, 0, MAX_INT):  # the one signed field: symmetric limits
        piece = PieceWritten(
            0, 7, 1, sent_tokens=2, tokens=3, total_tokens=5, mrope_position_delta=delta
        )
        assert decode(encode(piece)) == piece
    named = RegisterAck(accepted=False, reason="x" * MAX_STRING_CHARS)
    assert decode(encode(named)) == named


def test_too_many_blocks_per_request() -> None:
    blocks = tuple(range(MAX_BLOCKS_PER_REQUEST + 1))
    with pytest.raises(WireError) as caught:
        validate(msgspec.structs.replace(REQUEST, blocks=blocks))
    assert caught.value.reason == "out_of_range"


def test_frame_size_limit() -> None:
    assert reject_reason(b"\x00" * (MAX_FRAME_BYTES + 1)) == "too_large"


@pytest.mark.parametrize("version", [0, 1, PROTOCOL_VERSION + 1, MAX_INT])
def test_other_versions_are_rejected_before_their_message_is_parsed(version: int) -> None:
    assert reject_reason(raw({"v": version, "m": {"type": "heartbeat"}})) == "bad_version"
    assert reject_reason(raw({"v": version, "m": {"type": "from_the_future"}})) == "bad_version"


def test_a_version_1_frame_is_rejected_with_both_versions_named() -> None:
    """A peer still on version 1 (no incarnation nonces) is told apart clearly."""
    v1_request = {"type": "piece_request", "room": 1, "sent_tokens": 0, "blocks": [1]}
    with pytest.raises(WireError) as caught:
        decode(raw({"v": 1, "m": {**v1_request, "allocated_tokens": 128}}))
    assert caught.value.reason == "bad_version"
    assert f"version 1; this engine speaks {PROTOCOL_VERSION}" in str(caught.value)


FRAME = encode(REQUEST)
MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not msgpack", b"\xc1"),
    ("truncated", FRAME[:-1]),
    ("trailing bytes", FRAME + b"\x00"),
    ("not a map", raw([PROTOCOL_VERSION, {"type": "heartbeat"}])),
    ("no message", raw({"v": PROTOCOL_VERSION})),
    ("extra envelope key", raw({"v": PROTOCOL_VERSION, "m": {"type": "heartbeat"}, "x": 1})),
    ("version not an int", raw({"v": "1", "m": {"type": "heartbeat"}})),
    ("invalid utf-8 key", FRAME.replace(b"\xa1v", b"\xa1\x80")),
    ("deep nesting", b"\x82\xa1v\x01\xa1m" + b"\x91" * 100_000 + b"\x00"),
]


@pytest.mark.parametrize("frame", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed(frame: bytes) -> None:
    assert reject_reason(frame) == "malformed"


def _message(**fields: Any) -> bytes:
    return raw({"v": PROTOCOL_VERSION, "m": fields})


SCHEMA_MISMATCH: list[tuple[str, bytes]] = [
    ("unknown kind", _message(type="resume", room=1)),
    ("no kind", _message(room=1)),
    ("missing field", _message(type="abort", room=1)),
    ("unknown field", _message(type="abort_ack", room=1, extra=2)),
    ("str for int", _message(type="abort_ack", room="1")),
    ("bool for int", _message(type="abort_ack", room=True)),
    ("float for int", _message(type="abort_ack", room=1.0)),
    ("message not a map", raw({"v": PROTOCOL_VERSION, "m": 3})),
    ("invalid utf-8 key", _message(type="abort_ack", room=1).replace(b"\xa4room", b"\xa4ro\xffm")),
]


@pytest.mark.parametrize(
    "frame", [c[1] for c in SCHEMA_MISMATCH], ids=[c[0] for c in SCHEMA_MISMATCH]
)
def test_schema_mismatch(frame: bytes) -> None:
    assert reject_reason(frame) == "invalid_field"


def test_detail_quoting_a_peer_is_bounded() -> None:
    with pytest.raises(WireError) as caught:
        decode(_message(type="x" * 5000))
    assert len(caught.value.detail) == MAX_DETAIL_CHARS


def test_reject_tally_logs_each_reason_once_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    counter = reject_tally("L0")
    caplog.set_level(logging.DEBUG, logger="embxfer.wire")
    for reason in ("malformed", "malformed", "bad_version", "malformed"):
        counter.add(reason, "E3", "detail")
    assert counter.snapshot() == {"malformed": 3, "bad_version": 1}
    levels = [(r.levelno, "malformed" in r.getMessage()) for r in caplog.records]
    assert levels == [
        (logging.WARNING, True),
        (logging.DEBUG, True),
        (logging.WARNING, False),
        (logging.DEBUG, True),
    ]
    assert all("L0" in r.getMessage() and "E3" in r.getMessage() for r in caplog.records)


def test_reject_tally_is_thread_safe() -> None:
    counter = reject_tally("L0")

    def record_many() -> None:
        for _ in range(2000):
            counter.add("malformed", "E")

    threads = [threading.Thread(target=record_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.snapshot() == {"malformed": 16000}


def test_snapshot_is_a_copy() -> None:
    counter = reject_tally("L0")
    counter.add("too_large", "E")
    counter.snapshot()["too_large"] = 99
    assert counter.snapshot() == {"too_large": 1}


def test_decode_inbound() -> None:
    counter = reject_tally("L0")
    assert decode_inbound("E1", encode(Heartbeat()), counter) == Inbound("E1", Heartbeat())
    assert decode_inbound("E1", b"junk", counter) is None
    assert counter.snapshot() == {"malformed": 1}


def _unbounded(info: msgspec.inspect.Type, where: str) -> list[str]:
    """Fields under ``info`` that decoding would accept without limits."""
    if isinstance(info, msgspec.inspect.UnionType):
        return [bad for member in info.types for bad in _unbounded(member, where)]
    if isinstance(info, msgspec.inspect.StructType):
        return [
            bad
            for field in info.fields
            for bad in _unbounded(field.type, f"{info.cls.__name__}.{field.name}")
        ]
    if isinstance(info, msgspec.inspect.VarTupleType):
        return _unbounded(info.item_type, f"{where}[]")
    if isinstance(info, msgspec.inspect.IntType):
        return [] if info.ge is not None and info.le is not None else [where]
    if isinstance(info, msgspec.inspect.StrType):
        return [] if info.max_length is not None else [where]
    return []


def test_every_int_and_string_of_every_message_has_limits() -> None:
    """Decoding checks each field's limits, so a field added without them is a hole."""
    assert _unbounded(msgspec.inspect.type_info(Message), "Message") == []
