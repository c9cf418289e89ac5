"""Engine configuration: one dataclass, also readable from environment variables.

SGLang's variable names are accepted as aliases so an SGLang deployment's settings
carry over unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from embxfer.buffers.layout import BufferLayout
from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.fsm.room import Timeouts

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> EngineConfig:
        """Read ``EMBXFER_*`` variables (and SGLang's aliases) over the defaults; keyword
        ``overrides`` win over both. Where an ``EMBXFER_*`` name and its SGLang alias are
        both set, the ``EMBXFER_*`` one wins.

        Capacity: ``EMBXFER_NUM_BLOCKS``, else ``EMBXFER_CACHE_TOKENS`` (tokens), else
        SGLang's ``SGLANG_EMBEDDING_CACHE_BUFFER_SIZE``, which counts request buffers:
        SGLang sizes each at the model's ``max_req_len``, embxfer at the default
        allocation (so the defaults, 64 buffers of 8192 tokens, give 4096 blocks)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, (aliases, parse) in _ENV.items():
            found = next((var for var in aliases if var in env), None)
            if found is not None:
                values[name] = parse(env[found])
        timeouts = {
            f.name: float(env[f"EMBXFER_{f.name.upper()}"])
            for f in dataclasses.fields(Timeouts)
            if f"EMBXFER_{f.name.upper()}" in env
        }
        if timeouts:
            values["timeouts"] = Timeouts(**timeouts)
        if "EMBXFER_SPILL" in env:
            values["policy"] = ResumePolicy(spill=SpillMode(env["EMBXFER_SPILL"]))
        values.update(overrides)
        if "num_blocks" not in values:
            capacity = _capacity_tokens(env, values.get("default_alloc_tokens"))
            if capacity is not None:
                block_size = values.get("block_size", cls.block_size)
                assert isinstance(block_size, int)
                values["num_blocks"] = -(-capacity // block_size)
        return cls(**values)  # type: ignore[arg-type]


def _flag(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _capacity_tokens(env: Mapping[str, str], default_alloc: object) -> int | None:
    """Total buffer capacity in tokens, if a variable sets it."""
    if "EMBXFER_CACHE_TOKENS" in env:
        return int(env["EMBXFER_CACHE_TOKENS"])
    if "SGLANG_EMBEDDING_CACHE_BUFFER_SIZE" in env:
        per_buffer = EngineConfig.default_alloc_tokens if default_alloc is None else default_alloc
        assert isinstance(per_buffer, int)
        return int(env["SGLANG_EMBEDDING_CACHE_BUFFER_SIZE"]) * per_buffer
    return None


# field -> (variables, the first one set wins; parser)
_ENV: dict[str, tuple[tuple[str, ...], Callable[[str], object]]] = {
    "default_alloc_tokens": (
        ("EMBXFER_DEFAULT_ALLOC_TOKENS", "SGLANG_EMBEDDING_DEFAULT_ALLOCATE_BUFFER_SIZE"),
        int,
    ),
    "block_size": (("EMBXFER_BLOCK_SIZE", "SGLANG_MULTIMODAL_BLOCK_SIZE"), int),
    "num_blocks": (("EMBXFER_NUM_BLOCKS",), int),
    "hidden_size": (("EMBXFER_HIDDEN_SIZE",), int),
    "embedding_dtype": (("EMBXFER_DTYPE",), _DTYPES.__getitem__),
    "device": (("EMBXFER_DEVICE",), str),
    "adaptive_alloc": (("EMBXFER_ADAPTIVE_ALLOC",), _flag),
    "heartbeat_s": (("EMBXFER_HEARTBEAT_S",), float),
    "peer_timeout_s": (("EMBXFER_PEER_TIMEOUT_S",), float),
}
