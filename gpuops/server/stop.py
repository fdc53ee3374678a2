"""The stop-server use case: which servers, their whole process trees, then the port and GPUs verified.

    names = choose_targets(RunDir("do_not_commit"), recipe_names=["server", "vision"])  # the which-server rule
    result = stop_servers(RunDir("do_not_commit"), names, timeout=10, gpu_release_timeout=30)
    result.servers[0].summary()
    "stopped 'server': 3 process(es) in 0.41 s; port 8000 is free; log kept: do_not_commit/server_logs/..."
    result.error()                  # None, or every problem in one GpuopsError (the first one's exit code)
    stop_port(8000, yes=False, confirm=ask).servers[0].summary()   # gpuops' tagged orphans at once; others asked
    'port 8000: stopped 1 process(es) in 0.12 s; port 8000 is free\n  stopped pid 4242: python -m vllm ...'

Stopping never signals a process that is not the server: the record's PID must still be the process
started at the recorded time, and group members count only with the leader or the server's tag.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from gpuops.errors import GpuopsError, PortInUse, ServerNotRunning, UsageError
from gpuops.rundir import RunDir
from gpuops.server import procs, state
from gpuops.server.logs import shown
from gpuops.server.state import TAG_VAR, StateRecord

Write = Callable[[str], None]


@dataclass
class GpuRelease:
    """What NVML said after a server's processes were gone."""

    held: int  # how many of its processes NVML listed (0: it held no GPU memory)
    freed_mib: float | None  # memory they held, once released (None: n/a per process, e.g. MIG)

    def as_dict(self) -> dict[str, Any]:
        return {"held_processes": self.held, "freed_mib": self.freed_mib}


@dataclass
class ServerStop:
    """One server (or, with --port, one port) stopped: what ran, what was signalled, what is left."""

    name: str | None  # None: everything on `port` was stopped (stop-server --port)
    report: procs.StopReport | None  # None: nothing was running
    port: int | None = None
    port_free: bool = True
    log_path: str | None = None
    port_owners: list[procs.PortOwner] = field(default_factory=list)
    gpu: GpuRelease | None = None  # None: no GPU visible, or nothing was stopped
    problem: GpuopsError | None = None
    left_alone: list[PortHolder] = field(default_factory=list)  # --port: holders gpuops did not stop, and why

    @property
    def running(self) -> bool:
        """Whether anything was running (and so was stopped)."""
        return bool(self.report and self.report.stopped)

    def summary(self) -> str:
        r = self.report
        if self.name is None:
            n = len(r.stopped) if r else 0
            text = (f"port {self.port}: stopped {n} process(es)" + (f" in {r.elapsed:.2f} s" if n else "")
                    + f"; {self._port_text()}")
            return "\n".join([text] + [f"  stopped pid {v.pid}: {v.command}" for v in (r.stopped if r else [])])
        if not self.running:
            text = f"'{self.name}' is not running; nothing to stop"
            return text + (f"; {self._port_text()}" if not self.port_free else "")
        text = f"stopped '{self.name}': {len(r.stopped)} process(es) in {r.elapsed:.2f} s"
        if r.killed:
            text += f" ({len(r.killed)} ignored SIGTERM and were killed)"
        if self.port is not None:
            text += f"; {self._port_text()}"
        if self.log_path:
            text += f"; log kept: {shown(self.log_path)}"
        return "\n".join([text] + [f"  pid {v.pid}: {v.command}" for v in r.stopped])

    def _port_text(self) -> str:
        if self.port_free:
            return f"port {self.port} is free"
        if self.name is None or not self.port_owners:
            return f"port {self.port} is STILL IN USE"
        # a server that died and a stranger that took its port since: say so, and leave it alone
        held = ", ".join(o.describe() for o in self.port_owners)
        return f"port {self.port} is now held by {held}, not this server: left alone"

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        killed = {v.pid for v in r.killed} if r else set()
        return {
            "name": self.name, "was_running": self.running,
            "processes": [{"pid": v.pid, "command": v.command, "signal": "SIGKILL" if v.pid in killed else "SIGTERM"}
                          for v in (r.stopped if r else [])],
            "elapsed": round(r.elapsed, 3) if r else None,
            "port": self.port, "port_free": self.port_free,
            "port_owners": [{"pid": o.pid, "user": o.user, "command": o.command} for o in self.port_owners],
            "log_path": self.log_path,
            "left_alone": [h.as_dict() for h in self.left_alone],
            "gpu": self.gpu.as_dict() if self.gpu is not None else None,
            "problem": None if self.problem is None else {"type": type(self.problem).__name__,
                                                          "message": self.problem.render(),
                                                          "exit_code": self.problem.exit_code},
        }


