"""State records: what gpuops needs to find a server again safely, one JSON file per server.

    rec = load(RunDir("do_not_commit"), "server")
    rec.pid, rec.url, rec.log_path
    (41234, 'http://127.0.0.1:8000', 'do_not_commit/server_logs/server-20261122-101500.log')

A PID alone is not an identity (PIDs are reused), so a record keeps the process start time too;
`procs.matches(record)` is the check before any signal is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, ServerNotRunning, UsageError
from gpuops.rundir import RunDir, write_private

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
    share_gpus: bool = False  # started with share-gpus: its GPUs may be shared with others that share

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_at)


def _path(run_dir: RunDir, name: str) -> Path:
    return run_dir.state / f"{name}.json"


def _explains_write_errors(save_fn):
    """An OSError while saving a record becomes run_folder_error (and leaves no temporary file behind)."""

    @functools.wraps(save_fn)
    def save(run_dir: RunDir, record: StateRecord) -> Path:
        try:
            return save_fn(run_dir, record)
        except OSError as err:
            path = _path(run_dir, record.name)
            with contextlib.suppress(OSError):
                path.with_suffix(f".tmp{os.getpid()}").unlink(missing_ok=True)
            raise run_folder_error(path, err) from None

    return save


@_explains_write_errors
def save(run_dir: RunDir, record: StateRecord) -> Path:
    """Write atomically: readers never see half a record."""
    path = _path(run_dir, record.name)
    run_dir.ensure(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write_private(tmp, json.dumps(asdict(record), indent=2))  # 0600: it holds the command
    os.replace(tmp, path)
    return path


def load(run_dir: RunDir, name: str) -> StateRecord | None:
    """The record of server `name`; None when there is none; CorruptRecord when its file cannot be used
    (not JSON, the wrong shape, a folder), GpuopsError when it cannot be read."""
    path = _path(run_dir, name)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no record, or no run folder that could hold one
        return None
    except IsADirectoryError:
        raise CorruptRecord(path, "it is a folder, not a file") from None
    except OSError as err:
        raise GpuopsError(f"cannot read the state record {_shown(path)}: {err.strerror or err}",
                          hint=f"check its owner and permissions (`ls -l {_shown(path)}`)") from None
    try:
        return record_from(raw, name)
    except ValueError as err:
        raise CorruptRecord(path, str(err)) from None


def all_records(run_dir: RunDir, on_corrupt: Callable[[CorruptRecord], None] | None = None) -> list[StateRecord]:
    """Every record, by name. A corrupt one raises CorruptRecord, or goes to `on_corrupt` and is skipped."""
    if not run_dir.state.is_dir():
        return []
    records = []
    for name in sorted(p.stem for p in run_dir.state.glob("*.json")):
        try:
            rec = load(run_dir, name)
        except CorruptRecord as err:
            if on_corrupt is None:
                raise
            on_corrupt(err)
            continue
        if rec is not None:
            records.append(rec)
    return records


# ---------------------------------------------------------------- unusable records and run folders


class CorruptRecord(GpuopsError):
    """A state record gpuops cannot use: `start-server` sets it aside (`set_aside`), other tasks name it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"the state record {_shown(path)} is unusable: {reason}",
            hint=f"`{command_for('start-server', path.stem)}` sets it aside (renames it), or move it away yourself; "
                 "if a server it described still runs, `inv stop-server --port PORT` stops it")
        self.path = Path(path)
        self.reason = reason


_NUMBER = (int, float)
# field -> (JSON types it may hold, whether null is allowed); fields not listed are not type-checked
_SHAPE: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "pid": ((int,), False), "create_time": (_NUMBER, False), "pgid": ((int,), False),
    "tag": ((str,), False), "host": ((str,), False), "port": ((int,), True), "url": ((str,), True),
    "log_path": ((str,), False), "command": ((str,), False), "cwd": ((str,), False), "engine": ((str,), False),
    "started_at": (_NUMBER, False), "ready_at": (_NUMBER, True), "health_path": ((str,), True),
    "gpus": ((list,), False), "stopped_at": (_NUMBER, True), "share_gpus": ((bool,), False),
}


