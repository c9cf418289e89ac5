"""In-process control channels: delivery, order, wake-ups, unknown peers and garbage."""

from __future__ import annotations

import logging
import threading

import pytest

from embxfer.fsm.messages import AbortAck, Heartbeat
from embxfer.transport.base import ControlChannel, Inbound
from embxfer.transport.inproc import InprocControlChannel, InprocNetwork
from embxfer.transport.wire import encode


@pytest.fixture
def network() -> InprocNetwork:
    return InprocNetwork()


def test_is_a_control_channel(network: InprocNetwork) -> None:
    channel: ControlChannel = InprocControlChannel(network, "L0")
    assert channel.address == "L0"


def test_delivers_in_order_with_the_sender(network: InprocNetwork) -> None:
    sender = InprocControlChannel(network, "E0")
    receiver = InprocControlChannel(network, "L0")
    for room in range(100):
        sender.send("L0", AbortAck(room, 0))
    assert receiver.receive(0) == [Inbound("E0", AbortAck(room, 0)) for room in range(100)]
    assert receiver.receive(0) == []


def test_receive_times_out_empty(network: InprocNetwork) -> None:
    assert InprocControlChannel(network, "L0").receive(0.01) == []


def test_receive_waits_for_a_message_from_another_thread(network: InprocNetwork) -> None:
    sender = InprocControlChannel(network, "E0")
    receiver = InprocControlChannel(network, "L0")
    thread = threading.Thread(target=sender.send, args=("L0", Heartbeat()))
    thread.start()
    assert receiver.receive(60) == [Inbound("E0", Heartbeat())]
    thread.join()


def test_wake_ends_a_blocked_receive(network: InprocNetwork) -> None:
    channel = InprocControlChannel(network, "L0")
    results: list[list[Inbound]] = []
    waiter = threading.Thread(target=lambda: results.append(channel.receive(60)))
    waiter.start()
    channel.wake()
    waiter.join()
    assert results == [[]]


def test_a_wake_before_receive_is_not_lost_and_is_used_once(network: InprocNetwork) -> None:
    channel = InprocControlChannel(network, "L0")
    channel.wake()
    assert channel.receive(60) == []
    assert channel.receive(0) == []


def test_unknown_peer_is_dropped_and_counted(network: InprocNetwork) -> None:
    channel = InprocControlChannel(network, "E0")
    channel.send("nobody", Heartbeat())
    assert network.undeliverable == 1


def test_garbage_is_rejected_counted_and_logged_once(
    network: InprocNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    channel = InprocControlChannel(network, "L0")
    network.inject_frame("E9", "L0", b"garbage")
    network.inject_frame("E9", "L0", encode(Heartbeat()))
    network.inject_frame("E9", "L0", b"\xc1")
    with caplog.at_level(logging.WARNING, logger="embxfer.wire"):
        assert channel.receive(0) == [Inbound("E9", Heartbeat())]
    assert channel.rejected == {"malformed": 2}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "E9" in caplog.records[0].getMessage()


def test_address_is_exclusive_until_closed(network: InprocNetwork) -> None:
    channel = InprocControlChannel(network, "L0")
    with pytest.raises(ValueError, match="L0"):
        InprocControlChannel(network, "L0")
    channel.close()
    channel.close()
    InprocControlChannel(network, "E0").send("L0", Heartbeat())
    assert network.undeliverable == 1
    assert InprocControlChannel(network, "L0").receive(0) == []


def test_concurrent_senders_keep_per_peer_order(network: InprocNetwork) -> None:
    receiver = InprocControlChannel(network, "L0")
    senders = [InprocControlChannel(network, f"E{i}") for i in range(4)]

    def send_rooms(sender: InprocControlChannel) -> None:
        for room in range(500):
            sender.send("L0", AbortAck(room, 0))

    threads = [threading.Thread(target=send_rooms, args=(sender,)) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received = receiver.receive(0)
    assert len(received) == 2000
    for sender in senders:
        rooms = [
            inbound.message.room
            for inbound in received
            if inbound.peer == sender.address and isinstance(inbound.message, AbortAck)
        ]
        assert rooms == list(range(500))
