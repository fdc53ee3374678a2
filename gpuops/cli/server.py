"""Server tasks: start-server, stop-server, status, logs. Each one: flags -> settings -> use case -> renderer.

    inv start-server [--restart] [--no-follow] [--json]   inv stop-server [--server NAME | --all | --port N] [--json]
    inv status [--json]                                   inv logs [--list] [--follow] [--lines N] [--json]

The use cases live in gpuops/server/ (start.py, stop.py, status.py, logs.py) and return data; the
renderers in render_server.py turn it into text; --json prints the result as one document instead.
"""

from __future__ import annotations

import sys

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.output import Output
from gpuops.cli.project import (
    agents_file_path,
    output,
    resolved,
    run_dir,
    server_recipe,
    setting,
    smoke_presets,
)
from gpuops.settings import help_for

_JSON_START = ("Print one JSON document on stdout once the server is ready or the start failed (schema in "
               "docs/json.md); the log and progress go to stderr. Implies --no-follow.")
_JSON_LOGS = ("Print one JSON document on stdout (schema in docs/json.md): with --list the logs, else the "
              "file's path and last lines. Not with --follow.")


def _confirm(out: Output):
    """A yes/no question on the terminal (on stderr under --json), or None when nobody can answer."""
    if not sys.stdin.isatty():
        return None

    def ask(question: str) -> bool:
        print(f"{question} [y/N] ", end="", file=out.human, flush=True)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return ask


def _smoke_plan(c, smoke_preset=None, agents_file=None):
    """start-server's smoke test, settled before the server starts: an unknown preset is exit 2, not a
    started server. Presets come from the same agents file as the server; gpuops.smoke_chat and
    gpuops.smoke_timeout apply."""
    from gpuops.probes import smoke

    return smoke.plan_smoke(smoke_presets(c, agents_file), setting(c, "smoke_preset", smoke_preset),
                            chat=resolved(c, "smoke_chat"), timeout=setting(c, "smoke_timeout"))


def _import_banner_modules() -> None:
    """What the ready banner needs, imported while the server loads instead of before its launch."""
    import gpuops.cli.render_server  # noqa: F401
    import gpuops.gpu.inventory  # noqa: F401
    import gpuops.gpu.render  # noqa: F401


@task(
    auto_shortflags=False,  # a generated -h (for --hang-timeout) would answer `inv start-server -h` with an error
    help=help_for("start-server", json=_JSON_START),
)
@edge
def start_server(c, server=None, agents_file=None, restart=False, follow=True, smoke=True, smoke_preset=None,
                 hang_timeout=None, start_timeout=None, stop_timeout=None, engine=None, keep_on_failure=False,
                 kill_gpu_procs=False, yes=False, json=False):
    """Start the server from AGENTS.local.md detached, stream its log until ready, then follow it.

    inv start-server                      # the first server recipe; Ctrl-C stops following, not the server
    inv start-server --no-follow          # return once ready (exit 0), or fail (exit 3) with the cause
    inv start-server --restart --kill-gpu-procs --yes
    inv start-server --json | jq .url     # the log goes to stderr; one document on stdout
    """
    from gpuops.server.preflight import GpuPolicy
    from gpuops.server.start import follow_server
    from gpuops.server.start import start_server as start

    out = output(c, json)
    recipe = server_recipe(c, resolved(c, "server", server, "--server"), agents_file)
    rd = run_dir(c, agents_file)
    stop_t = resolved(c, "stop_timeout", stop_timeout, "--stop-timeout")
    gpu = GpuPolicy(kill=resolved(c, "kill_gpu_procs", kill_gpu_procs, "--kill-gpu-procs", False),
                    yes=resolved(c, "yes", yes, "--yes", False),
                    busy_mib=resolved(c, "gpu_busy_mib"),
                    release_timeout=resolved(c, "gpu_release_timeout"),
                    stop_timeout=stop_t)
    want_smoke = resolved(c, "smoke", smoke, "--no-smoke", True)
    plan = _smoke_plan(c, smoke_preset, agents_file) if want_smoke else None  # a bad preset fails before the start
    smoke_step = None
    if plan is not None:
        from gpuops.probes.smoke import auto_smoke

        def smoke_step(record):
            return auto_smoke(plan, record)

    result = start(
        recipe, rd, write=out.say, restart=resolved(c, "restart", restart, "--restart", False),
        engine_name=resolved(c, "engine", engine, "--engine"),
        hang_timeout=resolved(c, "hang_timeout", hang_timeout, "--hang-timeout"),
        start_timeout=resolved(c, "start_timeout", start_timeout, "--start-timeout"),
        stop_timeout=stop_t, keep_on_failure=resolved(c, "keep_on_failure", keep_on_failure, "--keep-on-failure", False),
        gpu=gpu, confirm=_confirm(out), smoke=smoke_step, meanwhile=_import_banner_modules,
    )
    from gpuops.cli.render_server import start_lines

    for line in start_lines(result):
        out.say(line)
    if result.smoke_error is not None:
        out.fail("start-server", result.as_dict(), result.smoke_error)  # exit 7; the server keeps running
    out.result("start-server", result.as_dict())
    if resolved(c, "follow", follow, "--no-follow", True) and not out.json and not result.already_running:
        follow_server(result.record, out.say, run_dir=rd)


