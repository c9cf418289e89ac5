"""``embxfer demo``: options, then the in-process or the cross-process demo."""

from __future__ import annotations

import argparse

from embxfer.demo import DemoSettings, run_inproc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoSettings()
    parser.add_argument("--transport", choices=["inproc"], default="inproc")
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument(
        "--tokens",
        default=defaults.tokens,
        help="lengths: 'A,B,...' cycled, 'LO:HI' uniform, or 'lognormal:MEDIAN:SIGMA'",
    )
    parser.add_argument(
        "--default-alloc", type=int, default=defaults.default_alloc, metavar="TOKENS"
    )
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--receivers", type=int, default=defaults.receivers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--receiver-tokens",
        type=int,
        default=defaults.receiver_tokens,
        help="receiver buffer capacity in tokens (0: concurrency x 2 x default-alloc)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        requests=args.requests,
        tokens=args.tokens,
        default_alloc=args.default_alloc,
        block_size=args.block_size,
        hidden=args.hidden,
        receivers=args.receivers,
        concurrency=args.concurrency,
        seed=args.seed,
        receiver_tokens=args.receiver_tokens,
    )
    summary = run_inproc(settings, progress=not args.no_progress)
    summary.print(args.json)
    ok = summary.failed == 0 and summary.verified and summary.leaked_blocks == 0
    return 0 if ok else 1
