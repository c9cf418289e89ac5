"""The ``spoof-abort`` fault: a process that claims other engines' addresses.

It holds a valid key of its own (with ``--curve``: its certificate is in every engine's
allow-list, naming an address of its own), connects to each engine with a routing
identity that names another engine (the encoder is told the language ranks abort, each
language rank is told the encoder does) and sends ``Abort`` for every room the parent
says is live. With CURVE every engine must refuse each one as ``identity_mismatch``
and every room must still succeed; in the clear the aborts are believed.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType

import zmq

from embxfer.fsm.messages import Abort
from embxfer.transport.curve_keys import AllowList, EngineKeys
from embxfer.transport.wire import encode

from . import netns

LOG = logging.getLogger("embxfer.tools.cluster.spoofer")

SPOOFER = "spoofer"  # its name among the run's keys
_LINGER_MS = 5000  # how long its messages may take to leave before it gives up on them
_ANSWER_S = 30.0  # how long the parent waits for it to say what it sent


@dataclass(frozen=True)
class Spoof:
    """Parent -> spoofer: send ``Abort(room)`` for each room to each target, claiming to
    be someone else: ``claims`` holds (target address, claimed address) pairs."""

    rooms: tuple[int, ...]
    claims: tuple[tuple[str, str], ...]


def spoofer_main(keys: EngineKeys | None, netns_path: str, conn: Connection) -> None:
    """Entry point of the spoofer process: one ``Spoof``, answered with how many sent;
    ``netns_path``: the network namespace it runs in ("": the parent's)."""
    if netns_path:
        netns.enter(netns_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        command = conn.recv()
    except EOFError:
        return
    assert isinstance(command, Spoof)
    conn.send(send_spoofed(keys, command))


def send_spoofed(keys: EngineKeys | None, command: Spoof) -> int:
    """Send every spoofed abort and wait (bounded) until they left; how many were sent."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    allowed = AllowList(keys.allow_list) if keys is not None else None
    keypair = keys.keypair() if keys is not None else None
    sent = 0
    try:
        for target, claimed in command.claims:
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, _LINGER_MS)
            dealer.setsockopt(zmq.ROUTING_ID, claimed.encode())
            if allowed is not None and keypair is not None:
                dealer.setsockopt(zmq.CURVE_SERVERKEY, allowed.key_of(target) or b"")
                dealer.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
                dealer.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])
            dealer.connect(target)
            for room in command.rooms:
                # The receiver incarnation is unknown to the spoofer: it guesses.
                dealer.send(encode(Abort(room, 0, f"spoofed: {claimed} aborts")))
                sent += 1
            dealer.close()  # lingers until its messages left
    finally:
        context.term()
    return sent


class Spoofer:
    """The parent's handle on the spoofer process: started with the workers, so that it
    is ready when the fault strikes; a context manager that leaves no process behind."""

    def __init__(self, keys: EngineKeys | None, netns_path: str = "") -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=spoofer_main,
            args=(keys, netns_path, theirs),
            name="embxfer-spoofer",
            daemon=True,
        )
        self._process.start()
        theirs.close()

    def spoof(self, rooms: tuple[int, ...], claims: tuple[tuple[str, str], ...]) -> int:
        """Have it send the aborts; how many it sent (0 if it could not)."""
        try:
            self._conn.send(Spoof(rooms, claims))
            if self._conn.poll(_ANSWER_S):
                sent: int = self._conn.recv()
                return sent
        except (EOFError, OSError) as error:
            LOG.warning("the spoofer failed: %r", error)
        return 0

    def __enter__(self) -> Spoofer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._conn.close()  # it stops at EOF if it is still waiting for its command
        self._process.join(_LINGER_MS / 1000)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
        self._process.close()
