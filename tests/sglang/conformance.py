"""What makes the adapter a conforming SGLang connector, gathered as one report: its
base classes, any abstract method left, every method's parameters against the base
class's, ``KVPoll``'s values, and rooms run through the adapter by the SGLang-style
scheduler loops of ``examples/``.

``test_conformance.py`` runs ``python -m tests.sglang.conformance`` with sglang 0.5.23
importable (the report is the last stdout line); ``tests/integration/test_adapter.py``
calls ``check()`` in-process, against the stand-ins.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from typing import Any

from embxfer import adapter, sglang_interface
from embxfer.fsm.poll import KVPoll
from examples.sglang_schedulers import run

# adapter class -> (interface class, the methods of the interface it implements)
INTERFACE: dict[str, tuple[str, tuple[str, ...]]] = {
    "EmbeddingKVManager": ("BaseKVManager", ("__init__", "register_to_bootstrap")),
    "EmbeddingKVSender": (
        "BaseKVSender",
        (
            *("__init__", "init", "send", "get_transfer_metric", "poll"),
            *("failure_exception", "clear", "abort"),
        ),
    ),
    "EmbeddingKVReceiver": (
        "BaseKVReceiver",
        ("__init__", "init", "send_metadata", "poll", "failure_exception", "clear", "abort"),
    ),
}

LENGTHS = [500, 2000, 1024, 6000]  # with 1024-token first pieces: 2000 and 6000 resume
CANCELLED = 3  # aborted by the language side as soon as it is added
RANKS = 2


def _parameters(function: Any) -> list[tuple[str, str, Any]]:
    """(name, kind, default) of each parameter, less our keyword-only extras."""
    return [
        (p.name, p.kind.name, p.default)
        for p in inspect.signature(function).parameters.values()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]


def check() -> dict[str, Any]:
    """The report; JSON-ready."""
    classes: dict[str, Any] = {}
    for name, (base_name, methods) in INTERFACE.items():
        ours = getattr(adapter, name)
        base = getattr(sglang_interface, base_name)
        classes[name] = {
            "base": f"{base.__module__}.{base.__qualname__}",
            "subclass": issubclass(ours, base),
            "abstract_left": sorted(getattr(ours, "__abstractmethods__", ())),
            "signature_mismatches": [
                method
                for method in methods
                if _parameters(getattr(ours, method)) != _parameters(getattr(base, method))
            ],
        }
    real_poll = (
        importlib.import_module(sglang_interface.SGLANG_MODULE).KVPoll
        if sglang_interface.SGLANG_INSTALLED
        else KVPoll
    )
    report = run(
        LENGTHS,
        RANKS,
        cancel={CANCELLED},
        threaded=False,
        hidden_size=32,
        adaptive_alloc=False,
        default_alloc_tokens=1024,
        num_blocks=512,
    )
    return {
        "sglang": sglang_interface.SGLANG_INSTALLED,
        "classes": classes,
        "kvpoll": {state.name: getattr(real_poll, state.name) for state in KVPoll},
        "rooms": dataclasses.asdict(report),
    }


def verify(report: dict[str, Any], sglang: bool) -> None:
    """Assert ``report`` (as JSON gives it back) shows a conforming adapter."""
    assert report["sglang"] is sglang
    for name, found in report["classes"].items():
        assert found["base"].startswith("sglang." if sglang else "embxfer."), found
        assert found["subclass"], name
        assert found["abstract_left"] == [], name
        assert found["signature_mismatches"] == [], name
    assert report["kvpoll"] == {state.name: int(state) for state in KVPoll}
    rooms = report["rooms"]
    done = [str(room) for room in range(1, len(LENGTHS) + 1) if room != CANCELLED]
    for side in ("encoder", "language"):
        assert {room for room, reason in rooms[side].items() if not reason} == set(done)
    assert rooms["language"][str(CANCELLED)] == "cancelled"
    assert "aborted by receiver" in rooms["encoder"][str(CANCELLED)]
    assert rooms["verified"] == dict.fromkeys(done, True)
    assert rooms["resumes"] == 2 * RANKS  # 2000 and 6000 tokens into 1024, on each rank
    assert rooms["leaked_blocks"] == 0
    bytes_per_token = 32 * 2 + 4 + 3 * 4  # hidden 32 in bf16, a fill id, 3 M-RoPE positions
    for room in done:
        metric = rooms["metrics"][room]
        sent = LENGTHS[int(room) - 1] * bytes_per_token  # the aux record is no write
        assert metric["transfer_total_bytes"] == RANKS * sent, room
        assert metric["transfer_latency_s"] > 0, room
        assert metric["alloc_latency_s"] is None, room
    assert rooms["metrics"][str(CANCELLED)]["transfer_latency_s"] is None


if __name__ == "__main__":
    print(json.dumps(check()))
