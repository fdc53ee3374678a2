"""Processes: identity that survives PID reuse, who holds a port, and stopping a whole tree.

    matches(41234, 1763806500.12)          # same pid AND same start time, not a zombie
    True
    [o.describe() for o in port_owners(8000)]
    ['pid 41234 (alice): python -m vllm.entrypoints.openai.api_server --port 8000']
    stop_processes(server_tree(41234, create_time, pgid=41234, tag="server:1f2e"), pgids=[41234]).stopped
    [Victim(pid=41234, ...), Victim(pid=41240, ...)]
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from gpuops.server.state import TAG_VAR

CREATE_TIME_SLACK = 0.05  # psutil create_time is derived from clock ticks: allow for rounding


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def matches(pid: int, create_time: float) -> bool:
    """True if `pid` is still the process that started at `create_time`, and not a zombie."""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < CREATE_TIME_SLACK and _alive(p)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def command_of(p: psutil.Process) -> str:
    """The command line as gpuops shows it: secret flags (`--api-key sk-...`) masked."""
    from gpuops.server.recipes import mask_argv  # its regexes cost ms to compile: not on status's path

    try:
        cmd = p.cmdline()
        return mask_argv(cmd) if cmd else f"[{p.name()}]"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "(command not readable)"


def user_of(p: psutil.Process) -> str:
    try:
        return p.username()
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
        return "?"


@dataclass(frozen=True)
class PortOwner:
    pid: int | None  # None: the socket belongs to a process we may not inspect
    user: str
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "a process of another user (run as root, or `sudo ss -ltnp`, to see it)"
        return f"pid {self.pid} ({self.user}): {self.command}"


def port_owners(port: int) -> list[PortOwner]:
    """Every process with a listening TCP socket on `port` (several with SO_REUSEPORT or orphans)."""
    owners: dict[int | None, PortOwner] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        conns = []
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.pid is None:
            owners.setdefault(None, PortOwner(None, "?", "?"))
            continue
        try:
            p = psutil.Process(conn.pid)
            owners[conn.pid] = PortOwner(conn.pid, user_of(p), command_of(p))
        except psutil.NoSuchProcess:
            continue
    return sorted(owners.values(), key=lambda o: (o.pid is None, o.pid or 0))


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Can a new server bind `port`? (SO_REUSEADDR as servers use it: TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "" if host in ("0.0.0.0", "::") else host
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise AddressNotHere(host) from None
            return True
    return False


class AddressNotHere(OSError):
    """No interface of this machine has that address: nothing can listen there."""


def protected_pids() -> set[int]:
    """gpuops itself, its ancestors (`inv`, the shell, a terminal: one may have inherited a server's
    tag) and PID 1: never signalled, whatever a tag or a port says."""
    me = psutil.Process()
    pids = {me.pid, 1}
    try:
        pids |= {p.pid for p in me.parents()}
    except psutil.Error:
        pass
    return pids


def protected_pgids(protected: Iterable[int] | None = None) -> set[int]:
    """The process groups of the protected processes: signalling one of them as a group would hit them."""
    groups = {0, 1}
    for pid in protected_pids() if protected is None else protected:
        try:
            groups.add(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            continue
    return groups


def listening_sockets() -> list[tuple[int, int | None]]:
    """(port, pid) of every listening TCP socket (pid None: a process we may not inspect)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return []
    return sorted({(c.laddr.port, c.pid) for c in conns if c.status == psutil.CONN_LISTEN and c.laddr},
                  key=lambda pair: (pair[0], pair[1] or 0))


