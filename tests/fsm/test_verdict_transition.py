"""``VerdictTransition`` runs a row exactly as transitions' own ``Transition`` does.

Its condition reads the room's verdict by one identity test instead of a property of
the model; this pins the two together: the same callbacks in the same order and the
same end state, for every kind of row the tables use.
"""

from __future__ import annotations

from typing import Any

import pytest
from transitions import Machine

from embxfer.fsm.room import Verdict, VerdictMachine

STATES: list[Any] = [
    {"name": "A", "on_exit": "log_exit_a"},
    {"name": "B", "on_enter": "log_enter_b", "on_exit": "log_exit_b"},
    {"name": "C", "on_enter": "log_enter_c", "final": True},
]
ROWS: list[dict[str, Any]] = [
    {"trigger": "go", "source": "A", "dest": "B", "conditions": "stale", "after": "log_a"},
    {"trigger": "go", "source": "A", "dest": "B", "conditions": "act", "before": "log_b"},
    {"trigger": "poke", "source": "B", "dest": None, "conditions": "act", "after": "log_c"},
    {"trigger": "poke", "source": "B", "dest": None, "after": "log_d"},
    {"trigger": "end", "source": "B", "dest": "C", "conditions": "act", "after": "log_e"},
]


class Model:
    """Records every callback; ``act`` and ``stale`` serve the stock machine's conditions."""

    def __init__(self) -> None:
        self.state = "A"
        self._verdict = Verdict.ACT
        self.log: list[str] = []

    @property
    def act(self) -> bool:
        return self._verdict is Verdict.ACT

    @property
    def stale(self) -> bool:
        return self._verdict is Verdict.STALE

    def __getattr__(self, name: str) -> Any:
        if name.startswith("log_"):
            return lambda *args: self.log.append(name[4:])
        raise AttributeError(name)


def _run(machine_cls: type[Machine], script: list[tuple[str, Verdict]]) -> tuple[list[str], str]:
    machine = machine_cls(
        model=None,
        states=STATES,
        transitions=ROWS,
        initial="A",
        auto_transitions=False,
        before_state_change="log_machine_before",
        after_state_change="log_machine_after",
        on_final="log_final",
    )
    model = Model()
    for trigger, verdict in script:
        model._verdict = verdict
        model.log.append(f"-- {trigger}")
        machine.events[trigger].trigger(model)
    return model.log, model.state


@pytest.mark.parametrize(
    "script",
    [
        [("go", Verdict.ACT), ("poke", Verdict.ACT), ("end", Verdict.ACT)],
        [("go", Verdict.STALE), ("poke", Verdict.STALE), ("end", Verdict.STALE)],
        [("go", Verdict.ACT), ("poke", Verdict.SETTLE), ("end", Verdict.ACT)],
    ],
)
def test_rows_run_as_transitions_runs_them(script: list[tuple[str, Verdict]]) -> None:
    assert _run(VerdictMachine, script) == _run(Machine, script)
