"""The start-server use case: preflight, launch detached, watch until ready, smoke it, gather the banner.

    result = start_server(recipe, RunDir("do_not_commit"), write=print, gpu=GpuPolicy())  # blocks
    result.record.pid, result.record.url, result.outcome.state, result.smoke_line
    (41234, 'http://127.0.0.1:8000', 'ready', 'HTTP 200, 64 tokens, TTFT 0.03 s, total 0.21 s: "The sky ..."')
    follow_server(result.record, print, run_dir=RunDir("do_not_commit"))   # tail -f until Ctrl-C

Raises StartupFailed (crashed, hung, timed out: exit 3), PortInUse (4), GpusBusy (5), RecipeError (2).
A failed smoke test is no raise: the result carries it (`smoke_error`), so the caller can show the
banner first and then fail with exit 7 while the server keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuops.errors import GpuopsError, Interrupted, StartupFailed
from gpuops.rundir import RunDir
from gpuops.server import engines, procs, registry, state
from gpuops.server.health import record_healthy
from gpuops.server.launch import (
    Endpoint,
    endpoint_of,
    launch_banner,
    launch_recorded,
    output_offset,
    pause_point,
)
from gpuops.server.logs import shown
from gpuops.server.preflight import GpuPolicy, check_gpus, check_paths, check_port
from gpuops.server.recipes import ServerRecipe
from gpuops.server.state import StateRecord, command_for
from gpuops.server.stop import stop_record
from gpuops.server.watch import Outcome, wait_until_ready

Write = Callable[[str], None]
Smoke = Callable[[StateRecord], "tuple[str | None, GpuopsError | None]"]


@dataclass
class StartResult:
    """What a start settled: the server's record, how it became ready, and the banner's facts."""

    record: StateRecord
    outcome: Outcome | None  # None when an already running server was reused
    already_running: bool = False
    gpu_lines: list[str] = field(default_factory=list)  # the GPUs it uses, name and memory
    model_lines: list[str] = field(default_factory=list)  # model files found in its command's paths
    smoke_line: str | None = None  # the smoke test's one-line summary (or FAILED: ...)
    smoke_error: GpuopsError | None = None  # a failed smoke test: raise it after showing the banner

    @property
    def gpus(self) -> list[int]:
        return list(self.record.gpus)

    def as_dict(self) -> dict[str, Any]:
        """The JSON fields of start-server's document (docs/json.md)."""
        r, o = self.record, self.outcome
        return {
            "server": r.name, "already_running": self.already_running, "state": "ready",
            "pid": r.pid, "pgid": r.pgid, "host": r.host, "port": r.port, "url": r.url, "engine": r.engine,
            "log_path": r.log_path, "command": r.command, "cwd": r.cwd, "started_at": r.started_at,
            "ready_at": r.ready_at, "ready_in": round(o.elapsed, 3) if o is not None else None,
            "ready_line": o.ready_line if o is not None else None, "gpus": self.gpus,
            "gpu_lines": list(self.gpu_lines), "model_files": list(self.model_lines),
            "smoke": None if self.smoke_line is None else {"ok": self.smoke_error is None, "line": self.smoke_line},
        }


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
    gpu: GpuPolicy | None = None,
    confirm: Callable[[str], bool] | None = None,
    smoke: Smoke | None = None,
    lock_timeout: float | None = None,
    meanwhile: Callable[[], None] | None = None,
    share_gpus: bool = False,
) -> StartResult:
    """Preflight, launch detached, watch until ready; then smoke it (`smoke(record)`) and gather the
    banner's GPU and model-file lines. An already running, healthy server is reused as it is.

    `write` gets gpuops' progress lines, `stream` the server's log while it starts (default: `write`).
    `cwd` is where the command runs (default: the folder of its AGENTS.local.md). `gpu`: the GPU
    preflight's settings (None: no GPU check); `confirm` asks before --kill-gpu-procs kills (None:
    nobody can answer). `smoke(record)` returns (summary line, error or None). `meanwhile()` runs
    once the server is launched, while it loads (e.g. importing what the banner needs): work there
    does not delay the report of ready, work before the launch delays the server. `share_gpus` (or
    the recipe's `share-gpus: yes`): it may use GPUs other servers of this run folder use.

    Deciding and launching happen under the run folder's registry lock (server/registry.py): a port
    or GPU another of its servers holds or reserves (still loading) is refused before the launch.
    """
    stream = stream or write
    cwd = Path(cwd) if cwd is not None else recipe.path.resolve().parent  # commands are relative to their file
    engine = engines.detect(recipe.argv, override=engine_name)
    ep = endpoint_of(recipe, engine)

    share_gpus = share_gpus or recipe.share_gpus

    def gpu_check(replaced: list[int]) -> list[int]:
        if gpu is None:
            return []
        shared = registry.shared_gpu_pids(run_dir, recipe.name) if share_gpus else ()
        return check_gpus(recipe, replaced, gpu, write=write, confirm=confirm, shared_pids=shared)

    # The lock covers deciding and launching, not the watch: a stop-server must get through while a
    # start is being watched, and a second start in the meantime finds the record and watches too.
    try:
        with state.server_lock(run_dir, recipe.name, write, lock_timeout if lock_timeout is not None else 300.0):
            claim = _claim(recipe, run_dir, cwd, ep, engine, write=write, restart=restart,
                           stop_timeout=stop_timeout, gpu_check=gpu_check, share_gpus=share_gpus,
                           lock_timeout=lock_timeout if lock_timeout is not None else 300.0)
        if claim.reused is not None:
            return StartResult(claim.reused, None, already_running=True)
        rec = claim.record
        models = model_lines(recipe, rec)  # while the model loads: a slow disk costs nothing here
        if meanwhile is not None:
            meanwhile()
        watch_began = time.time()
        outcome = wait_until_ready(rec.log_path, claim.engine, rec.url, exit_code=claim.exit_code,
                                   write=stream, say=write, offset=claim.offset, hang_timeout=hang_timeout,
                                   start_timeout=start_timeout, tree=_tree_of(rec),
                                   port_given=claim.port_given)
        if claim.reattached:  # "ready in" counts from the server's start, not from this watch
            outcome.elapsed = max(outcome.elapsed, watch_began + outcome.elapsed - rec.started_at)
    except KeyboardInterrupt:
        raise _interrupted_start(run_dir, recipe.name) from None
    pause_point("ready")
    record = _finish(claim.record, outcome, run_dir, stop_timeout, keep_on_failure)
    result = StartResult(record, outcome)
    if smoke is not None:
        result.smoke_line, result.smoke_error = smoke(record)
    result.gpu_lines, result.model_lines = banner_facts(recipe, record, models=models)
    return result


