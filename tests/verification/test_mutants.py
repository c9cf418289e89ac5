"""Deliberately broken machines (``embxfer.tools.sim.MUTANTS``) are caught, quickly.

The seeds' two resume bugs (dedup keyed on block indices; a resume that enqueues no
transfer, on either side) must be found by the explorer within a few hundred states and
by the lossless Hypothesis machine within a few examples; ``late-write`` (the fix of the
use after free undone) by the explorer once time may pass with work pending. Under
memory pressure, a queue that serves the newest waiter first (``lifo-queue``) and a
receiver that waits holding its pieces (``hold-while-waiting``) are found by both tools
with several rooms at once: the first breaks fairness, the second deadlocks. Protocol
v2's two (a room that takes a message of an earlier room under its id, ``ignore-nonce``;
a sender that takes a receiver's request for the announced length while the write of the
request it replaces is in flight, ``replace-after-write``) are found by the explorer
within a hundred states and by ``ReuseMachine`` within a few hundred examples.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from embxfer.tools.explore import ExploreSettings, explore
from embxfer.tools.sim import Violation, mutant

from .machines import PressureMachine, ResumeMachine, ReuseMachine

RESUME_MUTANTS = ["dedup-on-blocks", "no-resume-request", "no-resume-write"]


def finding(examples: int) -> settings:
    """Up to ``examples`` derandomized runs of 100 steps: finding is what counts here,
    not shrinking."""
    return settings(
        max_examples=examples,
        stateful_step_count=100,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
    )


@pytest.mark.parametrize("name", RESUME_MUTANTS)
def test_explorer_catches(name: str) -> None:
    report = explore(ExploreSettings(receivers=2, max_resumes=3, faults=(), mutant=name))
    assert report.violations == 1
    assert report.states < 500
    assert any("is stuck" in line for line in report.counterexample)


@pytest.mark.parametrize("name", RESUME_MUTANTS)
def test_hypothesis_catches(name: str) -> None:
    quick = finding(50)
    with mutant(name), pytest.raises(Violation, match="is stuck"):
        run_state_machine_as_test(ResumeMachine, settings=quick)


PRESSURE_MUTANTS = {
    "lifo-queue": (3, "waited ahead of it"),  # (rooms at once in the explorer, the report)
    "hold-while-waiting": (2, "deadlock"),
}


@pytest.mark.parametrize("name", sorted(PRESSURE_MUTANTS))
def test_explorer_catches_under_memory_pressure(name: str) -> None:
    rooms, report_says = PRESSURE_MUTANTS[name]
    settings = ExploreSettings(receivers=1, max_resumes=2, rooms=rooms, faults=(), mutant=name)
    report = explore(settings)
    assert report.violations == 1 and report.states < 1_000
    assert report_says in report.counterexample[-1]


@pytest.mark.parametrize("name", sorted(PRESSURE_MUTANTS))
def test_hypothesis_catches_under_memory_pressure(name: str) -> None:
    quick = finding(100)
    with mutant(name), pytest.raises(Violation, match=PRESSURE_MUTANTS[name][1]):
        run_state_machine_as_test(PressureMachine, settings=quick)


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


V2_MUTANTS = {  # the explorer's configuration that shows each
    "ignore-nonce": ExploreSettings(receivers=1, max_resumes=1, faults=("dup",), reuse_ids=True),
    "replace-after-write": ExploreSettings(receivers=1, max_resumes=1, faults=(), announce=True),
}


@pytest.mark.parametrize("name", sorted(V2_MUTANTS))
def test_explorer_catches_protocol_v2_mutants(name: str) -> None:
    report = explore(dataclasses.replace(V2_MUTANTS[name], mutant=name))
    assert report.violations == 1 and report.states < 100
    assert "wrong result" in report.counterexample[-1]


@pytest.mark.parametrize("name", sorted(V2_MUTANTS))
def test_hypothesis_catches_protocol_v2_mutants(name: str) -> None:
    quick = finding(1000)
    with mutant(name), pytest.raises(Violation):
        run_state_machine_as_test(ReuseMachine, settings=quick)


def test_protocol_v2_configurations_are_sound() -> None:
    for configuration in V2_MUTANTS.values():
        assert explore(configuration).violations == 0
