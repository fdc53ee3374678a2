"""The status use case: every server gpuops has a record of, what state it is in now, and what it holds.

    result = status(RunDir("do_not_commit"))
    [(s.name, s.state, s.processes, format_bytes(s.rss_bytes)) for s in result.servers]
    [('server', 'ready', 3, '11.8 GiB'), ('vision', 'stopped', 0, '-')]
    result.totals()
    {'known': 2, 'running': 1, 'ready': 1, 'starting': 0, 'unresponsive': 0, 'failed': 0, 'stopped': 1, ...}
    format_uptime(3725.0)
    '1h02m05s'

Kept light on purpose (a fleet runs `gpuops status --json` once per host): records, a psutil
identity check and, for running servers, one health GET over a plain socket, the process tree's
memory, and one NVML session for the GPU memory of all of them (none when no server runs); no HTTP
library, no launch or watch machinery.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuops.rundir import RunDir
from gpuops.server import container, procs, state
from gpuops.server.health import record_healthy

if TYPE_CHECKING:
    from gpuops.gpu.nvml import Nvml

RUNNING = ("ready", "starting", "unresponsive")


@dataclass
class ServerStatus:
    name: str
    state: str  # "ready" | "starting" | "unresponsive" | "exited" (by itself) | "stopped" (by stop-server)
    pid: int
    port: int | None
    url: str | None
    uptime: float | None  # seconds; None when it is not running
    log_path: str
    engine: str
    command: str
    gpus: list[int] = field(default_factory=list)  # the GPUs its command was given (the record's)
    processes: int = 0  # live processes in its tree (leader, descendants, its group, its tagged ones)
    rss_bytes: int | None = None  # resident memory summed over that tree; None when it is not running
    gpu_memory_mib: float | None = None  # NVML's per-process memory of the tree; None: not running, or NVML can't say
    outside_url: str | None = None  # what a user on another machine uses (container.outside_url)
    binding_note: str | None = None  # in a container, listening on loopback only: who cannot reach it

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StatusResult:
    servers: list[ServerStatus]
    logs: str  # the folder of the server logs
    gpu_memory_unavailable: str | None = None  # why no GPU memory is shown (no driver, ...); None: NVML answered
    container: str | None = None  # what says gpuops runs in a container (container.in_container)

    def totals(self) -> dict[str, Any]:
        """Counts by state, and the memory the running servers hold together."""
        count = {st: sum(1 for s in self.servers if s.state == st) for st in (*RUNNING, "exited", "stopped")}
        running = [s for s in self.servers if s.running]
        gpu = [s.gpu_memory_mib for s in running]
        return {
            "known": len(self.servers), "running": len(running),
            "ready": count["ready"], "starting": count["starting"], "unresponsive": count["unresponsive"],
            "failed": count["exited"], "stopped": count["stopped"],
            "rss_bytes": sum(s.rss_bytes or 0 for s in running),
            # null when a running server's figure is unknown: a partial sum would read as the whole
            "gpu_memory_mib": None if any(m is None for m in gpu) else sum(gpu),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "servers": [s.as_dict() for s in self.servers], "logs": self.logs,
                "gpu_memory_unavailable": self.gpu_memory_unavailable, "container": self.container}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StatusResult:
        """A status document back into a result (a remote host's, maybe of an older gpuops: missing
        fields take their defaults, unknown ones are dropped)."""
        names = {f.name for f in fields(ServerStatus)}
        servers = [ServerStatus(**{k: v for k, v in s.items() if k in names}) for s in doc.get("servers", [])]
        return cls(servers, doc.get("logs", ""), doc.get("gpu_memory_unavailable"), doc.get("container"))


def server_state(record: state.StateRecord) -> tuple[str, bool]:
    """(state, alive) of a recorded server, asking the server itself when it runs."""
    alive = procs.matches(record.pid, record.create_time)
    if not alive:
        return ("stopped" if record.stopped_at else "exited"), False
    if not record.ready_at:  # its watcher may have been interrupted: ask the server itself
        ready = bool(record.url and record.health_path) and record_healthy(record.url, record.engine)
        return ("ready" if ready else "starting"), True
    return ("ready" if record_healthy(record.url, record.engine) else "unresponsive"), True


def status(run_dir: RunDir, *, nvml: Nvml | None = None, root: Path = Path("/"),
           environ: Mapping[str, str] | None = None) -> StatusResult:
    """Each server on record, in name order, with its tree's memory. `nvml`: the NVML session to read
    GPU memory through (default: the real one, opened only when a server runs); `root` and `environ`:
    where to look for the signs of a container (container.in_container)."""
    from gpuops.server.recipes import mask_secrets  # records of older versions may hold a secret in clear

    where = container.in_container(root, environ)
    out, live = [], []
    for r in state.all_records(run_dir):
        st, alive = server_state(r)
        out.append(ServerStatus(r.name, st, r.pid, r.port, r.url, r.uptime if alive else None, r.log_path,
                                r.engine, mask_secrets(r.command), gpus=list(r.gpus)))
        if alive:
            live.append(r)
    if not live:
        return StatusResult(out, str(run_dir.logs), None, where)
    trees = server_trees(live)
    mem = gpu_memory(nvml)  # NVML costs an import and a driver session: only when a server runs
    by_name = {r.name: r for r in live}
    for s in out:
        r = by_name.get(s.name)
        if r is None:
            continue
        tree = trees[r.name]
        s.processes, s.rss_bytes = len(tree), tree_rss(tree)
        s.gpu_memory_mib = mem.of([p.pid for p in tree])
        s.outside_url = container.outside_url(r, environ)
        s.binding_note = container.binding_note(r.host, r.port, why=where) if where else None
    return StatusResult(out, str(run_dir.logs), mem.unavailable, where)


def server_trees(records: list[state.StateRecord]) -> dict[str, list]:
    """{name: its processes} for servers whose leader runs: what procs.server_tree gives for each (the
    leader, its descendants, its process group, every process carrying its tag; never gpuops or its
    ancestors by tag), from one pass over the machine's processes instead of three per server."""
    import psutil

    by_tag = {r.tag: r.name for r in records if r.tag}
    by_pgid = {r.pgid: r.name for r in records if r.pgid}
    protected = procs.protected_pids()
    found: dict[int, psutil.Process] = {}
    kids: dict[int, list[int]] = {}
    members: dict[str, set[int]] = {r.name: set() for r in records}
    for p in psutil.process_iter(["ppid", "environ"]):
        found[p.pid] = p
        kids.setdefault(p.info["ppid"], []).append(p.pid)
        try:
            group = by_pgid.get(os.getpgid(p.pid))
        except OSError:
            group = None
        if group:
            members[group].add(p.pid)
        tagged = by_tag.get((p.info["environ"] or {}).get(state.TAG_VAR))
        if tagged and p.pid not in protected:
            members[tagged].add(p.pid)
    trees = {}
    for r in records:
        seen: set[int] = set()
        todo = [r.pid]
        while todo:  # the leader and its descendants
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo += kids.get(pid, [])
        members[r.name] |= seen
        trees[r.name] = [found[pid] for pid in sorted(members[r.name]) if pid in found and _running(found[pid])]
    return trees


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree_rss(tree: list) -> int:
    """Resident memory of these processes, summed (pages they share are counted in each: an upper bound)."""
    import psutil

    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


