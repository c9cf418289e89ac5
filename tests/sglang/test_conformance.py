"""The adapter against sglang 0.5.23's own ``BaseKVManager``, ``BaseKVSender`` and
``BaseKVReceiver``: installed (``--no-deps``, with what its base module imports) into a
cache directory beside the venv's packages, imported in a subprocess, subclassed,
instantiated and driven through rooms.

If the packages cannot be installed the test fails: it never skips.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sglang import conformance

ROOT = Path(__file__).parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
# Beside the venv's packages (never on its path): reused while the requirements hold.
CACHE = ROOT / ".venv" / "sglang-conformance"
INSTALL_LIMIT_S = 600


def sglang_dir() -> Path:
    """The cache directory with exactly the pinned requirements, installed if needed."""
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = CACHE / ".requirements-sha256"
    if marker.is_file() and marker.read_text() == stamp:
        return CACHE
    shutil.rmtree(CACHE, ignore_errors=True)
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
        "--disable-pip-version-check", "--target", str(CACHE), "-r", str(REQUIREMENTS),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing sglang 0.5.23 took over {INSTALL_LIMIT_S} s: {command}")
    if done.returncode != 0:
        pytest.fail(
            f"cannot install sglang 0.5.23 and its import-time needs for the conformance "
            f"test ({' '.join(command)}):\n{done.stderr[-4000:]}"
        )
    marker.write_text(stamp)
    return CACHE


def test_the_adapter_conforms_to_sglangs_own_classes() -> None:
    packages = sglang_dir()
    # The cache goes after the venv's packages on the path: it only adds what they lack.
    code = (
        f"import sys; sys.path.append({str(packages)!r}); import runpy; "
        "runpy.run_module('tests.sglang.conformance', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,  # with -c, the working directory is on the path: tests, examples
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    conformance.verify(report, sglang=True)
