"""gpuops' Invoke tasks: thin shells that read flags and config, call the core, print, exit.

    inv start-server [--restart] [--no-follow]   inv stop-server [--port N]
    inv status [--json]                          inv logs [--follow] [--lines N]
    inv gpus [--json]                            inv smoke [--preset blue_sky]
    inv profile [--load]                         inv load-test [--users N] [--sweep]

Every flag falls back to `gpuops.<key>` in Invoke's config (invoke.yaml, INVOKE_GPUOPS_* env).
Each area's tasks live in its own section below; the collection picks up every task in this module.
"""

from __future__ import annotations

import sys

from invoke import Collection, task  # noqa: F401

from gpuops.config import DEFAULTS, RunDir
from gpuops.edge import edge, setting  # noqa: F401


def run_dir(c) -> RunDir:
    return RunDir(setting(c, "run_dir"))


# --- lifecycle tasks (start-server, stop-server, status, logs) ---


def _recipe(c, server=None, agents_file=None):
    from gpuops.recipes import load_recipes

    return load_recipes(setting(c, "agents_file", agents_file)).server(setting(c, "server", server))


def _out(line: str) -> None:
    print(line, flush=True)


def _confirm(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _gpu_preflight(c, *, kill: bool, yes: bool):
    """The GPU step of start-server's preflight: refuse busy GPUs, or free them with --kill-gpu-procs."""

    def check(recipe) -> list[int]:
        from gpuops import gpus

        inv = gpus.inventory()
        if inv.unavailable:
            _out(f"no NVIDIA GPU visible: {inv.unavailable} (starting without a GPU check)")
            return []
        needed = gpus.needed_gpus(recipe.env, recipe.argv, inv)
        busy_mib = float(setting(c, "gpu_busy_mib"))
        if kill:
            gpus.free_gpus(inv, needed, busy_mib, yes=yes, confirm=_confirm if sys.stdin.isatty() else None,
                           timeout=float(setting(c, "stop_timeout")),
                           release_timeout=float(setting(c, "gpu_release_timeout")), write=_out)
        else:
            gpus.check_gpus_free(inv, needed, busy_mib)
        return needed

    return check


def _gpu_banner(recipe, record) -> tuple[list[str], list[str]]:
    from gpuops import gpus

    inv = gpus.inventory()
    models = [f"{path}: {n} model file(s)" for path, n in gpus.count_model_files(recipe.argv, record.cwd)]
    return gpus.banner_lines(inv, record.gpus), models


def _auto_smoke(c, record, preset) -> str:
    from gpuops import smoke
    from gpuops.errors import GpuopsError

    prompt, max_tokens = smoke.resolve_preset(_smoke_presets(c), preset or "blue_sky", None, None)
    try:
        return smoke.run_smoke(record.url, record.engine, prompt=prompt, max_tokens=max_tokens).summary()
    except GpuopsError as err:
        return f"smoke FAILED: {err.message}"


def _smoke_presets(c) -> dict:
    """Presets from config, with those of AGENTS.local.md's `## Smoke` block on top."""
    from gpuops.errors import RecipeError
    from gpuops.recipes import load_recipes

    presets = dict(setting(c, "smoke_presets") or {})
    try:
        presets.update(load_recipes(setting(c, "agents_file")).smoke_presets)
    except RecipeError:
        pass
    return presets


@task(
    help={
        "server": "Which server recipe of AGENTS.local.md to start (default: the first one).",
        "agents-file": "Path of the file holding the commands (default: AGENTS.local.md).",
        "restart": "Stop the running server first, then start it again.",
        "follow": "Keep following the log after ready (default); --no-follow returns at once (scripts, CI).",
        "smoke": "Send one real request once ready and show the answer (default); --no-smoke skips it.",
        "smoke-preset": "Which smoke preset the automatic smoke test uses (default: blue_sky).",
        "hang-timeout": "Seconds without new log output, while not ready, before the start counts as hung (default 60).",
        "start-timeout": "Overall seconds the server may take to become ready (default 1800).",
        "stop-timeout": "Seconds between SIGTERM and SIGKILL when stopping (default 10).",
        "engine": "Treat the server as this engine (demo, vllm, sglang, llama.cpp, comfyui, mlx_lm, uvicorn, generic) "
        "instead of guessing from the command.",
        "keep-on-failure": "Leave a hung or timed-out server running for inspection instead of stopping it.",
        "kill-gpu-procs": "Terminate the processes holding the GPUs this server needs, then wait until the memory is free.",
        "yes": "Do not ask for confirmation before --kill-gpu-procs terminates processes.",
    }
)
@edge
def start_server(c, server=None, agents_file=None, restart=False, follow=True, smoke=True, smoke_preset=None,
                 hang_timeout=None, start_timeout=None, stop_timeout=None, engine=None, keep_on_failure=False,
                 kill_gpu_procs=False, yes=False):
    """Start the server from AGENTS.local.md detached, stream its log until ready, then follow it.

    inv start-server                      # the first server recipe; Ctrl-C stops following, not the server
    inv start-server --no-follow          # return once ready (exit 0), or fail (exit 3) with the cause
    inv start-server --restart --kill-gpu-procs --yes
    """
    from gpuops import lifecycle
    from gpuops.banner import ready_banner

    recipe = _recipe(c, server, agents_file)
    rd = run_dir(c)
    started = lifecycle.start_server(
        recipe, rd, write=_out,
        restart=restart, engine_name=engine,
        hang_timeout=float(setting(c, "hang_timeout", hang_timeout)),
        start_timeout=float(setting(c, "start_timeout", start_timeout)),
        stop_timeout=float(setting(c, "stop_timeout", stop_timeout)),
        keep_on_failure=keep_on_failure,
        gpu_check=_gpu_preflight(c, kill=kill_gpu_procs, yes=yes),
    )
    rec = started.record
    if started.already_running:
        _out(f"'{rec.name}' is already running: pid {rec.pid}, {rec.url}, up "
             f"{lifecycle.format_uptime(rec.uptime)}, log {rec.log_path}")
        _out("(use --restart to stop it and start it again)")
        return
    smoke_line = _auto_smoke(c, rec, smoke_preset) if smoke else None
    gpu_lines, model_lines = _gpu_banner(recipe, rec)
    for line in ready_banner(rec, started.outcome, gpu_lines=gpu_lines, model_lines=model_lines,
                             smoke_line=smoke_line):
        _out(line)
    if smoke_line and smoke_line.startswith("smoke FAILED"):
        from invoke.exceptions import Exit

        raise Exit(code=7)
    if follow:
        lifecycle.follow_server(rec, _out)


@task(
    help={
        "server": "Which server to stop (default: the first recipe of AGENTS.local.md).",
        "port": "Instead, stop every process listening on this port, with its process group (orphans of earlier runs).",
        "timeout": "Seconds between SIGTERM and SIGKILL (default 10).",
        "all": "Stop every server gpuops has a record of.",
        "agents-file": "Path of the file holding the commands (default: AGENTS.local.md).",
    }
)
@edge
def stop_server(c, server=None, port=None, timeout=None, all=False, agents_file=None):  # noqa: A002
    """Stop the server's whole process tree (SIGTERM, then SIGKILL), verify the port and GPUs are free.

    inv stop-server                 # idempotent: nothing running is a message and exit 0
    inv stop-server --port 8000     # every process listening on 8000, with its group
    """
    from gpuops import lifecycle, state

    t = float(setting(c, "stop_timeout", timeout))
    rd = run_dir(c)
    if port is not None:
        stopped = lifecycle.stop_port(int(port), timeout=t)
        n = len(stopped.report.stopped) if stopped.report else 0
        _out(f"port {port}: stopped {n} process(es)" + (f" in {stopped.report.elapsed:.2f} s" if n else "")
             + f"; port {port} is {'free' if stopped.port_free else 'STILL IN USE'}")
        return
    if all:
        names = [r.name for r in state.all_records(rd)]
    else:
        names = [setting(c, "server", server) or _recipe(c, None, agents_file).name]
    for name in names or ["server"]:
        stopped = lifecycle.stop_server(rd, name, timeout=t)
        _out(stopped.summary())
        if stopped.report and stopped.report.stopped:
            _verify_gpus_released(c, stopped)
        if not stopped.port_free:
            from gpuops.errors import GpuopsError

            raise GpuopsError(f"port {stopped.port} is still in use after stopping '{name}'",
                              details=[o.describe() for o in stopped.port_owners],
                              hint=f"`inv stop-server --port {stopped.port}` stops whatever holds it")


def _verify_gpus_released(c, stopped) -> None:
    """After the tree is gone: wait until NVML lists none of its PIDs (memory freed lags the exit)."""
    from gpuops import gpus

    pids = [v.pid for v in stopped.report.stopped]
    inv = gpus.inventory()
    if inv.unavailable:
        return
    held = [p for g in inv.gpus for p in g.processes if p.pid in pids]
    if not held:
        return
    _out(f"waiting for the GPUs to release the memory of {len(held)} process(es)...")
    gpus.wait_released(pids, float(setting(c, "gpu_release_timeout")))
    freed = sum(p.used_mib or 0 for p in held)
    _out(f"GPU memory released ({freed:.0f} MiB)")


@task(help={"json": "Print machine-readable JSON instead of a table."})
@edge
def status(c, json=False):  # noqa: A002
    """Each known server: state (starting, ready, unresponsive, exited), PID, port, URL, uptime, log.

    inv status
    inv status --json | jq '.[0].url'
    """
    from gpuops import lifecycle

    servers = lifecycle.status(run_dir(c))
    if json:
        import json as _json

        print(_json.dumps([s.as_dict() for s in servers], indent=2))
        return
    if not servers:
        _out("no servers known (start one with `inv start-server`)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("server", "state", "pid", "port", "url", "uptime", "engine", "log")
    for s in servers:
        table.add_row(s.name, s.state, str(s.pid), str(s.port or "-"), s.url or "-",
                      lifecycle.format_uptime(s.uptime), s.engine, s.log_path)
    Console().print(table)


@task(
    help={
        "name": "A log file name or path (default: the newest log).",
        "prefix": "Only logs of this kind: a server name (e.g. server) or locust.",
        "lines": "How many of the last lines to show (default 50).",
        "follow": "Keep printing new lines as they are written (Ctrl-C to stop).",
        "list": "List the logs, newest last, instead of showing one.",
    }
)
@edge
def logs(c, name=None, prefix=None, lines=50, follow=False, list=False):  # noqa: A002
    """Show the last lines of the newest log (or a chosen one); list them; follow them.

    inv logs                 # last 50 lines of the newest log
    inv logs --list          # every log, newest last
    inv logs --follow --prefix locust
    """
    from pathlib import Path

    from gpuops import logs as runlogs
    from gpuops.errors import UsageError

    folder = run_dir(c).logs
    found = runlogs.list_logs(folder, prefix)
    if list:
        if not found:
            _out(f"no logs in {folder}")
        for p in found:
            _out(f"{p.stat().st_size:>10}  {p}")
        return
    if name:
        path = Path(name) if Path(name).exists() else folder / name
        if not path.is_file():
            raise UsageError(f"no log {name!r} (looked in {folder})", hint="`inv logs --list` shows the logs")
    elif found:
        path = found[-1]
    else:
        raise UsageError(f"no logs in {folder}", hint="start a server with `inv start-server`")
    _out(f"==> {path} <==")
    if follow:
        try:
            runlogs.follow(path, _out, from_lines=int(lines))
        except KeyboardInterrupt:
            _out("(stopped following)")
        return
    for line in runlogs.tail_lines(path, int(lines)):
        _out(line)


# --- gpu tasks (gpus) ---


# --- smoke and profile tasks ---


# --- load-test tasks ---


ns = Collection.from_module(sys.modules[__name__])
ns.configure({"gpuops": DEFAULTS})
