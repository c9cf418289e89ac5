"""What ``embxfer bench`` prints: a Markdown table (the README's results table is a copy
of it) and one JSON object with every metric, its goal and the machine."""

from __future__ import annotations

import math
from collections.abc import Sequence

from embxfer.tools.bench.core import Metric, Spread


def _number(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _spread(spread: Spread | None) -> str:
    if spread is None:
        return ""
    return f"{_number(spread.low)}..{_number(spread.high)} (n={spread.samples})"


def _met(metric: Metric) -> str:
    met = metric.met
    if met is None:
        return "skipped" if metric.value is None and metric.goal else ""
    return "yes" if met else "**no**"


def table(metrics: Sequence[Metric]) -> str:
    """Metric, median value, interquartile range of the repeats, goal, and whether met."""
    lines = [
        "| metric | value | IQR of repeats | goal | met |",
        "|---|---|---|---|---|",
    ]
    for metric in metrics:
        value = metric.note if metric.value is None else f"{_number(metric.value)} {metric.unit}"
        goal = metric.goal.render() if metric.goal else ""
        lines.append(
            f"| {metric.name} | {value} | {_spread(metric.spread)} | {goal} | {_met(metric)} |"
        )
    return "\n".join(lines)


def definitions(metrics: Sequence[Metric]) -> str:
    """What each metric measures, and the numbers behind it."""
    lines = []
    for metric in metrics:
        context = ", ".join(
            f"{key}={_number(value) if isinstance(value, float) else value}"
            for key, value in metric.context.items()
        )
        lines.append(f"- {metric.name}: {metric.definition}" + (f" [{context}]" if context else ""))
    return "\n".join(lines)


def summary(
    metrics: Sequence[Metric], machine: dict[str, str], settings: dict[str, object]
) -> dict[str, object]:
    """The JSON object: ``ratios`` maps every metric to its value (None when skipped)."""
    missed = [m.name for m in metrics if m.met is False]
    return {
        "ratios": {m.name: m.value for m in metrics},
        "goals_met": sum(m.met is True for m in metrics),
        "goals_missed": missed,
        "metrics": {m.name: m.to_json() for m in metrics},
        "machine": machine,
        "settings": settings,
    }