def ports_of(pids: Iterable[int]) -> list[int]:
    """The TCP ports these processes listen on, lowest first."""
    mine = set(pids)
    return sorted({port for port, pid in listening_sockets() if pid in mine})


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries GPUOPS_SERVER=<tag> (found even after re-parenting);
    never gpuops itself or its ancestors (a shell started from a server inherits its tag)."""
    found = []
    protected = protected_pids()
    for p in psutil.process_iter(["pid"]):
        if p.pid in protected:
            continue
        try:
            if p.environ().get(TAG_VAR) == tag and _alive(p):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and _alive(p):
                members.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


@dataclass(frozen=True)
class Victim:
    pid: int
    command: str


@dataclass
class StopReport:
    stopped: list[Victim] = field(default_factory=list)
    killed: list[Victim] = field(default_factory=list)  # needed SIGKILL after the timeout
    survivors: list[Victim] = field(default_factory=list)  # still alive at the end (should be empty)
    elapsed: float = 0.0
    last_exit_at: float | None = None  # monotonic time the last process was seen gone


def _signal(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue


def _killpg(pgid: int | None, sig: int) -> None:
    if pgid is None or pgid <= 1:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited (and, if it is our child, been reaped); return the living."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    delay = 0.002
    while alive:
        for p in list(alive):
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    try:
                        os.waitpid(p.pid, os.WNOHANG)  # reap it if it is ours; harmless if not
                    except ChildProcessError:
                        pass
                    alive.remove(p)
                elif not p.is_running():
                    alive.remove(p)
            except psutil.NoSuchProcess:
                alive.remove(p)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return alive


def stop_processes(
    targets: list[psutil.Process],
    *,
    pgids: Iterable[int] = (),
    timeout: float = 10.0,
    recollect: Callable[[], list[psutil.Process]] = list,
) -> StopReport:
    """SIGTERM `targets` (and their process groups), wait, SIGKILL what is left, wait until reaped.

    `recollect()` is asked again after each wait for late members (e.g. workers spawned while stopping).
    gpuops itself, its ancestors and PID 1 are never signalled, and a group holding one of them is
    signalled member by member instead.
    """
    t0 = time.monotonic()
    report = StopReport()
    protected = protected_pids()
    own_groups = protected_pgids(protected)
    seen: dict[int, psutil.Process] = {}
    groups = {g for g in pgids if g and g > 1}
    pgids = [g for g in groups if g not in own_groups]

    def gather() -> list[psutil.Process]:
        for p in [*targets, *recollect(), *(m for g in groups - set(pgids) for m in group_members(g))]:
            if p.pid not in protected:
                seen.setdefault(p.pid, p)
        return [p for p in seen.values() if _alive(p)]

    report.stopped = [Victim(p.pid, command_of(p)) for p in gather()]
    for g in pgids:
        _killpg(g, signal.SIGTERM)
    _signal(gather(), signal.SIGTERM)
    gather()
    # wait on every target seen, not only the living: one that died right after SIGTERM may be an
    # unreaped child of ours (a zombie) that still needs its waitpid
    left = _wait_gone(list(seen.values()), timeout)
    if left:
        left = gather()
        report.killed = [Victim(p.pid, command_of(p)) for p in left]
        for g in pgids:
            _killpg(g, signal.SIGKILL)
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
        # anything it spawned at the last moment
        late = [p for p in gather() if p not in left]
        if late:
            _signal(late, signal.SIGKILL)
            left = _wait_gone(left + late, 5.0)
    known = {v.pid for v in report.stopped}
    report.stopped += [Victim(p.pid, command_of(p)) for p in seen.values() if p.pid not in known]
    report.survivors = [Victim(p.pid, command_of(p)) for p in left]
    report.last_exit_at = time.monotonic()
    report.elapsed = report.last_exit_at - t0
    return report


def _orphan_of(p: psutil.Process, create_time: float, tag: str | None) -> bool:
    try:
        if p.create_time() < create_time - 1:
            return False
        env = p.environ()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except (psutil.AccessDenied, OSError):
        env = {}
    return env == {} or (tag is not None and env.get(TAG_VAR) == tag)


def server_tree(pid: int, create_time: float, pgid: int | None, tag: str | None) -> list[psutil.Process]:
    """The recorded leader (if it is still the same process), its descendants, and every tagged process.

    Group members count only when the leader matches or they carry the tag: a process group ID can be
    reused once the whole group is gone, and a stranger must never be signalled.
    """
    procs: dict[int, psutil.Process] = {}
    if matches(pid, create_time):
        leader = psutil.Process(pid)
        procs[pid] = leader
        try:
            for child in leader.children(recursive=True):
                procs[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        if pgid:
            for p in group_members(pgid):
                procs.setdefault(p.pid, p)
    elif pgid and pgid > 1 and not psutil.pid_exists(pgid):
        # The leader is gone but its group lives on: vLLM's EngineCore and Worker survive the API server
        # and rename themselves, which blanks their /proc/PID/environ (no tag to read). Linux never hands
        # out a PID that is still a live group's ID, so the group is still ours; its members count when
        # they started with or after the server and carry our tag or an unreadable, empty environment.
        for p in group_members(pgid):
            if _orphan_of(p, create_time, tag):
                procs.setdefault(p.pid, p)
    if tag:
        for p in tagged(tag):
            procs.setdefault(p.pid, p)
    return [p for p in procs.values() if _alive(p)]
