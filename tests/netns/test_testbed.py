"""The network namespace test bed: hosts that reach each other and nothing else, and
nothing left behind, however a run ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from embxfer.tools.cluster import netns
from embxfer.tools.cluster.netns import NETNS_DIR, NetnsError

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "-"),
]


def namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def in_namespace(path: str, work: Callable[[], object]) -> None:
    """Run ``work()`` on a thread that entered ``path`` (its sockets are born there)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            netns.enter(path)
            work()
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10.0)
    if failure:
        raise failure[0]


def test_hosts_reach_each_other_over_the_bridge_and_a_cut_host_does_not() -> None:
    with netns.Testbed(["a", "b"]) as bed:
        a, b = bed.hosts["a"], bed.hosts["b"]
        assert {a.address, b.address} == {"198.18.0.1", "198.18.0.2"}
        assert {a.namespace, b.namespace} <= namespaces()
        sockets: list[socket.socket] = []

        def listen() -> None:
            server = socket.socket()  # born in b's namespace
            server.bind((b.address, 0))
            server.listen()
            sockets.append(server)

        in_namespace(b.path, listen)
        server = sockets[0]
        port = server.getsockname()[1]

        def connect(timeout_s: float) -> None:
            with socket.create_connection((b.address, port), timeout=timeout_s):
                pass

        in_namespace(a.path, lambda: connect(5.0))
        bed.cut("b")
        with pytest.raises(OSError):
            in_namespace(a.path, lambda: connect(0.5))
        bed.heal("b")
        in_namespace(a.path, lambda: connect(5.0))
        server.close()
        with pytest.raises(OSError):  # nothing routes out of the test bed
            in_namespace(a.path, connect_to_the_world)
    assert not {a.namespace, b.namespace, f"emb-{bed.run_id}-hub"} & namespaces()


def connect_to_the_world() -> None:
    with socket.create_connection(("192.0.2.1", 80), timeout=0.5):  # TEST-NET-1
        pass


def test_leftovers_of_a_dead_run_are_removed_and_those_of_a_live_run_are_not() -> None:
    # A run in another process, killed outright: its namespaces stay behind.
    script = (
        "import os, signal; from embxfer.tools.cluster.netns import Testbed\n"
        "bed = Testbed(['x']); bed.create(); print(bed.run_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    assert {f"emb-{dead}-x", f"emb-{dead}-hub"} <= namespaces()
    with netns.Testbed(["y"]) as live:
        assert not any(name.startswith(f"emb-{dead}-") for name in namespaces())
        assert netns.remove_leftovers() == []  # the live run holds its lock
        assert f"emb-{live.run_id}-y" in namespaces()


def test_without_root_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="root"):
        netns.Testbed(["a"]).create()


def test_root_without_the_capabilities_says_which_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "_effective_capabilities", lambda: 1 << 12)  # NET_ADMIN only
    assert netns.unavailable() == "root here lacks CAP_SYS_ADMIN (an unprivileged container?)"