@dataclass
class StopResult:
    """Everything one stop-server did: a ServerStop per server tried (each is tried, whatever happens to one)."""

    servers: list[ServerStop]
    by_port: int | None = None  # stop-server --port N

    def error(self) -> GpuopsError | None:
        problems = [(f"'{s.name}'", s.problem) for s in self.servers if s.problem is not None]
        if not problems:
            return None
        return GpuopsError.combine(problems, what="stopping", note="each server was still tried")

    def as_dict(self) -> dict[str, Any]:
        return {"by_port": self.by_port, "servers": [s.as_dict() for s in self.servers]}


# ---------------------------------------------------------------- which servers


def choose_targets(run_dir: RunDir, *, name: str | None = None, all: bool = False,  # noqa: A002
                   recipe_names: list[str] = (), recipe_error: GpuopsError | None = None,
                   write: Write = lambda line: None) -> list[str]:
    """Which servers a stop-server means: --all: every one on record (maybe none); --server NAME (or a,b):
    those (known by a recipe or a record, else UsageError); else the which-server rule (state.choose_server: the only
    running one; else the first recipe's if it runs; else UsageError listing the running ones). With
    nothing running, the first recipe's name (its stop says "nothing to stop"). `recipe_error`: the
    AGENTS.local.md could not be read; a running server is still stopped, otherwise that error."""
    if all:
        return [r.name for r in state.all_records(run_dir)]  # none: nothing to stop
    if name:
        names = [n.strip() for n in name.split(",") if n.strip()]  # --server a,b
        if not names:
            raise UsageError("--server names no server", hint="e.g. --server model or --server model,app")
        return [known_server(run_dir, n, list(recipe_names)) for n in dict.fromkeys(names)]
    first = recipe_names[0] if recipe_names else None
    try:
        chosen = state.choose_server(run_dir, None, default_name=first)
    except ServerNotRunning:
        if recipe_error is not None:
            raise recipe_error from None
        return [first or "server"]
    except UsageError as err:  # several running, none of them the first recipe's
        if recipe_error is not None:
            err.message = f"{recipe_error.message}; {err.message}"
        err.hint = f"{err.hint}, or --all"
        raise
    if recipe_error is not None:
        write(f"note: {recipe_error.message}; stopping the running server '{chosen.name}'")
    return [chosen.name]


def running_names(run_dir: RunDir) -> list[str]:
    """The names of the servers on record whose process still runs."""
    return [r.name for r in state.all_records(run_dir, on_corrupt=lambda err: None)
            if procs.matches(r.pid, r.create_time)]


def known_server(run_dir: RunDir, name: str, recipe_names: list[str]) -> str:
    """`name` when gpuops has a record or a recipe of it; else a UsageError naming the known ones."""
    recorded = [r.name for r in state.all_records(run_dir)]
    if name in recorded or name in recipe_names:
        return name
    known = ", ".join(dict.fromkeys(recipe_names + recorded)) or "none"
    raise UsageError(f"no server named '{name}': no recipe in AGENTS.local.md and no record in {run_dir.state}",
                     hint=f"known servers: {known}")


# ---------------------------------------------------------------- stopping


def stop_record(record: StateRecord, *, timeout: float = 10.0) -> ServerStop:
    """Stop every process of this server (group, descendants, tagged) — never anything else.
    Raises GpuopsError when a process survives SIGKILL."""

    def tree():
        return procs.server_tree(record.pid, record.create_time, record.pgid, record.tag)

    targets = tree()
    leader_ok = procs.matches(record.pid, record.create_time)
    report = procs.stop_processes(targets, pgids=[record.pgid] if leader_ok else [], timeout=timeout,
                                  recollect=tree)
    if report.survivors:
        raise GpuopsError(
            f"could not stop '{record.name}': {len(report.survivors)} process(es) survived SIGKILL",
            details=[f"pid {v.pid}: {v.command}" for v in report.survivors],
            hint="they may be stuck in the kernel (D state, e.g. a hung GPU driver call); check `ps -o stat`",
        )
    stopped = ServerStop(record.name, report, record.port, log_path=record.log_path)
    if record.port is not None:
        # nothing stopped: nothing to wait for (a stranger that took the port since is only named)
        stopped.port_free = not _wait_port_free(record.port, record.host, 2.0 if report.stopped else 0.0)
        if not stopped.port_free:
            stopped.port_owners = procs.port_owners(record.port)
    return stopped


