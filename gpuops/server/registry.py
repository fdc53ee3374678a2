"""The host-wide registry: one lock per run folder, and the ports and GPUs its servers hold or reserve.

    with registry_lock(RunDir("do_not_commit"), print):
        check_reservations(run_dir, "vision", port=8001, gpus=[1], share_gpus=False)  # PortInUse / GpusBusy
        ...launch and save the record: from then on it reserves port 8001 and GPU 1

A server still loading its model holds neither its port (it binds once loaded) nor, for a while, any
memory NVML shows; its state record does, from the moment it is launched. So the records of live
servers are the reservations, and deciding + launching happens under one lock for the run folder:
two servers started together, or one started while another loads, cannot take the same port or GPU.

Lock order, always: a server's own lock (state.server_lock), then this one; never the other way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from gpuops.errors import GpusBusy, PortInUse
from gpuops.rundir import RunDir
from gpuops.server import state
from gpuops.server.state import StateRecord, command_for

_NAME = "registry"  # state/registry.lock; no record is ever called that: recipe names cannot collide with a lock


@contextlib.contextmanager
def registry_lock(run_dir: RunDir, write: Callable[[str], None], timeout: float = 300.0) -> Iterator[None]:
    """Hold the run folder's registry lock (deciding a port and GPUs, launching): a few hundred ms each."""
    with state.server_lock(run_dir, f".{_NAME}", write, timeout, what="launching a server", quiet_for=2.0):
        yield


def live_records(run_dir: RunDir, *, besides: str | None = None) -> list[StateRecord]:
    """The records of servers whose process still runs (starting or ready), but `besides`'s."""
    from gpuops.server import procs

    return [r for r in state.all_records(run_dir, on_corrupt=lambda err: None)
            if r.name != besides and procs.matches(r.pid, r.create_time)]


def _phase(rec: StateRecord) -> str:
    return "ready" if rec.ready_at else "starting, loading its model"


def check_reservations(run_dir: RunDir, name: str, *, port: int | None, gpus: Iterable[int],
                       share_gpus: bool = False) -> None:
    """PortInUse (exit 4) when another live server of this run folder has `port`; GpusBusy (exit 5) when
    one still starting (loading, invisible to NVML) has any of `gpus` and sharing is not allowed. Once
    ready, a server's GPU memory shows in NVML and the GPU preflight decides. Call it under registry_lock."""
    wanted = set(gpus)
    for rec in live_records(run_dir, besides=name):
        if port is not None and rec.port == port:
            raise PortInUse(f"port {port} is taken by server '{rec.name}' (pid {rec.pid}, {_phase(rec)}), "
                            f"so '{name}' cannot use it",
                            details=[f"'{rec.name}': {rec.url}, log {rec.log_path}"],
                            hint=f"give '{name}' another --port in AGENTS.local.md, or stop '{rec.name}' "
                                 f"(`{command_for('stop-server', rec.name)}`)")
        both = sorted(wanted & set(rec.gpus))  # a ready server's GPU memory is NVML's to show (the preflight)
        if both and not rec.ready_at and not (share_gpus and rec.share_gpus):
            which = ", ".join(map(str, both))
            raise GpusBusy(f"GPU {which} is reserved by server '{rec.name}' (pid {rec.pid}, {_phase(rec)}), "
                           f"so '{name}' cannot use it",
                           details=[f"'{rec.name}' uses GPU {', '.join(map(str, rec.gpus))}"],
                           hint=f"give '{name}' other GPUs (CUDA_VISIBLE_DEVICES in AGENTS.local.md), stop "
                                f"'{rec.name}', or let them share: `share-gpus: yes` under both headings "
                                "(or --share-gpus / gpuops.share_gpus)")


def shared_gpu_pids(run_dir: RunDir, name: str) -> list[int]:
    """The PIDs of the other live servers' trees: their GPU memory does not make a shared GPU busy."""
    from gpuops.server import procs

    return [p.pid for r in live_records(run_dir, besides=name)
            for p in procs.server_tree(r.pid, r.create_time, r.pgid, r.tag)]
