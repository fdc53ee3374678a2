"""GPU awareness: who holds which GPU, whether a server's GPUs are free, and freeing them safely.

    >>> inv = inventory()                       # one NVML session; never raises for a missing driver
    >>> inv.unavailable                         # or e.g. "the NVIDIA kernel driver is not loaded"
    >>> needed = needed_gpus(recipe.env, recipe.argv, inv)          # [0, 1]
    >>> check_gpus_free(inv, needed, busy_mib=300)                  # raises GpusBusy (exit 5)
    >>> free_gpus(inv, needed, 300, yes=True, confirm=None, timeout=10, release_timeout=30, write=print)
    [41234, 41240]
    >>> report_release("server", stopped_pids, timeout=30, write=print)   # after stop-server
    GPU memory released (40000 MiB)

NVML reports PIDs as the driver sees them; psutil says what those PIDs are here. A PID this machine
cannot see (another container, the host) is kept and marked, never dropped and never signalled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from gpuops.errors import GpusBusy
from gpuops.gpu.model_files import count_model_files  # noqa: F401
from gpuops.gpu.nvml import Nvml, NvmlCallFailed, NvmlUnavailable, open_nvml
from gpuops.gpu.render import render_table, to_json  # noqa: F401
from gpuops.gpu.select import needed_gpus  # noqa: F401  (part of this module's interface)
from gpuops.server.recipes import mask_secrets

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
        cmdline, accessible = mask_secrets(" ".join(p.cmdline()), {}) or f"[{name}]", True
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
    nv = nvml if nvml is not None else open_nvml()
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

    >>> [g.index for g in busy_gpus(inv, [0, 1], 300)]
    [1]
    """
    wanted = set(needed)
    return [g for g in inv.gpus if g.index in wanted and is_busy(g, busy_mib, ignore_pids)]


def _fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def busy_details(busy: list[Gpu], ignore_pids: Iterable[int] = ()) -> list[str]:
    """One line per busy GPU, then one indented line per process on it."""
    ignore = set(ignore_pids)
    lines = []
    for g in busy:
        lines.append(f"{g.label()}: {_fmt_mib(g.memory_used_mib)} / {_fmt_mib(g.memory_total_mib)} MiB used")
        others = [p for p in g.processes if p.pid not in ignore]
        lines += [f"  {p.describe()}" for p in others]
        if g.processes_error:
            lines.append(f"  (processes not listed: {g.processes_error})")
        elif not others:
            lines.append("  (no process listed: held by a process NVML does not show here, e.g. another container)")
    return lines


BUSY_HINT = ("`inv gpus` shows who holds them; `inv start-server --kill-gpu-procs` terminates those processes and "
             "waits until the memory is free; or choose free GPUs with CUDA_VISIBLE_DEVICES in AGENTS.local.md, "
             "or lower --gpu-memory-utilization")


def check_gpus_free(inv: Inventory, needed: Iterable[int], busy_mib: float, ignore_pids: Iterable[int] = ()) -> None:
    """Raise GpusBusy (exit 5) if any needed GPU is busy; say which, held by whom, and what to do."""
    needed = list(needed)
    busy = busy_gpus(inv, needed, busy_mib, ignore_pids)
    if not busy:
        return
    which = ", ".join(str(g.index) for g in busy)
    raise GpusBusy(
        f"{len(busy)} of {len(needed)} needed GPUs busy (GPU {which}): other processes use more than "
        f"{busy_mib:g} MiB",
        details=busy_details(busy, ignore_pids),
        hint=BUSY_HINT,
    )


@dataclass
class KillPlan:
    holders: list[GpuProcess]  # what would be terminated, one entry per PID
    refusals: list[str]  # why the GPUs cannot be freed by gpuops; non-empty = touch nothing


def kill_plan(busy: list[Gpu], ignore_pids: Iterable[int], *, own_pids: Iterable[int], uid: int,
              busy_mib: float) -> KillPlan:
    """Decide who to terminate to free `busy`, or why not. All or nothing: if one holder may not be
    stopped, stopping the others would not free the GPU, so nothing is.

    >>> kill_plan(busy, (), own_pids={os.getpid()}, uid=1000, busy_mib=300).refusals
    ['pid 5120 on GPU 0 belongs to user bob: gpuops terminates only your own processes ...']
    """
    ignore, own = set(ignore_pids), set(own_pids)
    holders: dict[int, GpuProcess] = {}
    refusals: list[str] = []
    for g in busy:
        others = [p for p in g.processes if p.pid not in ignore]
        if g.processes_error or not others:
            why = g.processes_error or "NVML lists no process for it"
            refusals.append(f"{g.label()}: {_fmt_mib(g.memory_used_mib)} MiB in use but gpuops cannot tell by "
                            f"whom ({why})")
            continue
        graphics = [p for p in others if p.kind == "graphics"]
        graphics_mib = sum(p.used_mib or 0 for p in graphics)
        if graphics and graphics_mib > busy_mib:
            refusals.append(f"{g.label()}: graphics processes (a desktop session?) hold {graphics_mib:.0f} MiB; "
                            "gpuops does not stop them (raise gpuops.gpu_busy_mib above what the desktop uses)")
        for p in others:
            if p.kind == "graphics":
                continue  # Xorg, a compositor: stopping them ends someone's desktop
            if not p.visible:
                refusals.append(f"pid {p.pid} on GPU {g.index} is not a process of this machine "
                                "(another container or the host): stop it there")
            elif p.pid in own:
                refusals.append(f"pid {p.pid} on GPU {g.index} is gpuops itself or a process that runs it")
            elif p.uid is None:
                refusals.append(f"pid {p.pid} on GPU {g.index}: gpuops may not inspect it, so it does not stop it")
            elif p.uid != uid and uid != 0:
                refusals.append(f"pid {p.pid} on GPU {g.index} belongs to user {p.user}: gpuops terminates only "
                                "your own processes unless run as root")
            else:
                holders.setdefault(p.pid, p)
    return KillPlan(list(holders.values()), refusals)


