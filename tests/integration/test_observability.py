"""Metrics (Prometheus, or nothing) and logs: what an operator sees of the rooms."""

from __future__ import annotations

import logging

import pytest

from embxfer import EngineConfig, KVPoll, metrics
from embxfer.fsm.messages import PieceWritten
from embxfer.metrics import NoMetrics, PrometheusMetrics, default_metrics
from embxfer.tools.workload import payload_for
from embxfer.transport.wire import encode
from tests.integration.pumping import Rig

CONFIG = EngineConfig(num_blocks=256, hidden_size=16, default_alloc_tokens=1024)
TERMINAL = (KVPoll.Success, KVPoll.Failed)


def test_prometheus_metrics_follow_the_engine_stats() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    rig = Rig(CONFIG, PrometheusMetrics(registry))

    def sample(name: str, role: str, **labels: str) -> float | None:
        value = registry.get_sample_value(name, {"role": role, "engine": _address(role), **labels})
        return value

    def _address(role: str) -> str:
        return rig.sender.address if role == "sender" else rig.receiver.address

    assert sample("embxfer_allocator_blocks", "receiver") == 256
    sent = rig.sender.create_room(1)
    got = rig.receiver.create_room(1, rig.sender.address)
    sent.send(payload_for(1, 2000, rig.sender.layout, seed=2))
    rig.pump_until(lambda: got.poll() is KVPoll.Transferring)
    assert sample("embxfer_allocator_used_blocks", "receiver") == 16  # read at scrape time
    rig.pump_until(lambda: got.poll() in TERMINAL and sent.poll() in TERMINAL)
    failed = rig.receiver.create_room(2, rig.sender.address)
    failed.abort()
    rig.network.inject_frame(rig.sender.address, rig.receiver.address, b"garbage")
    rig.network.inject_frame(
        rig.sender.address, rig.receiver.address, encode(PieceWritten(99, 0, 1, 0, 1, 1, 0))
    )
    rig.pump_until(lambda: failed.poll() is KVPoll.Failed)
    rig.now += CONFIG.heartbeat_s  # wire rejects are collected every heartbeat
    rig.pump_until(lambda: bool(rig.receiver.stats.rejected.get("malformed")))

    stats = rig.receiver.stats
    success = {"state": "Success", "reason": ""}
    assert sample("embxfer_rooms_total", "receiver", **success) == stats.succeeded == 1
    aborted = {"state": "Failed", "reason": "aborted by scheduler"}
    assert sample("embxfer_rooms_total", "receiver", **aborted) == stats.failed == 1
    assert sample("embxfer_resumes_total", "receiver") == stats.resumes == 1
    assert sample("embxfer_payload_bytes_total", "receiver") == stats.payload_bytes > 0
    assert sample("embxfer_payload_bytes_total", "sender") == rig.sender.stats.payload_bytes > 0
    for reason in ("malformed", "unknown_room"):
        assert sample("embxfer_rejected_messages_total", "receiver", reason=reason) == 1
        assert stats.rejected[reason] == 1
    assert sample("embxfer_transfer_seconds_count", "receiver") == 1
    assert 0 < (sample("embxfer_transfer_seconds_sum", "receiver") or 0) < 1  # virtual clock
    rig.close()
    assert sample("embxfer_allocator_used_blocks", "receiver") is None  # gone with the engine


def test_without_prometheus_client_metrics_are_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_prometheus", _missing_prometheus_client)
    assert isinstance(default_metrics(), NoMetrics)
    rig = Rig(CONFIG)  # engines take the default
    got = rig.receiver.create_room(1, rig.sender.address)
    got.abort()
    rig.pump_until(lambda: got.poll() is KVPoll.Failed)
    assert rig.receiver.stats.failed == 1
    rig.close()


def _missing_prometheus_client() -> PrometheusMetrics:
    raise ImportError("No module named 'prometheus_client'")


def test_metrics_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBXFER_METRICS", "0")
    assert isinstance(default_metrics(), NoMetrics)


def test_every_log_line_about_a_room_names_it(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(CONFIG)
    caplog.set_level(logging.DEBUG, logger="embxfer")
    sent = rig.sender.create_room(41)
    got = rig.receiver.create_room(41, rig.sender.address)
    rig.pump_until(lambda: sent.poll() is KVPoll.WaitingForInput)
    got.abort()
    rig.pump_until(lambda: sent.poll() is KVPoll.Failed)
    rig.network.inject_frame(
        rig.sender.address, rig.receiver.address, encode(PieceWritten(41, 0, 1, 0, 1, 1, 0))
    )
    sent.release()
    got.release()
    rig.drain()
    rig.network.inject_frame(
        rig.sender.address, rig.receiver.address, encode(PieceWritten(41, 0, 1, 0, 1, 1, 0))
    )
    rig.pump_until(lambda: bool(rig.receiver.stats.rejected))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("embxfer")]
    assert any("failed" in line for line in lines)
    assert any("rejected" in line for line in lines)
    assert all(line.startswith("room=41 ") for line in lines), lines
    rig.close()


def test_frames_the_channel_dropped_since_the_last_heartbeat_can_be_counted_at_once() -> None:
    rig = Rig(CONFIG)
    rig.receiver.run_once(0.0)  # its first heartbeat is behind it: the next is a second away
    rig.network.inject_frame(rig.sender.address, rig.receiver.address, b"garbage")
    rig.receiver.run_once(0.0)  # the channel drops the frame; the engine's stats lag
    assert "malformed" not in rig.receiver.stats.rejected
    rig.receiver.count_channel_rejects()
    assert rig.receiver.stats.rejected == {"malformed": 1}
    rig.close()
