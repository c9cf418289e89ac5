"""Hostile control frames for an encoder engine, and the reason it must count for each.

A stranger (a peer that never registered) throws random bytes, mutated valid frames,
valid messages for rooms that exist or do not (with huge block indices), registrations
with the wrong geometry, wrong protocol versions and wrong framing. Every frame's fate
is known in advance from the wire codec (``predicted_rejection``): the control channel
drops it (counted by wire reason), or the engine refuses it (counted by its own reason),
or it is a heartbeat (harmless). The process test (``tests/processes``) and the demo's
``--fuzz-frames`` flood check that the counters match the prediction exactly while
real rooms run through the same engine.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msgspec
import zmq

from embxfer.buffers.layout import KINDS, BufferLayout
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
from embxfer.transport.curve_keys import AllowList, EngineKeys
from embxfer.transport.wire import MAX_FRAME_BYTES, MAX_INT, WireError, decode, encode

SAMPLE_REGIONS = (
    BufferRegion("embeddings", 0x7F00_0000_0000, 128 * 4096 * 2),
    BufferRegion("fill_ids", 0x7F10_0000_0000, 128 * 4),
)

# Valid messages of every kind (no engine's geometry: engines have no "fill_ids" region).
SAMPLE_MESSAGES: tuple[Message, ...] = (
    Register("10.0.0.2:17001", block_size=128, num_blocks=4096, regions=SAMPLE_REGIONS),
    RegisterAck(accepted=True),
    RegisterAck(accepted=False, reason="block size mismatch"),
    PieceRequest(
        room=7,
        nonce=0x5EED,
        seq=1,
        sent_tokens=0,
        blocks=(3, 9, 4),
        allocated_tokens=384,
        required_receivers=2,
    ),
    PieceRequest(
        room=MAX_INT,
        nonce=MAX_INT,
        seq=MAX_INT,
        sent_tokens=1024,
        blocks=(0,),
        allocated_tokens=1,
        required_receivers=1,
    ),
    PieceWritten(
        room=7,
        nonce=0x5EED,
        seq=2,
        sent_tokens=1024,
        tokens=976,
        total_tokens=2000,
        mrope_position_delta=-37,
    ),
    Announce(room=7, nonce=0x5EED, total_tokens=2000),
    Abort(room=7, nonce=0x5EED, reason="client went away"),
    AbortAck(room=0, nonce=0),
    Heartbeat(),
)

# Two frames past the size limit: one of zeros, one of msgpack's fixarray marker.
OVERSIZED = (b"\x00" * (MAX_FRAME_BYTES + 1), b"\x92" * (MAX_FRAME_BYTES + 7))


class HostileFrames:
    """Random frames of every kind of trouble, valid ones included, for an encoder whose
    buffers have ``layout`` and whose live rooms are ``good_rooms``."""

    def __init__(self, rng: random.Random, good_rooms: range, layout: BufferLayout) -> None:
        self._rng = rng
        self._good_rooms = good_rooms
        self._layout = layout
        valid = [*SAMPLE_MESSAGES, *(self.valid_message() for _ in range(200))]
        self._templates = [encode(message) for message in valid]
        envelopes: list[object] = [[1, 2], {"v": 1}, "x", 3.5, None]
        makers: list[tuple[float, Callable[[], bytes]]] = [
            (0.30, lambda: rng.randbytes(rng.randrange(0, 200))),
            (0.40, lambda: mutate(rng, rng.choice(self._templates))),
            (0.18, lambda: encode(self.valid_message())),
            (0.04, lambda: encode(self.bad_register())),
            (0.04, lambda: msgspec.msgpack.encode({"v": rng.choice([0, 1, 99]), "m": {}})),
            (0.04, lambda: msgspec.msgpack.encode(rng.choice(envelopes))),
        ]
        self._makers = [maker for _, maker in makers]
        self._weights = [weight for weight, _ in makers]

    def frames(self, count: int) -> list[bytes]:
        return [self._rng.choices(self._makers, self._weights)[0]() for _ in range(count)]

    def valid_message(self) -> Message:
        """A message the codec accepts; rooms are the good ones, or unknown, or huge."""
        rng = self._rng
        room = rng.choice([rng.choice(self._good_rooms), rng.randrange(10**6, 10**7), MAX_INT])
        blocks = tuple(rng.sample(range(MAX_INT - 10**6, MAX_INT), rng.randrange(1, 64)))
        nonce = rng.randrange(0, MAX_INT)
        choices: list[Message] = [
            PieceRequest(room, nonce, 1, 0, blocks, len(blocks) * 128, rng.randrange(1, 4)),
            PieceRequest(room, nonce, 2, rng.randrange(1, MAX_INT), (rng.randrange(8),), 128, 1),
            PieceWritten(room, nonce, 1, 0, 100, 100, rng.randrange(-(2**40), 2**40)),
            Announce(room, nonce, rng.randrange(1, MAX_INT)),
            Abort(room, nonce, "fuzz"),
            AbortAck(room, nonce),
            RegisterAck(rng.random() < 0.5, "fuzz"),
            Heartbeat(),
        ]
        return rng.choice(choices)

    def bad_register(self) -> Register:
        """A registration the encoder must refuse: its geometry is not the encoder's."""
        rng, layout = self._rng, self._layout
        regions = [
            BufferRegion(kind, 1 << (40 + i), layout.block_bytes(kind))
            for i, kind in enumerate(KINDS)
        ]
        block_size = layout.block_size
        flaw = rng.randrange(3)
        if flaw == 0:
            block_size += rng.randrange(1, 64)
        elif flaw == 1:
            del regions[rng.randrange(len(regions))]
        else:
            victim = rng.randrange(len(regions))
            regions[victim] = BufferRegion(regions[victim].kind, 1 << 44, rng.randrange(1, MAX_INT))
        return Register("127.0.0.1:1", block_size, rng.randrange(1, MAX_INT), tuple(regions))


