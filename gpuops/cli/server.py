"""Server tasks: start-server, stop-server, status, logs.

    inv start-server [--restart] [--no-follow]   inv stop-server [--port N]
    inv status [--json]                          inv logs [--follow] [--lines N]
"""

from __future__ import annotations

import sys

from invoke import task

from gpuops.checks import number
from gpuops.cli.edge import edge
from gpuops.cli.project import agents_file_path, confirm, run_dir, say, server_recipe, setting, smoke_presets
from gpuops.server.logs import shown


def _gpu_preflight(c, *, kill: bool, yes: bool, stop_timeout: float):
    """The GPU step of start-server's preflight: refuse busy GPUs, or free them with --kill-gpu-procs
    (SIGKILL after `stop_timeout`, the resolved --stop-timeout)."""

    def check(recipe, replaced_pids) -> list[int]:
        import os

        from gpuops.gpu import inventory as gpus

        inv = gpus.inventory()
        if inv.unavailable:
            say(f"no NVIDIA GPU visible: {inv.unavailable} (starting without a GPU check)")
            return []
        if replaced_pids:  # a restart: NVML lists the old server's memory for seconds after it exits
            inv = gpus.wait_released(replaced_pids, float(setting(c, "gpu_release_timeout")))
        # the server inherits our environment: a CUDA_VISIBLE_DEVICES exported in the shell counts
        needed = gpus.needed_gpus({**os.environ, **recipe.env}, recipe.argv, inv)
        busy_mib = number("gpuops.gpu_busy_mib", setting(c, "gpu_busy_mib"), low_ok=True)
        if kill:
            gpus.free_gpus(inv, needed, busy_mib, yes=yes, confirm=confirm if sys.stdin.isatty() else None,
                           timeout=stop_timeout,
                           release_timeout=float(setting(c, "gpu_release_timeout")), write=say)
        else:
            gpus.check_gpus_free(inv, needed, busy_mib)
        return needed

    return check


def _gpu_banner(recipe, record) -> tuple[list[str], list[str]]:
    from gpuops.gpu import inventory as gpus

    inv = gpus.inventory()
    models = [f"{path}: {n} model file(s)" for path, n in gpus.count_model_files(recipe.argv, record.cwd)]
    return gpus.banner_lines(inv, record.gpus), models


def _smoke_plan(c, smoke_preset=None, agents_file=None):
    """start-server's smoke test, settled before the server starts: an unknown preset is exit 2, not a
    started server. Presets come from the same agents file as the server; gpuops.smoke_chat and
    gpuops.smoke_timeout apply."""
    from gpuops.probes import smoke

    return smoke.plan_smoke(smoke_presets(c, agents_file), smoke_preset, chat=bool(setting(c, "smoke_chat")),
                            timeout=setting(c, "smoke_timeout"))


