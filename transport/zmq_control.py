"""ZeroMQ control channel: one ROUTER to receive, one DEALER per peer to send.

Each engine binds a ROUTER at its own address. To reach a peer it connects a DEALER
to the peer's ROUTER whose routing identity is its own address, so the receiving
ROUTER learns who sent a frame from the identity frame and can answer through its own
DEALER. One TCP connection per direction and pair keeps each peer's messages in order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from types import TracebackType

import zmq
from zmq.utils import z85

from embxfer.transport.base import Inbound
from embxfer.transport.messages import Message
from embxfer.transport.wire import RejectCounter, WireError, decode_inbound, encode

log = logging.getLogger(__name__)

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP spec (RFC 27)
_WAKE_ENDPOINT = "inproc://embxfer-wake"
_WAKE_HWM = 1024  # wakes queued before more are dropped (then plenty are pending)
_RECONNECT_IVL_MAX_MS = 2000  # back off from a dead peer instead of retrying every 100 ms
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", ""})


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The one CURVE keypair a deployment shares (Z85 text, 40 bytes each).

    Every engine's ROUTER is a CURVE server with this secret key and every DEALER a
    CURVE client presenting this same keypair, so one switch in the deployment's
    configuration turns encryption on everywhere. The channel answers ZAP requests
    itself and admits only clients that present this public key, which CURVE makes
    them prove by holding the secret key: a peer without the secret cannot connect.
    Any holder of the keypair can still claim any address as its identity.
    """

    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != 40 or len(self.secret_key) != 40:
            raise ValueError("CURVE keys must be 40-byte Z85 text (see generate_curve_keys)")


def generate_curve_keys() -> CurveKeys:
    """A fresh keypair for a deployment; distribute it to every engine out of band."""
    public_key, secret_key = zmq.curve_keypair()
    return CurveKeys(public_key=public_key, secret_key=secret_key)


