"""The cross-process bench plumbing: one pair of worker processes runs several plans in
turn, each on fresh engines, with the receiver's pool smaller than the rooms open (the
pressure benchmark's setting), then the raw rates between them. No assertion on timing."""

from __future__ import annotations

import pytest

from embxfer.tools.bench.processes import Plan, against_raw
from embxfer.transport.mooncake_data import available

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here"),
]


def test_plans_run_in_turn_under_memory_pressure_then_the_raw_rates() -> None:
    plans = [Plan(48, 16, 64, window, receiver_blocks=window // 4) for window in (8, 32)]
    outcomes, rates = against_raw(plans, raw=50, timeout_s=60.0)
    for plan, outcome in zip(plans, outcomes, strict=True):
        assert outcome.rooms_per_s > 0
        assert outcome.sender_cpu_s_per_room > 0
        assert len(outcome.latencies_s) == plan.rooms  # every room succeeded, none lost
    assert min(rates.zmq_messages_per_s, rates.mooncake_writes_per_s) > 0
    assert min(rates.sync_cpu_s_per_write, rates.transport_cpu_s_per_write) > 0
