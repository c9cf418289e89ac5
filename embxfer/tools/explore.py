"""``embxfer explore``: every interleaving of a small configuration, breadth-first.

One sender room and ``--receivers`` receiver rooms move a payload in up to
``--max-resumes`` resumes, on the symbolic ``World`` of ``embxfer.tools.sim`` (the real
room machines and allocators, labels instead of bytes). From each starting point the
search applies every legal move and every fault move of the chosen kinds (``--faults``,
each bounded by a budget), deduplicates the global states it reaches (rooms, allocator
free lists, messages in flight, pending writes, times relative to the clock), and checks
the world's invariants after every move and that every dead end has finished cleanly.
A violation prints the shortest trace that leads to it.

The receivers have two blocks each and ask for one block per piece, so every resume has
to reuse blocks an earlier piece freed (the same indices come back), and payloads of
``1 .. max_resumes + 1`` blocks cover every number of resumes up to the maximum.
``--rooms N`` opens N such rooms at once on the same engines: receivers then hold less
than the rooms need, rooms wait for memory in turn, and a state where rooms wait and
nothing can free memory is reported as a deadlock (the sender holds every payload, as
the spec's progress rule asks). ``--announce``: the encoder's scheduler announces each
room's length before it hands the payload over (the announce meets the first requests
in every order). ``--reuse-ids``: each room's id is reused by a second request as soon as
the schedulers let go of the first one's rooms, while the first one's messages may still
be in flight (duplicates, reordering, aborts).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from embxfer.fsm.policy import ResumePolicy, SpillMode
from embxfer.tools.sim import (
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

Scenario = tuple[SimConfig, tuple[OpenRoom, ...], tuple[OpenRoom, ...]]
"""The engines, the rooms opened at the start, and those opened once their id is free."""


@dataclass(frozen=True)
class ExploreSettings:
    """What to explore, and the bounds that keep it finite."""

    receivers: int = 2
    max_resumes: int = 3
    rooms: int = 1  # opened at once, sharing the engines' memory
    faults: tuple[str, ...] = ("dup", "drop", "reorder", "abort")
    block_size: int = 2
    dups: int = 1
    drops: int = 1
    aborts: int = 1
    failures: int = 1
    kills: int = 1
    losses: int = 1
    max_states: int = 10_000_000  # per scenario
    keep_going: bool = False  # count every violation instead of stopping at the first
    mutant: str | None = None
    announce: bool = False  # the scheduler announces each length before the payload
    reuse_ids: bool = False  # a second request reuses each room id once it is free
    jobs: int = 1  # processes searching scenarios side by side

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if min(self.receivers, self.rooms, self.block_size) < 1 or self.max_resumes < 0:
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

    def scenarios(self) -> list[Scenario]:
        """Per number of resumes, ``rooms`` rooms: pieces of one block, the last short."""
        bs = self.block_size
        scenarios = []
        for resumes in range(self.max_resumes + 1):
            total = max(1, bs * (resumes + 1) - 1) if bs > 1 else resumes + 1
            config = SimConfig(
                receivers=self.receivers,
                block_size=bs,
                sender_blocks=self.rooms * (resumes + 1),
                receiver_blocks=RECEIVER_BLOCKS,
                policy=ResumePolicy(SpillMode.KEEP_THEN_SPILL, max_resume_tokens=bs),
            )
            names = config.receiver_names
            allocations = (bs,) * len(names)
            openings = tuple(
                OpenRoom(room, total, names, allocations, None, self.announce)
                for room in range(self.rooms)
            )
            reopenings = tuple(
                OpenRoom(self.rooms + room, total, names, allocations, room, self.announce)
                for room in range(self.rooms if self.reuse_ids else 0)
            )
            scenarios.append((config, openings, reopenings))
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
    """Search every scenario of ``settings``, on ``settings.jobs`` processes (scenarios are
    independent searches); each stops at its first violation unless ``keep_going``."""
    started = time.perf_counter()
    scenarios = settings.scenarios()
    search = functools.partial(_search, settings=settings, progress=progress)
    jobs = min(settings.jobs, len(scenarios))
    if jobs > 1:
        largest_first = scenarios[::-1]  # so that the longest search starts at once
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(search, largest_first, chunksize=1)[::-1]
    else:
        parts = []
        for scenario in scenarios:
            parts.append(search(scenario))
            if not parts[-1].complete or (parts[-1].violations and not settings.keep_going):
                break
    report = Report(
        states=sum(p.states for p in parts),
        transitions=sum(p.transitions for p in parts),
        violations=sum(p.violations for p in parts),
        dead_ends=sum(p.dead_ends for p in parts),
        max_depth=max(p.max_depth for p in parts),
        complete=all(p.complete for p in parts),
        per_scenario=[entry for p in parts for entry in p.per_scenario],
        counterexample=next((p.counterexample for p in parts if p.counterexample), []),
    )
    report.seconds = time.perf_counter() - started
    return report


def _search(scenario: Scenario, settings: ExploreSettings, progress: bool) -> Report:
    """Breadth-first search of one scenario; each state is recorded with the move that
    first reached it, so a violation's trace is the shortest one."""
    report = Report()
    with mutant(settings.mutant):
        _breadth_first(*scenario, settings, report, progress)
    report.per_scenario.append(
        {
            "total_tokens": scenario[1][0].total_tokens,
            "states": report.states,
            "transitions": report.transitions,
        }
    )
    return report


