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


_SERVER_START = ("Which server recipe(s) of AGENTS.local.md: a name, or several as a,b (started together, "
                 "what they need first). Default: the first recipe.")


@task(
    auto_shortflags=False,  # a generated -h (for --hang-timeout) would answer `inv start-server -h` with an error
    help=help_for("start-server", json=_JSON_START, server=_SERVER_START),
)
@edge
def start_server(c, server=None, all=False, agents_file=None, restart=False, follow=True, smoke=True,  # noqa: A002
                 smoke_preset=None, hang_timeout=None, start_timeout=None, stop_timeout=None, engine=None,
                 keep_on_failure=False, kill_gpu_procs=False, yes=False, fail_fast=False, share_gpus=False,
                 json=False):
    """Start the server from AGENTS.local.md detached, stream its log until ready, then follow it.

    inv start-server                      # the first server recipe; Ctrl-C stops following, not the server
    inv start-server --no-follow          # return once ready (exit 0), or fail (exit 3) with the cause
    inv start-server --server model,app   # together (what app needs first), logs prefixed, one table
    inv start-server --all --no-follow    # every recipe but `disabled: yes` ones; a live line each
    inv start-server --restart --kill-gpu-procs --yes
    inv start-server --json | jq .url     # the log goes to stderr; one document on stdout
    """
    _start(c, "start-server", server=server, all=all, agents_file=agents_file,
           restart=resolved(c, "restart", restart, "--restart", False), follow=follow, smoke=smoke,
           smoke_preset=smoke_preset, hang_timeout=hang_timeout, start_timeout=start_timeout,
           stop_timeout=stop_timeout, engine=engine, keep_on_failure=keep_on_failure,
           kill_gpu_procs=kill_gpu_procs, yes=yes, fail_fast=fail_fast, share_gpus=share_gpus, json=json)


@task(
    auto_shortflags=False,
    help=help_for("restart-server", json=_JSON_START,
                  server="Which server(s) to restart: a name or a,b (default: the only running one; else, "
                         "among several, the first recipe's if it runs, else an error listing them; nothing "
                         "running: the first recipe, started)."),
)
@edge
def restart_server(c, server=None, all=False, agents_file=None, follow=True, smoke=True,  # noqa: A002
                   smoke_preset=None, hang_timeout=None, start_timeout=None, stop_timeout=None, engine=None,
                   keep_on_failure=False, kill_gpu_procs=False, yes=False, fail_fast=False, share_gpus=False,
                   json=False):
    """Stop a server, then start it again from AGENTS.local.md (read fresh); the others stay untouched.

    inv restart-server                    # the running server (a stopped one is just started)
    inv restart-server --server app       # app only; what it needs is reused (started if it is not running)
    inv restart-server --all --no-follow  # stop all (dependents first), start all (needs first)
    """
    _start(c, "restart-server", server=server, all=all, agents_file=agents_file, restart=True, follow=follow,
           smoke=smoke, smoke_preset=smoke_preset, hang_timeout=hang_timeout, start_timeout=start_timeout,
           stop_timeout=stop_timeout, engine=engine, keep_on_failure=keep_on_failure,
           kill_gpu_procs=kill_gpu_procs, yes=yes, fail_fast=fail_fast, share_gpus=share_gpus, json=json)


