"""State records: what gpuops needs to find a server again safely, one JSON file per server.

    rec = load(RunDir("do_not_commit"), "server")
    rec.pid, rec.url, rec.log_path
    (41234, 'http://127.0.0.1:8000', 'do_not_commit/server_logs/server-20261122-101500.log')

A PID alone is not an identity (PIDs are reused), so a record keeps the process start time too;
`procs.matches(record)` is the check before any signal is sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, ServerNotRunning
from gpuops.rundir import RunDir

TAG_VAR = "GPUOPS_SERVER"  # set in the server's environment; children inherit it


@dataclass
class StateRecord:
    name: str  # recipe name, e.g. "server"
    pid: int
    create_time: float  # psutil create_time of pid: guards against PID reuse
    pgid: int  # the session/process group the server leads
    tag: str  # value of GPUOPS_SERVER in the server's environment
    host: str
    port: int | None
    url: str | None
    log_path: str
    command: str  # as shown to the user (secrets masked)
    cwd: str
    engine: str  # engines.Engine.name
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    health_path: str | None = None
    gpus: list[int] = field(default_factory=list)
    stopped_at: float | None = None  # set by stop-server: an exit then was asked for, not a crash

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_at)


def _path(run_dir: RunDir, name: str) -> Path:
    return run_dir.state / f"{name}.json"


def save(run_dir: RunDir, record: StateRecord) -> Path:
    """Write atomically: readers never see half a record."""
    path = _path(run_dir, record.name)
    run_dir.ensure(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    os.replace(tmp, path)
    return path


def load(run_dir: RunDir, name: str) -> StateRecord | None:
    path = _path(run_dir, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return None
    known = StateRecord.__dataclass_fields__
    return StateRecord(**{k: v for k, v in data.items() if k in known})


def all_records(run_dir: RunDir) -> list[StateRecord]:
    if not run_dir.state.is_dir():
        return []
    names = sorted(p.stem for p in run_dir.state.glob("*.json"))
    return [r for r in (load(run_dir, n) for n in names) if r is not None]


def remove(run_dir: RunDir, name: str) -> None:
    _path(run_dir, name).unlink(missing_ok=True)


def lock(run_dir: RunDir, name: str, timeout: float = -1):
    """Serialise start/stop of one server across processes: `with lock(rd, "server"): ...`."""
    from filelock import FileLock  # ~50 ms to import: not on `inv status`'s path

    run_dir.ensure(run_dir.state)
    return FileLock(str(run_dir.state / f"{name}.lock"), timeout=timeout)


@contextlib.contextmanager
def server_lock(run_dir: RunDir, name: str, write: Callable[[str], None], timeout: float) -> Iterator[None]:
    """The per-server lock, saying so when another gpuops holds it; a clear error if it never frees.

    >>> with server_lock(RunDir("do_not_commit"), "server", print, 300):
    ...     pass    # decide and launch, or stop: one gpuops at a time per server
    """
    from filelock import Timeout

    held = lock(run_dir, name, timeout=timeout)
    try:
        held.acquire(timeout=0)
    except Timeout:  # another gpuops is starting or stopping this server
        write(f"another gpuops process is starting or stopping '{name}'; waiting for it...")
        try:
            held.acquire()
        except Timeout:
            raise GpuopsError(f"gave up after {timeout:.0f} s waiting for another gpuops to start or stop "
                              f"'{name}'", hint=f"see `inv status`; the lock is {held.lock_file}") from None
    try:
        yield
    finally:
        held.release()


def mark_stopped(run_dir: RunDir, record: StateRecord) -> None:
    """Before the first signal: a watcher or follower that sees the server exit knows it was asked to."""
    record.stopped_at = time.time()
    save(run_dir, record)


def started_text(rec: StateRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.started_at))


def command_for(task: str, name: str, *flags: str) -> str:
    """What the user types to run `task` for server `name`, as the program they ran is called.

    >>> command_for("stop-server", "vllm"), command_for("start-server", "server", "--restart")
    ('inv stop-server --server vllm', 'inv start-server --restart')
    """
    program = "gpuops" if os.path.basename(sys.argv[0]) == "gpuops" else "inv"
    return " ".join([program, task, *flags, *(["--server", name] if name != "server" else [])])


def _start_command(name: str) -> str:
    return command_for("start-server", name)


def not_running_error(rec: StateRecord) -> ServerNotRunning:
    """For a server gpuops started whose process is gone: stopped on request, or exited by itself
    (a crash, kill -9, the OOM killer), then with its last log lines, which say why."""
    if rec.stopped_at:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.stopped_at))
        return ServerNotRunning(f"server '{rec.name}' is not running: it was stopped at {when} (stop-server)",
                                hint=f"start it again with `{_start_command(rec.name)}`, "
                                     "or pass --url http://HOST:PORT")
    from gpuops.server.logs import add_log_tail

    where = f" at {rec.url}" if rec.url else ""
    err = ServerNotRunning(f"server '{rec.name}' (pid {rec.pid}) has exited: gpuops started it{where} at "
                           f"{started_text(rec)}, and it is no longer running",
                           hint=f"its last log lines say why; start it again with `{_start_command(rec.name)}`")
    return add_log_tail(err, rec.log_path)


def find_running(run_dir: RunDir, name: str | None = None) -> StateRecord:
    """The record of a live server (by name, else the newest live one), or ServerNotRunning (exit 6):
    saying that the server gpuops started has exited (with its last log lines) or was stopped, when
    there is a record of it."""
    from gpuops.server import procs  # psutil-backed identity check

    records = [r for r in all_records(run_dir) if name is None or r.name == name]
    live = [r for r in records if procs.matches(r.pid, r.create_time)]
    if live:
        return max(live, key=lambda r: r.started_at)
    if records:
        raise not_running_error(max(records, key=lambda r: r.started_at))
    which = f"server '{name}'" if name else "server"
    raise ServerNotRunning(
        f"no running {which} found in {run_dir.state}",
        hint="start one with `inv start-server`, or pass --url http://HOST:PORT",
    )


def choose_server(run_dir: RunDir, name: str | None = None, *, default_name: str | None = None) -> StateRecord:
    """The one rule for "which server" when a task acts on a running server (smoke, profile, load-test,
    stop-server): `--server NAME` if given; else the only running one; else, among several, the first
    recipe's (`default_name`) if it runs; else a UsageError listing the running ones. Nothing running:
    ServerNotRunning (exit 6), naming a server that exited or was stopped when there is a record."""
    if name is not None:
        return find_running(run_dir, name)
    from gpuops.server import procs

    records = all_records(run_dir)
    live = [r for r in records if procs.matches(r.pid, r.create_time)]
    if len(live) == 1:
        return live[0]
    if live:
        chosen = [r for r in live if r.name == default_name]
        if chosen:
            return chosen[0]
        from gpuops.errors import UsageError

        names = ", ".join(sorted(r.name for r in live))
        raise UsageError(f"{len(live)} servers are running ({names}): which one?",
                         hint=f"pass --server NAME, e.g. --server {sorted(r.name for r in live)[0]}")
    return find_running(run_dir, default_name if any(r.name == default_name for r in records) else None)