@task(
    auto_shortflags=False,  # a generated -h (for --hang-timeout) would answer `inv start-server -h` with an error
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
    from gpuops.cli.banner import ready_banner
    from gpuops.server import lifecycle

    recipe = server_recipe(c, server, agents_file)
    rd = run_dir(c, agents_file)
    stop_t = number("--stop-timeout", setting(c, "stop_timeout", stop_timeout))
    waits = {"hang_timeout": number("--hang-timeout", setting(c, "hang_timeout", hang_timeout)),
             "start_timeout": number("--start-timeout", setting(c, "start_timeout", start_timeout))}
    plan = _smoke_plan(c, smoke_preset, agents_file) if smoke else None  # a bad preset fails before the start
    started = lifecycle.start_server(
        recipe, rd, write=say, cwd=recipe.path.resolve().parent,  # commands are relative to their file
        restart=restart, engine_name=engine, stop_timeout=stop_t, keep_on_failure=keep_on_failure,
        gpu_check=_gpu_preflight(c, kill=kill_gpu_procs, yes=yes, stop_timeout=stop_t), **waits,
    )
    rec = started.record
    if started.already_running:
        say(f"'{rec.name}' is already running: pid {rec.pid}, {rec.url}, up "
             f"{lifecycle.format_uptime(rec.uptime)}, log {shown(rec.log_path)}")
        say("(use --restart to stop it and start it again)")
        return
    from gpuops.probes.smoke import auto_smoke

    smoke_line, smoke_error = auto_smoke(plan, rec) if plan is not None else (None, None)
    gpu_lines, model_lines = _gpu_banner(recipe, rec)
    for line in ready_banner(rec, started.outcome, gpu_lines=gpu_lines, model_lines=model_lines,
                             smoke_line=smoke_line):
        say(line)
    if smoke_error is not None:
        raise smoke_error  # exit 7, with the server's last log lines; the server keeps running
    if follow:
        lifecycle.follow_server(rec, say, run_dir=rd)


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
    from gpuops.server import lifecycle, state

    t = number("--timeout", setting(c, "stop_timeout", timeout))
    agents_file_path(c, agents_file)  # a mistyped --agents-file must not fall back to stopping what runs
    rd = run_dir(c, agents_file)
    if port is not None:
        port = number("--port", port, whole=True, high=65535)
        stopped = lifecycle.stop_port(port, timeout=t)
        n = len(stopped.report.stopped) if stopped.report else 0
        say(f"port {port}: stopped {n} process(es)" + (f" in {stopped.report.elapsed:.2f} s" if n else "")
             + f"; port {port} is {'free' if stopped.port_free else 'STILL IN USE'}")
        return
    if all:
        names = [r.name for r in state.all_records(rd)]
    elif setting(c, "server", server):
        names = [lifecycle.known_server(rd, setting(c, "server", server), _recipe_names(c, agents_file))]
    else:
        from gpuops.errors import RecipeError

        try:
            names = [server_recipe(c, None, agents_file).name]
        except RecipeError as err:  # a broken file must not keep a running server from being stopped
            names = [lifecycle.only_running_server(rd, err, write=say)]
    lifecycle.stop_servers(rd, names or ["server"], timeout=t, write=say,
                           after_stop=lambda stopped: _verify_gpus_released(c, stopped))


def _recipe_names(c, agents_file=None) -> list[str]:
    """The server recipes' names, or none when AGENTS.local.md is missing or broken."""
    from gpuops.errors import RecipeError
    from gpuops.server.recipes import load_recipes

    try:
        return list(load_recipes(agents_file_path(c, agents_file)).servers)
    except RecipeError:
        return []


def _verify_gpus_released(c, stopped) -> None:
    """After the tree is gone: wait until NVML lists none of its PIDs (memory freed lags the exit)."""
    from gpuops.gpu import inventory as gpus

    gpus.report_release(stopped.name, [v.pid for v in stopped.report.stopped],
                        float(setting(c, "gpu_release_timeout")), write=say)


@task(help={"json": "Print machine-readable JSON instead of a table."})
@edge
def status(c, json=False):  # noqa: A002
    """Each known server: state (starting, ready, unresponsive, exited, stopped), PID, port, URL, uptime, log.

    inv status
    inv status --json | jq '.[0].url'
    """
    from gpuops.server import lifecycle

    servers = lifecycle.status(run_dir(c))
    if json:
        import json as _json

        print(_json.dumps([s.as_dict() for s in servers], indent=2))
        return
    if not servers:
        say("no servers known (start one with `inv start-server`)")
        return
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    table = Table(caption=f"logs in {shown(run_dir(c).logs)}; `inv logs --name FILE` shows one")
    for column in ("server", "state", "pid", "port", "url", "uptime", "engine", "log"):
        table.add_column(column, overflow="fold")  # a URL or log path cut short with "…" is useless
    for s in servers:
        table.add_row(s.name, s.state, str(s.pid), str(s.port or "-"), s.url or "-",
                      lifecycle.format_uptime(s.uptime), s.engine, Path(s.log_path).name)
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
def logs(c, name=None, prefix=None, lines=None, follow=False, list=False):  # noqa: A002
    """Show the last lines of the newest log (or a chosen one); list them; follow them.

    inv logs                 # last 50 lines of the newest log
    inv logs --list          # every log, newest last
    inv logs --follow --prefix locust
    """
    from pathlib import Path

    from gpuops.errors import UsageError
    from gpuops.server import logs as runlogs

    count = number("--lines", 50 if lines is None else lines, whole=True, low_ok=True)
    folder = run_dir(c).logs
    found = runlogs.list_logs(folder, prefix)
    if list:
        if not found:
            say(f"no logs in {folder}")
        for p in found:
            say(f"{p.stat().st_size:>10}  {p}")
        return
    if name:
        path = Path(name) if Path(name).exists() else folder / name
        if not path.is_file():
            raise UsageError(f"no log {name!r} (looked in {folder})", hint="`inv logs --list` shows the logs")
    elif found:
        path = found[-1]
    elif prefix:
        kinds = sorted({m["prefix"] for p in runlogs.list_logs(folder) if (m := runlogs.LOG_NAME.match(p.name))})
        raise UsageError(f"no {prefix} logs in {folder}", hint=f"logs there are of: {', '.join(kinds)}" if kinds
                         else "start a server with `inv start-server`")
    else:
        raise UsageError(f"no logs in {folder}", hint="start a server with `inv start-server`")
    say(f"==> {path} <==")
    if follow:
        try:
            runlogs.follow(path, say, from_lines=count)
        except KeyboardInterrupt:
            say("(stopped following)")
        return
    for line in runlogs.tail_lines(path, count):
        say(line)
