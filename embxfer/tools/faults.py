"""Fault injection for the in-process network: lost, duplicated, reordered and delayed
control messages and failed writes, so the runtime can be tested against them. ``Faults``
is the network's interposer (``embxfer.transport.inproc.Interposer``); the library's
network delivers directly without one.

Random faults follow a seeded ``FaultPlan`` and are deterministic for a given order of
sends and writes. One-shot hooks (``drop_next``, ``fail_next_writes``) let a test aim a
fault at one exact message or write.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from embxfer.fsm.messages import Message
from embxfer.transport.inproc import Delivery, InprocNetwork

INJECTED_WRITE_FAILURE = "injected write failure"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Probabilities per send (``drop``, ``duplicate``, ``reorder``, ``delay``: at most one
    fault per message, so they sum to at most 1) and per write (``write_failure``).

    A reordered message is held until the next send to the same peer has been delivered;
    a delayed one until ``delay_sends`` more sends to that peer, or ``release_held()``.
    """

    seed: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    delay_sends: int = 3
    write_failure: float = 0.0

    def __post_init__(self) -> None:
        probabilities = (self.drop, self.duplicate, self.reorder, self.delay, self.write_failure)
        if not all(0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError(f"probabilities must be in [0, 1]: {self}")
        if self.drop + self.duplicate + self.reorder + self.delay > 1.0:
            raise ValueError(f"message fault probabilities sum past 1: {self}")
        if self.delay_sends < 1:
            raise ValueError(f"delay_sends must be >= 1: {self}")


@dataclass(slots=True)
class _Held:
    delivery: Delivery
    sends_left: int


@dataclass(slots=True)
class _DropRule:
    kind: type[Message] | None
    left: int


class Faults:
    """Applies faults between a sender and ``deliver``. Thread-safe: deciding and delivering
    happen under one lock, so deliveries keep the order the decisions gave them."""

    @classmethod
    def on(cls, network: InprocNetwork) -> Faults:
        """New faults interposed on ``network``: its sends and writes pass through them."""
        faults = cls(network.deliver)
        network.interposer = faults
        return faults

    def __init__(self, deliver: Callable[[Delivery], None]) -> None:
        self._deliver = deliver
        self._lock = threading.Lock()
        self._plan: FaultPlan | None = None
        # Separate streams: writer threads' draws must not shift the messages' draws.
        self._message_rng = random.Random()
        self._write_rng = random.Random()
        self._held: list[_Held] = []
        self._drop_rules: list[_DropRule] = []
        self._failing_writes = 0
        self._failure_reason = ""

    @property
    def plan(self) -> FaultPlan | None:
        """The random faults in force; setting a plan restarts its random streams."""
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan | None) -> None:
        with self._lock:
            self._plan = plan
            if plan is not None:
                self._message_rng.seed(f"{plan.seed}/messages")
                self._write_rng.seed(f"{plan.seed}/writes")

    def drop_next(self, n: int, kind: type[Message] | None = None) -> None:
        """Drop the next ``n`` messages of type ``kind`` (of any type when None)."""
        if n > 0:
            with self._lock:
                self._drop_rules.append(_DropRule(kind, n))

    def fail_next_writes(self, n: int, reason: str = INJECTED_WRITE_FAILURE) -> None:
        """Make the next ``n`` writes fail with ``reason``, their targets untouched."""
        with self._lock:
            self._failing_writes = n
            self._failure_reason = reason

    def release_held(self) -> None:
        """Deliver every reordered or delayed message now, in the order they were sent."""
        with self._lock:
            held, self._held = self._held, []
            for item in held:
                self._deliver(item.delivery)

    def send(self, delivery: Delivery) -> None:
        """Deliver ``delivery`` (and any held message it releases) as the faults decide."""
        with self._lock:
            due = self._count_send_to(delivery.peer)
            copies, hold_for = self._fate(delivery.kind)
            if hold_for:
                self._held.append(_Held(delivery, hold_for))
            for item in [delivery] * copies + due:
                self._deliver(item)

    def write_failure(self) -> str | None:
        """Why the write about to start must fail, or None when it may proceed."""
        with self._lock:
            if self._failing_writes > 0:
                self._failing_writes -= 1
                return self._failure_reason
            plan = self._plan
            if plan is not None and self._write_rng.random() < plan.write_failure:
                return INJECTED_WRITE_FAILURE
            return None

    def _fate(self, kind: type[Message]) -> tuple[int, int]:
        """How many copies to deliver now, and for how many sends to hold it instead."""
        if self._take_drop_rule(kind):
            return 0, 0
        plan = self._plan
        if plan is None:
            return 1, 0
        roll = self._message_rng.random()
        for probability, fate in (
            (plan.drop, (0, 0)),
            (plan.duplicate, (2, 0)),
            (plan.reorder, (0, 1)),
            (plan.delay, (0, plan.delay_sends)),
        ):
            if roll < probability:
                return fate
            roll -= probability
        return 1, 0

    def _count_send_to(self, peer: str) -> list[Delivery]:
        """Count one more send to ``peer`` for the messages held for it; return those now due."""
        due: list[Delivery] = []
        for item in self._held:
            if item.delivery.peer == peer:
                item.sends_left -= 1
                if item.sends_left == 0:
                    due.append(item.delivery)
        self._held = [item for item in self._held if item.sends_left > 0]
        return due

    def _take_drop_rule(self, kind: type[Message]) -> bool:
        for rule in self._drop_rules:
            if rule.kind is None or rule.kind is kind:
                rule.left -= 1
                if rule.left == 0:
                    self._drop_rules.remove(rule)
                return True
        return False
