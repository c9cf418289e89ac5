"""The library a scheduler imports pulls in none of the tools: no demo, benchmark or
verification code, and none of their packages (progress bars, plotting, Hypothesis)."""

from __future__ import annotations

import subprocess
import sys

LIBRARY = [
    "embxfer",
    "embxfer.adapter",
    "embxfer.config",
    "embxfer.handles",
    "embxfer.local",
    "embxfer.metrics",
    "embxfer.receiver",
    "embxfer.remote",
    "embxfer.sender",
]
TOOLS_ONLY = ["tqdm", "matplotlib", "hypothesis", "graphviz"]


def test_importing_the_library_imports_no_tool() -> None:
    # A blocked module raises ImportError wherever it is imported (torch copes without
    # tqdm), so the import succeeds only if nothing of ours needs one.
    script = (
        "import sys\n"
        f"for name in {TOOLS_ONLY!r}: sys.modules[name] = None\n"
        f"for name in {LIBRARY!r}: __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('embxfer.tools')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
