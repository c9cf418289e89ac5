"""Engine configuration: one dataclass, also readable from environment variables.

``from_env`` reads embxfer's own ``EMBXFER_*`` variables and those of the released
SGLang (0.5.23) that mean something for an embedding transfer, so an SGLang
deployment's settings carry over: the embedding pool's size, the connector timeouts and
the heartbeat. README.md ("Configuration") has the table of both.

The variables of the design this project started from (``SGLANG_EMBEDDING_DEFAULT_
ALLOCATE_BUFFER_SIZE``, ``SGLANG_MULTIMODAL_BLOCK_SIZE``, ``SGLANG_EMBEDDING_CACHE_BUFFER_
SIZE``) are not read: no released SGLang has them, so honouring them would only keep a
setting alive that SGLang itself ignores. Set, they are reported once and ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from embxfer.buffers.layout import BufferLayout
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.room import Timeouts

LOG = logging.getLogger("embxfer.config")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

Role = Literal["sender", "receiver"]


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine needs besides its transports."""

    num_blocks: int = 4096
    block_size: int = 128
    hidden_size: int = 4096
    embedding_dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"
    default_alloc_tokens: int = 8192
    adaptive_alloc: bool = True
    adaptive_quantile: float = 0.99
    policy: ResumePolicy = field(default_factory=ResumePolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 10.0
    # Writes run on one thread per peer, so a stalled peer blocks only its own rooms;
    # False runs them inline on the engine's thread (in-process transports only).
    write_threads: bool = True

    @property
    def layout(self) -> BufferLayout:
        return BufferLayout(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            hidden_size=self.hidden_size,
            embedding_dtype=self.embedding_dtype,
            device=self.device,
        )

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        role: Role | None = None,
        **overrides: object,
    ) -> EngineConfig:
        """Read the variables of README.md's configuration table over the defaults;
        keyword ``overrides`` win over both, and an ``EMBXFER_*`` variable over the
        SGLang variable for the same setting.

        ``role`` picks SGLang's encoder timeout of that side for ``progress_s``
        (``SGLANG_ENCODER_SEND_TIMEOUT`` for a sender, ``..._RECV_TIMEOUT`` for a
        receiver); without it, the longer of the two that are set, so neither side of a
        shared configuration gives up before the other would."""
        env = os.environ if env is None else env
        for name in _SEED_DESIGN_VARIABLES:
            if name in env:
                LOG.warning("ignoring %s: no released SGLang reads it (see README.md)", name)
        values: dict[str, object] = {}
        for name, (variable, parse) in _ENV.items():
            if variable in env:
                values[name] = parse(env[variable])
        values.update(_liveness(env))
        timeouts = _timeouts(env, role)
        if timeouts:
            values["timeouts"] = Timeouts(**timeouts)
        if "EMBXFER_SPILL" in env:
            values["policy"] = ResumePolicy(spill=SpillMode(env["EMBXFER_SPILL"]))
        values.update(overrides)
        if "num_blocks" not in values:
            blocks = _capacity_blocks(env, cls(**values))  # type: ignore[arg-type]
            if blocks is not None:
                values["num_blocks"] = blocks
        return cls(**values)  # type: ignore[arg-type]


