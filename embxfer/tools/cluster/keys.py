"""Per-engine CURVE keys for one demo run (``embxfer demo --curve``), made for the run
in a temporary directory and removed with it."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from embxfer.transport.curve_keys import EngineKeys, generate_keys


@contextlib.contextmanager
def run_keys(addresses: Mapping[str, str]) -> Iterator[dict[str, EngineKeys]]:
    """A keypair per engine name, each certificate naming that engine's control address
    (``addresses``: each engine binds the port its certificate names)."""
    with tempfile.TemporaryDirectory(prefix="embxfer-keys-") as directory:
        yield generate_keys(Path(directory), addresses)


def free_addresses(host: str, names: Sequence[str]) -> dict[str, str]:
    """A port for each name that the OS hands out on ``host``, all held until every one
    is picked so that they differ. Another process could take one before its engine
    binds it: that engine then fails to start, and says so."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in names]
        for probe in probes:
            probe.bind((host, 0))
        return {
            name: f"tcp://{host}:{probe.getsockname()[1]}"
            for name, probe in zip(names, probes, strict=True)
        }
