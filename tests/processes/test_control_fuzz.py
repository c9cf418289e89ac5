"""A live encoder endpoint takes >= 100,000 hostile frames while good rooms run through it.

The sender and receiver engines run in this process on their real transports (ZeroMQ on
127.0.0.1, Mooncake over TCP); a raw DEALER claiming an address nobody registered throws
the frames of ``embxfer.tools.fuzz`` (random bytes, mutated valid frames, valid messages for
rooms that exist or not, registrations with the wrong geometry, wrong versions, wrong
framing), each with a predicted fate: dropped by the channel (counted by wire reason),
refused by the engine (counted by engine reason), or a harmless heartbeat. The counters
must match the prediction exactly, the engine must not log an error, and every good room
must arrive byte-exact. ``embxfer demo --fuzz-frames`` does the same across processes.

It runs twice: in the clear, and with CURVE and per-engine keys, where each fuzzer holds
a key whose certificate names the address it claims (so the same frames get through to
be judged) and one more fuzzer, with a valid key, aborts the good rooms in the
receiver's name: every one of those must be refused as ``identity_mismatch``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import pytest

from embxfer.fsm.messages import Abort
from embxfer.fsm.poll import KVPoll
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.runtime import Engine
from embxfer.sender import SenderEngine
from embxfer.tools.demo import DemoSettings, RoomOutcome, receiver_outcome
from embxfer.tools.fuzz import (
    OVERSIZED,
    WRONG_ENVELOPES,
    HostileFrames,
    Volley,
    predicted_rejection,
    throw,
    unused_address,
    wrong_envelopes,
)
from embxfer.tools.workload import payload_for
from embxfer.transport.curve_keys import AllowList, EngineKeys, generate_keys
from embxfer.transport.mooncake_data import available
from embxfer.transport.wire import RejectReason, encode

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here"),
]

FRAMES = 100_000
SETTINGS = DemoSettings(tokens="100:3000", default_alloc=512, hidden=64, concurrency=4)
SEED = 7
WIRE_REASONS = frozenset(get_args(RejectReason))
WAIT_S = 60.0  # bound on every wait below
HOST = "127.0.0.1"

T = TypeVar("T")


def on_pump(engine: Engine[Any, Any], read: Callable[[], T]) -> T:
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
    return generate_keys(tmp_path, {name: unused_address(HOST) for name in names})


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
        return [Fuzzer(unused_address(HOST)), Fuzzer(unused_address(HOST))]
    return [
        Fuzzer(AllowList(k.allow_list).address_of(k.keypair()[0].decode()) or "", k)
        for k in (keys["fuzzer-0"], keys["fuzzer-1"])
    ]


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
    outcome = receiver_outcome(got, receiver.layout, SEED, tokens, room_id)
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
    hostile = HostileFrames(rng, range(1, 10_000), SETTINGS.sender_config().layout)
    frames = [*hostile.frames(FRAMES), *OVERSIZED]
    first, second = fuzzers(keys)
    # Identities claim addresses nobody registered; each its own (a ROUTER hands a
    # reused identity over to the newest connection, dropping what the old one queued).
    volleys: list[tuple[Fuzzer, Volley]] = [
        (first, Volley(first.address.encode(), [[frame] for frame in frames])),
        *((second, volley) for volley in wrong_envelopes(second.address)),
    ]
    thrown = len(frames) + WRONG_ENVELOPES
    assert thrown >= FRAMES
    expected = Counter(r for f in frames if (r := predicted_rejection(f)) is not None)
    expected["malformed"] += WRONG_ENVELOPES
    if keys is not None:  # a valid key aborting the good rooms in the receiver's name
        spoofed = [[encode(Abort(room, 0, "spoofed"))] for room in range(1, 101)]
        volleys.append((second, Volley(receiver.address.encode(), spoofed)))
        expected["identity_mismatch"] += len(spoofed)
    wire = {r: n for r, n in expected.items() if r in WIRE_REASONS}
    engine_only = {r: n for r, n in expected.items() if r not in WIRE_REASONS}

    def all_taken_in() -> bool:
        """Every frame was judged: the channel's counters and the engine's own match."""
        counted = on_pump(sender, lambda: (sender.control.rejected, dict(sender.stats.rejected)))
        channel = {r: n for r, n in counted[0].items() if r in WIRE_REASONS}
        return channel == wire and {r: counted[1].get(r, 0) for r in engine_only} == engine_only

    throwers = [
        threading.Thread(
            target=throw, args=(sender.address, volley, WAIT_S, fuzzer.keys), daemon=True
        )
        for fuzzer, volley in volleys
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
