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

import bisect
import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BUCKET_BOUNDS = (*(str(float(bound)) for bound in LATENCY_BUCKETS), "+Inf")  # exported ``le``


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

    Each engine's sink counts in plain integers on its pump thread (no lock, no label
    lookup per room: a Prometheus counter's lock cost 5% of the tiny-room rate); one
    collector reads every sink when the registry is scraped. Create one per registry:
    a registry refuses a second set of the same names."""

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        self._sinks: list[_PrometheusEngine] = []
        self._lock = threading.Lock()  # engines come and go on several threads
        (prom.REGISTRY if registry is None else registry).register(_Collector(self))

    def engine(self, role: str, address: str) -> _PrometheusEngine:
        sink = _PrometheusEngine(role, address)
        with self._lock:
            self._sinks.append(sink)
        return sink

    def sinks(self) -> list[_PrometheusEngine]:
        """Every engine's sink so far (a closed engine's counters stay, as counters do)."""
        with self._lock:
            return list(self._sinks)


class _PrometheusEngine:
    """One engine's counts, in plain values its pump thread alone updates; read whole at
    scrape time (values may lag by an event, as ``EngineStats``' do)."""

    def __init__(self, role: str, address: str) -> None:
        self.labels = (role, address)
        self.rooms: dict[tuple[str, str], int] = {}  # (state, reason) -> rooms ended
        self.resumes = 0
        self.bytes = 0
        self.rejected: dict[str, int] = {}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above them all
        self.latency_sum = 0.0
        self.allocator: Callable[[], Occupancy | None] | None = None  # gone once closed

    def room_ended(self, state: str, reason: str, resumes: int, seconds: float) -> None:
        key = (state, reason)
        self.rooms[key] = self.rooms.get(key, 0) + 1
        if state == "Success":
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
        self.resumes += resumes

    def bytes_moved(self, nbytes: int) -> None:
        self.bytes += nbytes

    def message_rejected(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count

    def watch_allocator(self, allocator: Occupancy) -> None:
        # A weak reference: an engine that is never closed must not be kept alive (with
        # all its buffers) by the process-wide registry.
        self.allocator = weakref.ref(allocator)

    def close(self) -> None:
        self.allocator = None


class _Collector:
    """Reads every engine's sink when the registry is scraped."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        """The families without samples: the registry refuses a second set of the names."""
        return self._families([])

    def collect(self) -> list[Any]:
        return self._families(self._metrics.sinks())

    def _families(self, sinks: list[_PrometheusEngine]) -> list[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        engine = ["role", "engine"]
        rooms = CounterMetricFamily(
            "embxfer_rooms", "Rooms ended", labels=[*engine, "state", "reason"]
        )
        resumes = CounterMetricFamily("embxfer_resumes", "Resumes of ended rooms", labels=engine)
        payload = CounterMetricFamily(
            "embxfer_payload_bytes", "Payload bytes written or received", labels=engine
        )
        rejected = CounterMetricFamily(
            "embxfer_rejected_messages",
            "Inbound frames or messages dropped",
            labels=[*engine, "reason"],
        )
        used = GaugeMetricFamily(
            "embxfer_allocator_used_blocks", "Blocks allocated now", labels=engine
        )
        total = GaugeMetricFamily(
            "embxfer_allocator_blocks", "Blocks the allocator manages", labels=engine
        )
        latency = HistogramMetricFamily(
            "embxfer_transfer_seconds", "Room creation to Success", labels=engine
        )
        for sink in sinks:
            labels = list(sink.labels)
            for (state, reason), count in dict(sink.rooms).items():
                rooms.add_metric([*labels, state, reason], count)
            resumes.add_metric(labels, sink.resumes)
            payload.add_metric(labels, sink.bytes)
            for reason, count in dict(sink.rejected).items():
                rejected.add_metric([*labels, reason], count)
            allocator = sink.allocator() if sink.allocator is not None else None
            if allocator is not None:
                used.add_metric(labels, allocator.total_blocks - allocator.free_blocks)
                total.add_metric(labels, allocator.total_blocks)
            counts = itertools.accumulate(sink.latency_buckets)
            buckets = list(zip(_BUCKET_BOUNDS, counts, strict=True))
            latency.add_metric(labels, buckets, sink.latency_sum)
        return [rooms, resumes, payload, rejected, used, total, latency]


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
