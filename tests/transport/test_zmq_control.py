"""ZmqControlChannel over real sockets on 127.0.0.1: delivery, identity, rejects, wake, and
CURVE with per-engine keys: who may connect, and for which address each key may speak."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import msgspec
import pytest
import zmq

from embxfer.fsm.messages import (
    Abort,
    AbortAck,
    Heartbeat,
    Message,
    PieceRequest,
    RegisterAck,
)
from embxfer.transport.base import ControlChannel, Inbound
from embxfer.transport.curve_keys import EngineKeys, generate_keys
from embxfer.transport.wire import MAX_FRAME_BYTES, encode
from embxfer.transport.zmq_control import ZmqControlChannel

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
            room=1,
            nonce=7,
            seq=1,
            sent_tokens=0,
            blocks=(0,),
            allocated_tokens=128,
            required_receivers=1,
        ),
    )
    [request] = collect(b, 1)
    b.send(request.peer, Abort(room=1, nonce=0, reason="no"))
    assert [item.message for item in collect(a, 1)] == [Abort(room=1, nonce=0, reason="no")]


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
        a.send(b.address, AbortAck(room=1, nonce=0))
        assert len(collect(b, 1)) == 1
        a.send(c.address, AbortAck(room=2, nonce=0))  # closes the DEALER to b
        assert len(collect(c, 1)) == 1
        a.send(b.address, AbortAck(room=3, nonce=0))
        assert [item.message for item in collect(b, 1)] == [AbortAck(room=3, nonce=0)]


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


# -- CURVE -----------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path: Path) -> dict[str, EngineKeys]:
    """Keys for engines a, b and c and a spoofer, each certificate naming a free port."""
    return generate_keys(tmp_path, {name: dead_address() for name in ("a", "b", "c", "spoofer")})


def curve_dealer(
    context: zmq.Context[zmq.Socket[bytes]],
    target: ZmqControlChannel,
    server_key: bytes,
    identity: bytes,
    keypair: tuple[bytes, bytes] | None,
) -> zmq.Socket[bytes]:
    """A hand-made client of ``target``: with ``keypair`` a CURVE client, else in the clear."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, identity)
    if keypair is not None:
        dealer.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
        dealer.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])
    dealer.connect(target.address)
    return dealer


def judged(server: ZmqControlChannel, reason: str, at_least: int = 1) -> list[Inbound]:
    """What ``server`` delivers until it counted ``reason`` ``at_least`` times, then a
    short quiet watch."""
    got: list[Inbound] = []
    for _ in range(POLLS):
        got.extend(server.receive(0.1))
        if server.rejected.get(reason, 0) >= at_least:
            break
    got.extend(watch_quietly(server))
    return got


def test_curve_channels_speak_for_the_addresses_their_certificates_name(
    keys: dict[str, EngineKeys],
) -> None:
    with ZmqControlChannel(curve=keys["a"]) as a, ZmqControlChannel(curve=keys["b"]) as b:
        a.send(b.address, Heartbeat())
        [hello] = collect(b, 1)
        assert hello.peer == a.address
        b.send(hello.peer, RegisterAck(accepted=True))
        assert [item.message for item in collect(a, 1)] == [RegisterAck(accepted=True)]
        assert a.rejected == b.rejected == {}


def test_a_channel_must_be_where_its_certificate_says(
    keys: dict[str, EngineKeys], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="the certificate names"):
        ZmqControlChannel(port=int(dead_address().rsplit(":", 1)[1]), curve=keys["a"])
    [outsider] = generate_keys(tmp_path / "other", {"x": dead_address()}).values()
    with pytest.raises(ValueError, match="not in its allow-list"):
        ZmqControlChannel(curve=EngineKeys(outsider.secret_certificate, keys["a"].allow_list))


