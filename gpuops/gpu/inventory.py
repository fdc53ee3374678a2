"""Who holds which GPU: the data classes, reading them from NVML, and whether a GPU is busy.

    inv = inventory()                       # one NVML session; never raises for a missing driver
    inv.unavailable                         # None, or e.g. "the NVIDIA kernel driver is not loaded"
    [g.index for g in busy_gpus(inv, [0, 1], busy_mib=300)]   # -> [1]

NVML reports PIDs as the driver sees them; psutil says what those PIDs are here. A PID this machine
cannot see (another container, the host) is kept and marked, never dropped and never signalled.

The rest of the gpu package builds on this module (and nothing here imports it back):
select.py (which GPUs a command needs), free.py (check, free and wait for GPUs), render.py (the
table, JSON and banner lines), model_files.py. Their names used to live here and are still
importable from here (`inventory.free_gpus`), looked up when first used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from gpuops.gpu import nvml as seam
from gpuops.gpu.nvml import Nvml, NvmlCallFailed, NvmlUnavailable
from gpuops.server.recipes import mask_argv

NOT_VISIBLE = "not visible: other container"
CREATE_TIME_SLACK = 0.05  # psutil create_time comes from clock ticks


@dataclass
class GpuProcess:
    pid: int
    used_mib: float | None  # None: NVML says "not available" (MIG, WDDM)
    kind: str  # "compute", "graphics" or "compute+graphics"
    user: str
    name: str
    cmdline: str
    visible: bool  # this PID is, on this machine, the process NVML means
    accessible: bool  # psutil could read its details
    uid: int | None = None
    create_time: float | None = None  # identity guard before any signal (PIDs are reused)
    zombie_of: int | None = None  # exited, not yet reaped by this parent PID

    def describe(self) -> str:
        """'pid 41234 (alice, 40000 MiB): python -m vllm.entrypoints.openai.api_server --port 8000'"""
        mem = "n/a" if self.used_mib is None else f"{self.used_mib:.0f} MiB"
        if not self.visible:
            return f"pid {self.pid} ({mem}): ({NOT_VISIBLE} or the host)"
        what = self.cmdline or self.name
        if not self.accessible:
            what = f"{self.name} (no permission to read its command line)"
        return f"pid {self.pid} ({self.user}, {mem}, {self.kind}): {what}"


@dataclass
class Gpu:
    index: int
    name: str
    uuid: str | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    utilization_pct: int | None
    mig: bool
    processes: list[GpuProcess] = field(default_factory=list)
    processes_error: str | None = None  # NVML would not list the processes (e.g. "no permission")
    problem: str | None = None  # the GPU could not be read at all (e.g. "GPU is lost")
    # UUIDs of its MIG devices ("MIG-..."), for CUDA_VISIBLE_DEVICES; None: MIG on, but NVML would not list them
    mig_devices: list[str] | None = field(default_factory=list)

    def label(self) -> str:
        return f"GPU {self.index} ({self.name}{', MIG' if self.mig else ''})"


@dataclass
class Inventory:
    gpus: list[Gpu]
    unavailable: str | None  # why there is no GPU to look at; None when NVML answered
    driver: str | None

    def by_index(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)


# --- reading: one NVML session per inventory ---


def holds_device(pid: int, prefixes: tuple[str, ...]) -> bool | None:
    """Does `pid` hold a GPU device file open? None: cannot tell (no /proc, or not ours to read)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        return False if os.path.isdir("/proc/self/fd") else None
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith(prefixes):
                return True
        except OSError:
            continue
    return False


def _describe(pid: int, kind: str, used: float | None, prefixes: tuple[str, ...]) -> GpuProcess:
    hidden = GpuProcess(pid, used, kind, "?", "?", "", visible=False, accessible=False)
    if pid <= 0:
        return hidden
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            create_time = p.create_time()
            status = p.status()
            name = p.name()
            uid = p.uids().real
    except psutil.NoSuchProcess:
        return hidden
    except psutil.AccessDenied:
        return GpuProcess(pid, used, kind, "?", "?", "", visible=True, accessible=False)
    # The same number here may be another process than the one NVML means (PID namespaces):
    # only a process holding the driver's device files is the GPU process.
    if status != psutil.STATUS_ZOMBIE and holds_device(pid, prefixes) is False:
        return hidden
    zombie_of = None
    if status == psutil.STATUS_ZOMBIE:
        try:
            zombie_of = p.ppid()
        except psutil.Error:
            zombie_of = 0
    try:
        user = p.username()
    except (KeyError, psutil.Error):
        user = str(uid)
    try:
        cmdline, accessible = mask_argv(p.cmdline()) or f"[{name}]", True
    except psutil.AccessDenied:
        cmdline, accessible = "", False
    except psutil.Error:
        cmdline, accessible = "", True
    return GpuProcess(pid, used, kind, user, name, cmdline, visible=True, accessible=accessible, uid=uid,
                      create_time=create_time, zombie_of=zombie_of)