def banner_facts(recipe: ServerRecipe, record: StateRecord, *,
                 models: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The ready banner's GPU lines (name, memory) and model-file lines (what its paths hold)."""
    from gpuops.gpu import inventory as gpus

    inv = gpus.inventory()
    return gpus.banner_lines(inv, record.gpus), models if models is not None else model_lines(recipe, record)


def model_lines(recipe: ServerRecipe, record: StateRecord) -> list[str]:
    """What the model paths of the command hold: "/models/llama: 4 model file(s)"."""
    from gpuops.gpu.model_files import count_model_files

    return [f"{path}: {n} model file(s)" for path, n in count_model_files(recipe.argv, record.cwd)]


def _interrupted_start(run_dir: RunDir, name: str) -> BaseException:
    """Ctrl-C during a start: if a server of this name is left starting, say so and how to go on."""
    try:
        rec = state.load(run_dir, name)
    except GpuopsError:  # the record is unusable: nothing of ours to point at
        return KeyboardInterrupt()
    if rec is None or rec.ready_at or not procs.matches(rec.pid, rec.create_time):
        return KeyboardInterrupt()
    return Interrupted(f"stopped watching; '{rec.name}' is still starting (pid {rec.pid}, log {shown(rec.log_path)})",
                       hint=f"`{command_for('start-server', name)}` watches it again, "
                            f"`{command_for('stop-server', name)}` stops it")


@dataclass
class _Claim:
    """What a start settled under the lock: a server to reuse, or one to watch (launched or reattached)."""

    reused: StateRecord | None = None
    record: StateRecord | None = None
    engine: engines.Engine | None = None
    exit_code: Callable[[], int | None] | None = None
    offset: int = 0
    port_given: bool = True  # the port is the command's own (else learned from the ready line or the socket)
    reattached: bool = False  # another gpuops launched it: watching it from the middle of its start


def _tree_of(record: StateRecord) -> Callable[[], list[int]]:
    """The PIDs of this server's own process tree (the port must be held by one of them to be ready)."""
    return lambda: [p.pid for p in procs.server_tree(record.pid, record.create_time, record.pgid, record.tag)]


_SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh"})


def wrapped(recipe: ServerRecipe) -> bool:
    """Whether the program is a shell or a script around the server (`bash -c '...'`, `./serve.sh`)."""
    program = Path(recipe.argv[0]).name if recipe.argv else ""
    return recipe.shell or program in _SHELLS or program.endswith(".sh")


def port_given(recipe: ServerRecipe, engine: engines.Engine) -> bool:
    """Whether the command itself names its port (else the engine's default is only a guess)."""
    names = ("--port",) if engine.name == "comfyui" else ("--port", "-p")
    return recipe.option(*names) is not None


def _exit_code_of(pid: int, create_time: float) -> Callable[[], int | None]:
    """For a server another gpuops process started: gone means exited (code unknown: -1)."""
    return lambda: None if procs.matches(pid, create_time) else -1


def _claim(recipe: ServerRecipe, run_dir: RunDir, cwd: Path, ep: Endpoint, engine: engines.Engine, *,
           write: Write, restart: bool, stop_timeout: float,
           gpu_check: Callable[[list[int]], list[int]], share_gpus: bool = False,
           lock_timeout: float = 300.0) -> _Claim:
    """Under the lock: reuse the running server, reattach to one still starting, or preflight and launch
    (that under the registry lock too: no other server of the run folder can take its port or GPUs)."""
    replaced: list[int] = []
    existing = _load_or_set_aside(run_dir, recipe.name, write)
    if existing and procs.matches(existing.pid, existing.create_time):
        if restart:
            write(f"restarting: stopping '{recipe.name}' (pid {existing.pid}) first")
            state.mark_stopped(run_dir, existing)
            stopped = stop_record(existing, timeout=stop_timeout)
            write(stopped.summary())
            replaced = [v.pid for v in stopped.report.stopped] if stopped.report else []
        elif (existing.ready_at or (existing.url and existing.health_path)) and record_healthy(existing.url,
                                                                                                existing.engine):
            if not existing.ready_at:  # the gpuops that watched its start was interrupted
                existing.ready_at = time.time()
                state.save(run_dir, existing)
            return _Claim(reused=existing)
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
                          offset=output_offset(existing.log_path), port_given=port_given(recipe, engine),
                          reattached=True)
    check_paths(recipe, cwd)
    with registry.registry_lock(run_dir, write, lock_timeout):
        known_port = port_given(recipe, engine) or not wrapped(recipe)
        if known_port:
            registry.check_reservations(run_dir, recipe.name, port=ep.port, gpus=(), share_gpus=share_gpus)
            check_port(ep)
        elif ep.port is not None and procs.port_in_use(ep.port, ep.host):
            # `bash -c '... --port 9001'`, a wrapper script: the engine's default is only a guess, and a
            # stranger on it says nothing about where this server will listen; the watch learns the port
            write(f"note: port {ep.port} (the engine's default) is in use, but the command does not name its "
                  "port: gpuops learns the one the server listens on")
        gpus = gpu_check(replaced)
        registry.check_reservations(run_dir, recipe.name, port=None, gpus=gpus, share_gpus=share_gpus)
        for line in launch_banner(recipe, ep):
            write(line)
        record, proc, header_len = launch_recorded(recipe, run_dir, cwd, ep, engine, gpus, share_gpus)
    write(f"started '{recipe.name}': pid {proc.pid}, log {shown(record.log_path)}")
    return _Claim(record=record, engine=engine, exit_code=proc.poll, offset=header_len,
                  port_given=port_given(recipe, engine))