def _breadth_first(
    config: SimConfig,
    openings: tuple[OpenRoom, ...],
    reopenings: tuple[OpenRoom, ...],
    settings: ExploreSettings,
    report: Report,
    progress: bool,
) -> None:
    world = World(config, LabelData(config), settings.budget(), auto_release=True)
    ordered = "reorder" not in settings.faults
    try:
        _open(world, openings, reopenings)
    except Violation as violation:
        _record(report, config, openings, reopenings, [], violation)
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
                _record(report, config, openings, reopenings, _path(parents, key), violation)
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
                _record(
                    report, config, openings, reopenings, [*_path(parents, key), move], violation
                )
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
                        f"... T={openings[0].total_tokens}: {report.states} states, "
                        f"{report.transitions} transitions, depth {depth + 1}, "
                        f"frontier {len(frontier)}",
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


def _open(world: World, openings: tuple[OpenRoom, ...], reopenings: tuple[OpenRoom, ...]) -> None:
    for opening in openings:
        world.apply(opening)
    for opening in reopenings:
        world.defer(opening)


def _record(
    report: Report,
    config: SimConfig,
    openings: tuple[OpenRoom, ...],
    reopenings: tuple[OpenRoom, ...],
    moves: list[Move],
    violation: Violation,
) -> None:
    """Count a violation; keep the first one's trace, replayed step by step."""
    report.violations += 1
    if report.counterexample:
        return
    world = World(config, LabelData(config), Budget(), auto_release=True)
    opened = ", ".join(describe(opening) for opening in openings)
    lines = [f"counterexample ({len(moves)} moves after {opened}):"]
    try:
        _open(world, openings, reopenings)
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
        "--rooms", type=int, default=defaults.rooms, help="rooms at once, sharing memory"
    )
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
    parser.add_argument("--max-states", type=int, default=defaults.max_states, help="per scenario")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    parser.add_argument("--keep-going", action="store_true", help="count every violation")
    parser.add_argument(
        "--mutant", choices=sorted(MUTANTS), help="explore a deliberately broken machine"
    )
    parser.add_argument(
        "--announce", action="store_true", help="the encoder announces lengths early"
    )
    parser.add_argument(
        "--reuse-ids", action="store_true", help="a second request reuses each room id"
    )
    parser.add_argument("--progress", action="store_true", help="report progress on stderr")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")


def run(args: argparse.Namespace) -> int:
    settings = ExploreSettings(
        receivers=args.receivers,
        max_resumes=args.max_resumes,
        rooms=args.rooms,
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
        announce=args.announce,
        reuse_ids=args.reuse_ids,
        jobs=args.jobs,
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
