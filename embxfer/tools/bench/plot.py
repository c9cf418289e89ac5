"""PNG charts of a bench run (``--plot DIR``). matplotlib is an optional extra
(``embxfer[plot]``), imported only here and only when charts are asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embxfer.tools.bench import pressure
from embxfer.tools.bench.core import Metric, Spread


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("--plot needs matplotlib: pip install 'embxfer[plot]'") from error
    return plt


def write_charts(metrics: Sequence[Metric], directory: Path) -> list[Path]:
    """``goals.png`` (every goal, as headroom), ``timings.png`` (each transfer beside
    its baseline), ``allocator.png``, ``adaptive.png`` and ``pressure.png``; returns
    the files written."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    by_name = {metric.name: metric for metric in metrics}
    written = []
    for name, draw in (
        ("goals", _goals),
        ("timings", _timings),
        ("allocator", _allocator),
        ("adaptive", _adaptive),
        ("pressure", _pressure),
    ):
        figure = draw(plt, by_name)
        if figure is None:
            continue
        path = directory / f"{name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _goals(plt: Any, by_name: dict[str, Metric]) -> Any:
    """Headroom per goal: 1 is the goal exactly, right of it is met (log scale)."""
    rows = [m for m in by_name.values() if m.goal is not None and m.value is not None]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    labels, values, colors = [], [], []
    for metric in rows:
        assert metric.goal is not None and metric.value is not None
        labels.append(f"{metric.name} ({metric.goal.render()} {metric.unit})")
        values.append(metric.goal.headroom(metric.value))
        colors.append("tab:green" if metric.met else "tab:red")
    axes.barh(labels, values, color=colors)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlabel("value relative to goal (>1: met)")
    axes.invert_yaxis()
    axes.set_title("embxfer bench: goals")
    return figure


_PAIRS = (  # (metric, what it is, its baseline, in the metric's context)
    ("mooncake_e2e_vs_raw", "e2e_ms", "raw_ms"),
    ("resume_vs_exact", "resume_ms", "exact_ms"),
    ("inproc_vs_memcpy", "inproc_ms", "copy_ms"),
    ("inproc_vs_memcpy_cuda", "inproc_ms", "copy_ms"),
    ("assembly_vs_copy", "assembly_ms", "copy_ms"),
    ("assembly_vs_copy_cuda", "assembly_ms", "copy_ms"),
)


def _timings(plt: Any, by_name: dict[str, Metric]) -> Any:
    """Each transfer beside its baseline, in ms (each pair on its own scale)."""
    pairs = [
        (name, by_name[name].context, subject, baseline)
        for name, subject, baseline in _PAIRS
        if name in by_name and subject in by_name[name].context
    ]
    if not pairs:
        return None
    figure, axes = plt.subplots(1, len(pairs), figsize=(3 * len(pairs), 3.2), squeeze=False)
    for axis, (name, context, subject, baseline) in zip(axes[0], pairs, strict=True):
        heights = [float(context[subject]), float(context[baseline])]
        axis.bar(
            [subject.removesuffix("_ms"), baseline.removesuffix("_ms")],
            heights,
            color=["tab:blue", "tab:gray"],
        )
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("ms (median)")
    return figure


def _allocator(plt: Any, by_name: dict[str, Metric]) -> Any:
    points = [
        (int(n.split("_")[-1].removesuffix("k")) * 1000, m)
        for n, m in by_name.items()
        if n.startswith("alloc_free_us_")
    ]
    if not points:
        return None
    points.sort()
    figure, axes = plt.subplots(figsize=(5, 3.2))
    sizes = [size for size, _ in points]
    medians = [m.value for _, m in points]
    low = [m.value - m.spread.low if m.spread and m.value else 0.0 for _, m in points]
    high = [m.spread.high - m.value if m.spread and m.value else 0.0 for _, m in points]
    axes.errorbar(sizes, medians, yerr=[low, high], marker="o", capsize=4)
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("pool size (blocks)")
    axes.set_ylabel("alloc + free of 64 blocks (us)")
    axes.set_title("allocator cost against pool size")
    return figure


def _adaptive(plt: Any, by_name: dict[str, Metric]) -> Any:
    metric = by_name.get("adaptive_memory_ratio")
    if metric is None or metric.value is None:
        return None
    curve = sorted(
        (float(key.removeprefix("memory_ratio_hold_").removesuffix("x")), float(value))
        for key, value in metric.context.items()
        if key.startswith("memory_ratio_hold_")
    )
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot([h for h, _ in curve], [r for _, r in curve], marker="o", label="adaptive")
    if metric.goal is not None:
        axes.axhline(metric.goal.target, color="tab:red", linestyle="--", label="goal")
    axes.axhline(1.0, color="black", linewidth=1, label="exact sizing")
    axes.set_xscale("log")
    axes.set_xticks([h for h, _ in curve], [f"{h:g}" for h, _ in curve])
    axes.minorticks_off()
    axes.set_xlabel("hold time / wait time of a room")
    axes.set_ylabel("receiver block-seconds / exact")
    axes.set_title("adaptive first allocation: memory")
    axes.legend()
    return figure


def _pressure(plt: Any, by_name: dict[str, Metric]) -> Any:
    """Rooms/s and room latency against concurrency, one color per transport, with the
    interquartile range of the runs (the receiver's pool fits a quarter of the rooms)."""
    figure, (rate_axes, latency_axes) = plt.subplots(1, 2, figsize=(9, 3.4))
    drawn = False
    for color, transport in enumerate(pressure.TRANSPORTS):
        for axes, measure, style in (
            (rate_axes, "rooms_per_s", "-"),
            (latency_axes, "p50_ms", "-"),
            (latency_axes, "p99_ms", "--"),
        ):
            points = _sweep(by_name, transport, measure)
            if not points:
                continue
            drawn = True
            axes.errorbar(
                [concurrency for concurrency, _ in points],
                [spread.median for _, spread in points],
                yerr=[
                    [spread.median - spread.low for _, spread in points],
                    [spread.high - spread.median for _, spread in points],
                ],
                marker="o",
                capsize=4,
                linestyle=style,
                color=f"C{color}",
                label=transport if measure == "rooms_per_s" else f"{transport} {measure[:3]}",
            )
    if not drawn:
        plt.close(figure)
        return None
    for axes in (rate_axes, latency_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(pressure.CONCURRENCY, [str(c) for c in pressure.CONCURRENCY])
        axes.minorticks_off()
        axes.set_xlabel("rooms open at once (pool: a quarter)")
        axes.legend(fontsize=8)
    rate_axes.set_ylim(bottom=0)
    rate_axes.set_ylabel("rooms/s (median)")
    rate_axes.set_title("throughput under memory pressure")
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("room latency, ms")
    latency_axes.set_title("latency: p50 (solid), p99 (dashed)")
    return figure


def _sweep(by_name: dict[str, Metric], transport: str, measure: str) -> list[tuple[int, Spread]]:
    """(concurrency, spread of the runs) of each point of the pressure sweep measured."""
    points = []
    for concurrency in pressure.CONCURRENCY:
        metric = by_name.get(pressure.point_name(transport, concurrency, measure))
        if metric is not None and metric.spread is not None:
            points.append((concurrency, metric.spread))
    return points
