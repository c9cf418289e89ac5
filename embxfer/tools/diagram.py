"""Diagrams and tables of the room machines, drawn from the machines the runtime runs.

Reviewers read the protocol through its state diagrams and tables, so these are never
written by hand: every rule comes from the live flyweight machines (``SENDER_MACHINE``,
``RECEIVER_MACHINE``), in the order they dispatch, and the sequence diagrams come from
driving real sender and receiver rooms against each other. Output is deterministic
(no timestamps, no addresses, stable order) so ``specs/`` can be checked for drift.

Diagrams draw only state changes (including the reflexive Transferring edge, which
exits and re-enters the state); internal rows (``dest`` None: ignore, retry, settle)
would turn every state into a hairball of self-loops, so they appear in the tables only.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from transitions import Machine
from transitions.extensions import GraphMachine

from embxfer.buffers.allocator import FreeListAllocator
from embxfer.buffers.fair_pool import FairPool
from embxfer.fsm.actions import Action, SendMessage, SpillPiece, StorePayload, WritePiece
from embxfer.fsm.events import (
    Event,
    PayloadReady,
    PeerReady,
    Released,
    WriteFinished,
)
from embxfer.fsm.memory import blocks_needed
from embxfer.fsm.messages import PieceRequest, PieceWritten
from embxfer.fsm.policy import ResumePolicy
from embxfer.fsm.receiver import RECEIVER_MACHINE, ReceiverRoom
from embxfer.fsm.room import ACTIVE, SUCCESS, TERMINAL, Room, Timeouts
from embxfer.fsm.routing import room_event
from embxfer.fsm.sender import SENDER_MACHINE, SenderRoom

Side = Literal["sender", "receiver"]
SIDES: tuple[Side, ...] = ("sender", "receiver")
GraphFormat = Literal["mermaid", "dot", "svg"]

_MACHINES: dict[Side, Machine] = {"sender": SENDER_MACHINE, "receiver": RECEIVER_MACHINE}
_ROOMS: dict[Side, type[Room]] = {"sender": SenderRoom, "receiver": ReceiverRoom}
# Table columns in lifecycle order (KVPoll's numeric order puts Failed first).
_COLUMNS: tuple[str, ...] = (*ACTIVE, *TERMINAL)


class DiagramError(RuntimeError):
    """A diagram cannot be produced here (a missing package or binary, a bad argument)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a room machine as it dispatches: in ``source``, ``trigger`` with
    ``verdict`` ("" matches any) moves to ``dest`` (None: stays, no exit/enter) and runs
    ``callbacks``. Per (trigger, source) the first rule whose verdict holds fires."""

    trigger: str
    source: str
    dest: str | None
    verdict: str
    callbacks: tuple[str, ...]


def _name(callback: str | Callable[..., Any]) -> str:
    return callback if isinstance(callback, str) else callback.__name__


def rules(side: Side) -> list[Rule]:
    """Every rule of ``side``'s runtime machine, grouped by trigger then source state,
    in dispatch order."""
    found: list[Rule] = []
    for event in _MACHINES[side].events.values():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                verdict = " & ".join(
                    _name(c.func) if c.target else f"not {_name(c.func)}"
                    for c in transition.conditions
                )
                callbacks = tuple(_name(c) for c in transition.after)
                found.append(Rule(event.name, source, transition.dest, verdict, callbacks))
    return found


def states(side: Side) -> list[str]:
    """State names of ``side``'s runtime machine, in its order."""
    return list(_MACHINES[side].states)


# -- state diagrams (Mermaid, DOT, SVG) ------------------------------------------------
class _Source(Protocol):
    """What both transitions graph engines return: the diagram's text."""

    source: str


def _graph_machine(side: Side, engine: Literal["mermaid", "graphviz"]) -> GraphMachine:
    """A GraphMachine with ``side``'s states and its state-changing rules."""
    transitions: list[dict[str, Any]] = [
        {"trigger": r.trigger, "source": r.source, "dest": r.dest}
        | ({"conditions": r.verdict} if r.verdict else {})
        for r in rules(side)
        if r.dest is not None
    ]
    machine = GraphMachine(
        model=None,
        states=states(side),
        transitions=transitions,
        initial=_MACHINES[side].initial,
        auto_transitions=False,
        show_conditions=True,
        graph_engine=engine,
    )
    # Top to bottom: the lifecycle reads downwards and the long failure labels lie
    # side by side instead of end to end.
    machine.machine_attributes = {**machine.machine_attributes, "rankdir": "TB"}
    # transitions silently falls back to Mermaid when the graphviz package is missing.
    if not machine.graph_cls.__module__.endswith(f"diagrams_{engine}"):
        raise DiagramError(
            "DOT export needs the 'graphviz' Python package: pip install 'embxfer[diagrams]'"
        )
    return machine


def _check_state(side: Side, highlight: str | None) -> None:
    if highlight is not None and highlight not in _MACHINES[side].states:
        raise DiagramError(f"{highlight!r} is not a state; states: {', '.join(states(side))}")


