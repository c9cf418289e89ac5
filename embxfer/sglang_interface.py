"""SGLang's connector interface, as ``sglang.srt.disaggregation.base.conn`` of the
released sglang (0.5.23) defines it: its own classes when sglang is installed, else
stand-ins with the same names, abstract methods and signatures.

``embxfer.adapter`` subclasses whatever this module exports, so one adapter serves an
SGLang process (where SGLang's scheduler checks ``isinstance`` against its own base
classes) and a process without SGLang. Where sglang is installed its import must
succeed: a broken installation is an error here, not a silent switch to the stand-ins.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from embxfer.fsm.poll import KVPoll

SGLANG_MODULE = "sglang.srt.disaggregation.base.conn"


@dataclasses.dataclass
class _KVTransferMetric:
    """What a sender reports of one finished transfer; None where it cannot isolate it."""

    transfer_latency_s: float | None = None
    alloc_latency_s: float | None = None
    transfer_total_bytes: int | None = None


class _KVTransferDestination(str, enum.Enum):
    """Where the receiver wants the data: the device's buffers or host memory."""

    DEVICE = "device"
    HOST = "host"


class _BaseKVManager(ABC):
    """One per process and role: owns the transfer engine and its buffers."""

    @abstractmethod
    def __init__(
        self,
        args: Any,
        disaggregation_mode: Any,
        server_args: Any,
        is_mla_backend: bool | None = False,
    ) -> None: ...

    @abstractmethod
    def register_to_bootstrap(self) -> None:
        """Register prefill server info to the bootstrap server."""


class _BaseKVSender(ABC):
    """One per request on the sending side."""

    @abstractmethod
    def __init__(
        self,
        mgr: _BaseKVManager,
        bootstrap_addr: str,
        bootstrap_room: int,
        req_has_disagg_prefill_dp_rank: bool = False,
    ) -> None: ...

    @abstractmethod
    def init(self, num_kv_indices: int, aux_index: int | None = None) -> None: ...

    @abstractmethod
    def send(
        self,
        kv_indices: npt.NDArray[np.int32],
        state_indices: list[Any] | None = None,
        num_kv_tokens: int | None = None,
    ) -> None: ...

    @abstractmethod
    def get_transfer_metric(self) -> _KVTransferMetric: ...

    @abstractmethod
    def poll(self) -> KVPoll: ...

    @abstractmethod
    def failure_exception(self) -> None: ...

    def clear(self) -> None:  # noqa: B027 - optional in SGLang too
        """Clear any internal states."""

    def abort(self) -> None:  # noqa: B027 - optional in SGLang too
        """Abort the current transfer."""


class _BaseKVReceiver(ABC):
    """One per request and rank on the receiving side."""

    @abstractmethod
    def __init__(
        self,
        mgr: _BaseKVManager,
        bootstrap_addr: str,
        bootstrap_room: int | None = None,
    ) -> None: ...

    @abstractmethod
    def init(self, prefill_dp_rank: int) -> None: ...

    @abstractmethod
    def send_metadata(
        self,
        kv_indices: npt.NDArray[np.int32],
        aux_index: int | None = None,
        state_indices: list[Any] | None = None,
        decode_prefix_len: int | None = None,
        destination: _KVTransferDestination = _KVTransferDestination.DEVICE,
    ) -> None: ...

    @abstractmethod
    def poll(self) -> KVPoll: ...

    @abstractmethod
    def failure_exception(self) -> None: ...

    def clear(self) -> None:  # noqa: B027 - optional in SGLang too
        """Clear any internal states."""

    def abort(self) -> None:  # noqa: B027 - optional in SGLang too
        """Abort the current transfer."""


SGLANG_INSTALLED = importlib.util.find_spec("sglang") is not None
"""Whether the classes below are sglang's own (else the stand-ins above)."""


def _interface() -> tuple[Any, ...]:
    """(BaseKVManager, BaseKVSender, BaseKVReceiver, KVTransferMetric,
    KVTransferDestination): sglang's when it is installed."""
    if not SGLANG_INSTALLED:
        return (
            _BaseKVManager,
            _BaseKVSender,
            _BaseKVReceiver,
            _KVTransferMetric,
            _KVTransferDestination,
        )
    conn = importlib.import_module(SGLANG_MODULE)
    return (
        conn.BaseKVManager,
        conn.BaseKVSender,
        conn.BaseKVReceiver,
        conn.KVTransferMetric,
        conn.KVTransferDestination,
    )


if TYPE_CHECKING:  # the stand-ins have sglang's signatures: type-check against them
    BaseKVManager = _BaseKVManager
    BaseKVSender = _BaseKVSender
    BaseKVReceiver = _BaseKVReceiver
    KVTransferMetric = _KVTransferMetric
    KVTransferDestination = _KVTransferDestination
else:
    (
        BaseKVManager,
        BaseKVSender,
        BaseKVReceiver,
        KVTransferMetric,
        KVTransferDestination,
    ) = _interface()


class DisaggregationMode(enum.Enum):
    """SGLang's ``disaggregation.utils.DisaggregationMode`` values (that module needs
    much more of SGLang to import); the adapter compares modes by value."""

    NULL = "null"
    PREFILL = "prefill"
    DECODE = "decode"
