"""One-sided writes with the Mooncake Transfer Engine (P2P handshake, no metadata server).

``mooncake`` is imported only when a transport is made, so importing embxfer never
needs the wheel. The import first fixes two environment variables of the process:
``MC_LOG_DIR`` is removed (set at all, it aborts the process on import: glog is
initialised twice) and ``MC_LOG_LEVEL`` defaults to ``ERROR`` (the engine's INFO
lines otherwise flood stderr; glog's own ``GLOG_minloglevel`` has no effect here).
What it still prints (start-up lines, the reasons of failed writes) goes to fd 2:
``embxfer.tools.native_log`` turns that into log records.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from embxfer.transport.base import Segment, WriteResult
from embxfer.transport.completion import Completions

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "Mooncake Transfer Engine is not usable: pip install mooncake-transfer-engine-non-cuda "
    "(embxfer[mooncake]; for GPU memory embxfer[mooncake-cuda] or [mooncake-cuda13]), "
    "and on Debian/Ubuntu apt-get install libibverbs1 libnuma1"
)
# The wheels that install ``mooncake``, and whether their build registers GPU memory.
WHEELS_WITH_CUDA = {
    "mooncake-transfer-engine-non-cuda": False,
    "mooncake-transfer-engine": True,  # CUDA 12
    "mooncake-transfer-engine-cuda13": True,
}


_DONE = 1  # transfer_check_status: 1 done, 0 pending, -1 failed, -2 timed out
# One batch per segment: transfer_check_status looks only at a batch's first task (0.3.13)
# and frees the batch when that one is done, so a batch of several would be reported
# finished while its other segments are still in flight.


class _Engine(Protocol):
    """The part of ``mooncake.engine.TransferEngine`` used here (the wheel has no stubs)."""

    def get_rpc_port(self) -> int: ...

    def register_memory(self, buffer_addr: int, capacity: int) -> int: ...

    def unregister_memory(self, buffer_addr: int) -> int: ...

    def transfer_submit_write(
        self, target_hostname: str, buffer: int, peer_buffer_address: int, length: int
    ) -> int: ...

    def transfer_check_status(self, batch_id: int) -> int: ...


def _engine_class() -> Any:
    """``mooncake.engine.TransferEngine``, imported with the environment it needs."""
    if os.environ.pop("MC_LOG_DIR", None) is not None:
        log.warning("ignoring MC_LOG_DIR: Mooncake aborts the process when it is set")
    os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
    try:
        from mooncake.engine import TransferEngine
    except ImportError as error:
        raise RuntimeError(f"{_INSTALL_HINT} ({error})") from error
    return TransferEngine


def raw_engine(host: str = "127.0.0.1", protocol: str = "tcp", device_name: str = "") -> Any:
    """An initialised ``mooncake.engine.TransferEngine`` (P2P handshake; its session id is
    ``host:get_rpc_port()``): what the transport wraps, and what baselines call directly."""
    engine = _engine_class()()
    rc = engine.initialize(host, "P2PHANDSHAKE", protocol, device_name)
    if rc != 0:
        raise RuntimeError(
            f"mooncake initialize({host!r}, {protocol!r}, {device_name!r}) failed (rc={rc})"
        )
    return engine


def installed_wheels() -> list[str]:
    """The distributions that installed the ``mooncake`` package here (normally one)."""
    names = importlib.metadata.packages_distributions().get("mooncake", [])
    return sorted({name.lower().replace("_", "-") for name in names})


def cuda_problem(device: str, wheels: list[str]) -> str:
    """Why buffers on ``device`` cannot be registered with the Mooncake of ``wheels``
    (as ``installed_wheels`` names them), or "" if they can: only the CUDA builds
    register GPU memory, and a CPU-only build would take the address and fail later."""
    if not device.startswith("cuda") or any(WHEELS_WITH_CUDA.get(w, False) for w in wheels):
        return ""
    found = ", ".join(wheels) or "no Mooncake wheel"
    return (
        f"buffers on {device!r} need a CUDA build of Mooncake to be registered, and this "
        f"is {found}: pip install 'embxfer[mooncake-cuda]' (CUDA 12) or "
        f"'embxfer[mooncake-cuda13]', after uninstalling the CPU-only wheel"
    )


def available() -> bool:
    """Whether Mooncake imports here (the wheel and its shared libraries are present)."""
    try:
        _engine_class()
    except RuntimeError:
        return False
    return True


class MooncakeDataTransport:
    """:class:`~embxfer.transport.base.DataTransport` over one Mooncake engine.

    ``write`` submits each segment asynchronously and waits on the calling thread,
    without spinning, until ``Completions`` sees them all finish (Mooncake's
    synchronous write busy-waits a core meanwhile). It may be called from several
    threads at once. It reports failures as results, never raises; Mooncake says only
    ``-1`` (a wrong or dead session, a destination outside the peer's registered
    memory) and logs the reason itself. A batch that fails may still have written
    some of its segments. A peer that accepts the connection but never answers holds
    ``write`` for about 60 s (Mooncake's timeout variables do not shorten it): the
    caller must run writes off its pump thread and enforce its own deadline.

    ``host`` must be an address peers reach: the session id is ``host:rpc_port``.
    """

    def __init__(
        self, host: str = "127.0.0.1", protocol: str = "tcp", device_name: str = ""
    ) -> None:
        engine: _Engine = raw_engine(host, protocol, device_name)
        self._engine: _Engine | None = engine
        self._session_id = f"{host}:{engine.get_rpc_port()}"
        self._registered: list[int] = []
        self._lock = threading.Lock()  # register and close; writes need none
        self._completions: Completions | None = Completions(engine.transfer_check_status)

    @property
    def session_id(self) -> str:
        """``host:port`` that peers write to."""
        return self._session_id

    def register(self, address: int, length: int) -> None:
        """Register ``[address, address + length)``; raises if Mooncake refuses (e.g. overlap)."""
        with self._lock:
            if self._engine is None:
                raise RuntimeError("transport is closed")
            rc = self._engine.register_memory(address, length)
            if rc != 0:
                raise RuntimeError(
                    f"mooncake register_memory({address:#x}, {length}) failed (rc={rc})"
                )
            self._registered.append(address)

    def write(self, peer_session: str, segments: Sequence[Segment]) -> WriteResult:
        """Every segment submitted at once, then waited for together (each segment costs
        ~50-80 us of transfer: coalesce first)."""
        engine, completions = self._engine, self._completions  # valid after a close
        if engine is None or completions is None:
            return WriteResult(False, "transport is closed")
        if not segments:
            return WriteResult(True)
        batches: list[int] = []
        try:
            for segment in segments:
                batch = engine.transfer_submit_write(
                    peer_session, segment.src_address, segment.dst_address, segment.length
                )
                if batch <= 0:  # not submitted (e.g. no such peer)
                    break
                batches.append(batch)
        except Exception as error:  # pybind argument errors; a write must never raise
            reason = repr(error)
        else:
            reason = f"mooncake could not submit a write to {peer_session}"
        # Even a failed write waits for what it submitted: its memory may be reused after.
        submitted = sum(segment.length for segment in segments[: len(batches)])
        failed = [s for s in completions.wait(batches, submitted) if s != _DONE]
        if len(batches) < len(segments):
            return WriteResult(False, reason)
        if failed:
            return WriteResult(
                False, f"mooncake write to {peer_session} failed (status={failed[0]})"
            )
        return WriteResult(True)

    def close(self) -> None:
        """Unregister memory and drop the engine; idempotent.

        Dropping the last reference stops the engine's threads and frees its ports,
        which blocks for 0.1-1 s. Meant for when no write is in flight: one still
        running keeps the engine alive until it returns, but may fail.
        """
        with self._lock:
            engine, self._engine = self._engine, None
            completions, self._completions = self._completions, None
            registered, self._registered = self._registered, []
        if engine is None or completions is None:
            return
        completions.close()
        for address in registered:
            engine.unregister_memory(address)
        # The engine is destroyed as ``engine``, its last reference here, goes out of scope.
