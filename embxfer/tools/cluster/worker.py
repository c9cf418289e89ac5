"""A worker process: one engine and the scheduler loop the parent drives over a pipe.

The loop is what a serving scheduler does with embxfer: create a room per request,
be told when it ended (``watch_ended``: no pass over every open room), take the result
(language ranks check every byte of it), release it. Everything the parent needs to
know comes back as messages: ``Ready``, one ``RoomOutcome`` per room, and a
``WorkerReport`` at the end.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Generic, Protocol, TypeVar

from embxfer.fsm.poll import KVPoll
from embxfer.handles import ReceiverHandle, SenderHandle
from embxfer.receiver import ReceiverEngine
from embxfer.remote import remote_receiver, remote_sender
from embxfer.runtime import EndedRooms, Engine
from embxfer.sender import SenderEngine
from embxfer.tools.demo import (
    RoomOutcome,
    leaked_blocks,
    receiver_outcome,
    sender_outcome,
)
from embxfer.tools.native_log import route_native_log
from embxfer.tools.workload import payload_for, send_in_place
from embxfer.transport.zmq_control import ZmqControlChannel

from . import netns
from .messages import (
    Command,
    CountRejected,
    Finish,
    OpenRoom,
    Ready,
    Rejected,
    StartFailed,
    WorkerReport,
    WorkerSpec,
)

LOG = logging.getLogger("embxfer.tools.cluster.worker")

_BUSY_WAIT_S = 0.001  # the longest commands wait while rooms are open (for one to end)
_IDLE_WAIT_S = 0.05


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target)."""
    if spec.netns:  # first: every socket and thread of the engine must be born there
        netns.enter(spec.netns)
    # Ctrl-C reaches the whole process group; the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {spec.side} %(name)s %(message)s",
    )
    route_native_log()  # Mooncake's lines, logged with this worker's side
    try:
        loop: _Loop[Any, Any] = (
            _EncoderLoop(spec, remote_sender(spec.config, spec.network), conn)
            if spec.is_encoder
            else _LanguageLoop(spec, remote_receiver(spec.config, spec.network), conn)
        )
    except Exception:
        conn.send(StartFailed(traceback.format_exc()))
        return
    engine: Engine[Any, Any] = loop.engine
    if spec.network.curve is not None:
        _reload_allow_list_on_sighup(engine)
    try:
        payload_for(0, 1, engine.layout, spec.seed)  # make the demo's random data up front
        engine.start()
        conn.send(Ready(engine.address))
        loop.run()
    except (EOFError, ConnectionError):  # its pipe closed, or was reset as it died
        LOG.warning("%s: the parent is gone; shutting down", spec.side)
    finally:
        engine.close()


def _reload_allow_list_on_sighup(engine: Engine[Any, Any]) -> None:
    """``kill -HUP`` a worker to have it read its allow-list again (revoking a key)."""
    control = engine.control
    assert isinstance(control, ZmqControlChannel)

    def reload(_signum: int, _frame: object) -> None:
        try:
            control.reload_allow_list()
        except (OSError, ValueError) as error:
            LOG.error("allow-list not reloaded, the old one stays: %s", error)

    signal.signal(signal.SIGHUP, reload)


class _Handle(Protocol):
    """What the loop does with a room handle of either role."""

    room_id: int

    def poll(self) -> KVPoll: ...

    def abort(self, reason: str = ...) -> None: ...

    def release(self) -> None: ...


HandleT = TypeVar("HandleT", bound=_Handle)
EngineT = TypeVar("EngineT", bound=Engine[Any, Any])


