"""A live encoder endpoint takes >= 100,000 hostile frames while good rooms run through it.

The sender and receiver engines run in this process on their real transports (ZeroMQ on
127.0.0.1, Mooncake over TCP); a raw DEALER claiming an address nobody registered throws
random bytes, mutated valid frames, valid messages for rooms that exist or do not (with
huge block indices), registrations with the wrong geometry, wrong protocol versions and
wrong framing. Every frame's fate is predicted from the wire codec: the channel drops it
(counted by wire reason), or the engine refuses it (counted by engine reason), or it is
a heartbeat (harmless). The counters must match the prediction exactly, the engine must
not log an error, and every good room must arrive byte-exact.

It runs twice: in the clear, and with CURVE and per-engine keys, where each fuzzer holds
a key whose certificate names the address it claims (so the same frames get through to
be judged) and one more fuzzer, with a valid key, aborts the good rooms in the
receiver's name: every one of those must be refused as ``identity_mismatch``.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import msgspec
import pytest
import zmq

from embxfer.demo import DemoSettings, RoomOutcome, receiver_outcome
from embxfer.fsm.messages import (
    Abort,
    AbortAck,
    BufferRegion,
    Heartbeat,
    Message,
    PieceRequest,
    PieceWritten,
    Register,
    RegisterAck,
)
from embxfer.fsm.poll import KVPoll
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.runtime import Runtime
from embxfer.sender import SenderEngine
from embxfer.transport.curve_keys import AllowList, EngineKeys, generate_keys
from embxfer.transport.mooncake_data import available
from embxfer.transport.wire import (
    MAX_FRAME_BYTES,
    MAX_INT,
    RejectReason,
    WireError,
    decode,
    encode,
)
from embxfer.workload import payload_for
from tests.transport.message_samples import EXAMPLES

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here"),
]

FRAMES = 100_000
SETTINGS = DemoSettings(tokens="100:3000", default_alloc=512, hidden=64, concurrency=4)
SEED = 7
WIRE_REASONS = frozenset(get_args(RejectReason))
WAIT_S = 60.0  # bound on every wait below

T = TypeVar("T")


def on_pump(engine: Runtime[Any], read: Callable[[], T]) -> T:
    """``read()`` on the engine's pump thread, which owns everything ``read`` may touch."""
    result: Future[T] = Future()
    engine.submit(lambda: result.set_result(read()))
    return result.result(timeout=WAIT_S)


@dataclass(frozen=True)
class Fuzzer:
    """Who throws a batch: the address its routing identity claims, and with CURVE the
    keys it connects with (its certificate names ``address``)."""

    address: str
    keys: EngineKeys | None = None


