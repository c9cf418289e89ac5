"""``embxfer bench``: every benchmark with its baseline beside it, repeated; a Markdown
table of medians and spreads, ``--json`` for machines, ``--plot`` for people."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from embxfer.tools.bench.core import BenchSettings
from embxfer.tools.bench.report import definitions, summary, table
from embxfer.tools.bench.runner import BENCHMARKS, machine, run_benchmarks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchSettings()
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts into DIR")
    parser.add_argument(
        "--quick", action="store_true", help="small inputs, two repeats: a smoke run"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=defaults.torch_threads,
        help="torch intra-op threads (1: steady copies on a shared host)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BENCHMARKS),
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--no-processes", action="store_true", help="skip what starts worker processes"
    )
    parser.add_argument("--no-mooncake", action="store_true", help="skip Mooncake transfers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    # Mooncake's glog lines would bury the table; its errors still get through.
    os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
    settings = BenchSettings(
        quick=args.quick,
        repeats=args.repeats,
        mooncake=not args.no_mooncake,
        processes=not args.no_processes,
        torch_threads=args.torch_threads,
    )
    metrics = run_benchmarks(settings, args.only, progress=not args.no_progress)
    host = machine()
    print(f"embxfer bench on {host['cpu']} ({host['cores']} cores), {host['date']}")
    print(table(metrics))
    print()
    print(definitions(metrics))
    if args.plot is not None:
        from embxfer.tools.bench.plot import write_charts

        for path in write_charts(metrics, args.plot):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(summary(metrics, host, dataclasses.asdict(settings)), sort_keys=True))
    return 0