def _kind(value: object) -> str:
    """A JSON value's kind, as a reason names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, _NUMBER):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def record_from(raw: bytes | str, name: str) -> StateRecord:
    """The record in a state file's text, or ValueError saying what is wrong with it (pure).

    >>> record_from(b"[]", "server")
    Traceback (most recent call last):
    ValueError: it holds an array, not a JSON object
    >>> record_from('{"name": "server", "pid": "abc"}', "server")
    Traceback (most recent call last):
    ValueError: fields missing: create_time, pgid, tag, host, port, url, log_path, command, cwd, engine
    """
    if not (raw.strip() if isinstance(raw, str) else raw.strip()):
        raise ValueError("it is empty")
    try:
        data = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"it is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"it holds {_kind(data)}, not a JSON object")
    fields = StateRecord.__dataclass_fields__
    required = [k for k, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"fields missing: {', '.join(missing)}")
    for key, (types, nullable) in _SHAPE.items():
        if key not in data or (data[key] is None and nullable):
            continue
        value = data[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = {(int,): "a whole number", _NUMBER: "a number"}.get(types) or _kind(types[0]())
            raise ValueError(f'"{key}" is {_clip(value)} ({_kind(value)}), not {want}')
    if data["name"] != name:
        raise ValueError(f'"name" is {_clip(data["name"])}, but the file is the record of \'{name}\'')
    if data["pid"] <= 0 or data["pgid"] < 0:  # pgid 0: no group of its own to signal
        raise ValueError(f'"pid" {data["pid"]} / "pgid" {data["pgid"]}: not a process ID')
    if data["port"] is not None and not 0 < data["port"] < 65536:
        raise ValueError(f'"port" {data["port"]} is not a port number')
    gpus = data.get("gpus", [])
    if any(isinstance(g, bool) or not isinstance(g, int) for g in gpus):
        raise ValueError(f'"gpus" is {_clip(gpus)}, not a list of GPU indices')
    return StateRecord(**{k: v for k, v in data.items() if k in fields})


def _clip(value: object, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def set_aside(err: CorruptRecord) -> Path:
    """Rename an unusable record out of the way, so that a start never stops at it; returns the new path
    (`server.json` -> `server.json.corrupt-20261122-101500`, which no task reads as a record)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        target = err.path.with_name(f"{err.path.name}.corrupt-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not os.path.lexists(target):  # the caller holds the server's lock: nobody else renames it
            break
        n += 1
    try:
        os.rename(err.path, target)
    except OSError as os_err:
        raise run_folder_error(err.path, os_err) from None
    return target


def run_folder_error(path: Path, err: OSError) -> GpuopsError:
    """What to tell the user when gpuops cannot write `path` in its run folder: which path, why, what to do.
    A folder that is a file or a name too long is set-up (exit 2); a full disk, an I/O error exit 1."""
    path = Path(path)
    where = _shown(path)
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return GpuopsError(f"cannot write {where}: no space left on its filesystem",
                           hint=f"free some space (`df -h {_shown(path.parent)}`), then run it again")
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [path, *path.parents] if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is not None:
            what = f"{where} is a file" if blocker == path else f"cannot write {where}: {_shown(blocker)} is a file"
            return UsageError(f"{what}, not a folder",
                              hint=f"gpuops keeps its run folder there: move {_shown(blocker)} away, then run it again")
    if code == errno.EISDIR or (code == errno.EEXIST and path.is_dir()):
        return UsageError(f"cannot write {where}: it is a folder",
                          hint=f"move {where} away, then run it again")
    if code == errno.ENAMETOOLONG:
        name = path.name if len(path.name) <= 60 else f"{path.name[:28]}...{path.name[-28:]}"
        return UsageError(f"cannot write {_shown(path.parent)}/{name}: the name is too long for the filesystem "
                          f"({len(path.name.encode())} bytes)",
                          hint="give the server a shorter name (the heading of its block in AGENTS.local.md), "
                               "or move the project to a shorter path")
    if code == errno.EROFS:
        return GpuopsError(f"cannot write {where}: the filesystem is read-only",
                           hint="run gpuops where it can write its run folder (do_not_commit/)")
    if code in (errno.EACCES, errno.EPERM):
        return GpuopsError(f"cannot write {where}: permission denied",
                           hint=f"check the owner and permissions of {_shown(path.parent)} (`ls -ld`)")
    return GpuopsError(f"cannot write {where}: {err.strerror or err}",
                       hint="check the disk and the run folder (do_not_commit/), then run it again")


def _shown(path: Path) -> str:
    from gpuops.server.logs import shown

    return shown(path)


def remove(run_dir: RunDir, name: str) -> None:
    _path(run_dir, name).unlink(missing_ok=True)


def lock(run_dir: RunDir, name: str, timeout: float = -1):
    """Serialise start/stop of one server across processes: `with lock(rd, "server"): ...`."""
    from filelock import FileLock  # ~50 ms to import: not on `inv status`'s path

    run_dir.ensure(run_dir.state)
    return FileLock(str(run_dir.state / f"{name}.lock"), timeout=timeout, mode=0o600)


@contextlib.contextmanager
def server_lock(run_dir: RunDir, name: str, write: Callable[[str], None], timeout: float,
                what: str | None = None, quiet_for: float = 0.0) -> Iterator[None]:
    """The per-server lock, saying so when another gpuops holds it; a clear error if it never frees.

    >>> with server_lock(RunDir("do_not_commit"), "server", print, 300):
    ...     pass    # decide and launch, or stop: one gpuops at a time per server
    """
    from filelock import Timeout

    what = what or f"starting or stopping '{name}'"
    try:  # the run folder may be unusable: a file where a folder should be, a name too long, a full disk
        held = lock(run_dir, name, timeout=timeout)
        try:
            held.acquire(timeout=quiet_for)  # a wait shorter than `quiet_for` is not worth a line
        except Timeout:  # another gpuops is starting or stopping this server
            write(f"another gpuops process is {what}; waiting for it...")
            try:
                held.acquire()
            except Timeout:
                raise GpuopsError(f"gave up after {timeout:.0f} s waiting for another gpuops {what}",
                                  hint=f"see `inv status`; the lock is {held.lock_file}") from None
    except OSError as err:
        raise run_folder_error(run_dir.state / f"{name}.lock", err) from None
    try:
        yield
    finally:
        held.release()


def mark_stopped(run_dir: RunDir, record: StateRecord) -> None:
    """Before the first signal: a watcher or follower that sees the server exit knows it was asked to.
    Best effort: a run folder that cannot take the write (a full disk) never keeps a server running."""
    record.stopped_at = time.time()
    with contextlib.suppress(GpuopsError):
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