def mermaid(side: Side, highlight: str | None = None) -> str:
    """Mermaid ``stateDiagram-v2`` of ``side``; ``highlight`` marks one state (a live
    room's position) with the machine's "active" style."""
    _check_state(side, highlight)
    machine = _graph_machine(side, "mermaid")
    graph = machine.graph_cls(machine)
    if highlight is not None:
        graph.set_node_style(highlight, "active")
    # A "title:" key makes the header valid Mermaid front matter.
    text = cast(_Source, graph.get_graph(title=f"title: embxfer {side} room")).source
    return text + "\n"


def dot(side: Side, highlight: str | None = None) -> str:
    """Graphviz DOT of ``side``; ``highlight`` as for ``mermaid``."""
    _check_state(side, highlight)
    machine = _graph_machine(side, "graphviz")
    graph = machine.graph_cls(machine)
    if highlight is not None:
        graph.set_node_style(highlight, "active")
    return cast(_Source, graph.get_graph(title=f"embxfer {side} room")).source


def svg(side: Side, highlight: str | None = None) -> str:
    """SVG of ``side``, rendered by Graphviz's ``dot`` (Debian package ``graphviz``)."""
    return render_svg(dot(side, highlight))


def render_svg(dot_text: str) -> str:
    """Lay out DOT text as SVG with the ``dot`` binary."""
    binary = shutil.which("dot")
    if binary is None:
        raise DiagramError("SVG needs Graphviz's 'dot' binary (Debian package 'graphviz')")
    done = subprocess.run(
        [binary, "-Tsvg"], input=dot_text, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise DiagramError(f"dot failed: {done.stderr.strip()}")
    return done.stdout


def graphviz_version() -> str | None:
    """The installed ``dot``'s version (as SVG files record it), or None without one."""
    binary = shutil.which("dot")
    if binary is None:
        return None
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    words = done.stderr.split()  # "dot - graphviz version 2.43.0 (0)"
    return words[words.index("version") + 1] if "version" in words else None


def render(side: Side, fmt: GraphFormat, highlight: str | None = None) -> str:
    """``side``'s diagram in ``fmt``."""
    renderers: dict[GraphFormat, Callable[[Side, str | None], str]] = {
        "mermaid": mermaid,
        "dot": dot,
        "svg": svg,
    }
    return renderers[fmt](side, highlight)


# -- the state x event table -------------------------------------------------------------
def _outcome(rule: Rule, alone: bool) -> str:
    verdict = f"`{rule.verdict}`" if rule.verdict else ("always" if alone else "otherwise")
    if rule.dest is None:
        move = "stay"
    elif rule.dest == rule.source:
        move = f"↻ **{rule.dest}**"  # reflexive: exit and enter run
    else:
        move = f"→ **{rule.dest}**"
    calls = "".join(f", `{c}`" for c in rule.callbacks)
    return f"{verdict}: {move}{calls}"


def table(side: Side) -> str:
    """Markdown state x event table of ``side``: one row per event (trigger), one column
    per state; a cell lists the rules tried in order. An empty cell would mean the
    event raises in that state; the machine has none."""
    if set(_COLUMNS) != set(_MACHINES[side].states):
        raise DiagramError(f"{side} machine states changed: {states(side)}")
    cells: dict[tuple[str, str], list[Rule]] = {}
    for rule in rules(side):
        cells.setdefault((rule.trigger, rule.source), []).append(rule)
    events = {trigger: cls.__name__ for cls, trigger in _ROOMS[side].TRIGGERS.items()}
    lines = [
        "| event | " + " | ".join(_COLUMNS) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    for trigger in _MACHINES[side].events:
        row = [f"`{trigger}` ({events[trigger]})"]
        for state in _COLUMNS:
            cell = cells.get((trigger, state), [])
            row.append("<br>".join(_outcome(r, len(cell) == 1) for r in cell) or "—")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for state in _COLUMNS:
        on_enter = [_name(c) for c in _MACHINES[side].states[state].on_enter]
        if on_enter:
            lines.append(f"Entering **{state}** runs {', '.join(f'`{c}`' for c in on_enter)}.")
            lines.append("")
    return "\n".join(lines)


# -- sequence diagrams: real rooms, driven against each other --------------------------------
_E, _L = "E", "L"  # the sequence diagram's participants, also the rooms' peer names


def _describe(action: Action) -> str:
    """One sequence-diagram line for an action a room asked for."""
    if isinstance(action, SendMessage):
        msg = action.message
        src, dst = (_L, _E) if action.peer == _E else (_E, _L)
        if isinstance(msg, PieceRequest):
            body = (
                f"PieceRequest(sent_tokens={msg.sent_tokens}, {len(msg.blocks)} blocks, "
                f"allocated_tokens={msg.allocated_tokens})"
            )
        elif isinstance(msg, PieceWritten):
            body = (
                f"PieceWritten(sent_tokens={msg.sent_tokens}, tokens={msg.tokens}, "
                f"total_tokens={msg.total_tokens}, delta={msg.mrope_position_delta})"
            )
        else:
            body = type(msg).__name__
        return f"{src}->>{dst}: {body}"
    if isinstance(action, WritePiece):
        end = action.sent_tokens + action.tokens
        return (
            f"{_E}-){_L}: one-sided write of tokens [{action.sent_tokens}, {end}) "
            f"into {len(action.dst_blocks)} blocks"
        )
    if isinstance(action, StorePayload):
        return f"Note over {_E}: payload stored in {len(action.blocks)} source blocks"
    if isinstance(action, SpillPiece):
        end = action.sent_tokens + action.tokens
        return f"Note over {_L}: spill tokens [{action.sent_tokens}, {end}) to staging"
    raise DiagramError(f"no sequence line for {action!r}")


class _Exchange:
    """A sender room and a receiver room wired to each other through their actions,
    on a frozen clock, recording what crosses between them."""

    def __init__(self, total_tokens: int, initial_tokens: int, policy: ResumePolicy) -> None:
        bs = 128
        self.sender_memory: FairPool[int] = FairPool(
            FreeListAllocator(blocks_needed(total_tokens, bs), bs)
        )
        self.receiver_memory: FairPool[int] = FairPool(
            FreeListAllocator(blocks_needed(max(total_tokens, initial_tokens), bs) + 1, bs)
        )
        timeouts = Timeouts()
        self.sender = SenderRoom(1, self.sender_memory, timeouts, 0.0)
        self.receiver = ReceiverRoom(
            1, _E, self.receiver_memory, initial_tokens, timeouts, 0.0, policy
        )
        self._queue: deque[tuple[Room, Event]] = deque()

    def run(self, room: Room, event: Event) -> list[str]:
        """Deliver ``event`` and everything it causes, in order; the diagram's lines."""
        lines = []
        self._queue.append((room, event))
        while self._queue:
            target, next_event = self._queue.popleft()
            state, resumes = target.state, target.resumes
            actions = target.handle(next_event, 0.0)
            if target.resumes != resumes:
                who = _E if target is self.sender else _L
                lines.append(f"Note over {who}: {target.state}, resume {target.resumes}")
            elif target.state != state:
                who = _E if target is self.sender else _L
                lines.append(f"Note over {who}: {target.state}")
            for action in actions:
                lines.append(_describe(action))
                self._follow(action)
        return lines

    def _follow(self, action: Action) -> None:
        """Queue the event an action causes at the other side (or on completion)."""
        if isinstance(action, WritePiece):
            done = WriteFinished(_L, action.sent_tokens, ok=True)
            self._queue.append((self.sender, done))
        elif isinstance(action, SendMessage):
            to_sender = action.peer == _E
            routed = room_event(
                "sender" if to_sender else "receiver", _L if to_sender else _E, action.message
            )
            if routed is not None:
                self._queue.append((self.sender if to_sender else self.receiver, routed[2]))


def _walk(total_tokens: int, initial_tokens: int, policy: ResumePolicy) -> Iterator[str]:
    ex = _Exchange(total_tokens, initial_tokens, policy)
    yield "sequenceDiagram"
    yield f"participant {_E} as Encoder (sender room)"
    yield f"participant {_L} as Language (receiver room)"
    yield f"Note over {_E},{_L}: Bootstrapping: rooms created by both schedulers"
    yield f"{_L}->>{_E}: Register(session_id, block_size, num_blocks, regions), once per engine"
    yield f"{_E}->>{_L}: RegisterAck(accepted=true)"
    yield from ex.run(ex.receiver, PeerReady())
    yield f"Note over {_E}: scheduler: send(embedding of {total_tokens} tokens)"
    yield from ex.run(ex.sender, PayloadReady(total_tokens))
    if ex.receiver.state != SUCCESS or ex.sender.state != SUCCESS:
        raise DiagramError(f"exchange ended in {ex.sender.state}/{ex.receiver.state}")
    pieces = len(ex.receiver.pieces)
    yield f"Note over {_L}: scheduler: result() joins {pieces} pieces, {total_tokens} tokens"
    ex.run(ex.receiver, Released())
    ex.run(ex.sender, Released())
    if any(m.free_blocks != m.total_blocks for m in (ex.sender_memory, ex.receiver_memory)):
        raise DiagramError("blocks still held after release")
    yield f"Note over {_E},{_L}: release(): every block is back with its allocator"


def sequence(total_tokens: int, initial_tokens: int, policy: ResumePolicy | None = None) -> str:
    """Mermaid sequence diagram of one receiver fetching ``total_tokens`` tokens into a
    first allocation of ``initial_tokens`` (block size 128), produced by running a real
    sender room and receiver room against each other."""
    lines = list(_walk(total_tokens, initial_tokens, policy or ResumePolicy()))
    return "\n".join(lines) + "\n"
