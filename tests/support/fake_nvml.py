"""A stand-in for the pynvml module: GPUs, processes, MIG, N/A figures and NVML errors on demand.

It answers in pynvml's own structures (c_nvmlMemory_t, c_nvmlProcessInfo_t, c_nvmlUtilization_t)
and raises pynvml's own error classes, so gpuops' real seam (`gpuops.gpu.nvml.Nvml`) decodes it
exactly as it decodes the driver:

    fake = FakePynvml([FakeGpu(processes=[FakeProcess(pid, used_mib=4000, track=True)])])
    inv = inventory(Nvml(fake, device_prefixes=(device_prefix,)))

A tracked process is listed while the real process lives and for `lag` seconds after it is gone,
as NVML lists a process until the driver has torn its context down.

`process_api` is the newest process query the driver has: "v3" (R510+), "v2" (e.g. 470 LTS: pynvml's
default calls then raise NVMLLibraryMismatchError, as pynvml does) or "v1" (neither).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil
import pynvml

NA = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
MIB = 1024 * 1024
NO_INSTANCE = 0xFFFFFFFF


@dataclass
class FakeProcess:
    pid: int
    used_mib: float | None = 1000.0  # None: NVML reports "not available" (MIG, WDDM)
    kind: str = "compute"  # "compute", "graphics" or "compute+graphics" (listed by both queries)
    track: bool = False  # listed only while the real process lives (plus the fake's lag)
    raw_na: bool = False  # hand back the raw N/A value, as older nvidia-ml-py releases do


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-8f2a1c3e-0000-0000-0000-000000000000"
    total_mib: float = 81559.0
    base_mib: float = 3.0  # in use with no process (the driver's own)
    memory_na: bool = False  # the memory query is not supported (unified-memory boards)
    memory_used_raw_na: bool = False  # the memory query answers, with "used" not available
    utilization: int | None = 0  # None: not supported (MIG mode)
    mig: bool | None = False  # None: the board has no MIG at all
    processes: list[FakeProcess] = field(default_factory=list)
    process_error: type | None = None  # an NVMLError class the process queries raise
    lost: bool = False  # the GPU fell off the bus
    mig_devices: list[str] = field(default_factory=list)  # UUIDs of its MIG devices, in slots 0, 1, ...
    mig_slots: int = 7  # nvmlDeviceGetMaxMigDeviceCount; slots past the devices are empty
    mig_list_error: type | None = None  # an NVMLError class nvmlDeviceGetMigDeviceHandleByIndex raises


@dataclass
class FakeMigDevice:
    """The handle of one MIG device (what nvmlDeviceGetMigDeviceHandleByIndex returns)."""

    uuid: str
    parent: FakeGpu


class FakePynvml:
    """Answers the pynvml calls gpuops makes; anything else (constants, errors) is pynvml's own."""

    def __init__(self, gpus=(), *, init_error: type | None = None, lag: float = 0.3, driver: str = "550.54.15",
                 memory_v2: bool = True, process_api: str = "v3"):
        self.gpus = list(gpus)
        self.process_api = process_api
        self.init_error = init_error
        self.lag = lag
        self.driver = driver
        self.memory_v2 = memory_v2
        self.inits = 0
        self.shutdowns = 0
        self._open = 0
        self._gone_at: dict[int, float] = {}

    def __getattr__(self, name):
        return getattr(pynvml, name)

    # --- session ---

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error()
        self.inits += 1
        self._open += 1

    def nvmlShutdown(self):
        if self._open == 0:
            raise pynvml.NVMLError_Uninitialized()
        self._open -= 1
        self.shutdowns += 1

    def _session(self):
        if self._open == 0:  # as NVML: every query needs nvmlInit first
            raise pynvml.NVMLError_Uninitialized()

    # --- queries ---

    def nvmlSystemGetDriverVersion(self):
        self._session()
        return self.driver

    def nvmlDeviceGetCount(self):
        self._session()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._session()
        gpu = self.gpus[index]
        if gpu.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return gpu

    def nvmlDeviceGetName(self, gpu):
        self._session()
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu):
        self._session()
        return gpu.uuid

    def nvmlDeviceGetMemoryInfo(self, gpu, version=None):
        self._session()
        if gpu.memory_na:
            raise pynvml.NVMLError_NotSupported()
        if version is not None and not self.memory_v2:
            raise pynvml.NVMLError_FunctionNotFound()
        listed = [p for p in gpu.processes if self._present(p)]
        used_mib = gpu.base_mib + sum(p.used_mib or 0 for p in listed)
        used = NA if gpu.memory_used_raw_na else int(used_mib * MIB)
        total = int(gpu.total_mib * MIB)
        free = 0 if used == NA else total - used
        if version is None:
            return pynvml.c_nvmlMemory_t(total=total, free=free, used=used)
        return pynvml.c_nvmlMemory_v2_t(version=version, total=total, reserved=0, free=free, used=used)

    def nvmlDeviceGetUtilizationRates(self, gpu):
        self._session()
        if gpu.utilization is None:
            raise pynvml.NVMLError_NotSupported()
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization, memory=gpu.utilization)

    def nvmlDeviceGetMigMode(self, gpu):
        self._session()
        if gpu.mig is None:
            raise pynvml.NVMLError_NotSupported()
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu):
        self._session()
        if gpu.mig is None:
            raise pynvml.NVMLError_NotSupported()
        return gpu.mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu, index):
        self._session()
        if gpu.mig_list_error is not None:
            raise gpu.mig_list_error()
        if not gpu.mig or index >= gpu.mig_slots:
            raise pynvml.NVMLError_InvalidArgument()
        if index >= len(gpu.mig_devices):
            raise pynvml.NVMLError_NotFound()
        return FakeMigDevice(gpu.mig_devices[index], gpu)

    # pynvml's unversioned process queries call _v3 and turn its absence into NVMLLibraryMismatchError.
    def nvmlDeviceGetComputeRunningProcesses(self, gpu):
        return pynvml.throwOnVersionMismatch(self.nvmlDeviceGetComputeRunningProcesses_v3)(gpu)

    def nvmlDeviceGetGraphicsRunningProcesses(self, gpu):
        return pynvml.throwOnVersionMismatch(self.nvmlDeviceGetGraphicsRunningProcesses_v3)(gpu)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, gpu):
        return self._listed(gpu, "compute", "v3")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, gpu):
        return self._listed(gpu, "graphics", "v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, gpu):
        return self._listed(gpu, "compute", "v2")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, gpu):
        return self._listed(gpu, "graphics", "v2")

    # --- behaviour ---

    def _present(self, p: FakeProcess) -> bool:
        if not p.track:
            return True
        try:
            alive = psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            self._gone_at.pop(p.pid, None)
            return True
        gone_at = self._gone_at.setdefault(p.pid, time.monotonic())
        return time.monotonic() - gone_at < self.lag

    def _listed(self, gpu: FakeGpu, kind: str, version: str):
        self._session()
        if version > self.process_api:  # the driver lacks this function: as pynvml's function-pointer lookup
            raise pynvml.NVMLError_FunctionNotFound()
        if gpu.process_error is not None:
            raise gpu.process_error()
        out = []
        for p in gpu.processes:
            if kind not in p.kind.split("+") or not self._present(p):
                continue
            used = NA if p.used_mib is None else int(p.used_mib * MIB)
            struct = pynvml.c_nvmlProcessInfo_v3_t if version == "v3" else pynvml.c_nvmlProcessInfo_v2_t
            info = struct(pid=p.pid, usedGpuMemory=used, gpuInstanceId=NO_INSTANCE,
                          computeInstanceId=NO_INSTANCE)
            obj = pynvml.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == NA and not p.raw_na:
                obj.usedGpuMemory = None  # what nvidia-ml-py does with N/A
            out.append(obj)
        return out
