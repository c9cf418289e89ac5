#!/usr/bin/env bash
# The CUDA checks of issue 13, in one run with a time limit, printing one JSON object.
#
# Meant for a machine with an NVIDIA GPU and no network (the device machines): python3
# there holds torch with CUDA. Everything else comes from wheels in .whl/ of the repo
# tree (carried to that machine), fetched beforehand where pip works:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl mooncake-transfer-engine-cuda13 msgspec transitions pyzmq
#   (and the Debian libraries Mooncake loads, unpacked: apt-get download libibverbs1
#   libnuma1 libnl-3-200 libnl-route-3-200 into .whl/deb/)
# then: bash scripts/gpu-check.sh [SECONDS] (default 300), with .whl carried.
# A dry run of the script without a GPU: EMBXFER_GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python
#
# Checks: buffers on cuda (store, views, gather, byte-exact); Mooncake's CUDA wheel
# registering CUDA tensors; GPU -> GPU over TCP on 127.0.0.1 through embxfer's engines
# (send() of a zero-copy buffer to the receiver's Success, byte-exact, against a raw
# transport write); assembly of a resumed room against a device-to-device copy.
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${1:-300}"
site=/tmp/embxfer-gpu-site
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl
fi
if compgen -G ".whl/deb/*.deb" >/dev/null; then
    mkdir -p /tmp/embxfer-gpu-libs
    for deb in .whl/deb/*.deb; do dpkg -x "$deb" /tmp/embxfer-gpu-libs; done
    export LD_LIBRARY_PATH="$(find /tmp/embxfer-gpu-libs -name '*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}"
fi
# The package maps embxfer.fsm, .buffers, .transport onto top-level folders: a shim.
shim=/tmp/embxfer-gpu-shim
rm -rf "$shim" && mkdir -p "$shim"
ln -s "$PWD/embxfer" "$shim/embxfer"
export PYTHONPATH="$site:$shim:${PYTHONPATH:-}" EMBXFER_REPO="$PWD"
exec timeout "$limit" "${PYTHON:-python3}" - <<'PY'
import json, os, sys, time, importlib.util, types

repo = os.environ["EMBXFER_REPO"]
import embxfer  # noqa: E402  (the shim's package)
for sub in ("fsm", "buffers", "transport"):  # as pyproject's package-dir maps them
    spec = importlib.util.spec_from_file_location(
        f"embxfer.{sub}", f"{repo}/{sub}/__init__.py", submodule_search_locations=[f"{repo}/{sub}"]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"embxfer.{sub}"] = module
    spec.loader.exec_module(module)

import torch  # noqa: E402

DEVICE = os.environ.get("EMBXFER_GPU_CHECK_DEVICE", "cuda")  # cpu: a dry run of the script
sync = torch.cuda.synchronize if DEVICE != "cpu" else (lambda: None)
report: dict[str, object] = {"cuda": torch.cuda.is_available()}


def check(name, fn):
    started = time.perf_counter()
    try:
        report[name] = {"ok": True, **(fn() or {})}
    except Exception as error:  # every check reports, none stops the others
        report[name] = {"ok": False, "error": repr(error)[:400]}
    report[name]["seconds"] = round(time.perf_counter() - started, 3)


def buffers_on_cuda():
    from embxfer.buffers.layout import BufferLayout
    from embxfer.buffers.metadata import MetadataBuffers
    from embxfer.buffers.payload import random_payload

    layout = BufferLayout(num_blocks=64, block_size=128, hidden_size=4096, device=DEVICE)
    buffers = MetadataBuffers(layout)
    payload = random_payload(3000, layout, torch.Generator().manual_seed(1))
    payload = type(payload)(*(t.to(DEVICE) for t in (payload.embeddings, payload.fill_ids, payload.mrope_positions)), payload.mrope_position_delta)
    run, scattered = list(range(24)), list(range(63, 39, -1))
    buffers.store(run, payload)
    in_place = buffers.view_payload(run, 3000, payload.mrope_position_delta)
    buffers.store(scattered, payload)
    gathered = buffers.view_payload(scattered, 3000, payload.mrope_position_delta)
    return {
        "views_exact": in_place.equals(payload),
        "gathered_exact": gathered.equals(payload),
        "device": str(in_place.embeddings.device),
    }


def mooncake_registers_cuda():
    from embxfer.transport.mooncake_data import MooncakeDataTransport, installed_wheels

    transport = MooncakeDataTransport()
    tensor = torch.zeros(64 << 20, dtype=torch.uint8, device=DEVICE)
    try:
        transport.register(tensor.data_ptr(), tensor.nbytes)
    finally:
        transport.close()
    return {"wheels": installed_wheels()}


def gpu_to_gpu_over_tcp():
    from embxfer.config import EngineConfig
    from embxfer.fsm.poll import KVPoll
    from embxfer.remote import NetworkConfig, remote_receiver, remote_sender
    from embxfer.tools.workload import payload_for, write_in_place

    config = EngineConfig(num_blocks=40, block_size=128, hidden_size=4096, device=DEVICE,
                          default_alloc_tokens=5000, adaptive_alloc=False)
    sender, receiver = remote_sender(config, NetworkConfig()), remote_receiver(config, NetworkConfig())
    sender.start(); receiver.start()
    times = []
    try:
        for room in range(1, 8):
            payload = payload_for(room, 4000, config.layout, seed=5)
            send = sender.create_room(room)
            recv = receiver.create_room(room, sender.address)
            while not ((t := sender.rooms.get(room)) and t.room.receivers):
                time.sleep(1e-4)
            written = write_in_place(send, payload)
            sync()
            started = time.perf_counter()
            send.send(written)
            while (state := recv.poll()) not in (KVPoll.Success, KVPoll.Failed):
                time.sleep(2e-5)
            times.append(time.perf_counter() - started)
            exact = state is KVPoll.Success and recv.result().equals(payload)
            recv.release(); send.release()
            if not exact:
                raise AssertionError(f"room {room}: {state.name} {recv.reason}")
    finally:
        receiver.close(); sender.close()
    nbytes = 4000 * config.layout.bytes_per_token
    best = sorted(times)[len(times) // 2]
    return {"bytes": nbytes, "median_ms": best * 1e3, "gb_s": nbytes / best / 1e9}


def assembly_vs_device_copy():
    from embxfer.buffers.assembly import StoredPiece, assemble
    from embxfer.buffers.layout import BufferLayout
    from embxfer.buffers.metadata import MetadataBuffers
    from embxfer.buffers.payload import random_payload

    layout = BufferLayout(num_blocks=512, block_size=128, hidden_size=4096, device=DEVICE)
    buffers = MetadataBuffers(layout)
    total = 50_000
    payload = random_payload(total, layout, torch.Generator().manual_seed(2))
    payload = type(payload)(*(t.to(DEVICE) for t in (payload.embeddings, payload.fill_ids, payload.mrope_positions)), payload.mrope_position_delta)
    pieces, offset, block = [], 0, 0
    for tokens in (8192, 16384, 16384, total - 40960):
        blocks = list(range(block, block + layout.tokens_to_blocks(tokens)))
        part = type(payload)(payload.embeddings[offset:offset + tokens], payload.fill_ids[offset:offset + tokens], payload.mrope_positions[offset:offset + tokens])
        buffers.store(blocks, part)
        pieces.append(StoredPiece(offset, tokens, blocks=blocks))
        offset += tokens; block = blocks[-1] + 1
    result = assemble(buffers, pieces, total, payload.mrope_position_delta)
    exact = result.equals(payload)
    copy_into = torch.empty_like(payload.embeddings)

    def timed(fn):
        for _ in range(3): fn()
        sync(); started = time.perf_counter()
        for _ in range(20): fn()
        sync(); return (time.perf_counter() - started) / 20

    assembly_s = timed(lambda: assemble(buffers, pieces, total, payload.mrope_position_delta))
    copy_s = timed(lambda: copy_into.copy_(payload.embeddings))
    return {"exact": exact, "assembly_ms": assembly_s * 1e3, "d2d_copy_ms": copy_s * 1e3,
            "assembly_vs_copy": copy_s / assembly_s}


if report["cuda"] or DEVICE == "cpu":
    report["device"] = torch.cuda.get_device_name() if DEVICE != "cpu" else "cpu (dry run)"
    check("buffers_on_cuda", buffers_on_cuda)
    check("mooncake_registers_cuda", mooncake_registers_cuda)
    check("gpu_to_gpu_over_tcp", gpu_to_gpu_over_tcp)
    check("assembly_vs_device_copy", assembly_vs_device_copy)
print(json.dumps(report))
PY
