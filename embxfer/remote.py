"""Engines wired the way they are deployed: ZeroMQ for control, Mooncake for the bytes.

The counterpart of ``embxfer.local``. One ``NetworkConfig`` says where an engine binds,
what address its peers are told, and whether the control plane runs CURVE; the data
plane is the same code over TCP (here, on 127.0.0.1) or RDMA (``data_protocol``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from embxfer.config import EngineConfig
from embxfer.receiver import ReceiverEngine
from embxfer.sender import SenderEngine
from embxfer.transport.base import ControlChannel, DataTransport
from embxfer.transport.curve_keys import EngineKeys
from embxfer.transport.mooncake_data import MooncakeDataTransport, cuda_problem, installed_wheels
from embxfer.transport.zmq_control import ZmqControlChannel


@dataclass(frozen=True)
class NetworkConfig:
    """Where one engine listens and how its peers reach it.

    ``curve`` is the one switch for an authenticated, encrypted control plane: None
    (the default) runs it in the clear; this engine's own keys (``EngineKeys``, written
    by ``embxfer keys generate``) turn CURVE on, and then its certificate names its
    control address (``control_port`` 0 binds the port it names). Data writes are
    one-sided into registered memory, neither authenticated nor encrypted by Mooncake:
    the data network must be isolated (``specs/protocol.md``, threat model).
    """

    host: str = "127.0.0.1"  # bind address of the control socket (may be a wildcard)
    advertise_host: str | None = None  # what peers are told; needed when host is a wildcard
    control_port: int = 0  # 0: the OS picks one
    curve: EngineKeys | None = None
    data_protocol: str = "tcp"  # Mooncake: "tcp", or "rdma" on a cluster
    data_device: str = ""  # Mooncake's RDMA device list ("" for TCP)

    @property
    def reachable_host(self) -> str:
        """The address peers use for both planes; Mooncake names its memory by it."""
        return self.advertise_host or self.host

    def control_channel(self) -> ZmqControlChannel:
        """A channel bound as configured (it refuses a wildcard without an advertise_host:
        peers told an address they cannot reach would hang)."""
        return ZmqControlChannel(
            self.host, self.control_port, advertise_host=self.advertise_host, curve=self.curve
        )

    def data_transport(self) -> MooncakeDataTransport:
        """A Mooncake engine named by the reachable host (its session id is host:port)."""
        return MooncakeDataTransport(self.reachable_host, self.data_protocol, self.data_device)


def remote_sender(config: EngineConfig, network: NetworkConfig) -> SenderEngine:
    """An encoder-side engine on ZeroMQ and Mooncake (not started)."""
    return _wire(SenderEngine, config, network)


def remote_receiver(config: EngineConfig, network: NetworkConfig) -> ReceiverEngine:
    """A language-side engine on ZeroMQ and Mooncake (not started)."""
    return _wire(ReceiverEngine, config, network)


EngineT = TypeVar("EngineT", SenderEngine, ReceiverEngine)


def _wire(
    engine: Callable[[EngineConfig, ControlChannel, DataTransport], EngineT],
    config: EngineConfig,
    network: NetworkConfig,
) -> EngineT:
    """Build the engine, closing whatever transport was made if a later step fails.
    Buffers on a GPU need a Mooncake build that registers GPU memory: checked first."""
    problem = cuda_problem(config.device, installed_wheels())
    if problem:
        raise RuntimeError(problem)
    data = network.data_transport()
    control: ZmqControlChannel | None = None
    try:
        control = network.control_channel()
        return engine(config, control, data)
    except BaseException:
        if control is not None:
            control.close()
        data.close()
        raise