@task(
    auto_shortflags=False,
    help=help_for(
        "stop-server",
        server="Which server to stop (default: the only running one; else the first recipe's if it runs; "
               "else an error listing the running ones).",
    ),
)
@edge
def stop_server(c, server=None, port=None, timeout=None, all=False, agents_file=None, yes=False,  # noqa: A002
                json=False):
    """Stop the server's whole process tree (SIGTERM, then SIGKILL), verify the port and GPUs are free.

    inv stop-server                 # idempotent: nothing running is a message and exit 0
    inv stop-server --port 8000     # gpuops' orphans listening on 8000 (with their groups); others are named
                                    # and stopped only when you confirm, or with --yes
    inv stop-server --all --json
    """
    from gpuops.cli.render_server import stop_lines
    from gpuops.server import stop

    out = output(c, json)
    t = resolved(c, "stop_timeout", timeout, "--timeout")
    port = resolved(c, "stop_port", port, "--port")
    all = resolved(c, "stop_all", all, "--all", False)  # noqa: A001
    agents_file_path(c, agents_file)  # a mistyped --agents-file must not fall back to stopping what runs
    rd = run_dir(c, agents_file)
    if port is not None:
        result = stop.stop_port(port, timeout=t, yes=resolved(c, "stop_yes", yes, "--yes", False),
                                confirm=_confirm(out), write=out.say)
        for s in result.servers:
            for line in stop_lines(s):
                out.say(line)
    else:
        names, recipe_error = _recipe_names(c, agents_file)
        targets = stop.choose_targets(rd, name=resolved(c, "server", server, "--server"), all=all,
                                      recipe_names=names, recipe_error=recipe_error, write=out.say)

        def shown(s):
            for line in stop_lines(s):
                out.say(line)

        result = stop.stop_servers(rd, targets, timeout=t, write=out.say, on_stopped=shown,
                                   gpu_release_timeout=resolved(c, "gpu_release_timeout"))
    err = result.error()
    if err is not None:
        out.fail("stop-server", result.as_dict(), err)
    out.result("stop-server", result.as_dict())


def _recipe_names(c, agents_file=None):
    """(the server recipes' names, None), or ([], the RecipeError) when AGENTS.local.md is missing or broken."""
    from gpuops.errors import RecipeError
    from gpuops.server.recipes import load_recipes

    try:
        recipes = load_recipes(agents_file_path(c, agents_file))
        recipes.server(None)  # no server recipe in it is an error too
        return list(recipes.servers), None
    except RecipeError as err:
        return [], err


@task(auto_shortflags=False, help=help_for("status"))
@edge
def status(c, json=False):  # noqa: A002
    """Each known server: state (starting, ready, unresponsive, exited, stopped), PID, port, URL, uptime, log.

    inv status
    inv status --json | jq '.servers[0].url'
    """
    from gpuops.server.status import status as status_of

    out = output(c, json)
    result = status_of(run_dir(c))
    if out.json:
        out.result("status", result.as_dict())
        return
    if not result.servers:
        out.say("no servers known (start one with `inv start-server`)")
        return
    from rich.console import Console

    from gpuops.cli.render_server import status_table

    status_table(result, Console())


@task(
    auto_shortflags=False,
    help=help_for(
        "logs", json=_JSON_LOGS,
    ),
)
@edge
def logs(c, name=None, prefix=None, lines=None, follow=False, list=False, json=False):  # noqa: A002
    """Show the last lines of the newest log (or a chosen one); list them; follow them.

    inv logs                 # last 50 lines of the newest log
    inv logs --list          # every log, newest last
    inv logs --follow --prefix locust
    """
    from gpuops.cli.render_server import log_list_lines, log_tail_lines
    from gpuops.errors import UsageError
    from gpuops.server import logs as runlogs

    out = output(c, json)
    name = resolved(c, "log_name", name, "--name")
    prefix = resolved(c, "log_prefix", prefix, "--prefix")
    follow = resolved(c, "log_follow", follow, "--follow", False)
    list = resolved(c, "log_list", list, "--list", False)  # noqa: A001
    if follow and out.json:
        raise UsageError("--follow cannot be combined with --json (a document is printed once, a follow never ends)",
                         hint="use --json alone for the last lines, or --follow alone")
    count = resolved(c, "log_lines", lines, "--lines")
    folder = run_dir(c).logs
    if list:
        files = runlogs.log_files(folder, prefix)
        if out.json:
            out.result("logs", {"folder": str(folder), "logs": [f.as_dict() for f in files]})
            return
        for line in log_list_lines(files, folder):
            out.say(line)
        return
    path = runlogs.choose_log(folder, name, prefix)
    if follow:
        out.say(f"==> {path} <==")
        try:
            # the newest log (no --name): a restart's new log takes over, and following moves there
            runlogs.follow(path, out.say, from_lines=count,
                           newer=None if name else (lambda current: runlogs.newer_log(folder, current)))
        except KeyboardInterrupt:
            out.say("(stopped following)")
        return
    tail = runlogs.tail_lines(path, count)
    if out.json:
        out.result("logs", {"path": str(path), "lines": tail})
        return
    for line in log_tail_lines(path, tail):
        out.say(line)
