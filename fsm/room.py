"""What sender and receiver rooms share: the flyweight machine driver, verdicts, deadlines.

A room is a plain object; its role's class-level ``transitions.Machine`` (built with
``model=None`` and never told about rooms) moves it. ``handle`` runs one event: the
role's classifier decides what the event means in the room's current state (a
``Verdict``), the transition table picks the edge whose condition names that verdict,
and the edge's callbacks queue actions. Nothing else changes a room's state.

The machine is the authority, and ``Dispatch`` runs it: compiled once per role from
the machine's own events, rows, states and callbacks, it does per event what
``Event.trigger`` does (prepare, first row whose condition holds, that row's callbacks
around the state change) without building the library's per-trigger ``EventData``,
partial and callback-name lookups, which cost as much as the rooms' own work. A test
drives rooms through both and compares (tests/fsm/test_dispatch.py).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from transitions import Machine
from transitions.core import Condition, EventData, MachineError, Transition

from embxfer.fsm.actions import Action
from embxfer.fsm.events import CallbackFailed, Event
from embxfer.fsm.poll import STATE_NAMES, KVPoll

LOG = logging.getLogger("embxfer.room")

BOOTSTRAPPING = KVPoll.Bootstrapping.name
WAITING = KVPoll.WaitingForInput.name
TRANSFERRING = KVPoll.Transferring.name
SUCCESS = KVPoll.Success.name
FAILED = KVPoll.Failed.name
ACTIVE = [BOOTSTRAPPING, WAITING, TRANSFERRING]
TERMINAL = [SUCCESS, FAILED]
_TERMINAL = frozenset(TERMINAL)


class Verdict(enum.Enum):
    """What an event means for a room in its current state. The transition tables'
    conditions are the lower-case names of these members."""

    ACT = "act"
    STALE = "stale"  # duplicate or out-of-date: ignored, counted
    VIOLATION = "violation"  # the peer broke the protocol, or a local failure: room fails
    LAST_RECEIVER = "last_receiver"  # sender: the final receiver of the room joined
    ALL_DONE = "all_done"  # every token is where it belongs
    MORE_OWED = "more_owed"  # a piece landed and a resume must follow
    DEADLINE = "deadline_passed"  # a deadline passed: room fails
    SETTLE = "settle"  # a terminal room can give memory back


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines, in seconds of the injected clock."""

    bootstrap_s: float = 30.0  # in Bootstrapping: waiting for the peer(s)
    progress_s: float = 30.0  # in WaitingForInput/Transferring: without any progress
    # Receiver: how long blocks that a write may still target are held after a failure
    # without the sender's acknowledgement, counted from the last moment the sender may
    # start that write (``progress_s`` after the request). Must exceed the longest write
    # a sender can have in flight (a stalled Mooncake write returns after about 60 s)
    # plus the control messages' delivery time.
    write_grace_s: float = 65.0


def verdict_table(
    table: list[tuple[str, str | list[str], str | None, str, str]],
) -> list[dict[str, Any]]:
    """Expand ``(trigger, source, dest, verdict, callback)`` rows into transitions' dicts.

    A ``dest`` of None is an internal transition (no exit/enter); ``verdict`` "" means
    the row matches any verdict (rows are tried in order, so it comes last)."""
    rows: list[dict[str, Any]] = []
    for trigger, source, dest, verdict, callback in table:
        row: dict[str, Any] = {"trigger": trigger, "source": source, "dest": dest}
        if verdict:
            row["conditions"] = verdict
        if callback:
            row["after"] = callback
        rows.append(row)
    return rows


class VerdictCondition(Condition):
    """A table condition, which always names a ``Verdict``: it holds when the room's
    verdict is that one (one identity test; a room has no attribute per verdict for
    transitions' generic path to resolve)."""

    def __init__(self, func: str, target: bool = True) -> None:
        super().__init__(func, target)
        self.verdict = Verdict(func)

    def check(self, event_data: EventData) -> bool:
        return (cast(Room, event_data.model)._verdict is self.verdict) is self.target


class VerdictTransition(Transition):
    """A table row, whose condition (if any) names a ``Verdict``. Rooms run through
    ``Dispatch``, compiled from these rows; the library's own ``Event.trigger`` runs them
    as it runs any row (tests drive rooms both ways and compare)."""

    condition_cls = VerdictCondition


class VerdictMachine(Machine):
    """A ``Machine`` whose rows are ``VerdictTransition``s."""

    transition_cls = VerdictTransition


