"""No bytes a peer can send make ``decode`` raise anything but ``WireError``, and whatever it
accepts passes ``validate`` and survives a round trip."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from embxfer.fsm.messages import PROTOCOL_VERSION, Message
from embxfer.transport.wire import WireError, decode, encode, validate

from .message_samples import VALID_MESSAGES

FUZZ = settings(max_examples=300, deadline=None)


def check_decode(frame: bytes) -> None:
    try:
        message = decode(frame)
    except WireError:
        return
    validate(message)
    assert decode(encode(message)) == message


@FUZZ
@given(VALID_MESSAGES)
def test_valid_messages_round_trip(message: Message) -> None:
    validate(message)
    assert decode(encode(message)) == message


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(frame: bytes) -> None:
    check_decode(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(encode(draw(VALID_MESSAGES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(frame) - 1))
        mutation = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        if mutation == "flip":
            frame[position] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "set":
            frame[position] = draw(st.integers(0, 255))
        elif mutation == "truncate":
            del frame[position:]
        elif mutation == "extend":
            frame += draw(st.binary(min_size=1, max_size=16))
        elif mutation == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del frame[position]
        if not frame:
            break
    return bytes(frame)


@FUZZ
@given(mutated_frames())
def test_mutated_valid_frames(frame: bytes) -> None:
    check_decode(frame)


FIELD_NAMES = sorted(
    {name for kind in Message.__args__ for name in kind.__struct_fields__} | {"kind", "extra"}
)
TAGS = sorted(kind.__struct_config__.tag for kind in Message.__args__)
ANY_VALUE: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    st.sampled_from(TAGS),
    st.dictionaries(st.sampled_from(FIELD_NAMES), ANY_VALUE, max_size=6),
    st.just(PROTOCOL_VERSION) | st.integers(-1, 3),
)
def test_well_formed_envelopes_with_arbitrary_fields(
    tag: str, fields: dict[str, Any], version: int
) -> None:
    check_decode(msgspec.msgpack.encode({"v": version, "m": {**fields, "type": tag}}))
