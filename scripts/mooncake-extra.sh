#!/usr/bin/env bash
# Prints the pyproject extra with the Mooncake wheel for this host: the CUDA build where
# an NVIDIA driver is present (only it registers GPU memory), for the CUDA major version
# the driver supports (13 and up: the -cuda13 wheel, else CUDA 12's), else the CPU-only
# build. EMBXFER_MOONCAKE_EXTRA overrides the choice; NVIDIA_DRIVER_DIR (default
# /proc/driver/nvidia) exists to test it.
set -euo pipefail
if [ -n "${EMBXFER_MOONCAKE_EXTRA:-}" ]; then
    echo "$EMBXFER_MOONCAKE_EXTRA"
    exit 0
fi
if [ ! -e "${NVIDIA_DRIVER_DIR:-/proc/driver/nvidia}" ] && ! command -v nvidia-smi >/dev/null; then
    echo mooncake
    exit 0
fi
cuda_major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)
if [ "${cuda_major:-12}" -ge 13 ]; then
    echo mooncake-cuda13
else
    echo mooncake-cuda
fi
