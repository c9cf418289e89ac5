"""Runs every benchmark in one process, in an order that puts the cheap, CPU-bound ones
first (they are the most sensitive to what the heavier ones leave behind)."""

from __future__ import annotations

import gc
import os
import platform
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata

import torch
from tqdm import tqdm

from embxfer.tools.bench import adaptive, allocator, buffers, mooncake, pressure, protocol, rooms
from embxfer.tools.bench.core import BenchSettings, Metric, freeze_start_up_heap

Benchmark = Callable[[BenchSettings], list[Metric]]

BENCHMARKS: dict[str, Benchmark] = {
    "protocol": protocol.run,
    "allocator": allocator.run,
    "buffers": buffers.run,
    "adaptive": adaptive.run,
    "rooms": rooms.run,
    "pressure": pressure.run,
    "mooncake": mooncake.run,
}


def run_benchmarks(
    settings: BenchSettings, only: Sequence[str] = (), progress: bool = True
) -> list[Metric]:
    """Every benchmark (or those named in ``only``), with a progress bar on stderr."""
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    chosen = [name for name in BENCHMARKS if not only or name in only]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)
    freeze_start_up_heap()
    metrics: list[Metric] = []
    try:
        with tqdm(
            chosen, desc="bench", unit="benchmark", file=sys.stderr, disable=not progress
        ) as bar:
            for name in bar:
                bar.set_postfix_str(name)
                metrics += BENCHMARKS[name](settings)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    return metrics


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mooncake": _version("mooncake-transfer-engine-non-cuda"),
        "transitions": _version("transitions"),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
