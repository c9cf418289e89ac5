#!/usr/bin/env bash
# Creates .venv with everything embxfer needs. torch is pinned and installed
# first: any other torch spec may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# Mooncake's wheel links against these; graphviz renders the SVG diagrams; iproute2's
# `ip` builds the network namespaces of `embxfer demo --hosts netns` (and its tests).
need=()
for pkg in libibverbs1 librdmacm1 libnuma1 graphviz iproute2; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup: please install Debian packages: ${need[*]}" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
# One Mooncake wheel: all three install the same `mooncake` package, so drop the others.
mooncake=$(bash scripts/mooncake-extra.sh)
case "$mooncake" in
    mooncake) keep=mooncake-transfer-engine-non-cuda ;;
    mooncake-cuda) keep=mooncake-transfer-engine ;;
    mooncake-cuda13) keep=mooncake-transfer-engine-cuda13 ;;
    *) echo "setup: unknown Mooncake extra '$mooncake'" >&2; exit 1 ;;
esac
for wheel in mooncake-transfer-engine mooncake-transfer-engine-non-cuda mooncake-transfer-engine-cuda13; do
    if [ "$wheel" != "$keep" ]; then
        .venv/bin/python -m pip uninstall -q -y "$wheel" >/dev/null 2>&1 || true
    fi
done
echo "setup: Mooncake from $keep (extra '$mooncake')"
.venv/bin/python -m pip install -q -e ".[$mooncake,metrics,plot,dev]"
