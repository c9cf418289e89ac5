"""Per-engine CURVE keys for one demo run (``embxfer demo --curve``), made for the run
in a temporary directory and removed with it."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from embxfer.transport.curve_keys import EngineKeys, generate_keys


@contextlib.contextmanager
def run_keys(host: str, names: Sequence[str]) -> Iterator[dict[str, EngineKeys]]:
    """A keypair per engine name, each certificate naming a port free on ``host`` now
    (each engine binds the port its certificate names)."""
    with tempfile.TemporaryDirectory(prefix="embxfer-keys-") as directory:
        addresses = dict(zip(names, _free_addresses(host, len(names)), strict=True))
        yield generate_keys(Path(directory), addresses)


def _free_addresses(host: str, count: int) -> list[str]:
    """``count`` ports the OS hands out on ``host``, all held until every one is picked
    so that they differ. Another process could take one before its engine binds it:
    that engine then fails to start, and says so."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [f"tcp://{host}:{probe.getsockname()[1]}" for probe in probes]