def _load_or_set_aside(run_dir: RunDir, name: str, write: Write) -> StateRecord | None:
    """The server's record; an unusable one is renamed out of the way (and said so): it never blocks a start."""
    try:
        return state.load(run_dir, name)
    except state.CorruptRecord as err:
        moved = state.set_aside(err)
        write(f"set aside the unusable state record {shown(err.path)} ({err.reason}) as {shown(moved)}")
        return None


def _finish(record: StateRecord, outcome: Outcome, run_dir: RunDir, stop_timeout: float,
            keep_on_failure: bool) -> StateRecord:
    """Save ready onto the record (only onto its own: never over a server that replaced it), or raise."""
    with state.server_lock(run_dir, record.name, lambda line: None, 60.0):
        try:
            latest = state.load(run_dir, record.name)
        except state.CorruptRecord:  # not ours any more: whatever wrote it, ready is not written over it
            latest = None
        ours = latest is not None and latest.pid == record.pid and latest.create_time == record.create_time
        if ours:
            record = latest  # a stop-server meanwhile has marked it stopped
            if outcome.state == "ready":
                record.ready_at = time.time()
                if outcome.url and outcome.url != record.url:  # the port it really listens on
                    record.url, record.port = outcome.url, outcome.port
                state.save(run_dir, record)
    if outcome.state == "ready":
        return record
    if latest is not None and not ours and latest.pid != record.pid and outcome.state == "exited":
        raise StartupFailed(f"server '{record.name}' (pid {record.pid}) was replaced before it was ready: "
                            f"{replaced_by(latest)}",
                            hint=f"`{command_for('start-server', record.name)}` watches the new one")
    raise startup_error(record, outcome, stop_timeout, keep_on_failure, run_dir)


