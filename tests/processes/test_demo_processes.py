"""``embxfer demo`` as deployed: an encoder process, language processes, ZeroMQ and Mooncake.

Each run is a real ``python -m embxfer demo`` in its own session, so that afterwards the
test can tell whether any process of that session is still around. Short deadlines keep
the fault runs to seconds; every wait is bounded by the subprocess timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embxfer.tools.demo import UNREPORTED
from embxfer.transport.mooncake_data import available

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here"),
]

SMALL = [
    "--requests", "12", "--tokens", "100:5000", "--default-alloc", "1024", "--hidden", "64",
    "--receivers", "2", "--concurrency", "4",
]  # fmt: skip
# Rooms long enough (tens of ms each) that the fault finds transfers in flight, and
# deadlines short enough that the survivors end those rooms within seconds.
FAULTED = [
    "--requests", "24", "--tokens", "20000:60000", "--hidden", "128", "--receivers", "2",
    "--concurrency", "8", "--fault-after", "4",
    "--timeout-s", "4", "--peer-timeout-s", "1.5", "--write-grace-s", "1.5",
]  # fmt: skip
RUN_LIMIT_S = 120.0
GLOG_LINE = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: Logging before)", re.MULTILINE)


@dataclass
class Run:
    code: int
    summary: dict[str, Any]
    seconds: float
    stderr: str


def demo(*args: str) -> Run:
    """Run the demo to its end; the summary is the last stdout line."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "embxfer", "demo", "--json", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its process group id is its pid: see left_behind
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the demo and whatever it started
        process.communicate()
        raise
    seconds = time.monotonic() - started
    # multiprocessing's resource tracker leaves when it sees the demo's end: a moment later.
    deadline = time.monotonic() + 5.0
    while left_behind(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left_behind(process.pid), f"processes left behind: {left_behind(process.pid)}"
    lines = stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{stderr}"
    return Run(process.returncode, json.loads(lines[-1]), seconds, stderr)


def left_behind(group: int) -> list[str]:
    """Processes still alive in the demo's process group (its workers would be)."""
    alive: list[str] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(text[: text.rindex(")") + 1])
    return alive


def test_small_run_succeeds_byte_exact_with_resumes() -> None:
    run = demo(*SMALL)
    summary = run.summary
    assert run.code == 0, run.stderr
    assert summary["transport"] == "mooncake"
    assert summary["requests"] == summary["succeeded"] == 12
    assert summary["failed"] == 0
    assert summary["verified"] is True
    assert summary["leaked_blocks"] == 0
    assert summary["resumes"] > 0
    assert summary["bytes"] > 0
    # Mooncake's glog lines (every engine prints some as it starts) went into logging.
    assert not GLOG_LINE.search(run.stderr), run.stderr
    assert set(summary["sides"]) == {"encoder", "language-0", "language-1"}
    for side in summary["sides"].values():
        assert side["rooms"] == {"Success": 12}
        assert side["leaked_blocks"] == 0
        assert side["exit"] == "finished"
        assert side["rejected"] == {}


def test_curve_run_refuses_every_spoofed_abort_and_every_room_succeeds() -> None:
    run = demo(*SMALL, "--curve", "--fault", "spoof-abort")
    summary = run.summary
    assert run.code == 0, run.stderr
    assert summary["fault"] == "spoof-abort"
    assert summary["requests"] == summary["succeeded"] == 12
    assert summary["verified"] is True
    assert summary["leaked_blocks"] == 0
    assert summary["spoofed"] > 0
    assert summary["rejected"] == {"identity_mismatch": summary["spoofed"]}
    for name, side in summary["sides"].items():
        assert side["rooms"] == {"Success": 12}, name
        assert side["rejected"]["identity_mismatch"] > 0, name
        assert side["fault_target"] is False, name


@pytest.mark.parametrize(
    ("fault", "target"),
    [
        ("kill-receiver", "language-1"),
        ("kill-sender", "encoder"),
        ("stall-receiver", "language-1"),
    ],
)
def test_fault_run_ends_by_itself_and_survivors_account_for_every_room(
    fault: str, target: str
) -> None:
    run = demo(*FAULTED, "--fault", fault)
    summary = run.summary
    assert run.code == 0, run.stderr
    assert summary["fault"] == fault
    assert summary["verified"] is True
    assert summary["leaked_blocks"] == 0
    started = summary["requests"] - summary["not_started"]
    assert summary["succeeded"] + summary["failed"] == started
    assert summary["succeeded"] >= 4
    assert summary["failed"] >= 1  # it hit rooms in flight
    for name, side in summary["sides"].items():
        assert sum(side["rooms"].values()) == started, name
        if name == target:
            assert side["fault_target"] is True
            assert side["leaked_blocks"] is None
            continue
        # A survivor ended every room it saw, each failure with a reason, and gave back
        # every block.
        assert UNREPORTED not in side["rooms"], name
        assert side["leaked_blocks"] == 0, name
        assert sum(side["failure_reasons"].values()) == side["rooms"].get("Failed", 0), name
        assert all(reason for reason in side["failure_reasons"]), name
    # Ended by deadlines of seconds, though a stalled Mooncake write holds ~60 s.
    assert summary["seconds"] < 30
    assert run.seconds < 90
