"""Valid messages of every kind, as fixed examples and as a Hypothesis strategy."""

from __future__ import annotations

from hypothesis import strategies as st

from embxfer.fsm.messages import (
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
from embxfer.tools.fuzz import SAMPLE_MESSAGES, SAMPLE_REGIONS
from embxfer.transport.wire import (
    MAX_BLOCK_SIZE,
    MAX_INT,
    MAX_REGIONS,
    MAX_STRING_CHARS,
)

# The library's samples serve the fuzzers as templates too.
EXAMPLES = SAMPLE_MESSAGES
REGIONS = SAMPLE_REGIONS

_ints = st.integers(0, MAX_INT)
_signed = st.integers(-MAX_INT, MAX_INT)
_text = st.text(max_size=MAX_STRING_CHARS)
_name = st.text(min_size=1, max_size=MAX_STRING_CHARS)


@st.composite
def _piece_written(draw: st.DrawFn) -> PieceWritten:
    total = draw(st.integers(1, MAX_INT))
    tokens = draw(st.integers(1, total))
    sent = draw(st.integers(0, total - tokens))
    return PieceWritten(
        draw(_ints), draw(_ints), draw(st.integers(1, MAX_INT)), sent, tokens, total, draw(_signed)
    )


_regions = st.lists(
    st.builds(BufferRegion, kind=_name, base_address=_ints, block_bytes=st.integers(1, MAX_INT)),
    min_size=1,
    max_size=MAX_REGIONS,
    unique_by=lambda region: region.kind,
).map(tuple)

VALID_MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Register,
        session_id=_name,
        block_size=st.integers(1, MAX_BLOCK_SIZE),
        num_blocks=st.integers(1, MAX_INT),
        regions=_regions,
    ),
    st.builds(RegisterAck, accepted=st.booleans(), reason=_text),
    st.builds(
        PieceRequest,
        room=_ints,
        nonce=_ints,
        seq=st.integers(1, MAX_INT),
        sent_tokens=_ints,
        blocks=st.lists(_ints, min_size=1, max_size=64, unique=True).map(tuple),
        allocated_tokens=st.integers(1, MAX_INT),
        required_receivers=st.integers(1, MAX_INT),
    ),
    _piece_written(),
    st.builds(Announce, room=_ints, nonce=_ints, total_tokens=st.integers(1, MAX_INT)),
    st.builds(Abort, room=_ints, nonce=_ints, reason=_text),
    st.builds(AbortAck, room=_ints, nonce=_ints),
    st.just(Heartbeat()),
)
