"""Separate hosts on one machine: a Linux network namespace per host, joined by a bridge.

A ``Testbed`` makes one namespace per named host, each with one veth interface and an
address from 198.18.0.0/15 (reserved for network test beds, RFC 2544), and a hub
namespace whose bridge joins the other ends. Nothing is created in the namespace the
caller runs in and no namespace has a default route, so no packet can leave the test
bed. ``cut`` and ``heal`` take a host's cable out of the bridge and put it back
(``ip link set DEV down`` / ``up``): a partition, not a crash.

Everything a test bed creates is named ``emb-<run id>-...`` and lives in its own
namespaces, so deleting them deletes every interface too. ``close`` does that however a
run ends (also on SIGTERM and SIGHUP, and at interpreter exit); a run that was killed
outright leaves namespaces behind, and the next test bed removes them. It tells them
from a live run's by a lock file each run holds: the kernel releases a lock when its
holder dies, however it dies.

Needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN (not an unprivileged container) and
iproute2's ``ip``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

PREFIX = "emb-"
NETNS_DIR = Path("/run/netns")  # where ``ip netns`` keeps its namespaces
LOCK_DIR = Path("/run/embxfer-netns")  # one lock file per live run
NETWORK = ipaddress.IPv4Network("198.18.0.0/24")  # within 198.18.0.0/15
_HUB = "hub"
_RUN_ID = re.compile(rf"^{re.escape(PREFIX)}([0-9a-f]{{4}})-")
_CLONE_NEWNET = 0x40000000
_IFNAMSIZ = 15  # longest interface name Linux takes
_IP_TIMEOUT_S = 30.0
# What `ip netns` needs: NET_ADMIN for links and addresses, SYS_ADMIN to mount namespaces.
_CAPABILITIES = ((12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"))


class NetnsError(RuntimeError):
    """The test bed cannot be built here, or an ``ip`` command failed."""


def unavailable() -> str:
    """Why namespaces cannot be made here, or "" if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run as root"
    effective = _effective_capabilities()
    missing = [name for bit, name in _CAPABILITIES if not effective >> bit & 1]
    if missing:
        return f"root here lacks {' and '.join(missing)} (an unprivileged container?)"
    if shutil.which("ip") is None:
        return "the `ip` command is missing: apt-get install iproute2"
    return ""


