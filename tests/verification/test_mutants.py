"""Deliberately broken machines (``embxfer.simulation.MUTANTS``) are caught, quickly.

The seeds' two resume bugs (dedup keyed on block indices; a resume that enqueues no
transfer, on either side) must be found by the explorer within a few hundred states and
by the lossless Hypothesis machine within a few examples; ``late-write`` (the fix of the
use after free undone) by the explorer once time may pass with work pending.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from embxfer.explore import ExploreSettings, explore
from embxfer.simulation import Violation, mutant

from .machines import ResumeMachine

RESUME_MUTANTS = ["dedup-on-blocks", "no-resume-request", "no-resume-write"]


@pytest.mark.parametrize("name", RESUME_MUTANTS)
def test_explorer_catches(name: str) -> None:
    report = explore(ExploreSettings(receivers=2, max_resumes=3, faults=(), mutant=name))
    assert report.violations == 1
    assert report.states < 500
    assert any("is stuck" in line for line in report.counterexample)


@pytest.mark.parametrize("name", RESUME_MUTANTS)
def test_hypothesis_catches(name: str) -> None:
    quick = settings(
        max_examples=50,
        stateful_step_count=100,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],  # finding is what counts here, not shrinking
    )
    with mutant(name), pytest.raises(Violation, match="is stuck"):
        run_state_machine_as_test(ResumeMachine, settings=quick)


def test_explorer_catches_the_late_write() -> None:
    """The use after free the explorer found, with both halves of its fix undone."""
    faults = ("abort", "drop", "delay")
    settings = ExploreSettings(receivers=1, max_resumes=0, faults=faults, mutant="late-write")
    report = explore(settings)
    assert report.violations == 1 and report.states < 5_000
    assert "now free" in report.counterexample[-1]


def test_mutants_leave_the_machines_intact() -> None:
    with mutant("dedup-on-blocks"):
        pass
    report = explore(ExploreSettings(receivers=2, max_resumes=2, faults=()))
    assert report.violations == 0
