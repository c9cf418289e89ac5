"""``embxfer demo --hosts netns``: the engines on separate hosts (network namespaces),
partitions that heal, a flood from a host of its own, and nothing left behind.

Short variants of the runs the README quotes (the full soak and flood run through the
CLI); each is a real ``python -m embxfer demo`` (see ``test_demo_processes.demo``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import pytest

from embxfer.tools.cluster import netns
from embxfer.tools.cluster.netns import NETNS_DIR
from embxfer.transport.mooncake_data import available
from tests.processes.test_demo_processes import demo, left_behind

pytestmark = [
    pytest.mark.processes,
    pytest.mark.netns,
    pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "-"),
    pytest.mark.skipif(not available(), reason="Mooncake Transfer Engine is not usable here"),
]

SMALL = [
    "--hosts", "netns", "--requests", "12", "--tokens", "100:5000", "--default-alloc", "1024",
    "--hidden", "64", "--receivers", "2", "--concurrency", "4",
]  # fmt: skip
TEST_BEDS = ipaddress.ip_network("198.18.0.0/15")


def our_namespaces() -> set[str]:
    names = os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else []
    return {name for name in names if name.startswith(netns.PREFIX)}


def test_engines_on_separate_hosts_take_a_flood_and_stay_exact() -> None:
    before = our_namespaces()
    run = demo(*SMALL, "--fuzz-frames", "10000")
    summary = run.summary
    assert run.code == 0, run.stderr
    assert summary["succeeded"] == summary["requests"] >= 12
    assert summary["verified"] is True
    assert summary["leaked_blocks"] == 0
    assert summary["resumes"] > 0
    addresses = {side["address"].rsplit(":", 1)[0] for side in summary["sides"].values()}
    assert len(addresses) == 3  # one host each
    assert all(ipaddress.ip_address(a.removeprefix("tcp://")) in TEST_BEDS for a in addresses)
    flood = summary["flood"]
    assert flood["frames"] == 10_200  # and the 200 with a wrong envelope
    assert flood["matched"] is True, (flood["expected"], flood["counted"])
    assert summary["sides"]["encoder"]["rejected"] == flood["counted"]
    assert our_namespaces() <= before


def test_a_partition_fails_the_rooms_across_it_by_their_deadlines_and_heals() -> None:
    run = demo(
        *SMALL, "--requests", "40", "--tokens", "1000:8000", "--concurrency", "8",
        "--fault", "partition-receiver", "--fault-after", "10", "--partition-s", "1.5",
        "--timeout-s", "3", "--peer-timeout-s", "1",
    )  # fmt: skip
    summary = run.summary
    assert run.code == 0, run.stderr
    assert summary["succeeded"] + summary["failed"] + summary["not_started"] == 40
    assert summary["not_started"] == 0  # nobody died: rooms kept opening through the cut
    assert summary["failed"] > 0
    assert summary["verified"] is True
    assert summary["leaked_blocks"] == 0
    for name, side in summary["sides"].items():  # the cut host too: nobody was killed
        assert side["leaked_blocks"] == 0, name
        assert side["exit"] == "finished", name
    phases = summary["partition"]
    assert phases["before_cut"]["failed"] == 0
    assert phases["after_heal"]["failed"] == 0
    assert summary["succeeded_after_heal"] == phases["after_heal"]["succeeded"] > 0
    # Ended by their own deadlines (seconds), not by Mooncake's (a minute).
    assert phases["across_cut"]["slowest_s"] < 15


def test_a_run_killed_midway_leaves_namespaces_the_next_run_removes() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "embxfer", "demo", "--no-progress", *SMALL, "--requests", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    earlier = our_namespaces()  # of other runs (it removes those of dead ones)
    try:
        deadline = time.monotonic() + 60
        while len(our_namespaces() - earlier) < 4:  # three hosts and the hub
            assert time.monotonic() < deadline, "no namespaces appeared"
            assert process.poll() is None, "the demo ended early"
            time.sleep(0.1)
        time.sleep(2.0)  # its workers are up, rooms are running
    finally:
        process.kill()  # SIGKILL: no clean-up of its own
        process.wait()
    killed = our_namespaces() - earlier
    assert len(killed) == 4  # left behind
    # Its workers notice the parent is gone at once and close their engines; the
    # interpreters (torch, Mooncake) take seconds more to exit.
    deadline = time.monotonic() + 30
    while left_behind(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left_behind(process.pid)
    with netns.Testbed(["next"]) as bed:  # the next run starts by removing them
        assert not our_namespaces() & killed
        assert {f"emb-{bed.run_id}-next", f"emb-{bed.run_id}-hub"} <= our_namespaces()
    assert not our_namespaces() & killed