def _wait_port_free(port: int, host: str, timeout: float = 2.0) -> bool:
    """True if the port is STILL in use after `timeout`."""
    deadline = time.monotonic() + timeout
    while _in_use(port, host):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.01)
    return False


def _in_use(port: int, host: str) -> bool:
    try:
        return procs.port_in_use(port, host)
    except procs.AddressNotHere:  # nothing can listen there any more
        return False


def stop_server(run_dir: RunDir, name: str, *, timeout: float = 10.0, write: Write = lambda line: None) -> ServerStop:
    """Idempotent: a server that is not running is a ServerStop with nothing stopped, not an error."""
    with state.server_lock(run_dir, name, write, timeout + 300):  # a start holds it through a --kill-gpu-procs prompt
        record = state.load(run_dir, name)
        if record is None:
            return ServerStop(name, None)
        if procs.matches(record.pid, record.create_time):
            state.mark_stopped(run_dir, record)
        return stop_record(record, timeout=timeout)


def stop_servers(run_dir: RunDir, names: list[str], *, timeout: float = 10.0, gpu_release_timeout: float | None = 30.0,
                 write: Write = lambda line: None,
                 on_stopped: Callable[[ServerStop], None] = lambda stop: None) -> StopResult:
    """Stop each server, then verify its port is free and (`gpu_release_timeout` not None) wait until
    NVML lists none of its processes. Every server is tried, whatever happens to one; each one's problem
    is kept on its ServerStop (`result.error()` combines them).

    `on_stopped(stop)` is called as soon as a server's processes are gone (before the GPU wait), so
    its summary can be shown while the GPUs release; the GPU wait reports through `write`.
    """
    result = StopResult([])
    for name in names:
        try:
            stop = stop_server(run_dir, name, timeout=timeout, write=write)
        except GpuopsError as err:
            result.servers.append(ServerStop(name, None, problem=err))
            continue
        result.servers.append(stop)
        on_stopped(stop)
        if stop.running and gpu_release_timeout is not None:
            try:
                stop.gpu = release_gpus(name, [v.pid for v in stop.report.stopped], gpu_release_timeout, write=write)
            except GpuopsError as err:
                stop.problem = err
                continue
        if not stop.port_free and not stop.port_owners:  # held, but by nobody we can see: say so
            stop.problem = GpuopsError(f"port {stop.port} is still in use after stopping '{name}'",
                                       hint="`sudo ss -ltnp` shows who holds it")
    return result


def release_gpus(name: str, pids: Iterable[int], timeout: float, *, write: Write) -> GpuRelease | None:
    """After a server's processes are gone: wait until NVML lists none of them (memory is freed seconds
    after the exit). None without a GPU; GpusBusy (exit 5) naming what still holds memory."""
    from gpuops.gpu import inventory as gpus

    pids = list(pids)
    inv = gpus.inventory()
    if inv.unavailable:
        return None
    held = [p for g in inv.gpus for p in g.processes if p.pid in set(pids)]
    if not held:
        write(f"no GPU memory was held by '{name}' (NVML lists none of its {len(pids)} process(es))")
        return GpuRelease(0, 0.0)
    write(f"waiting for the GPUs to release the memory of {len(held)} process(es)...")
    gpus.wait_released(pids, timeout)
    figures = [p.used_mib for p in held]
    # per-process memory is n/a on MIG and WDDM: a sum of the known ones would understate it
    freed = None if any(m is None for m in figures) else float(sum(figures))
    write(f"GPU memory released ({'n/a' if freed is None else f'{freed:.0f} MiB'})")
    return GpuRelease(len(held), freed)


@dataclass(frozen=True)
class PortHolder:
    """A process listening on the port of `stop-server --port`, and what gpuops may do with it.

    action: "stop" (it carries gpuops' tag), "ask" (yours, not started by gpuops: a terminal's yes or
    --yes), "yes" (another user's, as root: --yes only), "refuse" (never: PID 1, gpuops or one of its
    ancestors, another user's when not root, a process gpuops may not inspect).
    """

    pid: int | None
    user: str
    command: str
    action: str
    reason: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "a process of another user that gpuops may not inspect"
        return f"pid {self.pid} ({self.user}): {self.command}"

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "command": self.command, "reason": self.reason}