class ZmqControlChannel:
    """:class:`~embxfer.transport.base.ControlChannel` over ZeroMQ TCP.

    ``send`` never blocks: each peer's DEALER queues up to ``queue_limit`` messages
    (also while the connection is still being set up, which is why IMMEDIATE is off:
    it would drop every first message to a new peer) and a send to a full queue is
    dropped and counted in ``dropped``. A dead peer therefore costs at most one
    bounded queue, and at most ``max_peers`` DEALERs are kept (least recently used
    is closed first, discarding what it still queued). Lost control messages are the
    runtime's to recover from with timeouts.

    ``receive`` returns frames that arrived, validated by the wire codec; anything
    invalid is dropped and counted in ``rejected``. The peer of an
    :class:`~embxfer.transport.base.Inbound` is the sender's advertised address, as
    the sender claims it in its routing identity.

    The channel owns its ``zmq.Context`` so that ``close`` can terminate it without
    waiting on anyone else's sockets. Everything except ``wake`` belongs to one thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        advertise_host: str | None = None,
        curve: CurveKeys | None = None,
        queue_limit: int = 1000,
        max_batch: int = 1024,
        max_peers: int = 1024,
    ) -> None:
        """Bind at ``host:port`` (an IPv4 address or name; ``port`` 0 or None: the OS picks).

        Peers are told ``advertise_host`` (default ``host``); binding a wildcard
        needs it, since advertising an unreachable address hangs peers.
        """
        if advertise_host is None:
            if host in _WILDCARD_HOSTS:
                raise ValueError(
                    f"binding to {host!r} needs advertise_host, an address peers reach"
                )
            advertise_host = host
        self._curve = curve
        self._curve_client_key = z85.decode(curve.public_key) if curve is not None else b""
        self._queue_limit = queue_limit
        self._max_batch = max_batch
        self._max_peers = max_peers
        self._dealers: OrderedDict[str, zmq.Socket[bytes]] = OrderedDict()
        self._closed = False
        self._wake_lock = threading.Lock()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._zap = self._bind_zap()
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.setsockopt(zmq.RCVHWM, queue_limit)
            # A sender restarted at the same address takes its identity over at once.
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if curve is not None:
                self._router.setsockopt(zmq.CURVE_SERVER, 1)
                self._router.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
            self._router.bind(f"tcp://{host}:{port or '*'}")
            endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._address = f"tcp://{advertise_host}:{endpoint.rsplit(':', 1)[1]}"
            # The wake pipe's high-water marks must not be tiny: the PUSH side learns
            # that the PULL side drained the pipe only from a command ZeroMQ processes
            # lazily, so with a mark of 1 a wake after a drain often met a pipe it still
            # thought full and was dropped, and the pump slept out its whole timeout.
            self._wake_pull = self._ctx.socket(zmq.PULL)
            self._wake_pull.setsockopt(zmq.LINGER, 0)
            self._wake_pull.setsockopt(zmq.RCVHWM, _WAKE_HWM)
            self._wake_pull.bind(_WAKE_ENDPOINT)
            self._wake_push = self._ctx.socket(zmq.PUSH)
            self._wake_push.setsockopt(zmq.LINGER, 0)
            self._wake_push.setsockopt(zmq.SNDHWM, _WAKE_HWM)
            self._wake_push.connect(_WAKE_ENDPOINT)
        except BaseException:
            self._ctx.destroy(linger=0)
            raise
        self._frame_rejects = RejectCounter(self._address)
        self._auth_rejects = _Tally(f"{self._address} refused a CURVE client from")
        self._drops = _Tally(f"{self._address} dropped a message to")
        self._poller = zmq.Poller()
        for socket in (self._router, self._wake_pull, self._zap):
            if socket is not None:
                self._poller.register(socket, zmq.POLLIN)

    def _bind_zap(self) -> zmq.Socket[bytes] | None:
        """With CURVE, the ZAP handler must exist before the ROUTER accepts anyone."""
        if self._curve is None:
            return None
        zap = self._ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(_ZAP_ENDPOINT)
        return zap

    @property
    def address(self) -> str:
        """``tcp://host:port`` that peers send to."""
        return self._address

    @property
    def rejected(self) -> dict[str, int]:
        """Inbound frames dropped, by wire reason; refused CURVE clients are ``unauthenticated``."""
        return self._frame_rejects.snapshot() | self._auth_rejects.snapshot()

    @property
    def dropped(self) -> dict[str, int]:
        """Outbound messages dropped, by reason (queue full, bad address, closed)."""
        return self._drops.snapshot()

    def send(self, peer: str, message: Message) -> None:
        """Queue ``message`` for ``peer`` without blocking; drop and count if it cannot."""
        frame = encode(message)
        dealer = self._dealer(peer)
        if dealer is None:
            return
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._drops.add(peer, "queue_full")

    def _dealer(self, peer: str) -> zmq.Socket[bytes] | None:
        """The cached DEALER for ``peer``, connecting one (and evicting the LRU) if new."""
        if self._closed:
            self._drops.add(peer, "closed")
            return None
        dealer = self._dealers.get(peer)
        if dealer is not None:
            self._dealers.move_to_end(peer)
            return dealer
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, self._queue_limit)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        dealer.setsockopt(zmq.ROUTING_ID, self._address.encode())
        if self._curve is not None:
            dealer.setsockopt(zmq.CURVE_SERVERKEY, self._curve.public_key)
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.public_key)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret_key)
        try:
            dealer.connect(peer)
        except zmq.ZMQError:
            dealer.close()
            self._drops.add(peer, "bad_address")
            return None
        self._dealers[peer] = dealer
        if len(self._dealers) > self._max_peers:
            self._dealers.popitem(last=False)[1].close()
        return dealer

    def receive(self, timeout_s: float) -> list[Inbound]:
        """Valid messages that arrived, waiting up to ``timeout_s`` for one or a wake."""
        inbound: list[Inbound] = []
        if self._closed:
            return inbound
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            remaining_ms = math.ceil(max(deadline - time.monotonic(), 0.0) * 1000)
            ready = dict(self._poller.poll(remaining_ms))
            if self._zap is not None and self._zap in ready:
                self._answer_zap(self._zap)
            woken = self._wake_pull in ready
            if woken:
                self._drain_wakes()
            if self._router in ready:
                self._drain_router(inbound)
            if inbound or woken or time.monotonic() >= deadline:
                return inbound

    def _drain_router(self, inbound: list[Inbound]) -> None:
        """Take up to ``max_batch`` frames so one busy peer cannot stall the pump."""
        for _ in range(self._max_batch):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            item = self._validate(frames)
            if item is not None:
                inbound.append(item)

    def _validate(self, frames: list[bytes]) -> Inbound | None:
        """ROUTER frames ``[identity, payload]`` -> Inbound, or count the reason and drop.

        A wrong shape counts as ``malformed``: the multipart framing is this channel's
        envelope around the wire codec's.
        """
        peer = _peer_address(frames[0])
        if peer is None:
            self._frame_rejects.record(
                repr(frames[0]), WireError("malformed", "routing identity is no tcp:// address")
            )
            return None
        if len(frames) != 2:
            self._frame_rejects.record(
                peer, WireError("malformed", f"{len(frames) - 1} frames, not 1")
            )
            return None
        return decode_inbound(peer, frames[1], self._frame_rejects)

    def _drain_wakes(self) -> None:
        while True:
            try:
                self._wake_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _answer_zap(self, zap: zmq.Socket[bytes]) -> None:
        """Admit a CURVE client only if it proved it holds the deployment's keypair.

        Answered on the pump thread inside ``receive``, so no authenticator thread is
        needed; a handshake waits for the next ``receive``.
        """
        request = zap.recv_multipart()
        # ZAP 1.0 request: version, request id, domain, address, identity, mechanism, key.
        allowed = (
            len(request) == 7 and request[5] == b"CURVE" and request[6] == self._curve_client_key
        )
        if not allowed:
            address = request[3].decode("ascii", "replace") if len(request) > 3 else "?"
            self._auth_rejects.add(address, "unauthenticated")
        status = (b"200", b"OK") if allowed else (b"400", b"unknown client key")
        zap.send_multipart([b"1.0", request[1], *status, b"", b""])

    def wake(self) -> None:
        """Make a blocked ``receive`` return; any thread may call it, also after close."""
        with self._wake_lock:
            if self._closed:
                return
            with contextlib.suppress(zmq.Again):  # a wake is already pending; one is enough
                self._wake_push.send(b"", zmq.NOBLOCK)

    def close(self) -> None:
        """Close every socket and terminate the context; idempotent."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        self._dealers.clear()
        self._ctx.destroy(linger=0)

    def __enter__(self) -> ZmqControlChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Tally:
    """Counts events by reason; logs each reason's first occurrence at WARNING, later at DEBUG."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, peer: str, reason: str) -> None:
        with self._lock:
            first = reason not in self._counts
            self._counts[reason] += 1
        log.log(logging.WARNING if first else logging.DEBUG, "%s %s: %s", self._what, peer, reason)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _peer_address(identity: bytes) -> str | None:
    """The sender's address from its routing identity; ZeroMQ's generated ids fail."""
    try:
        peer = identity.decode("ascii")
    except UnicodeDecodeError:
        return None
    return peer if peer.startswith("tcp://") else None
