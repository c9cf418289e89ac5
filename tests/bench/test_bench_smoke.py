"""``embxfer bench --quick``: every benchmark's plumbing runs and reports, without any
assertion on timing (numbers on CI machines mean nothing; ``embxfer bench`` is for that)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from embxfer.tools.bench.runner import BENCHMARKS
from embxfer.tools.cli import main

GOALS = {
    "mooncake_e2e_vs_raw",
    "resume_vs_exact",
    "inproc_vs_memcpy",
    "fsm_lifecycle_us",
    "rooms_per_s_vs_floor",
    "rooms_per_s_mooncake_vs_floor",
    "segments_per_kind_per_run",
    "segments_per_tiny_piece",
    "adaptive_resume_rate",
    "adaptive_memory_ratio",
    "announce_memory_ratio",
    "alloc_free_growth_1k_to_100k",
    "protocol_bytes_per_room",
    "pressure_rooms_per_s_ratio",
    "waiting_cpu_share",
}


def test_quick_run_reports_every_metric_as_json_and_charts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    code = main(
        ["bench", "--quick", "--json", "--no-processes", "--no-progress", "--plot", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    ratios, metrics = report["ratios"], report["metrics"]
    assert set(ratios) >= GOALS, GOALS - set(ratios)
    for name, value in ratios.items():
        assert value is None or math.isfinite(value), name
        assert metrics[name]["definition"], name
        if value is None:
            assert metrics[name]["note"].startswith("skipped"), name
    assert metrics["rooms_per_s_mooncake"]["value"] is None  # --no-processes
    assert metrics["sender_cpu_us_per_room"]["value"] is None
    assert ratios["segments_per_tiny_piece"] == 2
    assert metrics["pressure_mooncake_c256_rooms_per_s"]["value"] is None
    assert ratios["pressure_inproc_c1024_p99_ms"] > 0
    assert {goal for goal in GOALS if metrics[goal]["goal"] is None} == set()
    assert report["machine"]["cores"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adaptive.png",
        "allocator.png",
        "goals.png",
        "pressure.png",
        "timings.png",
    ]
    assert "| metric | value |" in out


def test_unknown_benchmark_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--only", "nonesuch"])
    assert "protocol" in BENCHMARKS