def _start(c, task_name, *, server, all, agents_file, restart, follow, smoke, smoke_preset,  # noqa: A002
           hang_timeout, start_timeout, stop_timeout, engine, keep_on_failure, kill_gpu_procs, yes, fail_fast,
           share_gpus, json):
    """start-server and restart-server: one server as before, or several together (server/group.py)."""
    from gpuops.server import group
    from gpuops.server.preflight import GpuPolicy
    from gpuops.server.recipes import load_recipes
    from gpuops.server.start import follow_server
    from gpuops.server.start import start_server as start

    out = output(c, json)
    recipes = load_recipes(agents_file_path(c, agents_file))
    want_all = resolved(c, "start_all", all, "--all", False)
    server = resolved(c, "server", server, "--server")
    rd = run_dir(c, agents_file)
    if want_all and server is not None:
        from gpuops.errors import UsageError

        raise UsageError(f"--all and --server {server} say different things", hint="give one of them")
    if task_name == "restart-server" and server is None and not want_all:
        server = _running_default(rd, recipes)
    names = group.requested_names(recipes, server, all=want_all)
    share = resolved(c, "share_gpus", share_gpus, "--share-gpus", False)
    inventory = None
    if len(names) > 1 or any(recipes.servers[n].needs for n in names):  # several: which GPUs each will use
        from gpuops.gpu.inventory import inventory as gpu_inventory

        inventory = gpu_inventory()
    # needs, cycles, clashes: before anything starts
    plan = group.plan_start(recipes, names, share_gpus=share, inventory=inventory)
    if restart:  # the servers that need a restarted one keep running: say so
        from gpuops.server.stop import running_names

        for note in group.still_needed(plan.requested, running_names(rd), recipes, restart=True):
            out.say(note)
    stop_t = resolved(c, "stop_timeout", stop_timeout, "--stop-timeout")
    gpu = GpuPolicy(kill=resolved(c, "kill_gpu_procs", kill_gpu_procs, "--kill-gpu-procs", False),
                    yes=resolved(c, "yes", yes, "--yes", False),
                    busy_mib=resolved(c, "gpu_busy_mib"),
                    release_timeout=resolved(c, "gpu_release_timeout"),
                    stop_timeout=stop_t)
    want_smoke = resolved(c, "smoke", smoke, "--no-smoke", True)
    plan_smoke = _smoke_plan(c, smoke_preset, agents_file) if want_smoke else None  # a bad preset: before the start
    smoke_step = None
    if plan_smoke is not None:
        from gpuops.probes.smoke import auto_smoke

        def smoke_step(record):
            return auto_smoke(plan_smoke, record)

    following = resolved(c, "follow", follow, "--no-follow", True) and not out.json
    options = dict(engine_name=resolved(c, "engine", engine, "--engine"),
                   hang_timeout=resolved(c, "hang_timeout", hang_timeout, "--hang-timeout"),
                   start_timeout=resolved(c, "start_timeout", start_timeout, "--start-timeout"),
                   stop_timeout=stop_t,
                   keep_on_failure=resolved(c, "keep_on_failure", keep_on_failure, "--keep-on-failure", False),
                   gpu=gpu, smoke=smoke_step, share_gpus=share)
    if len(plan.order) == 1 and not want_all:
        result = start(recipes.servers[plan.order[0]], rd, write=out.say, restart=restart, confirm=_confirm(out),
                       meanwhile=_import_banner_modules, **options)
        from gpuops.cli.render_server import start_lines

        for line in start_lines(result):
            out.say(line)
        if result.smoke_error is not None:
            out.fail(task_name, result.as_dict(), result.smoke_error)  # exit 7; the server keeps running
        out.result(task_name, result.as_dict())
        if following and not result.already_running:
            follow_server(result.record, out.say, run_dir=rd)
        return
    _start_several(c, task_name, out, rd, recipes, plan, restart=restart, all_=want_all, following=following,
                   fail_fast=resolved(c, "fail_fast", fail_fast, "--fail-fast", False), options=options,
                   stop_timeout=stop_t)


def _running_default(rd, recipes):
    """restart-server without --server: the only running server, or the first recipe's if several run."""
    from gpuops.errors import ServerNotRunning
    from gpuops.server import state

    first = next(iter(recipes.servers), None)
    try:
        return state.choose_server(rd, None, default_name=first).name
    except ServerNotRunning:
        return None