def _flag(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _capacity_blocks(env: Mapping[str, str], config: EngineConfig) -> int | None:
    """The number of blocks, if a variable sets the capacity: in tokens, or SGLang's
    embedding pool in MiB, divided by what one block takes in this layout."""
    if "EMBXFER_CACHE_TOKENS" in env:
        return blocks_needed(int(env["EMBXFER_CACHE_TOKENS"]), config.block_size)
    if "SGLANG_EMBEDDING_POOL_SIZE_MB" in env:
        pool_bytes = int(env["SGLANG_EMBEDDING_POOL_SIZE_MB"]) * 1024 * 1024
        return max(1, pool_bytes // config.layout.bytes_per_block)
    return None


def _timeouts(env: Mapping[str, str], role: Role | None) -> dict[str, float]:
    """``Timeouts`` fields set by a variable: embxfer's names first, then SGLang's."""
    found = {
        f.name: float(env[f"EMBXFER_{f.name.upper()}"])
        for f in dataclasses.fields(Timeouts)
        if f"EMBXFER_{f.name.upper()}" in env
    }
    if "bootstrap_s" not in found and "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT" in env:
        found["bootstrap_s"] = float(env["SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT"])
    if "progress_s" not in found:
        encoder = [
            float(env[name])
            for side, name in (
                ("sender", "SGLANG_ENCODER_SEND_TIMEOUT"),
                ("receiver", "SGLANG_ENCODER_RECV_TIMEOUT"),
            )
            if name in env and role in (None, side)
        ]
        if encoder:
            found["progress_s"] = max(encoder)
        elif "SGLANG_DISAGGREGATION_WAITING_TIMEOUT" in env:
            found["progress_s"] = float(env["SGLANG_DISAGGREGATION_WAITING_TIMEOUT"])
    return found


# SGLang's own defaults and floors for its heartbeat (disaggregation/common/conn.py).
SGLANG_HEARTBEAT_INTERVAL_S = 5.0
SGLANG_HEARTBEAT_MAX_FAILURE = 2


def _liveness(env: Mapping[str, str]) -> dict[str, float]:
    """``heartbeat_s`` and ``peer_timeout_s`` from SGLang's heartbeat pair, when either
    is set: a peer is lost after ``max_failure`` silent intervals, as SGLang declares a
    prefill server dead after that many failed heartbeats (interval at least 2 s, at
    least 1 failure, as SGLang clamps them). ``EMBXFER_*`` variables win field by field."""
    interval_name = "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL"
    failures_name = "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE"
    if interval_name not in env and failures_name not in env:
        return {}
    interval = max(float(env.get(interval_name, SGLANG_HEARTBEAT_INTERVAL_S)), 2.0)
    failures = max(int(env.get(failures_name, SGLANG_HEARTBEAT_MAX_FAILURE)), 1)
    found = {"heartbeat_s": interval, "peer_timeout_s": interval * failures}
    for name in list(found):
        if f"EMBXFER_{name.upper()}" in env:
            del found[name]
    return found


# field -> (embxfer variable, parser)
_ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "default_alloc_tokens": ("EMBXFER_DEFAULT_ALLOC_TOKENS", int),
    "block_size": ("EMBXFER_BLOCK_SIZE", int),
    "num_blocks": ("EMBXFER_NUM_BLOCKS", int),
    "hidden_size": ("EMBXFER_HIDDEN_SIZE", int),
    "embedding_dtype": ("EMBXFER_DTYPE", _DTYPES.__getitem__),
    "device": ("EMBXFER_DEVICE", str),
    "adaptive_alloc": ("EMBXFER_ADAPTIVE_ALLOC", _flag),
    "heartbeat_s": ("EMBXFER_HEARTBEAT_S", float),
    "peer_timeout_s": ("EMBXFER_PEER_TIMEOUT_S", float),
}

_SEED_DESIGN_VARIABLES = (
    "SGLANG_EMBEDDING_DEFAULT_ALLOCATE_BUFFER_SIZE",
    "SGLANG_MULTIMODAL_BLOCK_SIZE",
    "SGLANG_EMBEDDING_CACHE_BUFFER_SIZE",
)

VARIABLES: frozenset[str] = frozenset(
    {variable for variable, _ in _ENV.values()}
    | {f"EMBXFER_{f.name.upper()}" for f in dataclasses.fields(Timeouts)}
    | {
        "EMBXFER_CACHE_TOKENS",
        "EMBXFER_SPILL",
        "SGLANG_EMBEDDING_POOL_SIZE_MB",
        "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT",
        "SGLANG_ENCODER_SEND_TIMEOUT",
        "SGLANG_ENCODER_RECV_TIMEOUT",
        "SGLANG_DISAGGREGATION_WAITING_TIMEOUT",
        "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL",
        "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE",
    }
)
"""Every variable ``from_env`` reads (README.md's table lists exactly these)."""