@pytest.fixture(params=[False, True], ids=["clear", "curve"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, EngineKeys] | None:
    """None in the clear; with CURVE, keys for both engines and two fuzzers."""
    if not request.param:
        return None
    names = ("encoder", "receiver", "fuzzer-0", "fuzzer-1")
    return generate_keys(tmp_path, {name: unused_address() for name in names})


@pytest.fixture
def engines(
    keys: dict[str, EngineKeys] | None,
) -> Iterator[tuple[SenderEngine, ReceiverEngine]]:
    sender = remote_sender(
        SETTINGS.sender_config(), NetworkConfig(curve=keys["encoder"] if keys else None)
    )
    try:
        receiver = remote_receiver(
            SETTINGS.receiver_config(), NetworkConfig(curve=keys["receiver"] if keys else None)
        )
    except BaseException:
        sender.close()
        raise
    sender.start()
    receiver.start()
    try:
        yield sender, receiver
    finally:
        receiver.close()
        sender.close()


def fuzzers(keys: dict[str, EngineKeys] | None) -> list[Fuzzer]:
    """Two fuzzers claiming addresses nobody registered: in the clear any two; with
    CURVE, the addresses their own certificates name."""
    if keys is None:
        return [Fuzzer(unused_address()), Fuzzer(unused_address())]
    return [
        Fuzzer(AllowList(k.allow_list).address_of(k.keypair()[0].decode()) or "", k)
        for k in (keys["fuzzer-0"], keys["fuzzer-1"])
    ]


# -- frames ------------------------------------------------------------------------------
def hostile_frames(rng: random.Random, count: int, good_rooms: range) -> list[bytes]:
    """``count`` frames of every kind of trouble, valid ones included."""
    valid = [*EXAMPLES, *(valid_message(rng, good_rooms) for _ in range(200))]
    templates = [encode(message) for message in valid]
    makers: list[tuple[float, Callable[[], bytes]]] = [
        (0.30, lambda: rng.randbytes(rng.randrange(0, 200))),
        (0.40, lambda: mutate(rng, rng.choice(templates))),
        (0.18, lambda: encode(valid_message(rng, good_rooms))),
        (0.04, lambda: encode(bad_register(rng))),
        (0.04, lambda: msgspec.msgpack.encode({"v": rng.choice([0, 2, 99]), "m": {}})),
        (0.04, lambda: msgspec.msgpack.encode(rng.choice([[1, 2], {"v": 1}, "x", 3.5, None]))),
    ]
    weights = [weight for weight, _ in makers]
    frames = [rng.choices(makers, weights)[0][1]() for _ in range(count)]
    return [*frames, b"\x00" * (MAX_FRAME_BYTES + 1), b"\x92" * (MAX_FRAME_BYTES + 7)]


def valid_message(rng: random.Random, good_rooms: range) -> Message:
    """A message the codec accepts; rooms are the good ones, or unknown, or huge."""
    room = rng.choice([rng.choice(good_rooms), rng.randrange(10**6, 10**7), MAX_INT])
    blocks = tuple(rng.sample(range(MAX_INT - 10**6, MAX_INT), rng.randrange(1, 64)))
    choices: list[Message] = [
        PieceRequest(room, 0, blocks, len(blocks) * 128, rng.randrange(1, 4)),
        PieceRequest(room, rng.randrange(1, MAX_INT), (rng.randrange(0, 8),), 128, 1),
        PieceWritten(room, 0, 100, 100),
        Abort(room, "fuzz"),
        AbortAck(room),
        RegisterAck(rng.random() < 0.5, "fuzz"),
        Heartbeat(),
    ]
    return rng.choice(choices)


def bad_register(rng: random.Random) -> Register:
    """A registration the sender must refuse: its geometry is not the sender's."""
    layout = SETTINGS.sender_config().layout
    regions = [
        BufferRegion("embeddings", 1 << 40, layout.block_bytes("embeddings")),
        BufferRegion("fill_ids", 1 << 41, layout.block_bytes("fill_ids")),
        BufferRegion("mrope_positions", 1 << 42, layout.block_bytes("mrope_positions")),
        BufferRegion("aux", 1 << 43, layout.block_bytes("aux")),
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


def _decoded(frame: bytes) -> Message | WireError:
    try:
        return decode(frame)
    except WireError as error:
        return error


def predicted_rejection(frame: bytes) -> str | None:
    """The reason the encoder engine counts for ``frame`` from an unregistered peer, or
    None for a heartbeat (accepted, and harmless)."""
    message = _decoded(frame)
    if isinstance(message, WireError):
        return message.reason
    if isinstance(message, Heartbeat):
        return None
    if isinstance(message, Register):
        return "bad_geometry"  # no template has the encoder's geometry, mutated or not
    if isinstance(message, (PieceRequest, Abort)):
        return "unregistered_peer"  # whatever the room: only registered receivers join
    return "unexpected_kind"  # the receiver's messages, sent to a sender


def unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def throw(target: str, fuzzer: Fuzzer, identity: bytes, frames: list[list[bytes]]) -> None:
    """Send every multipart frame to ``target`` from a DEALER named ``identity`` with the
    fuzzer's keys; a full queue waits (never drops: the test counts every frame)."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, identity)
    dealer.setsockopt(zmq.SNDHWM, 10_000)
    if fuzzer.keys is not None:
        public, secret = fuzzer.keys.keypair()
        dealer.setsockopt(zmq.CURVE_SERVERKEY, AllowList(fuzzer.keys.allow_list).key_of(target))
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
        dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
    dealer.connect(target)
    deadline = time.monotonic() + WAIT_S
    try:
        for parts in frames:
            while True:
                try:
                    dealer.send_multipart(parts, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    assert time.monotonic() < deadline, "the endpoint stopped taking frames"
                    dealer.poll(100, zmq.POLLOUT)
    finally:
        dealer.close(linger=int(WAIT_S * 1000))  # term() waits until all is sent
        context.term()


# -- good rooms ------------------------------------------------------------------------
def run_good_room(
    sender: SenderEngine, receiver: ReceiverEngine, room_id: int, tokens: int
) -> RoomOutcome:
    sent = sender.create_room(room_id)
    got = receiver.create_room(room_id, sender.address)
    sent.send(payload_for(room_id, tokens, sender.layout, SEED))
    deadline = time.monotonic() + WAIT_S
    while got.poll() not in (KVPoll.Success, KVPoll.Failed) or sent.poll() not in (
        KVPoll.Success,
        KVPoll.Failed,
    ):
        assert time.monotonic() < deadline, f"room {room_id} did not end"
        time.sleep(0.001)
    outcome = receiver_outcome(got, receiver.layout, SEED, tokens)
    sent.release()
    got.release()
    return outcome


def test_hostile_frames_are_all_counted_and_good_rooms_stay_exact(
    engines: tuple[SenderEngine, ReceiverEngine],
    keys: dict[str, EngineKeys] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender, receiver = engines
    caplog.set_level(logging.ERROR)
    rng = random.Random(SEED)
    frames = hostile_frames(rng, FRAMES, good_rooms=range(1, 10_000))
    first, second = fuzzers(keys)
    # Identities claim addresses nobody registered; each its own (a ROUTER hands a
    # reused identity over to the newest connection, dropping what the old one queued).
    batches: list[tuple[Fuzzer, bytes, list[list[bytes]]]] = [
        (first, first.address.encode(), [[frame] for frame in frames]),
        (second, second.address.encode(), [[b"", b"two parts"], [b"a", b"b", b"c"]] * 50),
        (second, b"\xffnot-an-address", [[encode(Heartbeat())]] * 100),  # must be tcp://
    ]
    thrown = sum(len(batch) for _, _, batch in batches)
    assert thrown >= FRAMES
    expected = Counter(r for f in frames if (r := predicted_rejection(f)) is not None)
    expected["malformed"] += 100 + 100  # the wrong framings and the wrong identity
    if keys is not None:  # a valid key aborting the good rooms in the receiver's name
        spoofed = [[encode(Abort(room, "spoofed"))] for room in range(1, 101)]
        batches.append((second, receiver.address.encode(), spoofed))
        expected["identity_mismatch"] += len(spoofed)
    wire = {r: n for r, n in expected.items() if r in WIRE_REASONS}
    engine_only = {r: n for r, n in expected.items() if r not in WIRE_REASONS}

    def all_taken_in() -> bool:
        """Every frame was judged: the channel's counters and the engine's own match."""
        counted = on_pump(sender, lambda: (sender.control.rejected, dict(sender.stats.rejected)))
        channel = {r: n for r, n in counted[0].items() if r in WIRE_REASONS}
        return channel == wire and {r: counted[1].get(r, 0) for r in engine_only} == engine_only

    throwers = [
        threading.Thread(target=throw, args=(sender.address, *batch), daemon=True)
        for batch in batches
    ]
    started = time.monotonic()
    for thrower in throwers:
        thrower.start()
    outcomes: list[RoomOutcome] = []
    lengths = iter(SETTINGS.lengths() * 100)
    while len(outcomes) < 20 or not all_taken_in():  # good rooms all along the flood
        assert time.monotonic() < started + WAIT_S, "the frames were not all judged in time"
        outcomes.append(run_good_room(sender, receiver, len(outcomes) + 1, next(lengths)))
    judged_s = time.monotonic() - started
    for thrower in throwers:
        thrower.join(WAIT_S)

    # At its heartbeats the engine folds its channel's counts into its own: in the end
    # they account for every frame but the heartbeats, reason by reason.
    deadline = time.monotonic() + WAIT_S
    while (counted := on_pump(sender, lambda: Counter(sender.stats.rejected))) != expected:
        assert time.monotonic() < deadline, f"counted {dict(counted)}, expected {dict(expected)}"
        time.sleep(0.1)
    assert on_pump(receiver, lambda: dict(receiver.stats.rejected)) == {}
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
    assert sum(o.resumes for o in outcomes) > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    print(
        f"{thrown} frames judged in {judged_s:.1f} s ({thrown / judged_s:,.0f}/s) beside "
        f"{len(outcomes)} good rooms; rejected {dict(expected)}"
    )