class _Loop(Generic[EngineT, HandleT]):
    """The scheduler loop both roles share: open rooms on command, report each as it ends."""

    def __init__(self, spec: WorkerSpec, engine: EngineT, conn: Connection) -> None:
        self.spec = spec
        self.engine = engine
        self.conn = conn
        self.ended: EndedRooms[HandleT] = engine.watch_ended()
        self.open: dict[HandleT, tuple[int, int]] = {}  # handle -> (request, tokens)

    def run(self) -> None:
        commands = _Commands(self.conn)
        while True:
            for command in commands.take(0.0 if self.open else _IDLE_WAIT_S):
                if isinstance(command, Finish):
                    self.finish(command.wait_s)
                    return
                if isinstance(command, CountRejected):
                    self.conn.send(Rejected(self.rejected()))
                    continue
                handle = self.start(command)
                if command.aborted_by == self.spec.side:
                    handle.abort("the demo aborts")
                self.open[handle] = (command.request, command.tokens)
            if self.open:
                self.collect(_BUSY_WAIT_S)

    def collect(self, wait_s: float) -> None:
        """Report and release every room that ended, waiting up to ``wait_s`` for one."""
        for handle in self.ended.take(wait_s):
            request, tokens = self.open.pop(handle)
            self.conn.send(self.outcome(handle, tokens, request))
            handle.release()

    def finish(self, wait_s: float) -> None:
        """End the rooms still open (there are none unless the run was cut short), wait
        for the engine to forget every room, then report what it still holds."""
        for handle in self.open:
            handle.abort("the run ended first")
        deadline = time.monotonic() + wait_s
        while self.open and time.monotonic() < deadline:
            self.collect(0.01)
        leaked = leaked_blocks(self.engine, max(0.0, deadline - time.monotonic()))
        self.conn.send(WorkerReport(leaked, self.rejected()))

    def rejected(self) -> dict[str, int]:
        """What the engine rejected so far, by reason, up to the last frame it took in."""
        counts: Future[dict[str, int]] = Future()  # the pump thread owns the counters

        def read() -> None:
            self.engine.count_channel_rejects()
            counts.set_result(dict(self.engine.stats.rejected))

        self.engine.submit(read)
        return counts.result(timeout=5.0)

    def start(self, command: OpenRoom) -> HandleT:
        raise NotImplementedError

    def outcome(self, handle: HandleT, tokens: int, request: int) -> RoomOutcome:
        raise NotImplementedError


class _Commands:
    """The parent's commands, taken in by a thread of their own.

    Each pipe holds a few hundred kilobytes. With a thousand rooms opening at once the
    parent's commands fill one while the worker's reports fill the other, and a worker
    that read only between its own sends would block sending while the parent blocks
    sending to it. Reading on a thread that never sends, the worker never stops taking
    commands in, so the parent's sends always finish and it goes back to reading.
    """

    def __init__(self, conn: Connection) -> None:
        self._queue: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: EOF
        threading.Thread(
            target=self._read, args=(conn,), name="embxfer-commands", daemon=True
        ).start()

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                self._queue.put(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            self._queue.put(None)

    def take(self, timeout_s: float) -> list[Command]:
        """Every command that came in, waiting up to ``timeout_s`` for the first; raises
        EOFError once the parent is gone."""
        try:
            taken = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if None in taken:
            raise EOFError("the parent closed its pipe")
        return [command for command in taken if command is not None]


class _EncoderLoop(_Loop[SenderEngine, SenderHandle]):
    def start(self, command: OpenRoom) -> SenderHandle:
        handle = self.engine.create_room(command.room_id)
        if command.announce:
            handle.announce(command.tokens)
        payload = payload_for(command.request, command.tokens, self.engine.layout, self.spec.seed)
        send_in_place(handle, payload)
        return handle

    def outcome(self, handle: SenderHandle, tokens: int, request: int) -> RoomOutcome:
        return sender_outcome(handle, request)


class _LanguageLoop(_Loop[ReceiverEngine, ReceiverHandle]):
    def start(self, command: OpenRoom) -> ReceiverHandle:
        return self.engine.create_room(
            command.room_id, command.sender, required_receivers=command.receivers
        )

    def outcome(self, handle: ReceiverHandle, tokens: int, request: int) -> RoomOutcome:
        return receiver_outcome(handle, self.engine.layout, self.spec.seed, tokens, request)
