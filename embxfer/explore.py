"""``embxfer explore``: every interleaving of a small configuration, breadth-first.

One sender room and ``--receivers`` receiver rooms move a payload in up to
``--max-resumes`` resumes, on the symbolic ``World`` of ``embxfer.simulation`` (the real
room machines and allocators, labels instead of bytes). From each starting point the
search applies every legal move and every fault move of the chosen kinds (``--faults``,
each bounded by a budget), deduplicates the global states it reaches (rooms, allocator
free lists, messages in flight, pending writes, times relative to the clock), and checks
the world's invariants after every move and that every dead end has finished cleanly.
A violation prints the shortest trace that leads to it.

The receivers have two blocks each and ask for one block per piece, so every resume has
to reuse blocks an earlier piece freed (the same indices come back), and payloads of
``1 .. max_resumes + 1`` blocks cover every number of resumes up to the maximum.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.simulation import (
    FAULTS,
    MUTANTS,
    Budget,
    LabelData,
    Move,
    OpenRoom,
    SimConfig,
    Snapshot,
    Violation,
    World,
    describe,
    mutant,
)

RECEIVER_BLOCKS = 2


@dataclass(frozen=True)
class ExploreSettings:
    """What to explore, and the bounds that keep it finite."""

    receivers: int = 2
    max_resumes: int = 3
    faults: tuple[str, ...] = ("dup", "drop", "reorder", "abort")
    block_size: int = 2
    dups: int = 1
    drops: int = 1
    aborts: int = 1
    failures: int = 1
    kills: int = 1
    losses: int = 1
    max_states: int = 10_000_000
    keep_going: bool = False  # count every violation instead of stopping at the first
    mutant: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if self.receivers < 1 or self.max_resumes < 0 or self.block_size < 1:
            raise ValueError(f"nothing to explore: {self}")

    def budget(self) -> Budget:
        return Budget(
            dups=self.dups,
            drops=self.drops,
            aborts=self.aborts,
            failures=self.failures,
            kills=self.kills,
            losses=self.losses,
        )

    def scenarios(self) -> list[tuple[SimConfig, OpenRoom]]:
        """One room per number of resumes: pieces of one block, the last one short."""
        bs = self.block_size
        scenarios = []
        for resumes in range(self.max_resumes + 1):
            total = max(1, bs * (resumes + 1) - 1) if bs > 1 else resumes + 1
            config = SimConfig(
                receivers=self.receivers,
                block_size=bs,
                sender_blocks=resumes + 1,
                receiver_blocks=RECEIVER_BLOCKS,
                policy=ResumePolicy(SpillMode.KEEP_THEN_SPILL, max_resume_tokens=bs),
            )
            names = config.receiver_names
            scenarios.append((config, OpenRoom(0, total, names, (bs,) * len(names))))
        return scenarios


@dataclass
class Report:
    """What a search found; the CLI prints ``summary()`` as its last line."""

    states: int = 0
    transitions: int = 0
    violations: int = 0
    seconds: float = 0.0
    dead_ends: int = 0
    max_depth: int = 0
    complete: bool = True  # every reachable state was visited (no cap hit)
    per_scenario: list[dict[str, int]] = field(default_factory=list)
    counterexample: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "states": self.states,
            "transitions": self.transitions,
            "violations": self.violations,
            "seconds": round(self.seconds, 2),
            "dead_ends": self.dead_ends,
            "max_depth": self.max_depth,
            "complete": self.complete,
            "scenarios": self.per_scenario,
        }


def explore(settings: ExploreSettings, progress: bool = False) -> Report:
    """Search every scenario of ``settings``; stop at the first violation unless
    ``keep_going``."""
    report = Report()
    started = time.perf_counter()
    with mutant(settings.mutant):
        for config, opening in settings.scenarios():
            before = (report.states, report.transitions)
            _search(config, opening, settings, report, progress)
            report.per_scenario.append(
                {
                    "total_tokens": opening.total_tokens,
                    "states": report.states - before[0],
                    "transitions": report.transitions - before[1],
                }
            )
            if report.violations and not settings.keep_going:
                break
    report.seconds = time.perf_counter() - started
    return report


def _search(
    config: SimConfig,
    opening: OpenRoom,
    settings: ExploreSettings,
    report: Report,
    progress: bool,
) -> None:
    """Breadth-first search from ``opening``; each state is recorded with the move that
    first reached it, so a violation's trace is the shortest one."""
    world = World(config, LabelData(config), settings.budget(), auto_release=True)
    ordered = "reorder" not in settings.faults
    try:
        world.apply(opening)
    except Violation as violation:
        _record(report, config, opening, [], violation)
        return
    root = world.key(ordered)
    parents: dict[Any, tuple[Any, Move, int] | None] = {root: None}
    frontier: deque[tuple[Snapshot, Any, int]] = deque([(world.snapshot(), root, 0)])
    report.states += 1
    while frontier:
        snapshot, key, depth = frontier.popleft()
        report.max_depth = max(report.max_depth, depth)
        world.restore(snapshot)
        moves = world.moves(settings.faults)
        if not moves:
            report.dead_ends += 1
            try:
                world.final_check()
            except Violation as violation:
                _record(report, config, opening, _path(parents, key), violation)
                if not settings.keep_going:
                    return
        fresh = True
        for move in moves:
            if not fresh:
                world.restore(snapshot)
            fresh = False
            report.transitions += 1
            try:
                world.apply(move)
            except Violation as violation:
                _record(report, config, opening, [*_path(parents, key), move], violation)
                if not settings.keep_going:
                    return
                continue
            reached = world.key(ordered)
            if reached not in parents:
                parents[reached] = (key, move, depth + 1)
                frontier.append((world.snapshot(), reached, depth + 1))
                report.states += 1
                if progress and report.states % 50_000 == 0:
                    print(
                        f"... {report.states} states, {report.transitions} transitions, "
                        f"depth {depth + 1}, frontier {len(frontier)}",
                        file=sys.stderr,
                    )
                if report.states >= settings.max_states:
                    report.complete = False
                    return


