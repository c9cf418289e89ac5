"""``route_native_log``: glog lines written to fd 2 by native code become log records;
everything else written there passes through unchanged. It runs in a fresh interpreter,
since the routing is process-wide (and pytest captures fd 2 itself)."""

from __future__ import annotations

import re
import subprocess
import sys

GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)

SCRIPT = r"""
import logging, os, sys
from embxfer.tools.native_log import route_native_log
assert route_native_log() and route_native_log()  # once per process, then a no-op
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
native = lambda text: os.write(2, text.encode())  # as Mooncake's glog writes
native("WARNING: Logging before InitGoogleLogging() is written to STDERR\n")
native("E1130 17:35:10.537241 25468 meta.cpp:1098] Local segment descriptor not found\n")
print("python's own stderr", file=sys.stderr, flush=True)
for _ in range(2):
    native("E1130 17:35:10.569990 25468 plugin.cpp:1030] connect(): refused [111]\n")
native("W1130 17:35:10.6 7 topology.cpp:201] No RDMA devices found\n")
native("\rprogress 50%")
"""


RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) embxfer\.mooncake (.*)\n")


def test_glog_lines_become_records_and_the_rest_passes_through() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60)
    stderr = done.stderr.decode()  # as written: "\r" kept
    assert done.returncode == 0, stderr
    assert not GLOG_LINE.search(stderr), stderr
    # Records and passed-on text come from two threads, in either order.
    assert RECORD.sub("", stderr) == "python's own stderr\n\rprogress 50%"
    assert sorted(RECORD.findall(stderr)) == [
        # what every Mooncake engine prints as it starts: DEBUG only
        ("DEBUG", "Local segment descriptor not found (meta.cpp:1098)"),
        ("DEBUG", "WARNING: Logging before InitGoogleLogging() is written to STDERR"),
        # a failure's reason at its glog level, once per source line; then DEBUG
        ("DEBUG", "connect(): refused [111] (plugin.cpp:1030)"),
        ("ERROR", "connect(): refused [111] (plugin.cpp:1030)"),
        ("WARNING", "No RDMA devices found (topology.cpp:201)"),
    ]