def _start_several(c, task_name, out, rd, recipes, plan, *, restart, all_, following, fail_fast, options,
                   stop_timeout):
    """Several servers: --restart/--all stop first (dependents first), then start together, one table."""
    from gpuops.cli.render_group import GroupView, group_table
    from gpuops.errors import GpuopsError
    from gpuops.server import group, state, stop
    from gpuops.server.start import start_server as start

    restart_names = set(plan.requested) if restart else set()
    if restart and all_:  # stop them all first, dependents before what they need, then start in order
        stopping = group.stop_order([n for n in plan.order if n in restart_names], recipes)
        done = stop.stop_servers(rd, stopping, timeout=stop_timeout, write=out.say)
        for s in done.servers:
            if s.running:
                out.say(s.summary())
        err = done.error()
        if err is not None:
            out.fail(task_name, done.as_dict(), err)
        restart_names = set()

    def start_one(recipe, say, stream):
        return start(recipe, rd, write=say, stream=stream, restart=recipe.name in restart_names, confirm=None,
                     **options)

    def stop_one(name):
        stop.stop_server(rd, name, timeout=stop_timeout, write=out.say)

    def record_of(name):
        try:
            return state.load(rd, name)
        except GpuopsError:
            return None

    console = out.console()
    if plan.added:
        out.say(f"also starting what they need: {', '.join(plan.added)}")
    if following:
        result = group.start_group(plan, recipes, start_one, write=out.say, stream=out.say, fail_fast=fail_fast,
                                   stop_one=stop_one, record_of=record_of)
    else:
        with GroupView(plan.order, console) as view:
            result = group.start_group(plan, recipes, start_one, write=view.say, stream=view.stream,
                                       on_event=view.event, fail_fast=fail_fast, stop_one=stop_one,
                                       record_of=record_of)
    group_table(result, console)
    err = result.error()
    if err is not None:
        out.fail(task_name, result.as_dict(), err)
    out.result(task_name, result.as_dict())
    if following:
        started = [s.result.record for s in result.servers if s.ok and not s.result.already_running]
        if started:
            group.follow_servers(started, out.say, run_dir=rd)


@task(
    auto_shortflags=False,
    help=help_for(
        "stop-server",
        server="Which server(s) to stop: a name or a,b (default: the only running one; else the first recipe's "
               "if it runs; else an error listing the running ones).",
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
    from gpuops.server import group, stop

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
        recipes, recipe_error = _recipes(c, agents_file)
        names = list(recipes.servers) if recipes is not None else []
        targets = stop.choose_targets(rd, name=resolved(c, "server", server, "--server"), all=all,
                                      recipe_names=names, recipe_error=recipe_error, write=out.say)
        targets = group.stop_order(targets, recipes)  # a server before what it needs
        for note in group.still_needed(targets, stop.running_names(rd), recipes):
            out.say(note)
        if not targets:
            out.say(f"no server on record in {rd.state}: nothing to stop")

        def shown(s):
            for line in stop_lines(s):
                out.say(line)

        result = stop.stop_servers(rd, targets, timeout=t, write=out.say, on_stopped=shown,
                                   gpu_release_timeout=resolved(c, "gpu_release_timeout"))
    err = result.error()
    if err is not None:
        out.fail("stop-server", result.as_dict(), err)
    out.result("stop-server", result.as_dict())


def _recipes(c, agents_file=None):
    """(the Recipes, None), or (None, the RecipeError) when AGENTS.local.md is missing or broken."""
    from gpuops.errors import RecipeError
    from gpuops.server.recipes import load_recipes

    try:
        recipes = load_recipes(agents_file_path(c, agents_file))
        recipes.server(None)  # no server recipe in it is an error too
        return recipes, None
    except RecipeError as err:
        return None, err


@task(auto_shortflags=False, help=help_for("status"))
@edge
def status(c, json=False):  # noqa: A002
    """Each known server: state, PID, port, URL, uptime, GPUs, memory (RSS of its tree, GPU), log; totals.

    inv status                    # "3 known: 2 ready, 1 starting; 0 failed; running together: 23.1 GiB RSS ..."
    inv status --json | jq '.servers[0].url, .totals.rss_bytes'
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
    from gpuops.cli.render_server import status_table

    status_table(result, out.console())


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