@dataclass
class GpuMemory:
    """What NVML says about GPU memory per process, read once for all servers."""

    by_pid: dict[int, float | None] = field(default_factory=dict)  # MiB on all GPUs together; None: no figure
    hidden: bool = False  # NVML lists a process this machine cannot see (PIDs of another namespace)
    unavailable: str | None = None  # why there are no figures at all

    def of(self, pids: list[int]) -> float | None:
        """GPU memory of a server's processes; None when NVML cannot say.

        >>> GpuMemory({10: 4000.0, 11: 2000.0, 99: 9000.0}).of([10, 11, 12])
        6000.0
        >>> GpuMemory({10: None}).of([10]), GpuMemory({}, hidden=True).of([10]), GpuMemory({}).of([10])
        (None, None, 0.0)
        """
        if self.unavailable:
            return None
        mine = [self.by_pid[pid] for pid in pids if pid in self.by_pid]
        if any(m is None for m in mine):  # MIG, WDDM: NVML has no per-process figure
            return None
        if not mine and self.hidden:  # NVML reports PIDs as another namespace numbers them: ours may be there
            return None
        return float(sum(mine))


# where NVML talks to the driver (Linux; WSL2): without any of them there is nothing to ask, and
# importing pynvml to hear "library not found" would be most of a status on a CPU-only machine
DRIVER_PATHS = ("/dev/nvidiactl", "/dev/dxg", "/proc/driver/nvidia")


