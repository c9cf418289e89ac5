"""ZeroMQ control channel: one ROUTER to receive, one DEALER per peer to send.

Each engine binds a ROUTER at its own address. To reach a peer it connects a DEALER
to the peer's ROUTER whose routing identity names its own address, so the receiving
ROUTER learns who sent a frame from the identity frame and can answer through its own
DEALER. One TCP connection per direction and pair keeps each peer's messages in order.

With per-engine CURVE keys (``transport.curve_keys``) the identity is no longer taken
on trust: pyzmq's authenticator admits only keys in the allow-list, every frame carries
its connection's authenticated key (the ZAP User-Id), and a frame whose claimed address
is not the one its key's certificate names is refused before it is decoded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from types import TracebackType

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from embxfer.fsm.messages import Message
from embxfer.transport.base import Inbound
from embxfer.transport.curve_keys import AllowList, EngineKeys
from embxfer.transport.tally import Tally
from embxfer.transport.wire import decode_inbound, encode, reject_tally

log = logging.getLogger(__name__)

_WAKE_ENDPOINT = "inproc://embxfer-wake"
_WAKE_HWM = 1024  # wakes queued before more are dropped (then plenty are pending)
_RECONNECT_IVL_MAX_MS = 2000  # back off from a dead peer instead of retrying every 100 ms
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", ""})
_ZAP_ALL_DOMAINS = "*"
# A routing identity is "<address>#<nonce>", a fresh random nonce for each DEALER: a
# client claiming another engine's address (even one that learned the nonce that engine
# uses towards it) never takes that engine's connection to a third over. ROUTER_HANDOVER
# gives an identity to its newest claimant, dropping what the old connection had queued.
_NONCE_SEPARATOR = "#"
_NONCE_BYTES = 8
# Handshakes the ROUTER refused, as its monitor reports them, and how they are counted.
_HANDSHAKE_REFUSALS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "unauthenticated",  # the allow-list lacks the key
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",  # e.g. no CURVE at all
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",  # e.g. a wrong server key
}


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
    invalid is dropped and counted in ``rejected``, as are refused handshakes. The peer
    of an :class:`~embxfer.transport.base.Inbound` is the sender's advertised address:
    in the clear, as the sender claims it in its routing identity; with ``curve``, the
    address its authenticated key's certificate names (a frame claiming any other is
    refused as ``identity_mismatch``).

    The channel owns its ``zmq.Context`` so that ``close`` can terminate it without
    waiting on anyone else's sockets. Everything except ``wake`` and
    ``reload_allow_list`` belongs to one thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        advertise_host: str | None = None,
        curve: EngineKeys | None = None,
        queue_limit: int = 1000,
        max_batch: int = 1024,
        max_peers: int = 1024,
    ) -> None:
        """Bind at ``host:port`` (an IPv4 address or name; ``port`` 0 or None: the OS picks).

        Peers are told ``advertise_host`` (default ``host``); binding a wildcard
        needs it, since advertising an unreachable address hangs peers. With ``curve``
        the engine's certificate names its address: ``port`` 0 binds the port it names,
        and a channel whose address differs from it raises ValueError.
        """
        if advertise_host is None:
            if host in _WILDCARD_HOSTS:
                raise ValueError(
                    f"binding to {host!r} needs advertise_host, an address peers reach"
                )
            advertise_host = host
        self._curve = curve
        self._keypair = curve.keypair() if curve is not None else (b"", b"")
        self._allowed = AllowList(curve.allow_list) if curve is not None else None
        certified = self._certified_address()
        if certified and not port:
            port = int(certified.rsplit(":", 1)[1])
        self._queue_limit = queue_limit
        self._max_batch = max_batch
        self._max_peers = max_peers
        # peer -> (its DEALER, the server key it was connected with: b"" in the clear)
        self._dealers: OrderedDict[str, tuple[zmq.Socket[bytes], bytes]] = OrderedDict()
        self._closed = False
        self._wake_lock = threading.Lock()
        self._wake_pending = False  # a wake is in the pipe, not drained: no need for another
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._authenticator: ThreadAuthenticator | None = None
        try:
            self._start_authenticator()
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.setsockopt(zmq.RCVHWM, queue_limit)
            # The same DEALER reconnecting (a network blip) takes its identity over at once.
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if curve is not None:
                self._router.setsockopt(zmq.CURVE_SERVER, 1)
                self._router.setsockopt(zmq.CURVE_SECRETKEY, self._keypair[1])
            self._monitor = self._router.get_monitor_socket(sum(_HANDSHAKE_REFUSALS))
            self._router.bind(f"tcp://{host}:{port or '*'}")
            endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._address = f"tcp://{advertise_host}:{endpoint.rsplit(':', 1)[1]}"
            if certified and certified != self._address:
                raise ValueError(
                    f"the certificate names {certified}, the channel is {self._address}"
                )
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
            self._terminate()
            raise
        self._frame_rejects = reject_tally(self._address)
        self._refusals = Tally(log, f"{self._address} refused")
        self._drops = Tally(log, f"{self._address} dropped a message to")
        self._poller = zmq.Poller()
        for socket in (self._router, self._wake_pull, self._monitor):
            self._poller.register(socket, zmq.POLLIN)

    def _certified_address(self) -> str:
        """With CURVE, the address this engine's own certificate names ("" in the clear)."""
        if self._curve is None or self._allowed is None:
            return ""
        address = self._allowed.address_of(self._keypair[0].decode("ascii"))
        if address is None:
            raise ValueError(
                f"the key of {self._curve.secret_certificate} is not in its allow-list"
            )
        return address

    def _start_authenticator(self) -> None:
        """With CURVE, pyzmq's authenticator (its own thread, answering ZAP requests from
        the allow-list) must run before the ROUTER accepts anyone."""
        if self._curve is None:
            return
        self._authenticator = ThreadAuthenticator(self._ctx)
        self._authenticator.start()
        self._authenticator.configure_curve(_ZAP_ALL_DOMAINS, self._curve.allow_list)

    @property
    def address(self) -> str:
        """``tcp://host:port`` that peers send to."""
        return self._address

    @property
    def rejected(self) -> dict[str, int]:
        """Inbound frames dropped, by wire reason, and refusals: handshakes
        (``unauthenticated``, ``handshake_failed``) and frames whose key may not speak for
        the address they claim (``identity_mismatch``, ``revoked_key``)."""
        return self._frame_rejects.snapshot() | self._refusals.snapshot()

    @property
    def dropped(self) -> dict[str, int]:
        """Outbound messages dropped, by reason (queue full, bad address, unknown peer
        key, closed)."""
        return self._drops.snapshot()

    def reload_allow_list(self) -> None:
        """Read the allow-list directory again; any thread may call it (a signal handler).

        A key removed from it is refused from now on: at its next handshake, and for
        every frame on a connection it already has. A peer whose key changed is
        reconnected at the next send. A certificate that cannot be used raises
        ValueError, and the list in force stays."""
        if self._curve is None:
            raise ValueError("a channel in the clear has no allow-list")
        self._allowed = AllowList(self._curve.allow_list)
        if self._authenticator is not None:
            self._authenticator.configure_curve(_ZAP_ALL_DOMAINS, self._curve.allow_list)
        log.info("%s reloaded its allow-list: %d keys", self._address, len(self._allowed))

    def send(self, peer: str, message: Message) -> None:
        """Queue ``message`` for ``peer`` without blocking; drop and count if it cannot."""
        frame = encode(message)
        dealer = self._dealer(peer)
        if dealer is None:
            return
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._drops.add("queue_full", peer)

    def _dealer(self, peer: str) -> zmq.Socket[bytes] | None:
        """The cached DEALER for ``peer``, connecting one (and evicting the LRU) if new or
        if the key the allow-list has for the peer changed since."""
        if self._closed:
            self._drops.add("closed", peer)
            return None
        server_key = b""
        if self._allowed is not None:
            server_key = self._allowed.key_of(peer) or b""
            if not server_key:
                self._drops.add("unknown_peer", peer)
                return None
        cached = self._dealers.get(peer)
        if cached is not None:
            if cached[1] == server_key:
                self._dealers.move_to_end(peer)
                return cached[0]
            del self._dealers[peer]
            cached[0].close()
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, self._queue_limit)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        nonce = secrets.token_hex(_NONCE_BYTES)
        dealer.setsockopt(zmq.ROUTING_ID, f"{self._address}{_NONCE_SEPARATOR}{nonce}".encode())
        if server_key:
            dealer.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, self._keypair[0])
            dealer.setsockopt(zmq.CURVE_SECRETKEY, self._keypair[1])
        try:
            dealer.connect(peer)
        except zmq.ZMQError:
            dealer.close()
            self._drops.add("bad_address", peer)
            return None
        self._dealers[peer] = (dealer, server_key)
        if len(self._dealers) > self._max_peers:
            self._dealers.popitem(last=False)[1][0].close()
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
            if self._monitor in ready:
                self._count_refused_handshakes()
            woken = self._wake_pull in ready
            if woken:
                self._drain_wakes()
                # Only now: a wake skipped while this was set came after its command was
                # queued, and the caller runs every queued command once this returns.
                self._wake_pending = False
            if self._router in ready:
                self._drain_router(inbound)
            if inbound or woken or time.monotonic() >= deadline:
                return inbound

    def _drain_router(self, inbound: list[Inbound]) -> None:
        """Take up to ``max_batch`` frames so one busy peer cannot stall the pump."""
        allowed = self._allowed  # one allow-list for the batch, whatever a reload does
        for _ in range(self._max_batch):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            item = self._validate(frames, allowed)
            if item is not None:
                inbound.append(item)

    def _validate(self, frames: list[zmq.Frame], allowed: AllowList | None) -> Inbound | None:
        """ROUTER frames ``[identity, payload]`` -> Inbound, or count the reason and drop.

        A wrong shape counts as ``malformed``: the multipart framing is this channel's
        envelope around the wire codec's. With CURVE, who may speak is settled first:
        nothing a key may not send is even decoded.
        """
        peer = _peer_address(frames[0].bytes)
        if peer is None:
            self._frame_rejects.add(
                "malformed", repr(frames[0].bytes)[:64], "routing identity is no tcp:// address"
            )
            return None
        if allowed is not None:
            speaker = allowed.address_of(_user_id(frames[-1]))
            if speaker != peer:
                self._refusals.add("revoked_key" if speaker is None else "identity_mismatch", peer)
                return None
        if len(frames) != 2:
            self._frame_rejects.add("malformed", peer, f"{len(frames) - 1} frames, not 1")
            return None
        return decode_inbound(peer, frames[1].bytes, self._frame_rejects)

    def _count_refused_handshakes(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            reason = _HANDSHAKE_REFUSALS.get(event["event"])
            if reason is not None:
                self._refusals.add(reason, "a connection")

    def _drain_wakes(self) -> None:
        while True:
            try:
                self._wake_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def wake(self) -> None:
        """Make a blocked ``receive`` return; any thread may call it, also after close.
        A wake still in the pipe serves every later one until ``receive`` drains it, so
        a scheduler queueing commands in a burst sends one wake, not one each."""
        with self._wake_lock:
            if self._closed or self._wake_pending:
                return
            self._wake_pending = True
            with contextlib.suppress(zmq.Again):  # the pipe is full of wakes; one is enough
                self._wake_push.send(b"", zmq.NOBLOCK)

    def close(self) -> None:
        """Close every socket, stop the authenticator and terminate the context; idempotent."""
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        self._dealers.clear()
        self._terminate()

    def _terminate(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()  # before its sockets go with the context
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


def _peer_address(identity: bytes) -> str | None:
    """The address a routing identity claims (``<address>#<nonce>``, or a bare address);
    ZeroMQ's generated ids fail."""
    try:
        claim = identity.decode("ascii")
    except UnicodeDecodeError:
        return None
    peer = claim.split(_NONCE_SEPARATOR, 1)[0]
    return peer if peer.startswith("tcp://") else None


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of the connection a frame came on: the client's Z85 public key."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:  # no authenticated user on this connection
        return None
    return user_id if isinstance(user_id, str) else None
