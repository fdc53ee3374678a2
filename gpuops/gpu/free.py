"""Freeing GPUs: refuse when busy, decide who may be stopped, stop them, wait until NVML shows the memory free.

    check_gpus_free(inv, needed, busy_mib=300)                  # raises GpusBusy (exit 5)
    free_gpus(inv, needed, 300, yes=True, confirm=None, timeout=10, release_timeout=30, write=print)
    # -> [41234, 41240]
    report_release("server", stopped_pids, timeout=30, write=print)   # after stop-server
    # prints: GPU memory released (40000 MiB)

All or nothing: gpuops stops only processes of this machine that are the caller's own (or any, as
root), never graphics processes, never itself or its parents; a PID is checked against its start
time before any signal (PIDs are reused).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from gpuops.errors import GpusBusy
from gpuops.gpu import nvml as seam
from gpuops.gpu.inventory import CREATE_TIME_SLACK, Gpu, GpuProcess, Inventory, busy_gpus, inventory
from gpuops.gpu.nvml import Nvml, NvmlUnavailable


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

    >>> bob = GpuProcess(5120, 30000.0, "compute", "bob", "python", "python serve.py", True, True, uid=1001)
    >>> busy = [Gpu(0, "NVIDIA H100", None, 30000.0, 81559.0, 90, False, processes=[bob])]
    >>> kill_plan(busy, (), own_pids={os.getpid()}, uid=1000, busy_mib=300).refusals
    ['pid 5120 on GPU 0 belongs to user bob: gpuops terminates only your own processes unless run as root']
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

    wait_released([41234, 41240], timeout=30).gpus[0].memory_used_mib   # -> 3.0
    """
    return _wait(list(pids), timeout, nvml, poll)


def report_release(name: str, pids: Iterable[int], timeout: float, write: Callable[[str], None],
                   nvml: Nvml | None = None, poll: float = 0.2) -> None:
    """After a server's processes are gone: wait until NVML lists none of them and say what that freed.
    Raises GpusBusy naming what still holds memory; says nothing without a GPU.

    report_release("server", [41234, 41240], timeout=30, write=print)
    # prints: waiting for the GPUs to release the memory of 2 process(es)...
    #         GPU memory released (40000 MiB)
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
    nv = nvml if nvml is not None else seam.open_nvml()
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
