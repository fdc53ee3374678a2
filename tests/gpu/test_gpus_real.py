"""The real NVML path, on a machine with an NVIDIA GPU and driver; skipped (with the reason) elsewhere.

    pytest -m gpu tests/gpu/test_gpus_real.py

A real CUDA process (ctypes on the driver's libcuda.so.1: no PyTorch or CUDA toolkit needed) is
started, found in the inventory, and seen to disappear (wait_released); then one is freed with
free_gpus, the way --kill-gpu-procs does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from gpuops.gpu import inventory as gpus
from support.fixtures import kill_groups

INV = gpus.inventory()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(INV.unavailable is not None, reason=f"no NVIDIA GPU/driver visible: {INV.unavailable}"),
]

ALLOC_MIB = 256

# Holds ALLOC_MIB (argv[1]) on CUDA device 0 through the driver API, as the runtime would: the primary
# context, then cuMemAlloc. Prints "ready", "no-driver: why" (libcuda missing) or "error: call (CUDA_ERROR_...)".
CUDA_HOLDER = textwrap.dedent("""
    import ctypes, sys, time

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        print(f"no-driver: {err}", flush=True)
        sys.exit(0)
    CUresult, CUdevice, CUcontext, CUdeviceptr = ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_ulonglong
    signatures = {
        "cuGetErrorName": [CUresult, ctypes.POINTER(ctypes.c_char_p)],
        "cuInit": [ctypes.c_uint],
        "cuDeviceGet": [ctypes.POINTER(CUdevice), ctypes.c_int],
        "cuDevicePrimaryCtxRetain": [ctypes.POINTER(CUcontext), CUdevice],
        "cuCtxSetCurrent": [CUcontext],
        "cuMemAlloc_v2": [ctypes.POINTER(CUdeviceptr), ctypes.c_size_t],
    }
    for name, argtypes in signatures.items():
        getattr(cuda, name).argtypes = argtypes
        getattr(cuda, name).restype = CUresult

    def check(rc, call):
        if rc != 0:
            text = ctypes.c_char_p()
            cuda.cuGetErrorName(rc, ctypes.byref(text))
            print(f"error: {call} returned {rc} ({(text.value or b'?').decode()})", flush=True)
            sys.exit(1)

    check(cuda.cuInit(0), "cuInit")
    dev, ctx, ptr = CUdevice(), CUcontext(), CUdeviceptr()
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    check(cuda.cuMemAlloc_v2(ctypes.byref(ptr), int(sys.argv[1]) * 1024 * 1024), "cuMemAlloc_v2")
    print("ready", flush=True)
    time.sleep(120)
""")


def test_real_inventory_fields_are_sane():
    inv = gpus.inventory()

    assert inv.unavailable is None and inv.driver
    assert [g.index for g in inv.gpus] == list(range(len(inv.gpus)))
    for g in inv.gpus:
        assert g.problem is None, g.problem
        assert g.name and g.name != "?"
        assert g.uuid and g.uuid.startswith(("GPU-", "MIG-"))
        if g.memory_total_mib is not None:
            assert g.memory_total_mib > 1000
            assert g.memory_used_mib is None or 0 <= g.memory_used_mib <= g.memory_total_mib
        assert g.utilization_pct is None or 0 <= g.utilization_pct <= 100
        for p in g.processes:
            assert p.pid > 0 and p.kind in ("compute", "graphics", "compute+graphics")
        if g.mig:
            assert g.mig_devices is None or all(u.startswith("MIG-") for u in g.mig_devices)
        else:
            assert g.mig_devices == []


@pytest.fixture
def cuda_holder():
    """start() -> a real process holding ALLOC_MIB on CUDA device 0, in its own process group."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", CUDA_HOLDER, str(ALLOC_MIB)], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        started.append(proc)
        line = proc.stdout.readline().strip()
        if line.startswith("no-driver:"):
            pytest.skip(f"the CUDA driver library libcuda.so.1 cannot be loaded ({line[len('no-driver:'):].strip()})")
        assert line == "ready", f"the CUDA holder did not start: {line or 'no output'}"
        return proc

    yield start
    kill_groups(started)


def _listed(pid: int) -> list[tuple[gpus.Gpu, gpus.GpuProcess]]:
    return [(g, p) for g in gpus.inventory().gpus for p in g.processes if p.pid == pid]


def test_real_cuda_process_appears_in_inventory_and_disappears_after_exit(cuda_holder):
    proc = cuda_holder()
    deadline = time.monotonic() + 10
    while not _listed(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)

    ((gpu, p),) = _listed(proc.pid)
    assert p.visible and p.accessible and "python" in p.name
    assert p.user == psutil.Process().username()
    if p.used_mib is not None:  # n/a on MIG
        assert p.used_mib >= ALLOC_MIB

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    after = gpus.wait_released([proc.pid], timeout=30)

    assert not any(q.pid == proc.pid for g in after.gpus for q in g.processes)


def test_real_free_gpus_terminates_a_cuda_holder_and_waits_for_release(cuda_holder):
    proc = cuda_holder()
    deadline = time.monotonic() + 10
    while not _listed(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    ((gpu, _),) = _listed(proc.pid)
    lines: list[str] = []

    killed = gpus.free_gpus(gpus.inventory(), [gpu.index], busy_mib=ALLOC_MIB // 2, yes=True, confirm=None,
                            timeout=10, release_timeout=60, write=lines.append,
                            ignore_pids=[p.pid for p in gpu.processes if p.pid != proc.pid])

    assert proc.pid in killed
    assert not _listed(proc.pid)
    assert any(line.startswith("GPU memory released after") for line in lines)