def _path(parents: dict[Any, tuple[Any, Move, int] | None], key: Any) -> list[Move]:
    moves: list[Move] = []
    link = parents[key]
    while link is not None:
        key, move, _ = link
        moves.append(move)
        link = parents[key]
    return moves[::-1]


def _record(
    report: Report,
    config: SimConfig,
    opening: OpenRoom,
    moves: list[Move],
    violation: Violation,
) -> None:
    """Count a violation; keep the first one's trace, replayed step by step."""
    report.violations += 1
    if report.counterexample:
        return
    world = World(config, LabelData(config), Budget(), auto_release=True)
    lines = [f"counterexample ({len(moves)} moves after {describe(opening)}):"]
    try:
        world.apply(opening)
        lines.append(f"  start: {world.summary()}")
        for step, move in enumerate(moves, 1):
            lines.append(f"  {step:3d}. {describe(move)}")
            world.apply(move)
            lines.append(f"       {world.summary()}")
    except Violation as replayed:
        lines.append(f"  VIOLATION: {replayed}")
    else:
        lines.append(f"  VIOLATION: {violation}")
    report.counterexample = lines


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ExploreSettings()
    parser.add_argument("--receivers", type=int, default=defaults.receivers)
    parser.add_argument("--max-resumes", type=int, default=defaults.max_resumes)
    parser.add_argument(
        "--faults",
        default=",".join(defaults.faults),
        help=f"comma-separated, from: {', '.join(FAULTS)} ('' for none)",
    )
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--dups", type=int, default=defaults.dups, help="duplicates per run")
    parser.add_argument("--drops", type=int, default=defaults.drops, help="drops per run")
    parser.add_argument("--aborts", type=int, default=defaults.aborts, help="aborts per run")
    parser.add_argument("--failures", type=int, default=defaults.failures, help="per run")
    parser.add_argument("--kills", type=int, default=defaults.kills, help="per run")
    parser.add_argument("--losses", type=int, default=defaults.losses, help="per run")
    parser.add_argument("--max-states", type=int, default=defaults.max_states)
    parser.add_argument("--keep-going", action="store_true", help="count every violation")
    parser.add_argument(
        "--mutant", choices=sorted(MUTANTS), help="explore a deliberately broken machine"
    )
    parser.add_argument("--progress", action="store_true", help="report progress on stderr")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def run(args: argparse.Namespace) -> int:
    settings = ExploreSettings(
        receivers=args.receivers,
        max_resumes=args.max_resumes,
        faults=tuple(f for f in args.faults.split(",") if f),
        block_size=args.block_size,
        dups=args.dups,
        drops=args.drops,
        aborts=args.aborts,
        failures=args.failures,
        kills=args.kills,
        losses=args.losses,
        max_states=args.max_states,
        keep_going=args.keep_going,
        mutant=args.mutant,
    )
    report = explore(settings, progress=args.progress)
    for line in report.counterexample:
        print(line)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['states']} states, {summary['transitions']} transitions, "
            f"{summary['violations']} violations in {summary['seconds']} s "
            f"({'every reachable state' if report.complete else 'stopped at --max-states'})"
        )
    return 1 if report.violations else 0
