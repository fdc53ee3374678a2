"""Start, stop and inspect servers: preflight, detached launch, watch, state record, clean stop.

    >>> started = start_server(recipe, run_dir, write=print)      # blocks until ready or failed
    >>> started.record.pid, started.record.url, started.outcome.state
    (41234, 'http://127.0.0.1:8000', 'ready')
    >>> stop_server(run_dir, "server").summary()
    "stopped server 'server': 3 processes in 0.41 s; port 8000 is free"
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from filelock import Timeout

from gpuops.errors import GpuopsError, Interrupted, PortInUse, StartupFailed, UsageError
from gpuops.rundir import RunDir
from gpuops.server import engines, procs, state
from gpuops.server.logs import create_log, shown
from gpuops.server.recipes import ServerRecipe, mask_secrets
from gpuops.server.state import TAG_VAR, StateRecord, command_for
from gpuops.server.watch import HealthProbe, Outcome, wait_until_ready

Write = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    host: str  # where the server binds
    port: int | None
    url: str | None  # where gpuops talks to it (0.0.0.0 -> 127.0.0.1)


def endpoint_of(recipe: ServerRecipe, engine: engines.Engine) -> Endpoint:
    """Host, port and URL from the command's flags, else the engine's defaults."""
    host = recipe.option("--host", "--listen") or "127.0.0.1"
    raw = recipe.option("--port", "-p") if engine.name != "comfyui" else recipe.option("--port")
    if raw is None:
        port = engine.default_port
    elif raw.isdigit() and 0 < int(raw) < 65536:
        port = int(raw)
    else:
        from gpuops.errors import RecipeError

        raise RecipeError(f"--port {raw!r} is not a port number", path=recipe.path, line=recipe.line,
                          hint="use a number between 1 and 65535")
    talk = "127.0.0.1" if host in ("0.0.0.0", "", "::", "localhost") else host
    if ":" in talk:
        talk = f"[{talk}]"
    return Endpoint(host, port, f"http://{talk}:{port}")


# ---------------------------------------------------------------- preflight


_CD = re.compile(r"(?:^|&&|;|\n)\s*cd\s+(\S+)")
_SOURCE = re.compile(r"(?:^|&&|;|\n)\s*(?:source|\.)\s+(\S+)")


def _expand(word: str, env: dict[str, str]) -> str:
    word = word.strip("'\"")
    for name, value in env.items():
        word = word.replace("${" + name + "}", value).replace("$" + name, value)
    return os.path.expanduser(os.path.expandvars(word))


def check_paths(recipe: ServerRecipe, cwd: Path) -> None:
    """The working directory, `cd` targets, activated virtualenvs and the program must exist."""
    env = recipe.env
    base = Path(_expand(recipe.cwd, env)) if recipe.cwd else cwd
    if not base.is_dir():
        raise StartupFailed(f"working directory {base} does not exist",
                            hint=f"fix the `cd` in {recipe.path}:{recipe.line}, or create the directory")
    if recipe.shell:
        cur = base
        for m in re.finditer(rf"{_CD.pattern}|{_SOURCE.pattern}", recipe.script):
            if m.group(1):
                target = cur / _expand(m.group(1), env)
                if "$" not in m.group(1) and not target.is_dir():
                    raise StartupFailed(
                        f"`cd {m.group(1)}` in {recipe.path}:{recipe.line}: directory {target} does not exist",
                        hint="is the install directory somewhere else on this machine? fix the path in AGENTS.local.md")
                cur = target
            elif m.group(2):
                target = cur / _expand(m.group(2), env)
                if "$" not in m.group(2) and not target.exists():
                    hint = ("create the virtual environment (e.g. `python -m venv .venv && .venv/bin/pip install ...`)"
                            if "activate" in m.group(2) else "fix the path in AGENTS.local.md")
                    raise StartupFailed(
                        f"`source {m.group(2)}` in {recipe.path}:{recipe.line}: {target} does not exist", hint=hint)
        return
    program = recipe.argv[0]
    path_var = child_environment(recipe, "preflight").get("PATH", "")
    if "/" in program:
        exe = base / os.path.expanduser(program)
        if not exe.exists():
            venv = next((p for p in exe.parents if (p / "pyvenv.cfg").exists() or p.name in (".venv", "venv")), None)
            hint = (f"the virtual environment {venv} is missing or incomplete: create it and install the server"
                    if venv else "build or install it, or fix the path in AGENTS.local.md")
            raise StartupFailed(f"program {program} not found (looked at {exe})", hint=hint)
        if not os.access(exe, os.X_OK):
            raise StartupFailed(f"program {exe} is not executable", hint=f"chmod +x {exe}")
    elif shutil.which(program, path=path_var) is None:
        raise StartupFailed(f"program '{program}' is not on PATH",
                            hint="install it, activate its virtualenv in AGENTS.local.md "
                                 "(`source .venv/bin/activate && ...`), or give its full path")


def check_port(ep: Endpoint) -> None:
    if ep.port is None:
        return
    try:
        if not procs.port_in_use(ep.port, ep.host):
            return
    except procs.AddressNotHere:
        raise UsageError(f"cannot listen on {ep.host}:{ep.port}: {ep.host} is not an address of this machine",
                         hint="use --host 127.0.0.1 (this machine only) or 0.0.0.0 (every interface) "
                              "in AGENTS.local.md") from None
    owners = procs.port_owners(ep.port)
    raise PortInUse(
        f"port {ep.port} is already in use by {len(owners) or 'an unknown number of'} process(es) "
        "that are not this server",
        details=[o.describe() for o in owners],
        hint=(f"stop it (`inv stop-server --port {ep.port}` for an old gpuops server, or `kill PID`), "
              "or change --port in AGENTS.local.md"),
    )


# ---------------------------------------------------------------- launch


def log_header(recipe: ServerRecipe, cwd: Path, ep: Endpoint) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    lines = [
        f"# gpuops server '{recipe.name}' started {stamp}",
        f"# host: {socket.gethostname()}  cwd: {cwd}",
        f"# url: {ep.url}",
        f"# recipe: {recipe.path}:{recipe.line}",
    ]
    lines += [f"#   {line}" for line in recipe.display(mask=True).splitlines()]
    return "\n".join(lines) + "\n" + OUTPUT_MARK


OUTPUT_MARK = "# ---- server output ----\n"


def output_offset(log_path: str | Path) -> int:
    """Where the server's own output starts in a gpuops log (after the header), 0 if unknown."""
    try:
        with open(log_path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return 0
    at = head.find(OUTPUT_MARK.encode())
    return at + len(OUTPUT_MARK) if at >= 0 else 0


def launch_banner(recipe: ServerRecipe, ep: Endpoint) -> list[str]:
    """What the terminal shows before the server runs: when, where, and the command (secrets masked)."""
    where = f"{ep.host}:{ep.port}" if ep.port else ep.host
    lines = [f"starting '{recipe.name}' at {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, "
             f"listening on {where}" + (f", {ep.url}" if ep.url else "")]
    return lines + [f"  {line}" for line in recipe.display(mask=True).splitlines()]


def child_environment(recipe: ServerRecipe, tag: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours, plus the recipe's variables, plus the gpuops tag.

    When gpuops itself runs from a virtualenv that is not activated (`.venv/bin/inv`), that
    virtualenv's bin/ goes first on PATH, as if it were activated, so `python -m ...` in
    AGENTS.local.md means the same Python that runs gpuops.
    """
    env = dict(os.environ if base is None else base)
    if sys.prefix != sys.base_prefix:
        venv_bin = str(Path(sys.prefix) / "bin")
        path = env.get("PATH", "")
        if venv_bin not in path.split(os.pathsep):
            env["PATH"] = venv_bin + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")  # so Python servers' lines reach the log as they happen
    env.update(recipe.env)
    env[TAG_VAR] = tag
    return env


def launch(recipe: ServerRecipe, log_path: Path, cwd: Path, tag: str) -> subprocess.Popen:
    """Start the command in its own session: it outlives `inv`, Ctrl-C and a closed terminal."""
    env = child_environment(recipe, tag)
    argv = ["bash", "-c", recipe.script] if recipe.shell else [os.path.expanduser(a) if a.startswith("~") else a
                                                                 for a in recipe.argv]
    with open(log_path, "ab", buffering=0) as log:
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            raise StartupFailed(f"could not run {argv[0]}: {err.strerror or err}",
                                hint=f"check the command in {recipe.path}:{recipe.line}") from None


def _exit_code_of(pid: int, create_time: float) -> Callable[[], int | None]:
    """For a server another gpuops process started: gone means exited (code unknown: -1)."""
    return lambda: None if procs.matches(pid, create_time) else -1


# ---------------------------------------------------------------- start


@dataclass
class Started:
    record: StateRecord
    outcome: Outcome | None  # None when an already running server was reused
    already_running: bool = False
    log_path: Path | None = None


def _healthy(record: StateRecord) -> bool:
    if not record.url:
        return True
    probe = HealthProbe(record.url, engines.ENGINES.get(record.engine, engines.ENGINES["generic"]), timeout=2.0)
    try:
        return probe()
    finally:
        probe.close()


def start_server(
    recipe: ServerRecipe,
    run_dir: RunDir,
    *,
    write: Write = print,
    stream: Write | None = None,
    cwd: Path | None = None,
    restart: bool = False,
    engine_name: str | None = None,
    hang_timeout: float = 60.0,
    start_timeout: float = 1800.0,
    stop_timeout: float = 10.0,
    keep_on_failure: bool = False,
    gpu_check: Callable[[ServerRecipe, list[int]], list[int]] | None = None,
    lock_timeout: float | None = None,
) -> Started:
    """Preflight, launch detached, watch until ready. Raises StartupFailed/PortInUse/GpusBusy.

    `stream` receives the server's log lines while it starts (default: same as `write`).
    `gpu_check(recipe, replaced_pids)` runs the GPU preflight (raises GpusBusy) and returns the GPU
    indices used; `replaced_pids` are the processes of a server just stopped by `restart`, whose memory
    NVML keeps listing for a few seconds after they exit.
    """
    stream = stream or write
    cwd = Path(cwd or os.getcwd())
    engine = engines.detect(recipe.argv, override=engine_name)
    ep = endpoint_of(recipe, engine)
    # The lock covers deciding and launching, not the watch: a stop-server must get through while a
    # start is being watched, and a second start in the meantime finds the record and watches too.
    try:
        with _start_lock(run_dir, recipe.name, write, lock_timeout if lock_timeout is not None else 300.0):
            claim = _claim(recipe, run_dir, cwd, ep, engine, write=write, restart=restart,
                           stop_timeout=stop_timeout, gpu_check=gpu_check)
        if claim.reused is not None:
            return claim.reused
        outcome = wait_until_ready(claim.record.log_path, claim.engine, claim.record.url, exit_code=claim.exit_code,
                                   write=stream, offset=claim.offset, hang_timeout=hang_timeout,
                                   start_timeout=start_timeout)
    except KeyboardInterrupt:
        raise _interrupted_start(run_dir, recipe.name) from None
    return _finish(claim.record, outcome, run_dir, stop_timeout, keep_on_failure)


def _interrupted_start(run_dir: RunDir, name: str) -> BaseException:
    """Ctrl-C during a start: if a server of this name is left starting, say so and how to go on."""
    rec = state.load(run_dir, name)
    if rec is None or rec.ready_at or not procs.matches(rec.pid, rec.create_time):
        return KeyboardInterrupt()
    return Interrupted(f"stopped watching; '{rec.name}' is still starting (pid {rec.pid}, log {shown(rec.log_path)})",
                       hint=f"`{command_for('start-server', name)}` watches it again, "
                            f"`{command_for('stop-server', name)}` stops it")


@dataclass
class _Claim:
    """What a start settled under the lock: a server to reuse, or one to watch (launched or reattached)."""

    reused: Started | None = None
    record: StateRecord | None = None
    engine: engines.Engine | None = None
    exit_code: Callable[[], int | None] | None = None
    offset: int = 0


def _claim(recipe: ServerRecipe, run_dir: RunDir, cwd: Path, ep: Endpoint, engine: engines.Engine, *,
           write: Write, restart: bool, stop_timeout: float, gpu_check) -> _Claim:
    """Under the lock: reuse the running server, reattach to one still starting, or preflight and launch."""
    replaced: list[int] = []
    existing = state.load(run_dir, recipe.name)
    if existing and procs.matches(existing.pid, existing.create_time):
        if restart:
            write(f"restarting: stopping '{recipe.name}' (pid {existing.pid}) first")
            _mark_stopped(run_dir, existing)
            report = stop_record(existing, timeout=stop_timeout)
            write(report.summary())
            replaced = [v.pid for v in report.report.stopped] if report.report else []
        elif (existing.ready_at or (existing.url and existing.health_path)) and _healthy(existing):
            if not existing.ready_at:  # the gpuops that watched its start was interrupted
                existing.ready_at = time.time()
                state.save(run_dir, existing)
            return _Claim(reused=Started(existing, None, already_running=True, log_path=Path(existing.log_path)))
        elif existing.ready_at:
            raise GpuopsError(
                f"'{recipe.name}' is running (pid {existing.pid}) but does not answer its health check "
                f"({existing.url}{existing.health_path or '/'})",
                hint=f"`inv logs` shows what it is doing; `{command_for('start-server', recipe.name, '--restart')}` "
                     "replaces it")
        else:
            write(f"'{recipe.name}' is already starting (pid {existing.pid}); watching it")
            return _Claim(record=existing, engine=engines.ENGINES.get(existing.engine, engine),
                          exit_code=_exit_code_of(existing.pid, existing.create_time),
                          offset=output_offset(existing.log_path))
    check_paths(recipe, cwd)
    check_port(ep)
    gpus = gpu_check(recipe, replaced) if gpu_check else []
    for line in launch_banner(recipe, ep):
        write(line)
    record, proc, header_len = _launch_recorded(recipe, run_dir, cwd, ep, engine, gpus)
    write(f"started '{recipe.name}': pid {proc.pid}, log {shown(record.log_path)}")
    return _Claim(record=record, engine=engine, exit_code=proc.poll, offset=header_len)


def _mark_stopped(run_dir: RunDir, record: StateRecord) -> None:
    """Before the first signal: a watcher or follower that sees the server exit knows it was asked to."""
    record.stopped_at = time.time()
    state.save(run_dir, record)


@contextlib.contextmanager
def _start_lock(run_dir: RunDir, name: str, write: Write, timeout: float):
    """The per-server lock, saying so when another gpuops holds it; a clear error if it never frees."""
    lock = state.lock(run_dir, name, timeout=timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another gpuops is starting or stopping this server
        write(f"another gpuops process is starting or stopping '{name}'; waiting for it...")
        try:
            lock.acquire()
        except Timeout:
            raise GpuopsError(f"gave up after {timeout:.0f} s waiting for another gpuops to start or stop "
                              f"'{name}'", hint=f"see `inv status`; the lock is {lock.lock_file}") from None
    try:
        yield
    finally:
        lock.release()


def _launch_recorded(recipe: ServerRecipe, run_dir: RunDir, cwd: Path, ep: Endpoint, engine: engines.Engine,
                     gpus: list[int]) -> tuple[StateRecord, subprocess.Popen, int]:
    """Create the log, launch, save the state record. Returns (record, process, header length)."""
    log_path = create_log(run_dir.logs, recipe.name)
    header = log_header(recipe, recipe_cwd(recipe, cwd), ep)
    log_path.write_text(header)
    tag = f"{recipe.name}:{uuid.uuid4().hex[:12]}"
    proc = launch(recipe, log_path, recipe_cwd(recipe, cwd), tag)
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # it died already; the watch reports why
        create_time = 0.0
    record = StateRecord(
        name=recipe.name, pid=proc.pid, create_time=create_time, pgid=proc.pid, tag=tag,
        host=ep.host, port=ep.port, url=ep.url, log_path=str(log_path.resolve()),  # found from any folder
        command=mask_secrets(recipe.script, recipe.env), cwd=str(recipe_cwd(recipe, cwd)),
        engine=engine.name, health_path=engine.health_path, gpus=list(gpus),
    )
    state.save(run_dir, record)
    return record, proc, len(header.encode())


def recipe_cwd(recipe: ServerRecipe, cwd: Path) -> Path:
    return Path(_expand(recipe.cwd, recipe.env)) if recipe.cwd else cwd


def _finish(record: StateRecord, outcome: Outcome, run_dir: RunDir, stop_timeout: float,
            keep_on_failure: bool) -> Started:
    with _start_lock(run_dir, record.name, lambda line: None, 60.0):
        latest = state.load(run_dir, record.name)
        ours = latest is not None and latest.pid == record.pid and latest.create_time == record.create_time
        if ours:
            record = latest  # a stop-server meanwhile has marked it stopped
            if outcome.state == "ready":
                record.ready_at = time.time()
                state.save(run_dir, record)  # never over the record of a server that replaced this one
    if outcome.state == "ready":
        return Started(record, outcome, log_path=Path(record.log_path))
    raise startup_error(record, outcome, stop_timeout, keep_on_failure, run_dir)


def startup_error(record: StateRecord, outcome: Outcome, stop_timeout: float, keep: bool,
                  run_dir: RunDir | None = None) -> StartupFailed:
    """Explain a failed start; stop a hung or timed-out server unless asked to keep it."""
    log = shown(record.log_path)
    cause = outcome.diagnosis
    details = []
    if cause:
        details.append(f"root cause: {cause.line}")
    details += ["last log lines:"] + [f"  {line}" for line in outcome.tail[-15:]]
    if outcome.state == "exited":
        if record.stopped_at:
            return StartupFailed(f"server '{record.name}' was stopped (stop-server) before it was ready",
                                 hint=f"full log: {log}")
        code = "unknown" if outcome.exit_code == -1 else outcome.exit_code
        what = f"server '{record.name}' exited during start-up (exit code {code}) after {outcome.elapsed:.1f} s"
        if cause:
            what += f": {cause.kind}"
        # its workers (a vLLM engine core, TP ranks) can outlive it and keep the port or the GPUs
        left = procs.server_tree(record.pid, record.create_time, record.pgid, record.tag)
        if left:
            report = procs.stop_processes(left, timeout=stop_timeout)
            what += f"; stopped {len(report.stopped)} leftover process(es) of it"
            details += [f"survived SIGKILL: pid {v.pid}: {v.command}" for v in report.survivors]
        hint = (cause.hint if cause and cause.hint else "read the log") + f"; full log: {log}"
        return StartupFailed(what, details=details, hint=hint)
    if outcome.state == "hung":
        what = (f"server '{record.name}' looks hung: no log output for {outcome.quiet:.0f} s and not ready "
                f"after {outcome.elapsed:.0f} s")
        raise_it = "if it loads silently for long, raise --hang-timeout"
    else:
        what = f"server '{record.name}' was not ready within the start-up limit ({outcome.elapsed:.0f} s)"
        raise_it = "if it needs longer (a download, a big model), raise --start-timeout"
    if keep:
        hint = (f"it is still running (pid {record.pid}): inspect it (`py-spy dump --pid {record.pid}`), "
                f"then `{command_for('stop-server', record.name)}`; full log: {log}")
    else:
        if run_dir is not None:
            _mark_stopped(run_dir, record)  # `inv status` says stopped, not exited
        stopped = stop_record(record, timeout=stop_timeout)
        what += f"; stopped it ({len(stopped.report.stopped) if stopped.report else 0} process(es))"
        hint = f"full log: {log}; {raise_it}; use --keep-on-failure to leave it running for inspection"
    return StartupFailed(what, details=details, hint=hint)


# ---------------------------------------------------------------- stop


@dataclass
class Stopped:
    name: str
    report: procs.StopReport | None
    port: int | None = None
    port_free: bool = True
    log_path: str | None = None
    port_owners: list[procs.PortOwner] = field(default_factory=list)

    def summary(self) -> str:
        if self.report is None or not self.report.stopped:
            return f"'{self.name}' is not running; nothing to stop"
        r = self.report
        text = f"stopped '{self.name}': {len(r.stopped)} process(es) in {r.elapsed:.2f} s"
        if r.killed:
            text += f" ({len(r.killed)} ignored SIGTERM and were killed)"
        if self.port is not None:
            text += f"; port {self.port} is {'free' if self.port_free else 'STILL IN USE'}"
        if self.log_path:
            text += f"; log kept: {shown(self.log_path)}"
        return "\n".join([text] + [f"  pid {v.pid}: {v.command}" for v in r.stopped])


def stop_record(record: StateRecord, *, timeout: float = 10.0) -> Stopped:
    """Stop every process of this server (group, descendants, tagged) — never anything else."""

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
    stopped = Stopped(record.name, report, record.port, log_path=record.log_path)
    if record.port is not None:
        stopped.port_free = not _wait_port_free(record.port, record.host)
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


def stop_server(run_dir: RunDir, name: str, *, timeout: float = 10.0, write: Write = lambda line: None) -> Stopped:
    """Idempotent: a server that is not running is a message, not an error."""
    with _start_lock(run_dir, name, write, timeout + 300):  # a start holds it through a --kill-gpu-procs prompt
        record = state.load(run_dir, name)
        if record is None:
            return Stopped(name, None)
        if procs.matches(record.pid, record.create_time):
            _mark_stopped(run_dir, record)
        return stop_record(record, timeout=timeout)


def stop_servers(run_dir: RunDir, names: list[str], *, timeout: float = 10.0, write: Write = print,
                 after_stop: Callable[[Stopped], None] = lambda stopped: None) -> None:
    """Stop each server, then check (`after_stop`, e.g. the GPU release) and verify its port is free.
    Every server is tried, whatever happens to one; the problems are raised together at the end."""
    problems: list[tuple[str, GpuopsError]] = []
    for name in names:
        try:
            stopped = stop_server(run_dir, name, timeout=timeout, write=write)
            write(stopped.summary())
            if stopped.report and stopped.report.stopped:
                after_stop(stopped)
        except GpuopsError as err:
            problems.append((name, err))
            continue
        if not stopped.port_free:
            problems.append((name, GpuopsError(f"port {stopped.port} is still in use after stopping '{name}'",
                                               details=[o.describe() for o in stopped.port_owners],
                                               hint=f"`inv stop-server --port {stopped.port}` stops whatever holds it")))
    if problems:
        raise GpuopsError.combine([(f"'{name}'", err) for name, err in problems],
                                  what="stopping", note="each server was still tried")


def known_server(run_dir: RunDir, name: str, recipe_names: list[str]) -> str:
    """`name` when gpuops has a record or a recipe of it; else a UsageError naming the known ones."""
    recorded = [r.name for r in state.all_records(run_dir)]
    if name in recorded or name in recipe_names:
        return name
    known = ", ".join(dict.fromkeys(recipe_names + recorded)) or "none"
    raise UsageError(f"no server named '{name}': no recipe in AGENTS.local.md and no record in {run_dir.state}",
                     hint=f"known servers: {known}")


def only_running_server(run_dir: RunDir, recipe_error: GpuopsError, *, write: Write = print) -> str:
    """With AGENTS.local.md missing or broken, the one running server gpuops has a record of;
    otherwise the recipe error (with several running, naming them)."""
    live = [r.name for r in state.all_records(run_dir) if procs.matches(r.pid, r.create_time)]
    if len(live) > 1:
        raise UsageError(f"{recipe_error.message}; {len(live)} servers are running",
                         hint=f"name one: `inv stop-server --server NAME` ({', '.join(live)}), or --all")
    if not live:
        raise recipe_error
    write(f"note: {recipe_error.message}; stopping the running server '{live[0]}'")
    return live[0]


def stop_port(port: int, *, timeout: float = 10.0, is_root: bool | None = None) -> Stopped:
    """Stop every process listening on `port`, with their process groups (orphans of earlier runs)."""
    is_root = os.geteuid() == 0 if is_root is None else is_root
    me = psutil.Process()
    owners = procs.port_owners(port)
    if any(o.pid is None for o in owners):
        raise UsageError(f"port {port} is held by a process of another user that gpuops may not inspect",
                         hint="run as root or stop it as its owner")
    targets: dict[int, psutil.Process] = {}
    pgids: set[int] = set()
    my_pgid = os.getpgid(0)
    for o in owners:
        try:
            p = psutil.Process(o.pid)
        except psutil.NoSuchProcess:
            continue
        if p.pid == me.pid or p.pid in {a.pid for a in me.parents()}:
            continue
        if not is_root and p.uids().real != os.getuid():
            raise UsageError(f"port {port} is held by pid {p.pid} of user {o.user}; gpuops stops only your own "
                             "processes", hint="ask its owner, or run as root")
        targets[p.pid] = p
        pgid = os.getpgid(p.pid)
        if pgid not in (my_pgid, 1) and pgid == p.pid:  # its own group: take the whole tree with it
            pgids.add(pgid)
            for m in procs.group_members(pgid):
                targets.setdefault(m.pid, m)
        tag = _tag_of(p)
        if tag:
            for t in procs.tagged(tag):
                targets.setdefault(t.pid, t)
    if not targets:
        return Stopped(f"port {port}", None, port)
    report = procs.stop_processes(list(targets.values()), pgids=pgids, timeout=timeout)
    stopped = Stopped(f"port {port}", report, port)
    stopped.port_free = not _wait_port_free(port, "0.0.0.0")
    return stopped


def _tag_of(p: psutil.Process) -> str | None:
    try:
        return p.environ().get(TAG_VAR)
    except (psutil.AccessDenied, psutil.NoSuchProcess, OSError):
        return None


# ---------------------------------------------------------------- status


@dataclass
class ServerStatus:
    name: str
    state: str  # "ready" | "starting" | "unresponsive" | "exited" (by itself) | "stopped" (by stop-server)
    pid: int
    port: int | None
    url: str | None
    uptime: float | None
    log_path: str
    engine: str
    command: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def status(run_dir: RunDir) -> list[ServerStatus]:
    out = []
    for r in state.all_records(run_dir):
        alive = procs.matches(r.pid, r.create_time)
        if not alive:
            st = "stopped" if r.stopped_at else "exited"
        elif not r.ready_at:  # its watcher may have been interrupted: ask the server itself
            st = "ready" if r.url and r.health_path and _healthy(r) else "starting"
        else:
            st = "ready" if _healthy(r) else "unresponsive"
        out.append(ServerStatus(r.name, st, r.pid, r.port, r.url, r.uptime if alive else None, r.log_path,
                                r.engine, r.command))
    return out


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def follow_server(record: StateRecord, write: Write, poll: float = 0.1, run_dir: RunDir | None = None) -> int | None:
    """`tail -f` the server's log until Ctrl-C or `inv stop-server` (returns None); a crash raises."""
    from gpuops.server.logs import follow

    gone = []

    def exited() -> bool:
        if not procs.matches(record.pid, record.create_time):
            gone.append(True)
        return bool(gone)

    try:  # the message is inside: Ctrl-C can land the moment it is printed
        write(f"following {shown(record.log_path)} (Ctrl-C stops following; the server keeps running)")
        follow(record.log_path, write, should_stop=exited, poll=poll)
    except KeyboardInterrupt:
        write(f"stopped following; '{record.name}' is still running (pid {record.pid}): "
              f"`{command_for('stop-server', record.name)}` stops it")
        return None
    latest = state.load(run_dir, record.name) if run_dir is not None else None
    if latest is not None and latest.pid == record.pid and latest.stopped_at:
        write(f"'{record.name}' was stopped (stop-server); stopped following")
        return None
    raise StartupFailed(f"server '{record.name}' (pid {record.pid}) exited while being followed",
                        hint=f"read the end of its log: inv logs --name {Path(record.log_path).name}")