def build_machine(name: str, table: list[dict[str, Any]], on_enter: dict[str, str]) -> Machine:
    """The flyweight machine for one role: shared by all its rooms, which it never holds.
    Success and Failed are final: entering either runs ``Room._latch``."""
    states = [
        {"name": s, "final": s in TERMINAL, **({"on_enter": on_enter[s]} if s in on_enter else {})}
        for s in STATE_NAMES
    ]
    return VerdictMachine(
        model=None,
        name=name,
        states=states,
        transitions=table,
        initial=BOOTSTRAPPING,
        auto_transitions=False,
        prepare_event="_classify",
        on_final="_latch",
    )


class Step:
    """One row of the machine, compiled: the verdict its condition names (None: any), and
    the names of the room methods it calls in transitions' order (``Transition.execute``
    and ``_change_state``, 0.9): ``before_state_change`` and ``before``, then, unless the
    row is internal, the source's ``on_exit``, the state change, the destination's
    ``on_enter`` and, for a final state, ``on_final``; then ``after`` and
    ``after_state_change``. Rows carry no ``prepare`` callbacks (``verdict_table``).
    Methods are looked up on the room at each call, as transitions does (tests replace
    some)."""

    __slots__ = ("after", "before", "dest", "origin", "verdict")

    def __init__(
        self, machine: Machine, trigger: str, row: VerdictTransition, room: type[Room]
    ) -> None:
        def resolved(names: Iterable[object]) -> tuple[str, ...]:
            return tuple(_method(room, name) for name in names)

        self.origin = (machine.name, trigger, row)  # what it was compiled from
        conditions = cast(list[VerdictCondition], row.conditions)
        self.verdict = conditions[0].verdict if conditions else None
        before = [*machine.before_state_change, *row.before]
        after = [*row.after, *machine.after_state_change]
        self.dest: str | None = None
        if row.dest is not None:
            source, dest = machine.get_state(row.source), machine.get_state(row.dest)
            self.dest = dest.name
            before += source.on_exit
            after = [*dest.on_enter, *(machine.on_final if dest.final else ()), *after]
        self.before, self.after = resolved(before), resolved(after)

    def fire(self, room: Room, event: Event) -> None:
        for name in self.before:
            getattr(room, name)(event)
        if self.dest is not None:
            room.state = self.dest
        for name in self.after:
            getattr(room, name)(event)


class Dispatch:
    """A role's machine compiled for ``Room.handle``: per event type and state, the rows
    in the machine's order; and its prepare callbacks (the classifier)."""

    def __init__(self, machine: Machine, room: type[Room]) -> None:
        if machine.finalize_event or machine.on_exception or machine.has_queue:
            raise ValueError(f"{machine.name}: finalize, exception and queued events not run")
        self.machine = machine
        self.prepare = tuple(_method(room, name) for name in machine.prepare_event)
        self.rows: dict[type, dict[str, tuple[Step, ...]]] = {
            event_type: {
                source: tuple(
                    Step(machine, trigger, cast(VerdictTransition, row), room) for row in rows
                )
                for source, rows in machine.events[trigger].transitions.items()
            }
            for event_type, trigger in room.TRIGGERS.items()
        }

    def run(self, room: Room, event: Event) -> None:
        """What ``machine.events[trigger].trigger(room, event)`` does for a room."""
        rows = self.rows[type(event)].get(room.state)
        if rows is None:  # transitions raises the same for an event the state lacks
            trigger = room.TRIGGERS[type(event)]
            state = room.state
            raise MachineError(
                f"{self.machine.name}Can't trigger event {trigger} from state {state}!"
            )
        for name in self.prepare:
            getattr(room, name)(event)
        verdict = room._verdict
        for step in rows:
            if step.verdict is None or step.verdict is verdict:
                step.fire(room, event)
                return


def _method(room: type[Room], name: object) -> str:
    """``name``, checked to name a method of ``room`` (as transitions would find out at
    the first event that needs it, this finds out when the role is defined)."""
    if not isinstance(name, str) or not callable(getattr(room, name, None)):
        raise TypeError(f"{room.__name__}.{name}, named by its machine, is not a method")
    return name


