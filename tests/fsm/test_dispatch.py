"""``Dispatch`` runs the machines as transitions itself would: every case and scenario of
the row tests passes, firing every row, when rooms are driven through the library's own
``Event.trigger`` instead (its rows executed by the library's ``Transition.execute``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from transitions.core import EventData, MachineError

from embxfer.fsm.events import Event, Tick
from embxfer.fsm.receiver import ReceiverRoom
from embxfer.fsm.room import Dispatch, Room, VerdictTransition

from .rooms import receiver
from .test_rows import Row, _verdict, every_row, run_every_case


@contextmanager
def through_transitions() -> Iterator[set[Row]]:
    """Drive rooms with ``Event.trigger`` while the body runs; record the rows it fires."""
    fired: set[Row] = set()
    run, execute = Dispatch.run, VerdictTransition.execute

    def trigger(dispatch: Dispatch, room: Room, event: Event) -> None:
        dispatch.machine.events[room.TRIGGERS[type(event)]].trigger(room, event)

    def recorded(row: VerdictTransition, event_data: EventData) -> bool:
        done = execute(row, event_data)
        if done:
            name = (event_data.machine.name, event_data.event.name)
            fired.add((*name, row.source, row.dest, _verdict(row)))
        return done

    Dispatch.run = trigger  # type: ignore[method-assign]
    VerdictTransition.execute = recorded  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        Dispatch.run = run  # type: ignore[method-assign]
        VerdictTransition.execute = execute  # type: ignore[method-assign]


def test_every_case_passes_through_transitions_own_trigger() -> None:
    with through_transitions() as fired:
        run_every_case()
    assert fired == every_row()


def test_an_event_its_state_has_no_row_for_fails_the_room_as_transitions_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    room = receiver(8)
    monkeypatch.delitem(ReceiverRoom.DISPATCH.rows[Tick], room.state)
    with pytest.raises(MachineError, match="Can't trigger event tick from state Bootstrapping"):
        room.DISPATCH.run(room, Tick())
    room.handle(Tick(), 0.0)  # the room's own driver turns the refusal into a failure
    assert room.state == "Failed" and "MachineError" in room.reason