def gpu_memory(nvml: Nvml | None = None) -> GpuMemory:
    """NVML's per-process GPU memory, from one session: each GPU's process lists and nothing else (no
    names, no command lines). A PID counts when it is, on this machine, the process NVML means (it
    holds a GPU device file, inventory's visibility rule); one that is not marks the figures `hidden`.
    A GPU whose processes NVML will not list makes every figure unknown: a server on it would show
    less than it holds."""
    if nvml is None and not any(os.path.exists(p) for p in DRIVER_PATHS):
        return GpuMemory(unavailable="no NVIDIA driver here (no /dev/nvidiactl)")
    from gpuops.gpu import nvml as seam
    from gpuops.gpu.inventory import holds_device

    if nvml is None:
        nvml = seam.open_nvml()
    listed: dict[tuple[int, int], float | None] = {}  # (GPU, pid) -> MiB
    try:
        with nvml as nv:
            for index in range(nv.device_count()):
                handle = nv.handle(index)
                for kind in ("compute", "graphics"):
                    try:
                        entries = nv.processes(handle, kind)
                    except seam.NvmlCallFailed as err:
                        if kind == "graphics" and err.reason == "not supported":  # compute-only boards
                            continue
                        return GpuMemory(unavailable=f"GPU {index}: {err.reason}")
                    for pid, used in entries:
                        key = (index, pid)
                        if key in listed:  # both contexts in one process: NVML reports the same memory twice
                            known = [m for m in (listed[key], used) if m is not None]
                            listed[key] = max(known) if known else None
                        else:
                            listed[key] = used
    except seam.NvmlUnavailable as err:
        return GpuMemory(unavailable=err.reason)
    except seam.NvmlCallFailed as err:
        return GpuMemory(unavailable=f"NVML: {err.reason}")
    mem = GpuMemory()
    for (_, pid), used in listed.items():
        if pid <= 0 or holds_device(pid, nvml.device_prefixes) is False:
            mem.hidden = mem.hidden or not _zombie(pid)  # a zombie is one of ours NVML has not let go of yet
            continue
        before = mem.by_pid.get(pid, 0.0)
        mem.by_pid[pid] = None if before is None or used is None else before + used
    return mem


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def format_uptime(seconds: float | None) -> str:
    """'1h02m05s', '4m05s', '7s'; '-' when not running."""
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_bytes(n: float | None) -> str:
    """Binary units, one decimal from KiB on; '-' for None.

    >>> format_bytes(512), format_bytes(1288490188.8), format_bytes(40 * 2**30), format_bytes(None)
    ('512 B', '1.2 GiB', '40.0 GiB', '-')
    """
    if n is None:
        return "-"
    if n < 1024:
        return f"{n:.0f} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if round(value, 1) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def format_mib(mib: float | None) -> str:
    """NVML's MiB in the units of format_bytes: format_mib(40960.0) -> '40.0 GiB'."""
    return "-" if mib is None else format_bytes(mib * 2**20)
