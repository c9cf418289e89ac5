"""``embxfer diagram``: the room machines as Mermaid, DOT, SVG or a markdown table, and
``--export DIR`` to regenerate every diagram and generated block of ``specs/``.

Everything comes from ``embxfer.tools.diagram``, which reads the runtime machines, so the
spec cannot drift from the code without ``tests/fsm/test_diagrams.py`` noticing.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from embxfer.fsm.policy import ResumePolicy
from embxfer.fsm.poll import STATE_NAMES
from embxfer.tools import diagram

SPEC = "protocol.md"
FORMATS = ("mermaid", "dot", "svg", "table")
# File suffix of each exported diagram format.
_SUFFIX: dict[diagram.GraphFormat, str] = {"mermaid": "mmd", "dot": "dot", "svg": "svg"}


def _fenced(text: str) -> str:
    return f"```mermaid\n{text}```"


# Blocks of the spec that are generated: name -> producer. In the spec each sits between
# "<!-- generated:NAME -->" and "<!-- /generated:NAME -->".
SPEC_BLOCKS: dict[str, Callable[[], str]] = {
    "sender-diagram": lambda: _fenced(diagram.mermaid("sender")),
    "receiver-diagram": lambda: _fenced(diagram.mermaid("receiver")),
    "sender-table": lambda: diagram.table("sender"),
    "receiver-table": lambda: diagram.table("receiver"),
    "sequence-2000-into-1024": lambda: _fenced(diagram.sequence(2000, 1024)),
    "sequence-50000-into-8192": lambda: _fenced(diagram.sequence(50000, 8192)),
    "sequence-50000-into-8192-capped": lambda: _fenced(
        diagram.sequence(50000, 8192, ResumePolicy(max_resume_tokens=16384))
    ),
}

_BLOCK = re.compile(
    r"(?P<open><!-- generated:(?P<name>[\w-]+) -->\n).*?(?P<close><!-- /generated:(?P=name) -->)",
    re.DOTALL,
)


def splice(document: str) -> str:
    """``document`` with every generated block replaced by its current content."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SPEC_BLOCKS:
            raise diagram.DiagramError(f"{SPEC} has an unknown generated block {name!r}")
        return match["open"] + SPEC_BLOCKS[name]().rstrip("\n") + "\n" + match["close"]

    return _BLOCK.sub(fill, document)


def export(directory: Path) -> list[Path]:
    """Write both sides' .mmd and .dot (and .svg where Graphviz's ``dot`` exists) into
    ``directory`` and refresh the generated blocks of its protocol.md, if it has one.
    Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    formats: list[diagram.GraphFormat] = ["mermaid", "dot"]
    if diagram.graphviz_version() is not None:
        formats.append("svg")
    written = []
    for side in diagram.SIDES:
        for fmt in formats:
            path = directory / f"{side}.{_SUFFIX[fmt]}"
            path.write_text(diagram.render(side, fmt))
            written.append(path)
    spec = directory / SPEC
    if spec.exists():
        spec.write_text(splice(spec.read_text()))
        written.append(spec)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--side", choices=diagram.SIDES, help="which room machine")
    parser.add_argument("--format", choices=FORMATS, default="mermaid")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--highlight",
        choices=STATE_NAMES,
        metavar="STATE",
        help="mark this state, e.g. a live room's poll() name",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write every diagram into DIR and refresh DIR/protocol.md's generated blocks",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.export is not None:
            for path in export(args.export):
                print(path)
            return 0
        if args.side is None:
            print("embxfer diagram: --side is required (or use --export DIR)", file=sys.stderr)
            return 2
        if args.format == "table":
            if args.highlight is not None:
                print("embxfer diagram: --highlight needs a diagram format", file=sys.stderr)
                return 2
            text = diagram.table(args.side)
        else:
            text = diagram.render(args.side, args.format, args.highlight)
    except diagram.DiagramError as error:
        print(f"embxfer diagram: {error}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
