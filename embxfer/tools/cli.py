"""``embxfer`` command line: each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from embxfer.tools.native_log import route_native_log

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("embxfer.tools.demo_cli", "run requests end to end and check every byte"),
    "diagram": (
        "embxfer.tools.diagram_cli",
        "draw the room state machines (Mermaid, DOT, SVG, table)",
    ),
    "bench": ("embxfer.tools.bench_cli", "measure against raw Mooncake writes and memcpy"),
    "explore": ("embxfer.tools.explore", "search every interleaving of a small configuration"),
    "keys": ("embxfer.tools.keys_cli", "per-engine CURVE keys and the allow-list"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embxfer", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="WARNING", help="stdlib logging level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    route_native_log()  # Mooncake's glog lines, here and in our children, into logging
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