def test_a_peer_outside_the_allow_list_is_neither_admitted_nor_sent_to(
    keys: dict[str, EngineKeys], raw_context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    [outsider] = generate_keys(tmp_path / "other", {"x": dead_address()}).values()
    with ZmqControlChannel(curve=keys["a"]) as a, ZmqControlChannel(curve=keys["b"]) as b:
        intruder = curve_dealer(
            raw_context, b, keys["b"].keypair()[0], a.address.encode(), outsider.keypair()
        )
        intruder.send(encode(Abort(room=1, nonce=0, reason="intruder")))
        a.send(b.address, AbortAck(room=2, nonce=0))  # the real a, meanwhile

        got = judged(b, "unauthenticated")

        assert got == [Inbound(a.address, AbortAck(room=2, nonce=0))]
        assert set(b.rejected) == {"unauthenticated"}
        a.send("tcp://127.0.0.1:9", Heartbeat())  # no certificate names it
        assert a.dropped == {"unknown_peer": 1}


def test_a_client_in_the_clear_is_refused_by_a_curve_server(
    keys: dict[str, EngineKeys], raw_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with ZmqControlChannel(curve=keys["b"]) as b, ZmqControlChannel() as plain:
        plain.send(b.address, Heartbeat())
        clear = curve_dealer(raw_context, b, b"", b"tcp://127.0.0.1:9", None)
        clear.send(encode(Heartbeat()))

        assert judged(b, "handshake_failed") == []
        assert set(b.rejected) == {"handshake_failed"}


def test_a_valid_key_claiming_another_engines_address_is_refused(
    keys: dict[str, EngineKeys], raw_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with ZmqControlChannel(curve=keys["a"]) as a, ZmqControlChannel(curve=keys["b"]) as b:
        a.send(b.address, Heartbeat())
        assert [item.peer for item in collect(b, 1)] == [a.address]
        spoofer = curve_dealer(
            raw_context, b, keys["b"].keypair()[0], a.address.encode(), keys["spoofer"].keypair()
        )
        spoofer.send(encode(Abort(room=0, nonce=0, reason="spoofed")))
        assert judged(b, "identity_mismatch") == []
        # The spoofer is connected, claiming a's address: a's own connection still
        # carries everything a sends (a claim must not take a connection over).
        for room in range(1, 5):
            spoofer.send(encode(Abort(room=room, nonce=0, reason="spoofed")))
            a.send(b.address, AbortAck(room=room, nonce=0))

        got = judged(b, "identity_mismatch", at_least=5)

        assert got == [Inbound(a.address, AbortAck(room=room, nonce=0)) for room in range(1, 5)]
        assert b.rejected == {"identity_mismatch": 5}


def test_a_key_removed_from_the_allow_list_is_refused_after_a_reload(
    keys: dict[str, EngineKeys], raw_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    with (
        ZmqControlChannel(curve=keys["a"]) as a,
        ZmqControlChannel(curve=keys["b"]) as b,
        ZmqControlChannel(curve=keys["c"]) as c,
    ):
        a.send(b.address, Heartbeat())
        assert [item.peer for item in collect(b, 1)] == [a.address]
        (keys["a"].allow_list / "a.key").unlink()
        b.reload_allow_list()

        a.send(b.address, AbortAck(room=1, nonce=0))  # on the connection a already has
        fresh = curve_dealer(raw_context, b, keys["b"].keypair()[0], b"x", keys["a"].keypair())
        fresh.send(encode(AbortAck(room=2, nonce=0)))  # a new connection with a's key
        c.send(b.address, AbortAck(room=3, nonce=0))  # another engine is not affected

        got = judged(b, "unauthenticated")
        got += judged(b, "revoked_key")

        assert got == [Inbound(c.address, AbortAck(room=3, nonce=0))]
        assert b.rejected.keys() == {"revoked_key", "unauthenticated"}
        assert b.rejected["revoked_key"] == 1
        b.send(a.address, Heartbeat())  # nor does b speak to a any more
        assert b.dropped == {"unknown_peer": 1}


def test_a_reload_with_a_broken_certificate_keeps_the_list_in_force(
    keys: dict[str, EngineKeys],
) -> None:
    with ZmqControlChannel(curve=keys["a"]) as a, ZmqControlChannel(curve=keys["b"]) as b:
        (keys["b"].allow_list / "broken.key").write_text('curve\n    public-key = "x"\n')
        with pytest.raises(ValueError, match="names no tcp:// address"):
            b.reload_allow_list()
        a.send(b.address, Heartbeat())
        assert [item.peer for item in collect(b, 1)] == [a.address]