def mutate(rng: random.Random, template: bytes) -> bytes:
    """``template`` with one to three bytes flipped, replaced, cut, inserted or deleted."""
    frame = bytearray(template)
    for _ in range(rng.randrange(1, 4)):
        if not frame:
            break
        position = rng.randrange(len(frame))
        kind = rng.randrange(5)
        if kind == 0:
            frame[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            frame[position] = rng.randrange(256)
        elif kind == 2:
            del frame[position:]
        elif kind == 3:
            frame[position:position] = rng.randbytes(rng.randrange(1, 16))
        else:
            del frame[position]
    return bytes(frame)


def predicted_rejection(frame: bytes) -> str | None:
    """The reason an encoder engine counts for ``frame`` from an unregistered peer, or
    None for a heartbeat (accepted, and harmless)."""
    try:
        message = decode(frame)
    except WireError as error:
        return error.reason
    if isinstance(message, Heartbeat):
        return None
    if isinstance(message, Register):
        return "bad_geometry"  # no template has an engine's geometry, mutated or not
    if isinstance(message, (PieceRequest, Abort)):
        return "unregistered_peer"  # whatever the room: only registered receivers join
    return "unexpected_kind"  # the receiver's messages, sent to a sender


@dataclass(frozen=True)
class Volley:
    """Multipart frames thrown from one routing identity (one connection)."""

    identity: bytes
    frames: Iterable[list[bytes]]


def wrong_envelopes(address: str) -> Iterator[Volley]:
    """Frames the control channel must refuse for their ZeroMQ envelope, each counted as
    ``malformed``: two or three parts instead of one (100, claiming ``address``), and a
    routing identity that is not a ``tcp://`` address (100 heartbeats)."""
    yield Volley(address.encode(), [[b"", b"two parts"], [b"a", b"b", b"c"]] * 50)
    yield Volley(b"\xffnot-an-address", [[encode(Heartbeat())]] * 100)


WRONG_ENVELOPES = 200  # frames in wrong_envelopes, all "malformed"


def unused_address(host: str) -> str:
    """``tcp://host:port`` with a port nobody listens on: a stranger's claimed identity."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return f"tcp://{host}:{probe.getsockname()[1]}"


def throw(target: str, volley: Volley, timeout_s: float, keys: EngineKeys | None = None) -> int:
    """Send every frame of ``volley`` to ``target`` and wait until they are on their way;
    a full queue waits (never drops: every frame is counted). With ``keys``, over CURVE
    as the engine they belong to. The number sent."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, volley.identity)
    dealer.setsockopt(zmq.SNDHWM, 10_000)
    if keys is not None:
        public, secret = keys.keypair()
        dealer.setsockopt(zmq.CURVE_SERVERKEY, AllowList(keys.allow_list).key_of(target) or b"")
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
        dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
    dealer.connect(target)
    deadline = time.monotonic() + timeout_s
    sent = 0
    try:
        for parts in volley.frames:
            while True:
                try:
                    dealer.send_multipart(parts, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if time.monotonic() >= deadline:
                        raise TimeoutError("the endpoint stopped taking frames") from None
                    dealer.poll(100, zmq.POLLOUT)
            sent += 1
    finally:
        dealer.close(linger=int(timeout_s * 1000))  # term() waits until all is sent
        context.term()
    return sent
