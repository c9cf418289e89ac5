"""Engine metrics: one interface, a no-op default, and Prometheus when it is installed.

Engines report through ``EngineStats`` (``embxfer.runtime``), which keeps its own
counters and forwards each update to an ``EngineMetrics`` here, so the two can never
disagree. ``prometheus_client`` is an optional extra (``pip install 'embxfer[metrics]'``):
``default_metrics()`` uses it when it imports and falls back to ``NoMetrics`` otherwise,
or when ``EMBXFER_METRICS=0``.

Prometheus series (labels ``role``: sender/receiver, ``engine``: its control address):

- ``embxfer_rooms_total{state, reason}``: rooms ended, by terminal state and reason
  (the failure reason up to its first colon: the detail after it would be unbounded)
- ``embxfer_resumes_total``: resumes of ended rooms
- ``embxfer_payload_bytes_total``: bytes written (sender) or received (receiver)
- ``embxfer_rejected_messages_total{reason}``: inbound frames or messages dropped
- ``embxfer_allocator_used_blocks``, ``embxfer_allocator_blocks``: occupancy, read at scrape
- ``embxfer_transfer_seconds``: histogram, room creation to Success
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from typing import Any, Protocol

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Occupancy(Protocol):
    """What occupancy gauges read from an allocator."""

    @property
    def free_blocks(self) -> int: ...

    @property
    def total_blocks(self) -> int: ...


class EngineMetrics(Protocol):
    """One engine's metric sink; called on the engine's pump thread."""

    def room_ended(self, state: str, reason: str, resumes: int, seconds: float) -> None:
        """A room reached ``state`` (Success or Failed) ``seconds`` after it was adopted."""
        ...

    def bytes_moved(self, nbytes: int) -> None:
        """Payload bytes written (sender) or received (receiver)."""
        ...

    def message_rejected(self, reason: str, count: int = 1) -> None:
        """Inbound frames or messages dropped for ``reason``."""
        ...

    def watch_allocator(self, allocator: Occupancy) -> None:
        """Report ``allocator``'s occupancy whenever it is read (without keeping it alive)."""
        ...

    def close(self) -> None:
        """The engine is gone: stop reporting its gauges."""
        ...


class Metrics(Protocol):
    """A metrics backend: hands each engine its sink."""

    def engine(self, role: str, address: str) -> EngineMetrics:
        """The sink for the ``role`` engine reachable at ``address``."""
        ...


class NoMetrics:
    """Reports nothing; the default without prometheus_client. Also its own engine sink."""

    def engine(self, role: str, address: str) -> NoMetrics:
        return self

    def room_ended(self, state: str, reason: str, resumes: int, seconds: float) -> None:
        pass

    def bytes_moved(self, nbytes: int) -> None:
        pass

    def message_rejected(self, reason: str, count: int = 1) -> None:
        pass

    def watch_allocator(self, allocator: Occupancy) -> None:
        pass

    def close(self) -> None:
        pass


class PrometheusMetrics:
    """Metrics in a prometheus_client registry (the process default unless given one).

    Create one per registry: a registry refuses a second set of the same names."""

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        reg = prom.REGISTRY if registry is None else registry
        engine = ["role", "engine"]
        self.rooms = prom.Counter(
            "embxfer_rooms", "Rooms ended", [*engine, "state", "reason"], registry=reg
        )
        self.resumes = prom.Counter(
            "embxfer_resumes", "Resumes of ended rooms", engine, registry=reg
        )
        self.bytes = prom.Counter(
            "embxfer_payload_bytes", "Payload bytes written or received", engine, registry=reg
        )
        self.rejected = prom.Counter(
            "embxfer_rejected_messages",
            "Inbound frames or messages dropped",
            [*engine, "reason"],
            registry=reg,
        )
        self.used_blocks = prom.Gauge(
            "embxfer_allocator_used_blocks", "Blocks allocated now", engine, registry=reg
        )
        self.total_blocks = prom.Gauge(
            "embxfer_allocator_blocks", "Blocks the allocator manages", engine, registry=reg
        )
        self.latency = prom.Histogram(
            "embxfer_transfer_seconds",
            "Room creation to Success",
            engine,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )

    def engine(self, role: str, address: str) -> _PrometheusEngine:
        return _PrometheusEngine(self, role, address)


class _PrometheusEngine:
    """``PrometheusMetrics`` with one engine's labels bound."""

    def __init__(self, metrics: PrometheusMetrics, role: str, address: str) -> None:
        self._metrics = metrics
        self._labels = (role, address)
        self._resumes = metrics.resumes.labels(*self._labels)
        self._bytes = metrics.bytes.labels(*self._labels)
        self._latency = metrics.latency.labels(*self._labels)
        self._succeeded = metrics.rooms.labels(*self._labels, "Success", "")

    def room_ended(self, state: str, reason: str, resumes: int, seconds: float) -> None:
        if state == "Success":
            self._succeeded.inc()
            self._latency.observe(seconds)
        else:
            self._metrics.rooms.labels(*self._labels, state, reason).inc()
        if resumes:
            self._resumes.inc(resumes)

    def bytes_moved(self, nbytes: int) -> None:
        self._bytes.inc(nbytes)

    def message_rejected(self, reason: str, count: int = 1) -> None:
        self._metrics.rejected.labels(*self._labels, reason).inc(count)

    def watch_allocator(self, allocator: Occupancy) -> None:
        # A weak reference: an engine that is never closed must not be kept alive (with
        # all its buffers) by the process-wide registry.
        ref = weakref.ref(allocator)

        def used() -> int:
            alive = ref()
            return 0 if alive is None else alive.total_blocks - alive.free_blocks

        self._metrics.used_blocks.labels(*self._labels).set_function(used)
        self._metrics.total_blocks.labels(*self._labels).set(allocator.total_blocks)

    def close(self) -> None:
        for gauge in (self._metrics.used_blocks, self._metrics.total_blocks):
            with contextlib.suppress(KeyError):  # never watched
                gauge.remove(*self._labels)


_CREATING = threading.Lock()  # engines may be built on several threads at once


@functools.cache
def _prometheus() -> PrometheusMetrics:
    """The one set of series on prometheus_client's default registry."""
    return PrometheusMetrics()


def default_metrics() -> Metrics:
    """What an engine reports to unless given a backend: Prometheus on its default
    registry when prometheus_client imports and ``EMBXFER_METRICS`` is not 0/false/off,
    else ``NoMetrics``. Asked anew for each engine, so the variable can change."""
    if os.environ.get("EMBXFER_METRICS", "1").strip().lower() in {"0", "false", "off", "no"}:
        return NoMetrics()
    try:
        with _CREATING:
            return _prometheus()
    except ImportError:
        return NoMetrics()
