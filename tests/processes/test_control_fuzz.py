"""A live encoder endpoint takes >= 100,000 hostile frames while good rooms run through it.

The sender and receiver engines run in this process on their real transports (ZeroMQ on
127.0.0.1, Mooncake over TCP); a raw DEALER claiming an address nobody registered throws
the frames of ``embxfer.fuzz`` (random bytes, mutated valid frames, valid messages for
rooms that exist or not, registrations with the wrong geometry, wrong versions, wrong
framing), each with a predicted fate: dropped by the channel (counted by wire reason),
refused by the engine (counted by engine reason), or a harmless heartbeat. The counters
must match the prediction exactly, the engine must not log an error, and every good room
must arrive byte-exact. ``embxfer demo --fuzz-frames`` does the same across processes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar, get_args

import pytest

from embxfer.demo import DemoSettings, RoomOutcome, receiver_outcome
from embxfer.fsm.poll import KVPoll
from embxfer.fuzz import (
    OVERSIZED,
    WRONG_ENVELOPES,
    HostileFrames,
    Volley,
    predicted_rejection,
    throw,
    unused_address,
    wrong_envelopes,
)
from embxfer.receiver import ReceiverEngine
from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
from embxfer.runtime import Runtime
from embxfer.sender import SenderEngine
from embxfer.transport.mooncake_data import available
from embxfer.transport.wire import RejectReason
from embxfer.workload import payload_for

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


@pytest.fixture
def engines() -> Iterator[tuple[SenderEngine, ReceiverEngine]]:
    network = NetworkConfig()
    sender = remote_sender(SETTINGS.sender_config(), network)
    try:
        receiver = remote_receiver(SETTINGS.receiver_config(), network)
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
    engines: tuple[SenderEngine, ReceiverEngine], caplog: pytest.LogCaptureFixture
) -> None:
    sender, receiver = engines
    caplog.set_level(logging.ERROR)
    rng = random.Random(SEED)
    hostile = HostileFrames(rng, range(1, 10_000), SETTINGS.sender_config().layout)
    frames = [*hostile.frames(FRAMES), *OVERSIZED]
    # Identities claim addresses nobody registered; each its own (a ROUTER hands a
    # reused identity over to the newest connection, dropping what the old one queued).
    volleys = [
        Volley(unused_address("127.0.0.1").encode(), [[frame] for frame in frames]),
        *wrong_envelopes("127.0.0.1"),
    ]
    thrown = len(frames) + WRONG_ENVELOPES
    assert thrown >= FRAMES
    expected = Counter(r for f in frames if (r := predicted_rejection(f)) is not None)
    expected["malformed"] += WRONG_ENVELOPES
    wire = {r: n for r, n in expected.items() if r in WIRE_REASONS}
    engine_only = {r: n for r, n in expected.items() if r not in WIRE_REASONS}

    def all_taken_in() -> bool:
        """Every frame was judged: the channel's counters and the engine's own match."""
        counted = on_pump(sender, lambda: (sender.control.rejected, dict(sender.stats.rejected)))
        return counted[0] == wire and {r: counted[1].get(r, 0) for r in engine_only} == engine_only

    fuzzers = [
        threading.Thread(target=throw, args=(sender.address, volley, WAIT_S), daemon=True)
        for volley in volleys
    ]
    started = time.monotonic()
    for fuzzer in fuzzers:
        fuzzer.start()
    outcomes: list[RoomOutcome] = []
    lengths = iter(SETTINGS.lengths() * 100)
    while len(outcomes) < 20 or not all_taken_in():  # good rooms all along the flood
        assert time.monotonic() < started + WAIT_S, "the frames were not all judged in time"
        outcomes.append(run_good_room(sender, receiver, len(outcomes) + 1, next(lengths)))
    judged_s = time.monotonic() - started
    for fuzzer in fuzzers:
        fuzzer.join(WAIT_S)

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