def port_holders(port: int, *, uid: int, protected: set[int]) -> list[PortHolder]:
    """Who listens on `port`, each with what gpuops may do (see PortHolder), deciding nothing else."""
    out = []
    for o in procs.port_owners(port):
        if o.pid is None:
            out.append(PortHolder(None, "?", "?", "refuse", "run as root to see and stop it"))
            continue
        if o.pid in protected:
            why = "PID 1" if o.pid == 1 else "gpuops itself or one of its parent processes"
            out.append(PortHolder(o.pid, o.user, o.command, "refuse", f"{why}: never stopped"))
            continue
        try:
            p = psutil.Process(o.pid)
            owner_uid = p.uids().real
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            owner_uid = -1
        if owner_uid != uid:
            if uid != 0:
                out.append(PortHolder(o.pid, o.user, o.command, "refuse",
                                      f"belongs to user {o.user}; gpuops stops only your own processes"))
            else:
                out.append(PortHolder(o.pid, o.user, o.command, "yes",
                                      f"belongs to user {o.user}: stopped only with --yes"))
        elif _tag_of(p):
            out.append(PortHolder(o.pid, o.user, o.command, "stop", "started by gpuops"))
        else:
            out.append(PortHolder(o.pid, o.user, o.command, "ask",
                                  "not started by gpuops: stopped only when confirmed, or with --yes"))
    return out


def stop_port(port: int, *, timeout: float = 10.0, yes: bool = False, confirm: Callable[[str], bool] | None = None,
              uid: int | None = None, write: Write = lambda line: None) -> StopResult:
    """Stop what listens on `port` (orphans of earlier runs), with their process groups: processes
    carrying gpuops' tag at once; any other one is named first and stopped only when `confirm` says
    yes (None: nobody can answer) or with `yes`; another user's only with `yes` (and as root); never
    PID 1, gpuops or its ancestors. `uid`: whose processes count as ours (default: the effective uid)."""
    uid = os.geteuid() if uid is None else uid
    protected = procs.protected_pids()
    holders = port_holders(port, uid=uid, protected=protected)
    chosen: list[PortHolder] = []
    left: list[PortHolder] = []
    strangers = [h for h in holders if h.action == "ask"]
    if strangers and confirm is not None and not yes:  # what the questions are about, before the first one
        write(f"port {port} is held by {len(strangers)} process(es) gpuops did not start:")
        for h in strangers:
            write(f"  {h.describe()}")
    for h in holders:
        if h.action == "stop" or (h.action in ("ask", "yes") and yes):
            chosen.append(h)
        elif h.action == "ask" and confirm is not None:
            if confirm(f"stop pid {h.pid} ({h.user}: {h.command}), which gpuops did not start?"):
                chosen.append(h)
            else:
                left.append(PortHolder(h.pid, h.user, h.command, h.action, "not confirmed"))
        else:
            left.append(h)
    targets: dict[int, psutil.Process] = {}
    pgids: set[int] = set()
    own_groups = procs.protected_pgids(protected)
    for h in chosen:
        try:
            p = psutil.Process(h.pid)
            pgid = os.getpgid(p.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        targets[p.pid] = p
        if pgid not in own_groups and pgid == p.pid:  # its own group: take the whole tree with it
            pgids.add(pgid)
            for m in procs.group_members(pgid):
                if m.pid not in protected:
                    targets.setdefault(m.pid, m)
        tag = _tag_of(p)
        if tag:
            for t in procs.tagged(tag):
                targets.setdefault(t.pid, t)
    stopped = ServerStop(None, None, port, left_alone=left)
    if targets:
        stopped.report = procs.stop_processes(list(targets.values()), pgids=pgids, timeout=timeout)
        stopped.port_free = not _wait_port_free(port, "0.0.0.0")
    else:
        stopped.port_free = not _in_use(port, "0.0.0.0")
    if left:
        asks = any(h.action in ("ask", "yes") for h in left)
        stopped.problem = PortInUse(
            f"port {port}: left {len(left)} process(es) running that gpuops did not start",
            details=[f"{h.describe()}: {h.reason}" for h in left],
            hint=("check the port number; `--yes` stops them too" if asks
                  else "ask their owner, or change --port in AGENTS.local.md"))
    elif stopped.report and stopped.report.survivors:
        stopped.problem = GpuopsError(f"port {port}: {len(stopped.report.survivors)} process(es) survived SIGKILL",
                                      details=[f"pid {v.pid}: {v.command}" for v in stopped.report.survivors],
                                      hint="they may be stuck in the kernel (D state); check `ps -o stat`")
    return StopResult([stopped], by_port=port)


def _tag_of(p: psutil.Process) -> str | None:
    try:
        return p.environ().get(TAG_VAR)
    except (psutil.AccessDenied, psutil.NoSuchProcess, OSError):
        return None
