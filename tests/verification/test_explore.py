"""The explorer: complete on small configurations, and its command line."""

from __future__ import annotations

import json

import pytest

from embxfer.tools.cli import main
from embxfer.tools.explore import ExploreSettings, explore


def test_every_interleaving_without_faults_succeeds() -> None:
    report = explore(ExploreSettings(receivers=2, max_resumes=3, faults=()))
    assert report.violations == 0 and report.complete
    assert [s["total_tokens"] for s in report.per_scenario] == [1, 3, 5, 7]
    assert report.dead_ends >= 4  # at least one finished end per scenario


@pytest.mark.parametrize(
    ("receivers", "max_resumes", "faults"),
    [
        (1, 2, ("dup", "drop", "reorder", "abort", "fail")),
        (2, 0, ("fail", "kill", "lose")),
        (1, 1, ("abort", "drop", "delay")),  # time passing by finished rooms ends
    ],
)
def test_faulty_interleavings_keep_every_invariant(
    receivers: int, max_resumes: int, faults: tuple[str, ...]
) -> None:
    settings = ExploreSettings(
        receivers=receivers, max_resumes=max_resumes, faults=faults, max_states=200_000
    )
    report = explore(settings)
    assert report.violations == 0 and report.complete
    assert report.states > 1_000


def test_rooms_sharing_memory_all_succeed_in_every_interleaving() -> None:
    """Three rooms on receivers of two blocks: they wait for memory in turn, and no
    ordering leaves one waiting with nothing left to free memory (a deadlock)."""
    report = explore(ExploreSettings(receivers=1, max_resumes=2, rooms=3, faults=()))
    assert report.violations == 0 and report.complete
    assert report.states > 2_000


def test_state_cap_marks_the_search_incomplete() -> None:
    report = explore(ExploreSettings(receivers=2, max_resumes=1, max_states=500))
    assert not report.complete and report.states == 500


def test_cli_prints_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--receivers", "1", "--max-resumes", "1", "--faults", "dup", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert {"states", "transitions", "violations", "seconds"} <= summary.keys()
    assert summary["violations"] == 0 and summary["states"] > 0


def test_cli_prints_the_counterexample(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--max-resumes", "2", "--faults", "", "--mutant", "dedup-on-blocks"])
    out = capsys.readouterr().out
    assert code == 1
    assert "counterexample" in out and "VIOLATION: room 0 is stuck" in out


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        ExploreSettings(faults=("teleport",))
