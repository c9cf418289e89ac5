"""Mooncake's CUDA build: which wheel the set-up picks for a host, and the refusal to
register GPU buffers with a build that cannot. (No GPU here: registering CUDA memory
itself is not exercised.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from embxfer import EngineConfig
from embxfer.remote import NetworkConfig, remote_sender
from embxfer.transport.mooncake_data import cuda_problem, installed_wheels

SCRIPT = Path(__file__).parents[2] / "scripts" / "mooncake-extra.sh"


def pick(tmp_path: Path, nvidia_smi: str | None, driver_dir: bool = False, **env: str) -> str:
    """The extra the set-up script picks on a host with that ``nvidia-smi`` output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        tool = bin_dir / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\necho '{nvidia_smi}'\n")
        tool.chmod(0o755)
    driver = tmp_path / "proc-driver-nvidia"
    if driver_dir:
        driver.mkdir(exist_ok=True)
    path = f"{bin_dir}:/usr/bin:/bin" if nvidia_smi is not None else str(bin_dir)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": path, "NVIDIA_DRIVER_DIR": str(driver), **env},
    )
    return done.stdout.strip()


def test_the_set_up_picks_the_wheel_for_the_hosts_driver(tmp_path: Path) -> None:
    header = "| NVIDIA-SMI 580.65  Driver Version: 580.65  CUDA Version: {} |"
    assert pick(tmp_path, None) == "mooncake"  # no driver: the CPU-only build
    assert pick(tmp_path, header.format("12.4")) == "mooncake-cuda"
    assert pick(tmp_path, header.format("13.0")) == "mooncake-cuda13"
    # A driver without a working nvidia-smi: CUDA 12's build, the older ABI.
    assert pick(tmp_path, "", driver_dir=True) == "mooncake-cuda"
    assert pick(tmp_path, None, EMBXFER_MOONCAKE_EXTRA="mooncake-cuda13") == "mooncake-cuda13"


def test_gpu_buffers_need_a_cuda_build_of_mooncake() -> None:
    assert cuda_problem("cpu", ["mooncake-transfer-engine-non-cuda"]) == ""
    assert cuda_problem("cuda", ["mooncake-transfer-engine"]) == ""
    assert cuda_problem("cuda:1", ["mooncake-transfer-engine-cuda13"]) == ""
    problem = cuda_problem("cuda:1", ["mooncake-transfer-engine-non-cuda"])
    assert "'cuda:1' need a CUDA build of Mooncake" in problem
    assert "embxfer[mooncake-cuda]" in problem
    assert "no Mooncake wheel" in cuda_problem("cuda", [])


@pytest.mark.skipif(
    any(w != "mooncake-transfer-engine-non-cuda" for w in installed_wheels()),
    reason="a CUDA build of Mooncake is installed",
)
def test_a_remote_engine_on_gpu_buffers_is_refused_before_anything_is_made() -> None:
    config = EngineConfig(num_blocks=4, hidden_size=8, device="cuda")
    with pytest.raises(RuntimeError, match="need a CUDA build of Mooncake"):
        remote_sender(config, NetworkConfig())
