"""Mooncake's log lines, routed into ``logging`` instead of onto the terminal.

Mooncake logs with glog, which writes to file descriptor 2 before (and without) any
``InitGoogleLogging``: neither ``GLOG_*`` variables nor ``MC_LOG_LEVEL`` (which only
raises the threshold; its reasons for failed writes are ERROR lines) stop lines like
"WARNING: Logging before InitGoogleLogging() is written to STDERR" and "E... Local
segment descriptor not found" at every engine start, and the only reason Mooncake
gives for a failed write (the call returns -1) is such a line, printed by whichever
of its threads saw the failure.

``route_native_log()`` points fd 2 at a pipe read by a thread of this process. Each
glog line becomes a record of the ``embxfer.mooncake`` logger at its glog severity
(I, W, E, F: INFO, WARNING, ERROR, CRITICAL); the first line from each source line of
Mooncake's code is logged at that level and repeats at DEBUG (a dead peer fails every
write the same way), and the start-up lines above always at DEBUG. Everything else
written to fd 2 (Python's own stderr, other libraries) passes through unchanged, in
order. Child processes inherit the pipe, so their native lines are logged too.

Opt-in and process-wide: embxfer's commands and worker processes call it; a process
embedding embxfer may. The cost: what native code writes to fd 2 just before the
process dies by a signal (an ``abort()``) may be lost with the thread that forwards it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import threading

LOG = logging.getLogger("embxfer.mooncake")

# glog's prefix: severity, MMDD, time, thread id, file:line] message
_GLOG_LINE = re.compile(
    rb"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\s\]]+:\d+)\] ?(.*?)\r?$", re.DOTALL
)
_LEVELS = {b"I": logging.INFO, b"W": logging.WARNING, b"E": logging.ERROR, b"F": logging.CRITICAL}
# Printed by every Mooncake engine as it starts; nothing is wrong.
START_UP_NOISE = (b"Logging before InitGoogleLogging", b"Local segment descriptor not found")
# A line not finished yet is held only while it could still turn out to be glog's.
_MAYBE_GLOG = re.compile(rb"^(?:[IWEF]\d|W$|WA|WARNING: Logging)")
_END = b"\0embxfer-native-log-end\0\n"  # written by ``stop``: all before it is read

_lock = threading.Lock()
_router: _Router | None = None


def route_native_log() -> bool:
    """Route fd 2 through the parser (once per process); False if fd 2 cannot be
    redirected here (then nothing changes)."""
    global _router
    with _lock:
        if _router is None:
            try:
                _router = _Router()
            except OSError as error:
                LOG.debug("native log lines stay on fd 2: %s", error)
                return False
            atexit.register(_router.stop)
        return True


class _Router:
    """fd 2 -> pipe -> reader thread (parses, passes the rest on) -> emitter thread.

    The reader never logs itself: a handler writing to fd 2 would then wait on the
    pipe that only the reader drains. The emitter may block on a full pipe; the
    reader goes on draining it meanwhile."""

    def __init__(self) -> None:
        self._terminal = os.dup(2)
        read_end, self._write_end = os.pipe()
        try:
            os.dup2(self._write_end, 2)
        except OSError:
            for fd in (read_end, self._write_end, self._terminal):
                os.close(fd)
            raise
        self._pipe_inode = os.fstat(self._write_end).st_ino
        self._records: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
        self._seen: set[bytes] = set()
        self._reader = threading.Thread(
            target=self._read, args=(read_end,), name="embxfer-native-log", daemon=True
        )
        self._emitter = threading.Thread(target=self._emit, name="embxfer-log-emit", daemon=True)
        self._reader.start()
        self._emitter.start()

    # -- reader thread ---------------------------------------------------------------
    def _read(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.endswith(_END[:-1]):  # it may end a line left unfinished
                        self._line(line.removesuffix(_END[:-1]))
                        self._records.put(None)
                        return
                    self._line(line + b"\n")
                if pending and not _MAYBE_GLOG.match(pending):
                    self._pass_on(pending)  # e.g. a progress bar redrawn with "\r"
                    pending = b""
        if pending:
            self._line(pending)
        self._records.put(None)

    def _line(self, line: bytes) -> None:
        if not line:
            return
        match = _GLOG_LINE.match(line.rstrip(b"\n"))
        if match is None:
            if line.startswith(START_UP_NOISE[0], len(b"WARNING: ")):
                self._records.put((logging.DEBUG, line.decode(errors="replace").strip()))
            else:
                self._pass_on(line)
            return
        severity, where, message = match.groups()
        level = _LEVELS[severity]
        if any(noise in message for noise in START_UP_NOISE) or where in self._seen:
            level = logging.DEBUG
        self._seen.add(where)
        text = f"{message.decode(errors='replace')} ({where.decode(errors='replace')})"
        self._records.put((level, text))

    def _pass_on(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._terminal, view) :]
        except OSError:
            pass  # the terminal is gone: nobody would read it anyway

    # -- emitter thread --------------------------------------------------------------
    def _emit(self) -> None:
        while (record := self._records.get()) is not None:
            level, text = record
            LOG.log(level, "%s", text)

    # -- exit ------------------------------------------------------------------------
    def stop(self) -> None:
        """Give fd 2 back and forward what is still in the pipe (at exit). fd 2 is left
        alone if someone else has pointed it elsewhere since (a test harness).

        Children may still hold the pipe (multiprocessing's resource tracker outlives
        us), so the reader is told where to stop rather than waiting for the pipe's end.
        """
        try:
            if os.fstat(2).st_ino == self._pipe_inode:
                os.dup2(self._terminal, 2)
            os.write(self._write_end, _END)
            os.close(self._write_end)
        except OSError:
            return
        self._reader.join(timeout=2.0)
        self._emitter.join(timeout=2.0)