def replaced_by(latest: StateRecord) -> str:
    """Who replaced a server: the new server's PID, user and start (a --restart from another gpuops)."""
    try:
        user = procs.user_of(procs.psutil.Process(latest.pid))
    except procs.psutil.Error:
        user = "?"
    return (f"a restart (`--restart` from another gpuops) started pid {latest.pid} (user {user}) at "
            f"{state.started_text(latest)}")


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
    if outcome.state == "not_listening":
        what = (f"server '{record.name}' printed its ready line but is not listening on any port "
                f"({outcome.elapsed:.0f} s after the start)")
        details.insert(0, f"ready line: {outcome.ready_line}")
        raise_it = "the server said it was ready but opened no socket: read the log around its ready line"
    elif outcome.state == "hung":
        what = (f"server '{record.name}' looks hung: no log output for {outcome.quiet:.0f} s and not ready "
                f"after {outcome.elapsed:.0f} s")
        raise_it = "if it loads silently for long, raise --hang-timeout"
    else:
        what = f"server '{record.name}' was not ready within the start-up limit ({outcome.elapsed:.0f} s)"
        raise_it = "if it needs longer (a download, a big model), raise --start-timeout"
    if outcome.stranger:
        details.insert(0, outcome.stranger)
    elif outcome.port_guessed and record.port is not None:
        raise_it += (f"; if it listens elsewhere than port {record.port} (its command does not say), "
                     "put --port in its command in AGENTS.local.md")
    if keep:
        hint = (f"it is still running (pid {record.pid}): inspect it (`py-spy dump --pid {record.pid}`), "
                f"then `{command_for('stop-server', record.name)}`; full log: {log}")
    else:
        if run_dir is not None:
            state.mark_stopped(run_dir, record)  # `inv status` says stopped, not exited
        stopped = stop_record(record, timeout=stop_timeout)
        what += f"; stopped it ({len(stopped.report.stopped) if stopped.report else 0} process(es))"
        hint = f"full log: {log}; {raise_it}; use --keep-on-failure to leave it running for inspection"
    return StartupFailed(what, details=details, hint=hint)


def follow_server(record: StateRecord, write: Write, poll: float = 0.1, run_dir: RunDir | None = None) -> None:
    """`tail -f` the server's log until Ctrl-C or `inv stop-server` (returns); a crash raises StartupFailed."""
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
        return
    latest = None
    if run_dir is not None:
        # a --restart holds the lock from stopping the old server until the new one is recorded
        with state.server_lock(run_dir, record.name, lambda line: None, 60.0):
            latest = state.load(run_dir, record.name)
    if latest is not None and latest.pid != record.pid and latest.started_at >= record.started_at:
        write(f"'{record.name}' (pid {record.pid}) was replaced: {replaced_by(latest)}; stopped following")
        return
    if latest is not None and latest.pid == record.pid and latest.stopped_at:
        write(f"'{record.name}' was stopped (stop-server); stopped following")
        return
    raise StartupFailed(f"server '{record.name}' (pid {record.pid}) exited while being followed",
                        hint=f"read the end of its log: inv logs --name {Path(record.log_path).name}")
