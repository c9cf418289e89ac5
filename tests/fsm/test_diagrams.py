"""Diagrams and tables drawn from the runtime machines, and specs/ kept in step with them.

SVG policy: layout differs between Graphviz releases, so committed SVGs are compared
only where the installed ``dot`` is the release that wrote them (each SVG records it);
the Mermaid and DOT text, and every generated block of protocol.md, are always compared.
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from transitions.extensions import diagrams_graphviz

from embxfer.fsm.poll import STATE_NAMES
from embxfer.tools import diagram
from embxfer.tools.cli import main
from embxfer.tools.diagram_cli import SPEC, SPEC_BLOCKS, export, splice

SPECS = Path(__file__).resolve().parents[2] / "specs"
needs_dot = pytest.mark.skipif(diagram.graphviz_version() is None, reason="needs Graphviz 'dot'")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diagram", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_receiver_mermaid_has_every_state_and_the_reflexive_transferring_edge(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "--side", "receiver", "--format", "mermaid")
    assert code == 0
    assert "stateDiagram-v2" in out
    for state in STATE_NAMES:
        assert f'state "{state}" as {state}' in out
    assert "Transferring --> Transferring: piece [more_owed]" in out
    assert "[*] --> Bootstrapping" in out
    assert "s_active" not in re.findall(r"Class \w+ (\w+)", out)


def test_sender_diagram_shows_verdicts_on_edges(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "--side", "sender")
    assert "Bootstrapping --> WaitingForInput: request [last_receiver]" in out
    assert "Transferring --> Transferring: write_done [more_owed]" in out


def test_internal_rows_are_left_to_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "--side", "receiver", "--format", "dot")
    assert "[internal]" not in out
    assert "_ignore" in diagram.table("receiver")


def test_highlight_marks_only_that_state(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "--side", "receiver", "--highlight", "Transferring")
    assert re.findall(r"Class (\w+) s_active", out) == ["Transferring"]
    _, dot, _ = cli(capsys, "--side", "receiver", "--format", "dot", "--highlight", "Success")
    assert re.findall(r"(\w+) \[[^\]]*peripheries=2", dot) == ["Success"]


@needs_dot
def test_svg_is_valid_and_written_to_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "receiver.svg"
    code, out, _ = cli(capsys, "--side", "receiver", "--format", "svg", "-o", str(target))
    assert code == 0 and out == ""
    root = ET.parse(target).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "Transferring" in target.read_text()


def test_dot_without_the_graphviz_package_is_an_error_not_mermaid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diagrams_graphviz, "pgv", None)  # transitions would fall back
    code, out, err = cli(capsys, "--side", "sender", "--format", "dot")
    assert code == 1 and out == ""
    assert "graphviz" in err


def test_side_is_required_and_table_takes_no_highlight(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--format", "mermaid")[0] == 2
    assert cli(capsys, "--side", "sender", "--format", "table", "--highlight", "Failed")[0] == 2


@pytest.mark.parametrize("side", diagram.SIDES)
def test_every_event_is_decided_in_every_state(side: diagram.Side) -> None:
    """The table has no empty cell: an event the machine did not cover in some state
    would raise there instead of being acted on, ignored or failed."""
    table = diagram.table(side)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len({r.trigger for r in diagram.rules(side)})
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(STATE_NAMES) and "—" not in cells, row


def test_the_seed_case_2000_into_1024_resumes_once_into_8_blocks() -> None:
    text = diagram.sequence(2000, 1024)
    assert text.count("allocated_tokens=1024") == 2
    assert "PieceRequest(sent_tokens=1024, 8 blocks, allocated_tokens=1024)" in text
    assert "PieceWritten(sent_tokens=1024, tokens=976, total_tokens=2000, delta=0)" in text
    assert "Note over L: Transferring, resume 1" in text


def test_splice_replaces_only_generated_blocks() -> None:
    doc = (
        "intro\n<!-- generated:sender-table -->\nOLD TEXT\n<!-- /generated:sender-table -->\nend\n"
    )
    fresh = splice(doc)
    assert fresh.startswith("intro\n<!-- generated:sender-table -->\n| event |")
    assert fresh.endswith("\n<!-- /generated:sender-table -->\nend\n")
    assert "OLD TEXT" not in fresh
    with pytest.raises(diagram.DiagramError, match="unknown generated block"):
        splice("<!-- generated:nope -->\nx\n<!-- /generated:nope -->")


def test_the_spec_embeds_every_generated_block() -> None:
    text = (SPECS / SPEC).read_text()
    for name in SPEC_BLOCKS:
        start = text.index(f"<!-- generated:{name} -->\n") + len(f"<!-- generated:{name} -->\n")
        assert not text[start:].startswith("<!-- /generated:"), f"{name} is empty"


def _svg_release(text: str) -> str | None:
    found = re.search(r"Generated by graphviz version (\S+)", text)
    return found.group(1) if found else None


def test_specs_are_what_the_machines_draw(tmp_path: Path) -> None:
    """Regenerating specs/ (``make diagrams``) must change nothing."""
    fresh = tmp_path / "specs"
    shutil.copytree(SPECS, fresh)
    written = export(fresh)
    assert fresh / SPEC in written
    installed = diagram.graphviz_version()
    for path in written:
        committed = SPECS / path.name
        assert committed.exists(), f"specs/{path.name} is not committed: run make diagrams"
        old = committed.read_text()
        if path.suffix == ".svg" and _svg_release(old) != installed:
            continue  # another Graphviz release lays out differently; see the module doc
        assert path.read_text() == old, f"specs/{path.name} drifted: run make diagrams"
    for suffix in ("mmd", "dot"):
        for side in diagram.SIDES:
            assert fresh / f"{side}.{suffix}" in written
