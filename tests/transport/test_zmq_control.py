"""ZmqControlChannel over real sockets on 127.0.0.1: delivery, identity, rejects, wake, CURVE."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import get_args

import msgspec
import pytest
import zmq

from embxfer.transport.base import ControlChannel, Inbound
from embxfer.transport.messages import (
    Abort,
    AbortAck,
    Heartbeat,
    Message,
    PieceRequest,
    RegisterAck,
)
from embxfer.transport.wire import MAX_FRAME_BYTES, encode
from embxfer.transport.zmq_control import CurveKeys, ZmqControlChannel, generate_curve_keys

from .message_samples import EXAMPLES

POLLS = 40  # receive(0.1) calls a test may spend waiting: bounds every wait to ~4 s
QUIET_POLLS = 3  # how long "nothing arrives" is watched


def collect(channel: ZmqControlChannel, count: int) -> list[Inbound]:
    """Receive until ``count`` messages arrived (or the poll budget is spent)."""
    got: list[Inbound] = []
    for _ in range(POLLS):
        if len(got) >= count:
            break
        got.extend(channel.receive(0.1))
    return got


def watch_quietly(channel: ZmqControlChannel) -> list[Inbound]:
    """What arrives in a short window where nothing should."""
    got: list[Inbound] = []
    for _ in range(QUIET_POLLS):
        got.extend(channel.receive(0.1))
    return got


def dead_address() -> str:
    """A loopback port nobody listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must close what it opened: same file descriptors and threads afterwards."""
    fds = set(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    yield
    assert set(os.listdir("/proc/self/fd")) <= fds
    assert threading.active_count() == threads


@pytest.fixture
def pair() -> Iterator[tuple[ZmqControlChannel, ZmqControlChannel]]:
    with ZmqControlChannel() as a, ZmqControlChannel() as b:
        yield a, b


@pytest.fixture
def raw_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A separate context for hand-made sockets that play misbehaving peers."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def raw_dealer(
    context: zmq.Context[zmq.Socket[bytes]], target: str, identity: bytes | None
) -> zmq.Socket[bytes]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        dealer.setsockopt(zmq.ROUTING_ID, identity)
    dealer.connect(target)
    return dealer


def test_is_a_control_channel_at_a_loopback_address(pair: tuple[ZmqControlChannel, ...]) -> None:
    a, b = pair
    channel: ControlChannel = a
    assert channel is a
    assert a.address.startswith("tcp://127.0.0.1:")
    assert a.address != b.address


def test_every_kind_both_ways_in_order_with_sender_address(
    pair: tuple[ZmqControlChannel, ZmqControlChannel],
) -> None:
    a, b = pair
    assert {type(message) for message in EXAMPLES} == set(get_args(Message))
    for message in EXAMPLES:
        a.send(b.address, message)
        b.send(a.address, message)

    at_b = collect(b, len(EXAMPLES))
    at_a = collect(a, len(EXAMPLES))

    assert [item.message for item in at_b] == list(EXAMPLES)
    assert [item.message for item in at_a] == list(EXAMPLES)
    assert {item.peer for item in at_b} == {a.address}
    assert {item.peer for item in at_a} == {b.address}
    assert a.rejected == b.rejected == {}
    assert a.dropped == b.dropped == {}


def test_reply_reaches_the_sender_through_its_inbound_peer(
    pair: tuple[ZmqControlChannel, ZmqControlChannel],
) -> None:
    a, b = pair
    a.send(
        b.address,
        PieceRequest(
            room=1, sent_tokens=0, blocks=(0,), allocated_tokens=128, required_receivers=1
        ),
    )
    [request] = collect(b, 1)
    b.send(request.peer, Abort(room=1, reason="no"))
    assert [item.message for item in collect(a, 1)] == [Abort(room=1, reason="no")]


def test_invalid_frames_are_counted_and_never_returned(
    pair: tuple[ZmqControlChannel, ZmqControlChannel], raw_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    _, b = pair
    liar = raw_dealer(raw_context, b.address, b"tcp://127.0.0.1:9")
    anonymous = raw_dealer(raw_context, b.address, None)  # ZeroMQ makes up a binary identity
    liar.send(b"\xc1 is never msgpack")
    liar.send_multipart([encode(Heartbeat()), b"extra frame"])
    liar.send(b"\x00" * (MAX_FRAME_BYTES + 1))
    liar.send(msgspec.msgpack.encode({"v": 99, "m": {"type": "heartbeat"}}))
    liar.send(encode(Heartbeat()))  # the only valid frame
    anonymous.send(encode(Heartbeat()))
    expected = {"malformed": 3, "too_large": 1, "bad_version": 1}

    got: list[Inbound] = []
    for _ in range(POLLS):
        got.extend(b.receive(0.1))
        if got and b.rejected == expected:
            break

    assert got == [Inbound(peer="tcp://127.0.0.1:9", message=Heartbeat())]
    assert b.rejected == expected


def test_sends_to_dead_or_bad_addresses_return_and_are_counted() -> None:
    with ZmqControlChannel(queue_limit=1) as a:
        dead = dead_address()
        for _ in range(20):
            a.send(dead, Heartbeat())
        a.send("not an endpoint", Heartbeat())
        assert a.dropped["queue_full"] >= 1
        assert a.dropped["bad_address"] == 1


def test_a_peer_coming_up_late_gets_what_was_queued_for_it() -> None:
    with ZmqControlChannel() as a:
        b = ZmqControlChannel()
        late_address = b.address
        b.close()
        a.send(late_address, Heartbeat())
        port = int(late_address.rsplit(":", 1)[1])
        with ZmqControlChannel(port=port) as late:
            assert late.address == late_address
            assert [item.message for item in collect(late, 1)] == [Heartbeat()]


def test_least_recently_used_peer_is_reconnected_after_eviction() -> None:
    with (
        ZmqControlChannel(max_peers=1) as a,
        ZmqControlChannel() as b,
        ZmqControlChannel() as c,
    ):
        a.send(b.address, AbortAck(room=1))
        assert len(collect(b, 1)) == 1
        a.send(c.address, AbortAck(room=2))  # closes the DEALER to b
        assert len(collect(c, 1)) == 1
        a.send(b.address, AbortAck(room=3))
        assert [item.message for item in collect(b, 1)] == [AbortAck(room=3)]


def test_wake_unblocks_a_waiting_receive(pair: tuple[ZmqControlChannel, ...]) -> None:
    a, _ = pair
    results: list[list[Inbound]] = []
    waiter = threading.Thread(target=lambda: results.append(a.receive(5.0)))
    waiter.start()
    a.wake()
    waiter.join(timeout=4.0)
    assert not waiter.is_alive()
    assert results == [[]]


def test_wakes_from_many_threads_coalesce(pair: tuple[ZmqControlChannel, ...]) -> None:
    a, _ = pair

    def wake_often() -> None:
        for _ in range(200):
            a.wake()

    wakers = [threading.Thread(target=wake_often) for _ in range(4)]
    for waker in wakers:
        waker.start()
    for waker in wakers:
        waker.join()
    assert a.receive(5.0) == []  # returns at once on the pending wake
    a.send(a.address, Heartbeat())
    assert [item.message for item in collect(a, 1)] == [Heartbeat()]


def test_close_is_idempotent_and_later_calls_are_harmless() -> None:
    a = ZmqControlChannel()
    a.close()
    a.close()
    a.wake()
    a.send("tcp://127.0.0.1:9", Heartbeat())
    assert a.receive(5.0) == []
    assert a.dropped == {"closed": 1}


def test_wildcard_bind_needs_an_advertised_host() -> None:
    with pytest.raises(ValueError, match="advertise_host"):
        ZmqControlChannel(host="0.0.0.0")
    with (
        ZmqControlChannel(host="0.0.0.0", advertise_host="127.0.0.1") as a,
        ZmqControlChannel() as b,
    ):
        assert a.address.startswith("tcp://127.0.0.1:")
        b.send(a.address, Heartbeat())
        assert [item.peer for item in collect(a, 1)] == [b.address]


def test_curve_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="40-byte"):
        CurveKeys(public_key=b"short", secret_key=b"short")


def test_curve_channels_with_the_deployment_keys_talk() -> None:
    keys = generate_curve_keys()
    with ZmqControlChannel(curve=keys) as a, ZmqControlChannel(curve=keys) as b:
        a.send(b.address, Heartbeat())
        [hello] = collect(b, 1)
        assert hello.peer == a.address
        b.send(hello.peer, RegisterAck(accepted=True))
        assert [item.message for item in collect(a, 1)] == [RegisterAck(accepted=True)]


def test_a_channel_without_keys_cannot_reach_a_curve_server() -> None:
    with (
        ZmqControlChannel(curve=generate_curve_keys()) as server,
        ZmqControlChannel() as plain,
    ):
        plain.send(server.address, Heartbeat())
        assert watch_quietly(server) == []


def test_a_client_knowing_only_the_public_key_is_refused(
    raw_context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    keys = generate_curve_keys()
    own_public, own_secret = zmq.curve_keypair()
    with ZmqControlChannel(curve=keys) as server:
        intruder = raw_context.socket(zmq.DEALER)
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.setsockopt(zmq.ROUTING_ID, b"tcp://127.0.0.1:9")
        intruder.setsockopt(zmq.CURVE_SERVERKEY, keys.public_key)
        intruder.setsockopt(zmq.CURVE_PUBLICKEY, own_public)
        intruder.setsockopt(zmq.CURVE_SECRETKEY, own_secret)
        intruder.connect(server.address)
        intruder.send(encode(Heartbeat()))

        got: list[Inbound] = []
        for _ in range(POLLS):
            got.extend(server.receive(0.1))
            if server.rejected:
                break
        got.extend(watch_quietly(server))

        assert got == []
        assert server.rejected.get("unauthenticated", 0) >= 1