def _read_processes(nv: Nvml, handle) -> tuple[list[GpuProcess], str | None]:
    listed: dict[int, tuple[str, float | None]] = {}
    error = None
    for kind in ("compute", "graphics"):
        try:
            entries = nv.processes(handle, kind)
        except NvmlCallFailed as err:
            if kind == "compute" or err.reason != "not supported":  # compute-only boards: no graphics list
                error = err.reason
            continue
        for pid, used in entries:
            if pid in listed:  # one process with both contexts: NVML reports the same memory twice
                _, before = listed[pid]
                both = [m for m in (before, used) if m is not None]
                listed[pid] = ("compute+graphics", max(both) if both else None)
            else:
                listed[pid] = (kind, used)
    procs = [_describe(pid, kind, used, nv.device_prefixes) for pid, (kind, used) in listed.items()]
    return procs, error


def _read_gpu(nv: Nvml, index: int) -> Gpu:
    try:
        handle = nv.handle(index)
        name = nv.name(handle)
        uuid = nv.uuid(handle)
        used, total = nv.memory_mib(handle)
        util = nv.utilization_pct(handle)
        mig = nv.mig_enabled(handle)
    except NvmlCallFailed as err:
        return Gpu(index, "?", None, None, None, None, False, problem=err.reason)
    mig_devices: list[str] | None = []
    if mig:
        try:
            mig_devices = nv.mig_device_uuids(handle)
        except NvmlCallFailed:
            mig_devices = None  # CUDA_VISIBLE_DEVICES' MIG entries then count against every MIG GPU
    procs, error = _read_processes(nv, handle)
    return Gpu(index, name, uuid, used, total, util, mig, procs, processes_error=error, mig_devices=mig_devices)


def inventory(nvml: Nvml | None = None) -> Inventory:
    """Every GPU with its memory and processes, from one NVML session. Never raises for a missing
    library, driver or GPU: `unavailable` says why instead."""
    nv = nvml if nvml is not None else seam.open_nvml()
    try:
        with nv:
            driver = nv.driver_version()
            try:
                count = nv.device_count()
            except NvmlCallFailed as err:
                return Inventory([], f"NVML cannot count the GPUs: {err.reason}", driver)
            if count == 0:
                return Inventory([], "the NVIDIA driver sees no GPU", driver)
            return Inventory([_read_gpu(nv, i) for i in range(count)], None, driver)
    except NvmlUnavailable as err:
        return Inventory([], err.reason, None)


# --- deciding: is a GPU busy, and may gpuops free it? ---


def others_mib(gpu: Gpu, ignore_pids: Iterable[int] = ()) -> float | None:
    """Memory in use on `gpu` not counting `ignore_pids`; None when NVML's figures cannot say."""
    ignore = set(ignore_pids)
    ignored = [p for p in gpu.processes if p.pid in ignore]
    others = [p for p in gpu.processes if p.pid not in ignore]
    if gpu.memory_used_mib is not None and all(p.used_mib is not None for p in ignored):
        return max(0.0, gpu.memory_used_mib - sum(p.used_mib for p in ignored))
    if all(p.used_mib is not None for p in others):
        return float(sum(p.used_mib for p in others))
    return None


def is_busy(gpu: Gpu, busy_mib: float, ignore_pids: Iterable[int] = ()) -> bool:
    ignore = set(ignore_pids)
    mib = others_mib(gpu, ignore)
    if mib is None:  # MIG or N/A figures: any other process on it counts as busy
        return any(p.pid not in ignore for p in gpu.processes)
    return mib > busy_mib


def busy_gpus(inv: Inventory, needed: Iterable[int], busy_mib: float, ignore_pids: Iterable[int] = ()) -> list[Gpu]:
    """The needed GPUs on which others use more than `busy_mib` MiB, by index.

    >>> gpus = [Gpu(i, "NVIDIA H100", None, mib, 81559.0, 0, False) for i, mib in [(0, 3.0), (1, 40000.0)]]
    >>> [g.index for g in busy_gpus(Inventory(gpus, None, "550.54"), [0, 1], 300)]
    [1]
    """
    wanted = set(needed)
    return [g for g in inv.gpus if g.index in wanted and is_busy(g, busy_mib, ignore_pids)]


# Names that moved to the modules above this one; kept importable from here until every caller
# imports them from their new home (gpuops.gpu.free / select / render / model_files).
_MOVED = {
    "needed_gpus": "select",
    "render_table": "render", "to_json": "render", "banner_lines": "render",
    "count_model_files": "model_files",
    **{name: "free" for name in ("BUSY_HINT", "busy_details", "check_gpus_free", "KillPlan", "kill_plan",
                                 "own_pids", "free_gpus", "wait_released", "report_release")},
}


def __getattr__(name: str):
    """`inventory.free_gpus` and the other moved names, imported when first asked for (no import cycle)."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"gpuops.gpu.{module}"), name)
