"""What every benchmark shares: repeated timing, the spread of repeats, metrics and goals.

Machines this runs on are shared and noisy (two cores, other jobs), so every number is
the median of several repeats and carries its spread (interquartile range and extremes);
comparisons with a baseline interleave the two, so that drift in the machine's load
hits both alike.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from embxfer.transport import mooncake_data

Number = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of repeated measurements, their interquartile range (``low``..``high``,
    robust to the odd sample another job disturbed) and their extremes."""

    median: float
    low: float
    high: float
    least: float
    most: float
    samples: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no samples")
        median = statistics.median(values)
        low, high = median, median
        if len(values) > 1:
            low, _, high = statistics.quantiles(values, n=4)
        return cls(median, low, high, min(values), max(values), len(values))

    def scaled(self, factor: float) -> Spread:
        """The same spread in other units (``factor`` > 0)."""
        return Spread(
            self.median * factor,
            self.low * factor,
            self.high * factor,
            self.least * factor,
            self.most * factor,
            self.samples,
        )

    def to_json(self) -> dict[str, float]:
        return {
            "median": self.median,
            "q1": self.low,
            "q3": self.high,
            "min": self.least,
            "max": self.most,
            "n": self.samples,
        }


@dataclass(frozen=True, slots=True)
class Goal:
    """A target a metric must reach: ``value >= target`` (``at_least``) or ``<=``."""

    target: float
    at_least: bool

    def met(self, value: float) -> bool:
        return value >= self.target if self.at_least else value <= self.target

    def headroom(self, value: float) -> float:
        """How far past the goal ``value`` is: 1.0 on it, above 1 when met."""
        if self.at_least:
            return value / self.target
        return self.target / value if value else math.inf

    def render(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.target:g}"


def at_least(target: float) -> Goal:
    return Goal(target, at_least=True)


def at_most(target: float) -> Goal:
    return Goal(target, at_least=False)


@dataclass(frozen=True)
class Metric:
    """One number a benchmark reports, what it means, and the goal it is held to.

    ``value`` is None when the benchmark could not run here (``note`` says why, e.g. no
    CUDA device). ``context`` holds the numbers behind the value (baselines, counts),
    for the JSON output and the charts.
    """

    name: str
    value: float | None
    unit: str
    definition: str
    goal: Goal | None = None
    spread: Spread | None = None
    context: dict[str, Number] = field(default_factory=dict)
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the goal holds; None without a goal or a value."""
        if self.goal is None or self.value is None:
            return None
        return self.goal.met(self.value)

    def to_json(self) -> dict[str, object]:
        return {
            "value": self.value,
            "unit": self.unit,
            "goal": self.goal.render() if self.goal else None,
            "met": self.met,
            "spread": None
            if self.spread is None
            else {
                "median": self.spread.median,
                "min": self.spread.low,
                "max": self.spread.high,
                "n": self.spread.samples,
            },
            "definition": self.definition,
            "context": self.context,
            "note": self.note,
        }


@dataclass(frozen=True)
class BenchSettings:
    """How hard to try: ``quick`` runs every benchmark's plumbing on small inputs
    with few repeats (a smoke test, its numbers mean little)."""

    quick: bool = False
    repeats: int = 7
    mooncake: bool = True  # False: skip what needs the Mooncake wheel (or it is absent)
    processes: bool = True  # False: skip what starts worker processes
    # torch intra-op threads. One by default: on a host whose cores other jobs also use,
    # a copy split across cores waits for the core another job holds (8 ms stalls
    # measured on two shared cores), which would drown every copy-bound number here.
    torch_threads: int = 1

    def pick(self, full: int, quick: int) -> int:
        """A size or count: ``full`` normally, ``quick`` in quick mode."""
        return quick if self.quick else full

    @property
    def reps(self) -> int:
        return 2 if self.quick else self.repeats

    def mooncake_usable(self) -> bool:
        """Whether Mooncake transfers can be measured: not switched off, and the wheel
        loads on this machine."""
        return self.mooncake and mooncake_data.available()

    def processes_skip_reason(self) -> str:
        """Why the benchmarks between worker processes (ZeroMQ control, Mooncake data)
        cannot run here, or ``""`` when they can."""
        if not self.processes:
            return "worker processes disabled"
        if not self.mooncake_usable():
            return "Mooncake is not usable here"
        return ""


def freeze_start_up_heap() -> None:
    """What a serving process does once started (vLLM after warm-up, SGLang's
    ``freeze_gc``): move the start-up heap (torch alone is ~170k objects) out of the
    collector's sight, so that full collections, which the engines' small per-event
    objects trigger, do not rescan it (a quarter of the in-process rooms/s otherwise).
    Every process a benchmark measures calls it once its engines are up."""
    gc.collect()
    gc.freeze()


def interleaved(calls: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each of ``calls`` (each returns one measurement) ``repeats`` times, taking
    turns, so that a change in the machine's load lands on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(call())
    return samples


def compare(baseline: Sequence[float], subject: Sequence[float]) -> tuple[float, Spread]:
    """How ``subject`` measures up to ``baseline`` (times of interleaved runs): the ratio
    of their medians (1.0: as fast; robust to the odd disturbed run on either side), with
    the spread of the pairwise ratios."""
    pairs = [b / s for b, s in zip(baseline, subject, strict=True)]
    return statistics.median(baseline) / statistics.median(subject), Spread.of(pairs)


def skipped(name: str, unit: str, definition: str, goal: Goal | None, why: str) -> Metric:
    """A metric this machine cannot measure, saying why."""
    return Metric(name, None, unit, definition, goal, note=f"skipped: {why}")
