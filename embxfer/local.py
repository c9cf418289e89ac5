"""Engines wired to the in-process transport: tests, the in-process demo, benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

from embxfer.config import EngineConfig
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine
from embxfer.transport.inproc import InprocControlChannel, InprocDataTransport, InprocNetwork


def inproc_engines(
    sender_config: EngineConfig,
    receiver_config: EngineConfig,
    receivers: int = 1,
    network: InprocNetwork | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[SenderEngine, list[ReceiverEngine], InprocNetwork]:
    """One sender and ``receivers`` receiver engines on one in-process network (not started)."""
    network = network or InprocNetwork()
    sender = SenderEngine(
        sender_config,
        InprocControlChannel(network, "encoder"),
        InprocDataTransport(network, "encoder-data"),
        clock,
    )
    language = [
        ReceiverEngine(
            receiver_config,
            InprocControlChannel(network, f"language-{rank}"),
            InprocDataTransport(network, f"language-{rank}-data"),
            clock,
        )
        for rank in range(receivers)
    ]
    return sender, language, network