def own_pids() -> set[int]:
    """This process and every ancestor (the shell, inv): never to be signalled."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def _still_same(p: GpuProcess) -> psutil.Process | None:
    try:
        proc = psutil.Process(p.pid)
        if p.create_time is not None and abs(proc.create_time() - p.create_time) > CREATE_TIME_SLACK:
            return None  # the PID now names another process
        return proc
    except psutil.NoSuchProcess:
        return None


def _group_to_signal(pid: int, forbidden_groups: set[int]) -> int | None:
    """The holder's process group, when the holder leads it (its workers die with it) and it is not ours."""
    try:
        pgid = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
    return pgid if pgid == pid and pgid not in forbidden_groups else None


def free_gpus(inv: Inventory, needed: Iterable[int], busy_mib: float, *, yes: bool,
              confirm: Callable[[str], bool] | None, timeout: float, release_timeout: float,
              write: Callable[[str], None], nvml: Nvml | None = None, ignore_pids: Iterable[int] = (),
              uid: int | None = None, poll: float = 0.2) -> list[int]:
    """Terminate what holds the needed GPUs (SIGTERM to whole groups, SIGKILL after `timeout`), wait
    until NVML shows the memory released, re-check, and return the PIDs stopped. Raises GpusBusy,
    touching nothing, when a holder is not ours to stop or nobody confirmed."""
    from gpuops.server import procs

    needed = list(needed)
    busy = busy_gpus(inv, needed, busy_mib, ignore_pids)
    if not busy:
        return []
    mine = own_pids()
    plan = kill_plan(busy, ignore_pids, own_pids=mine, uid=os.geteuid() if uid is None else uid, busy_mib=busy_mib)
    which = ", ".join(str(g.index) for g in busy)
    if plan.refusals:
        raise GpusBusy(f"cannot free GPU {which}: nothing was terminated", details=plan.refusals + busy_details(busy),
                       hint="stop those processes yourself (or as their owner / root), or choose other GPUs with "
                            "CUDA_VISIBLE_DEVICES in AGENTS.local.md")
    write(f"{len(busy)} of {len(needed)} needed GPUs busy (GPU {which}); these processes hold them:")
    for p in plan.holders:
        write(f"  {p.describe()}")
    if not yes:
        if confirm is None:
            raise GpusBusy(f"GPU {which} busy; not terminating {len(plan.holders)} process(es) without confirmation",
                           hint="re-run with --yes to terminate them (no terminal to ask on)")
        if not confirm(f"Terminate these {len(plan.holders)} process(es) and their process groups?"):
            raise GpusBusy(f"GPU {which} busy; not confirmed, nothing was terminated", hint=BUSY_HINT)

    forbidden = set()
    for pid in mine:
        try:
            forbidden.add(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            continue
    targets = [proc for proc in (_still_same(p) for p in plan.holders) if proc is not None]
    groups = {g for g in (_group_to_signal(t.pid, forbidden) for t in targets) if g is not None}
    report = procs.stop_processes(targets, pgids=groups, timeout=timeout,
                                  recollect=lambda: [m for g in groups for m in procs.group_members(g)])
    forced = f", {len(report.killed)} needed SIGKILL" if report.killed else ""
    write(f"stopped {len(report.stopped)} process(es) in {report.elapsed:.1f} s{forced}")
    if report.survivors:
        raise GpusBusy(f"{len(report.survivors)} process(es) survived SIGKILL on GPU {which}",
                       details=[f"pid {v.pid}: {v.command}" for v in report.survivors],
                       hint="a process stuck in the driver (state D) can take a while; check `inv gpus` again")
    stopped = [v.pid for v in report.stopped]
    t0 = time.monotonic()
    write("waiting for NVML to show the memory released...")
    after = _wait(stopped, release_timeout, nvml, poll,
                  until=lambda inv2: not busy_gpus(inv2, needed, busy_mib, ignore_pids))
    write(f"GPU memory released after {time.monotonic() - t0:.1f} s")
    if not after.unavailable:
        check_gpus_free(after, needed, busy_mib, ignore_pids)
    return stopped


def wait_released(pids: Iterable[int], timeout: float, nvml: Nvml | None = None, poll: float = 0.2) -> Inventory:
    """Wait until no GPU lists any of `pids` (NVML lags the exit by seconds); return that inventory.
    On timeout raise GpusBusy naming what still holds memory.

    >>> wait_released([41234, 41240], timeout=30).gpus[0].memory_used_mib
    3.0
    """
    return _wait(list(pids), timeout, nvml, poll)


def report_release(name: str, pids: Iterable[int], timeout: float, write: Callable[[str], None],
                   nvml: Nvml | None = None, poll: float = 0.2) -> None:
    """After a server's processes are gone: wait until NVML lists none of them and say what that freed.
    Raises GpusBusy naming what still holds memory; says nothing without a GPU.

    >>> report_release("server", [41234, 41240], timeout=30, write=print)
    waiting for the GPUs to release the memory of 2 process(es)...
    GPU memory released (40000 MiB)
    """
    pids = list(pids)
    inv = inventory(nvml)
    if inv.unavailable:
        return
    held = [p for g in inv.gpus for p in g.processes if p.pid in set(pids)]
    if not held:
        write(f"no GPU memory was held by '{name}' (NVML lists none of its {len(pids)} process(es))")
        return
    write(f"waiting for the GPUs to release the memory of {len(held)} process(es)...")
    wait_released(pids, timeout, nvml, poll)
    figures = [p.used_mib for p in held]
    # per-process memory is n/a on MIG and WDDM: a sum of the known ones would understate it
    freed = "n/a" if any(m is None for m in figures) else f"{sum(figures):.0f} MiB"
    write(f"GPU memory released ({freed})")


def _wait(pids: list[int], timeout: float, nvml: Nvml | None, poll: float,
          until: Callable[[Inventory], bool] | None = None) -> Inventory:
    pids_set = set(pids)
    nv = nvml if nvml is not None else open_nvml()
    deadline = time.monotonic() + timeout
    try:
        with nv:  # one session for the whole wait; each inventory() nests in it
            while True:
                inv = inventory(nv)
                if inv.unavailable:
                    return inv
                listed = any(p.pid in pids_set for g in inv.gpus for p in g.processes)
                if not listed and (until is None or until(inv)):
                    return inv
                if time.monotonic() >= deadline:
                    raise _still_held(inv, pids_set, timeout)
                time.sleep(poll)
    except NvmlUnavailable as err:
        return Inventory([], err.reason, None)


def _still_held(inv: Inventory, pids: set[int], timeout: float) -> GpusBusy:
    details = []
    for g in inv.gpus:
        mine = [p for p in g.processes if p.pid in pids]
        others = [p for p in g.processes if p.pid not in pids]
        if not mine and not others:
            continue
        details.append(f"{g.label()}: {_fmt_mib(g.memory_used_mib)} MiB in use")
        for p in mine:
            if p.zombie_of is not None:
                state = f"exited, but the driver still lists it (a zombie: parent pid {p.zombie_of} has not reaped it)"
            elif p.visible:
                state = f"still running: {p.cmdline or p.name}"
            else:
                state = "exited, but the driver still lists it"
            details.append(f"  pid {p.pid} ({_fmt_mib(p.used_mib)} MiB) {state}")
        details += [f"  also: {p.describe()}" for p in others]
    return GpusBusy(
        f"GPU memory still held {timeout:g} s after stopping",
        details=details,
        hint="a surviving engine worker? stop it (`kill PID`, or `inv start-server --kill-gpu-procs`); if every "
             "listed process has exited, the driver may still be tearing down: check `inv gpus` in a minute",
    )


def banner_lines(inv: Inventory, needed: Iterable[int]) -> list[str]:
    """The GPU lines of the start-up banner.

    >>> banner_lines(inv, [0])
    ['GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB (72100 MiB in use)', 'uses GPU 0 of 2']
    """
    if inv.unavailable:
        return [f"no NVIDIA GPU visible: {inv.unavailable}"]
    wanted = list(needed)
    shown = [g for g in inv.gpus if g.index in set(wanted)] or inv.gpus
    lines = []
    for g in shown:
        if g.problem:
            lines.append(f"GPU {g.index}: cannot be read ({g.problem})")
            continue
        mig = " [MIG]" if g.mig else ""
        lines.append(f"GPU {g.index}: {g.name}{mig}, {_fmt_mib(g.memory_total_mib)} MiB "
                     f"({_fmt_mib(g.memory_used_mib)} MiB in use)")
    if wanted and len(shown) < len(inv.gpus):
        lines.append(f"uses GPU {','.join(str(i) for i in wanted)} of {len(inv.gpus)}")
    return lines
