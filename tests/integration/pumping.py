"""Engines on the in-process transport, pumped by hand on a virtual clock: no threads,
no sleeps, every run the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embxfer.config import EngineConfig
from embxfer.metrics import Metrics
from embxfer.receiver import ReceiverEngine
from embxfer.runtime import Engine
from embxfer.sender import SenderEngine
from embxfer.transport.inproc import InprocControlChannel, InprocDataTransport, InprocNetwork


class Rig:
    """One sender and one receiver engine, and the clock and network they share."""

    def __init__(self, config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.now = 0.0
        self.network = InprocNetwork()
        config = config.replace(write_threads=False)
        self.sender = SenderEngine(
            config,
            InprocControlChannel(self.network, "encoder"),
            InprocDataTransport(self.network, "encoder-data"),
            self.clock,
            metrics,
        )
        self.receiver = ReceiverEngine(
            config,
            InprocControlChannel(self.network, "language"),
            InprocDataTransport(self.network, "language-data"),
            self.clock,
            metrics,
        )
        self.engines: list[Engine[Any, Any]] = [self.sender, self.receiver]

    def clock(self) -> float:
        return self.now

    def pump_until(self, done: Callable[[], bool], step_s: float = 0.001) -> None:
        for _ in range(100_000):
            if done():
                return
            self.now += step_s
            for engine in self.engines:
                engine.run_once(0.0)
        raise AssertionError("condition not reached")

    def drain(self) -> None:
        """Pump until both engines have forgotten every room."""
        self.pump_until(lambda: not any(engine.rooms for engine in self.engines))

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
