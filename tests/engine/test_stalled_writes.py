"""A write that never returns (a stalled Mooncake peer holds one for ~60 s) must not
hold up anything but itself: the room fails by its deadline while the write is still
blocked, other receivers' rooms go on, and no block is freed while the write may land.

Real engine threads (a pump each, a writer thread per receiver) on the in-process
transport, with the sender's writes to one receiver blocked until the test lets go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from embxfer import EngineConfig, KVPoll, Timeouts
from embxfer.receiver import ReceiverEngine
from embxfer.runtime import Engine
from embxfer.sender import SenderEngine
from embxfer.tools.workload import payload_for
from embxfer.transport.base import Segment, WriteResult
from embxfer.transport.inproc import InprocControlChannel, InprocDataTransport, InprocNetwork

PROGRESS_S = 0.5
CONFIG = EngineConfig(
    num_blocks=256,
    hidden_size=32,
    timeouts=Timeouts(bootstrap_s=5.0, progress_s=PROGRESS_S),  # write grace: the default
    heartbeat_s=0.05,
)
WAIT_S = 10.0


class StallingTransport(InprocDataTransport):
    """Writes to ``stalled`` block until ``release`` is set (as a stopped Mooncake peer's
    do), and record that they started."""

    def __init__(self, network: InprocNetwork, session_id: str, stalled: str) -> None:
        super().__init__(network, session_id)
        self.stalled = stalled
        self.started = threading.Event()
        self.release = threading.Event()
        self.tried = 0  # writes to the stalled peer that were tried

    def write(self, peer_session: str, segments: Sequence[Segment]) -> WriteResult:
        if peer_session == self.stalled:
            self.tried += 1
            self.started.set()
            self.release.wait(WAIT_S)
        return super().write(peer_session, segments)


class Rig:
    def __init__(self, config: EngineConfig) -> None:
        network = InprocNetwork()
        self.data = StallingTransport(network, "encoder-data", stalled="language-1-data")
        self.sender = SenderEngine(config, InprocControlChannel(network, "encoder"), self.data)
        self.receivers = [
            ReceiverEngine(
                config,
                InprocControlChannel(network, f"language-{rank}"),
                InprocDataTransport(network, f"language-{rank}-data"),
            )
            for rank in range(2)
        ]
        self.engines: list[Engine[Any, Any]] = [self.sender, *self.receivers]


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    rig = Rig(getattr(request, "param", CONFIG))
    for engine in rig.engines:
        engine.start()
    try:
        yield rig
    finally:
        rig.data.release.set()
        for engine in rig.engines:
            engine.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_room_fails_by_deadline_while_its_write_is_stuck_and_others_go_on(rig: Rig) -> None:
    sender, (healthy, stalled) = rig.sender, rig.receivers
    stuck = sender.create_room(1)
    stuck_rx = stalled.create_room(1, sender.address)
    stuck.send(payload_for(1, 3000, sender.layout, seed=1))
    assert rig.data.started.wait(WAIT_S)
    blocked_at = time.monotonic()

    # Writes to the healthy receiver have their own thread: a room to it succeeds now.
    good = sender.create_room(2)
    good_rx = healthy.create_room(2, sender.address)
    good.send(payload_for(2, 3000, sender.layout, seed=1))
    wait_for(lambda: good_rx.poll() is KVPoll.Success, "the healthy room did not succeed")
    assert good_rx.result().equals(payload_for(2, 3000, healthy.layout, seed=1))

    # The stuck room fails on both sides by its deadline, not when the write returns.
    wait_for(lambda: stuck.poll() is KVPoll.Failed, "the sender room did not fail")
    wait_for(lambda: stuck_rx.poll() is KVPoll.Failed, "the receiver room did not fail")
    assert time.monotonic() - blocked_at < PROGRESS_S + 1.0
    assert "deadline" in stuck.reason
    assert "deadline" in stuck_rx.reason
    for handle in (good, good_rx, stuck, stuck_rx):
        handle.release()

    # While the write may still land, neither side frees the blocks it touches.
    time.sleep(0.2)
    assert sender.allocator.used_blocks > 0
    assert stalled.allocator.used_blocks > 0
    assert healthy.allocator.used_blocks == 0

    # Once the write is over, the sender acknowledges the receiver's abort: all is freed.
    rig.data.release.set()
    wait_for(
        lambda: not any(e.allocator.used_blocks or e.rooms for e in rig.engines),
        "blocks were not freed once the write ended",
    )


@pytest.mark.parametrize("rig", [CONFIG.replace(peer_timeout_s=0.3)], indirect=True)
def test_writes_queued_behind_a_stuck_one_are_dropped_once_the_peer_is_lost(rig: Rig) -> None:
    sender, stalled = rig.sender, rig.receivers[1]
    sent = [sender.create_room(room_id) for room_id in (1, 2, 3)]
    for handle in sent:
        stalled.create_room(handle.room_id, sender.address)
        handle.send(payload_for(handle.room_id, 3000, sender.layout, seed=1))
    assert rig.data.started.wait(WAIT_S)
    time.sleep(0.05)  # the other rooms' writes queue behind the stuck one
    stalled.close()  # it falls silent: the sender declares it lost, its rooms fail
    wait_for(lambda: all(h.poll() is KVPoll.Failed for h in sent), "rooms did not fail")
    for handle in sent:
        assert "lost" in handle.reason, handle.reason
        handle.release()

    # Each try at a dead Mooncake peer holds the writer about a second: the queued
    # writes are not tried, and the rooms' blocks come back as soon as the stuck one ends.
    rig.data.release.set()
    wait_for(lambda: not sender.rooms, "the sender did not forget its rooms")
    assert rig.data.tried == 1
    assert sender.allocator.used_blocks == 0