def _effective_capabilities() -> int:
    """This process's effective capability set (all of them where /proc cannot say)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return -1
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return -1


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``.

    Threads it starts afterwards are born there; sockets belong to the namespace of the
    thread that opens them. So a process enters before it starts any thread that opens
    sockets (ZeroMQ's I/O thread, Mooncake's engine threads).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """One host of a test bed: its namespace, interface and address."""

    name: str  # as the caller named it, e.g. "enc"
    namespace: str  # emb-<run id>-<name>
    interface: str  # inside the namespace; the hub's end is this plus "p"
    address: str

    @property
    def path(self) -> str:
        """The namespace file a process enters (``enter``)."""
        return str(NETNS_DIR / self.namespace)


class Testbed:
    """Namespaces for ``names``, joined by a bridge; a context manager that removes them.

    Host names are short (at most four characters) because interface names are: Linux
    takes 15 characters, and each carries the prefix and run id.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and at least one: {names!r}")
        if len(names) > NETWORK.num_addresses - 2:
            raise ValueError(f"at most {NETWORK.num_addresses - 2} hosts")
        self._names = list(names)
        self.run_id = ""
        self.hosts: dict[str, Host] = {}
        self._lock_fd: int | None = None
        self._created: list[str] = []  # namespaces, in creation order
        self._saved_handlers: dict[int, Any] = {}

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        """Remove what crashed runs left, then build this run's namespaces."""
        problem = unavailable()
        if problem:
            raise NetnsError(problem)
        remove_leftovers()
        self._take_run_id()
        atexit.register(self.close)
        self._close_on_signals()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete every namespace this run created (and with them every interface) and
        give up the run's lock; idempotent."""
        for namespace in reversed(self._created):
            _ip("netns", "delete", namespace, check=False)
        self._created.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                _lock_path(self.run_id).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        self._saved_handlers.clear()
        atexit.unregister(self.close)

    # -- partitions ----------------------------------------------------------------------
    def cut(self, name: str) -> None:
        """Unplug ``name`` from the bridge: its packets, and those to it, are lost."""
        self._port(name, "down")

    def heal(self, name: str) -> None:
        """Plug ``name`` back in; connections that outlived the cut carry on."""
        self._port(name, "up")

    def _port(self, name: str, state: str) -> None:
        _ip("-n", self._namespace(_HUB), "link", "set", self.hosts[name].interface + "p", state)

    # -- building ------------------------------------------------------------------------
    def _take_run_id(self) -> None:
        """A run id no live run holds, and its lock, held until ``close``."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = secrets.token_hex(2)
            try:
                fd = os.open(_lock_path(run_id), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.run_id, self._lock_fd = run_id, fd
            return

    def _namespace(self, name: str) -> str:
        return f"{PREFIX}{self.run_id}-{name}"

    def _build(self) -> None:
        hub = self._namespace(_HUB)
        bridge = f"{PREFIX}{self.run_id}-br"
        self._add_namespace(hub)
        _ip("-n", hub, "link", "add", bridge, "type", "bridge")
        _ip("-n", hub, "link", "set", bridge, "up")
        for address, name in zip(NETWORK.hosts(), self._names, strict=False):
            host = Host(name, self._namespace(name), self._namespace(name), str(address))
            if len(host.interface) + 1 > _IFNAMSIZ:
                raise ValueError(f"host name {name!r} is too long for an interface name")
            self._add_namespace(host.namespace)
            port = host.interface + "p"
            peer = ("peer", "name", host.interface, "netns", host.namespace)
            _ip("-n", hub, "link", "add", port, "type", "veth", *peer)
            _ip("-n", hub, "link", "set", port, "master", bridge, "up")
            inside = ("-n", host.namespace)
            _ip(*inside, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", host.interface)
            _ip(*inside, "link", "set", host.interface, "up")
            _ip(*inside, "link", "set", "lo", "up")
            self.hosts[name] = host

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._created.append(namespace)

    def _close_on_signals(self) -> None:
        """SIGTERM and SIGHUP end the run through its ``finally`` blocks (which close the
        test bed) instead of killing it on the spot; only the main thread can do this."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                self._saved_handlers[signum] = signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def remove_leftovers() -> list[str]:
    """Delete the namespaces of runs that died without cleaning up; their names.

    A run is dead when nobody holds its lock (or its lock file is gone)."""
    removed: list[str] = []
    for run_id, namespaces in _runs().items():
        with _lock_if_dead(run_id) as dead:
            if not dead:
                continue
            for namespace in namespaces:
                _ip("netns", "delete", namespace, check=False)
                removed.append(namespace)
            with contextlib.suppress(FileNotFoundError):
                _lock_path(run_id).unlink()
    return removed


def _runs() -> dict[str, list[str]]:
    """Namespaces of every run that has some, by run id."""
    runs: dict[str, list[str]] = {}
    names = sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []
    for name in names:
        match = _RUN_ID.match(name)
        if match:
            runs.setdefault(match.group(1), []).append(name)
    return runs


@contextlib.contextmanager
def _lock_if_dead(run_id: str) -> Iterator[bool]:
    """Hold ``run_id``'s lock meanwhile if nobody else does: True if its run is dead."""
    try:
        fd = os.open(_lock_path(run_id), os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _lock_path(run_id: str) -> Path:
    return LOCK_DIR / f"{run_id}.lock"


def _ip(*args: str, check: bool = True) -> None:
    try:
        result = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsError(f"ip {' '.join(args)}: {error}") from error
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