class Room:
    """State, verdict and outbox common to both roles."""

    __slots__ = (
        "_actions",
        "_verdict",
        "crash",
        "deadline",
        "ignored",
        "now",
        "reason",
        "released",
        "resumes",
        "room_id",
        "state",
        "timeouts",
        "verdict_reason",
    )

    MACHINE: ClassVar[Machine]
    DISPATCH: ClassVar[Dispatch]
    TRIGGERS: ClassVar[dict[type, str]]

    @classmethod
    def bind(cls, machine: Machine) -> None:
        """Make ``machine`` the role's: what moves every room of it."""
        cls.MACHINE = machine
        cls.DISPATCH = Dispatch(machine, cls)

    def __init__(self, room_id: int, timeouts: Timeouts, now: float) -> None:
        self.room_id = room_id
        self.timeouts = timeouts
        self.state = BOOTSTRAPPING
        self.now = now
        self.deadline = now + timeouts.bootstrap_s
        self.reason = ""
        self.released = False  # the scheduler let go of the room
        self.resumes = 0
        self.ignored = 0  # events judged stale, duplicate or moot (counted, never acted on)
        self._actions: list[Action] = []
        self._verdict = Verdict.ACT
        self.verdict_reason = ""
        self.crash = ""  # what a callback raised, if one ever did (a bug)

    # -- driving -------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Action]:
        """Run one event at time ``now``; return the actions to carry out, in order.

        Never raises: a callback that raises is a bug, and it fails this room (through
        the table's ``crash`` rows), not the engine that drives every room."""
        self.now = now
        try:
            self.DISPATCH.run(self, event)
        except Exception as exc:
            self._crashed(event, exc)
        actions, self._actions = self._actions, []
        return actions

    def _crashed(self, event: Event, exc: Exception) -> None:
        """Discard the half-done step's actions and fail the room with the error. Blocks
        the room recorded before the crash are freed by the failure as always."""
        LOG.exception("room=%d crashed on %s in %s", self.room_id, type(event).__name__, self.state)
        self._actions = []
        self.crash = f"{type(event).__name__}: {exc!r}"
        try:
            self.DISPATCH.run(self, CallbackFailed(self.crash))
        except Exception:  # the failure path itself is broken: the room stays as it is
            self._actions = []
            LOG.exception("room=%d could not fail after a crash", self.room_id)

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL

    @property
    def wakeup(self) -> float:
        """When the room next needs a Tick (inf: never)."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """Released, terminal and holding no memory: the runtime may forget the room."""
        raise NotImplementedError

    def names(self, peer: str, nonce: int) -> bool:
        """Whether a message from ``peer`` about receiver incarnation ``nonce`` is this
        room's (rooms that reuse an id are told apart by it)."""
        raise NotImplementedError

    def knows_other(self, peer: str, nonce: int) -> bool:
        """Whether the room knows ``peer`` by another incarnation than ``nonce``, so that
        a message of ``nonce`` cannot be its (the router keeps it for a later room)."""
        return False

    # -- verdicts (the tables' conditions, checked by VerdictCondition) ---------------
    def _classify(self, event: Event) -> None:
        """Decide what ``event`` means for this room now (every table's prepare step)."""
        if isinstance(event, CallbackFailed):
            self._decide(Verdict.VIOLATION, f"internal error on {event.error}")
        else:
            self._classify_event(event)

    def _classify_event(self, event: Event) -> None:
        """The role's classifier."""
        raise NotImplementedError

    def _other_incarnation(self, nonce: int, expected: int) -> str:
        """Why a message of receiver incarnation ``nonce`` is stale to this room, which
        expects ``expected`` ("" if it is not): the nonce check of both roles."""
        if nonce == expected:
            return ""
        return f"for incarnation {nonce:#x} of room {self.room_id}, not {expected:#x}"

    def _decide(self, verdict: Verdict, reason: str = "") -> None:
        self._verdict = verdict
        self.verdict_reason = reason

    # -- shared callbacks ------------------------------------------------------------
    def _ignore(self, event: Event) -> None:
        self.ignored += 1
        LOG.debug(
            "room=%d ignored %s in %s: %s",
            self.room_id,
            type(event).__name__,
            self.state,
            self.verdict_reason or "nothing to do",
        )

    def _progressed(self) -> None:
        """Something moved forward: push the no-progress deadline out."""
        self.deadline = self.now + self.timeouts.progress_s

    def _latch(self, _event: Event) -> None:
        """A terminal room has no deadline: time can only settle its memory now."""
        self.deadline = float("inf")

    def _record_failure(self) -> None:
        self.reason = self.verdict_reason
        LOG.info("room=%d failed: %s", self.room_id, self.reason)
