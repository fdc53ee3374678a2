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
from gpuops.edge import edge, number, project_root, setting  # noqa: F401
from gpuops.logs import create_run_folder, shown


def run_dir(c, agents_file=None) -> RunDir:
    """The run folder. For the `gpuops` command (no tasks.py), a relative one sits beside the
    AGENTS.local.md given with --agents-file, so a later `gpuops stop-server` run from that folder
    finds the server again."""
    import os

    folder = setting(c, "run_dir")
    if agents_file and project_root(c) is None and not os.path.isabs(os.path.expanduser(folder)):
        folder = os.path.join(os.path.dirname(agents_file), folder)
    return RunDir(folder)


def _agents_file(c, agents_file=None) -> str:
    """AGENTS.local.md's path; one given as a flag must exist (a typo must not fall back to defaults)."""
    import os

    from gpuops.errors import RecipeError

    if agents_file is not None and not os.path.isfile(agents_file):
        raise RecipeError("file not found", path=agents_file,
                          hint="check the --agents-file path (leave it out to use the project's AGENTS.local.md)")
    return setting(c, "agents_file", agents_file)


# --- lifecycle tasks (start-server, stop-server, status, logs) ---


def _recipe(c, server=None, agents_file=None):
    from gpuops.recipes import load_recipes

    return load_recipes(_agents_file(c, agents_file)).server(setting(c, "server", server))


def _out(line: str) -> None:
    print(line, flush=True)


def _confirm(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _gpu_preflight(c, *, kill: bool, yes: bool, stop_timeout: float):
    """The GPU step of start-server's preflight: refuse busy GPUs, or free them with --kill-gpu-procs
    (SIGKILL after `stop_timeout`, the resolved --stop-timeout)."""

    def check(recipe, replaced_pids) -> list[int]:
        import os

        from gpuops import gpus

        inv = gpus.inventory()
        if inv.unavailable:
            _out(f"no NVIDIA GPU visible: {inv.unavailable} (starting without a GPU check)")
            return []
        if replaced_pids:  # a restart: NVML lists the old server's memory for seconds after it exits
            inv = gpus.wait_released(replaced_pids, float(setting(c, "gpu_release_timeout")))
        # the server inherits our environment: a CUDA_VISIBLE_DEVICES exported in the shell counts
        needed = gpus.needed_gpus({**os.environ, **recipe.env}, recipe.argv, inv)
        busy_mib = number("gpuops.gpu_busy_mib", setting(c, "gpu_busy_mib"), low_ok=True)
        if kill:
            gpus.free_gpus(inv, needed, busy_mib, yes=yes, confirm=_confirm if sys.stdin.isatty() else None,
                           timeout=stop_timeout,
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


def _smoke_plan(c, smoke_preset=None, agents_file=None):
    """start-server's smoke test, settled before the server starts: an unknown preset is exit 2, not a
    started server. Presets come from the same agents file as the server; gpuops.smoke_chat and
    gpuops.smoke_timeout apply."""
    from gpuops import smoke

    return smoke.plan_smoke(_smoke_presets(c, agents_file), smoke_preset, chat=bool(setting(c, "smoke_chat")),
                            timeout=setting(c, "smoke_timeout"))


def _smoke_presets(c, agents_file=None) -> dict:
    """Presets from config, with those of the agents file's "Smoke presets" block laid over them."""
    from gpuops import smoke

    return smoke.load_presets(setting(c, "smoke_presets"), _agents_file(c, agents_file))


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
    from gpuops import lifecycle
    from gpuops.banner import ready_banner

    recipe = _recipe(c, server, agents_file)
    rd = run_dir(c, agents_file)
    stop_t = number("--stop-timeout", setting(c, "stop_timeout", stop_timeout))
    waits = {"hang_timeout": number("--hang-timeout", setting(c, "hang_timeout", hang_timeout)),
             "start_timeout": number("--start-timeout", setting(c, "start_timeout", start_timeout))}
    plan = _smoke_plan(c, smoke_preset, agents_file) if smoke else None  # a bad preset fails before the start
    started = lifecycle.start_server(
        recipe, rd, write=_out, cwd=recipe.path.resolve().parent,  # commands are relative to their file
        restart=restart, engine_name=engine, stop_timeout=stop_t, keep_on_failure=keep_on_failure,
        gpu_check=_gpu_preflight(c, kill=kill_gpu_procs, yes=yes, stop_timeout=stop_t), **waits,
    )
    rec = started.record
    if started.already_running:
        _out(f"'{rec.name}' is already running: pid {rec.pid}, {rec.url}, up "
             f"{lifecycle.format_uptime(rec.uptime)}, log {shown(rec.log_path)}")
        _out("(use --restart to stop it and start it again)")
        return
    from gpuops.smoke import auto_smoke

    smoke_line, smoke_error = auto_smoke(plan, rec) if plan is not None else (None, None)
    gpu_lines, model_lines = _gpu_banner(recipe, rec)
    for line in ready_banner(rec, started.outcome, gpu_lines=gpu_lines, model_lines=model_lines,
                             smoke_line=smoke_line):
        _out(line)
    if smoke_error is not None:
        raise smoke_error  # exit 7, with the server's last log lines; the server keeps running
    if follow:
        lifecycle.follow_server(rec, _out, run_dir=rd)


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

    t = number("--timeout", setting(c, "stop_timeout", timeout))
    _agents_file(c, agents_file)  # a mistyped --agents-file must not fall back to stopping what runs
    rd = run_dir(c, agents_file)
    if port is not None:
        port = number("--port", port, whole=True, high=65535)
        stopped = lifecycle.stop_port(port, timeout=t)
        n = len(stopped.report.stopped) if stopped.report else 0
        _out(f"port {port}: stopped {n} process(es)" + (f" in {stopped.report.elapsed:.2f} s" if n else "")
             + f"; port {port} is {'free' if stopped.port_free else 'STILL IN USE'}")
        return
    if all:
        names = [r.name for r in state.all_records(rd)]
    elif setting(c, "server", server):
        names = [lifecycle.known_server(rd, setting(c, "server", server), _recipe_names(c, agents_file))]
    else:
        from gpuops.errors import RecipeError

        try:
            names = [_recipe(c, None, agents_file).name]
        except RecipeError as err:  # a broken file must not keep a running server from being stopped
            names = [lifecycle.only_running_server(rd, err, write=_out)]
    lifecycle.stop_servers(rd, names or ["server"], timeout=t, write=_out,
                           after_stop=lambda stopped: _verify_gpus_released(c, stopped))


def _recipe_names(c, agents_file=None) -> list[str]:
    """The server recipes' names, or none when AGENTS.local.md is missing or broken."""
    from gpuops.errors import RecipeError
    from gpuops.recipes import load_recipes

    try:
        return list(load_recipes(_agents_file(c, agents_file)).servers)
    except RecipeError:
        return []


def _verify_gpus_released(c, stopped) -> None:
    """After the tree is gone: wait until NVML lists none of its PIDs (memory freed lags the exit)."""
    from gpuops import gpus

    gpus.report_release(stopped.name, [v.pid for v in stopped.report.stopped],
                        float(setting(c, "gpu_release_timeout")), write=_out)


@task(help={"json": "Print machine-readable JSON instead of a table."})
@edge
def status(c, json=False):  # noqa: A002
    """Each known server: state (starting, ready, unresponsive, exited, stopped), PID, port, URL, uptime, log.

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

    from gpuops import logs as runlogs
    from gpuops.errors import UsageError

    count = number("--lines", 50 if lines is None else lines, whole=True, low_ok=True)
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
    elif prefix:
        kinds = sorted({m["prefix"] for p in runlogs.list_logs(folder) if (m := runlogs.LOG_NAME.match(p.name))})
        raise UsageError(f"no {prefix} logs in {folder}", hint=f"logs there are of: {', '.join(kinds)}" if kinds
                         else "start a server with `inv start-server`")
    else:
        raise UsageError(f"no logs in {folder}", hint="start a server with `inv start-server`")
    _out(f"==> {path} <==")
    if follow:
        try:
            runlogs.follow(path, _out, from_lines=count)
        except KeyboardInterrupt:
            _out("(stopped following)")
        return
    for line in runlogs.tail_lines(path, count):
        _out(line)


# --- gpu tasks (gpus) ---


@task(
    help={
        "json": "Print machine-readable JSON instead of a table (n/a figures are null).",
        "busy-mib": "Mark GPUs on which processes use more than this many MiB as busy (default 300).",
    }
)
@edge
def gpus(c, json=False, busy_mib=None):  # noqa: A002
    """Each GPU's memory and utilisation, with the processes on it (PID, user, memory, command).

    inv gpus
    inv gpus --json | jq '.gpus[].processes[].pid'
    """
    from gpuops import gpus as gpuinfo

    busy = number("--busy-mib", setting(c, "gpu_busy_mib", busy_mib), low_ok=True)
    inv = gpuinfo.inventory()
    if json:
        import json as _json

        print(_json.dumps(gpuinfo.to_json(inv), indent=2), flush=True)
        if inv.unavailable:
            print(f"no NVIDIA GPU visible: {inv.unavailable}", file=sys.stderr, flush=True)
        return
    from rich.console import Console

    gpuinfo.render_table(inv, Console(), busy_mib=busy)


# --- smoke and profile tasks ---


@task(
    help={
        "preset": "Which prompt preset to send (default: blue_sky); presets live in invoke.yaml "
        "(gpuops.smoke_presets) and AGENTS.local.md.",
        "prompt": "Send this prompt instead of the preset's.",
        "max-tokens": "How many tokens to ask for (default: the preset's, else 64).",
        "stream": "Stream the answer and measure time to first token (default); --no-stream asks for it whole.",
        "chat": "Use /v1/chat/completions (the model's chat template applies) instead of /v1/completions.",
        "completion": "Use /v1/completions (the default; overrides gpuops.smoke_chat: true in invoke.yaml).",
        "model": "Model name to send (default: the first id of GET /v1/models).",
        "url": "Talk to this server (http://HOST:PORT) instead of the running one gpuops started.",
        "server": "Which running server (recipe name) to test (default: the newest running one).",
        "engine": "Treat the server as this engine (vllm, sglang, llama.cpp, comfyui, mlx_lm, demo, uvicorn, openai); "
        "default: from the state record, or openai with --url.",
        "timeout": "Seconds the whole request may take (default 60).",
        "agents-file": "Path of the file holding the commands and presets (default: AGENTS.local.md).",
    }
)
@edge
def smoke(c, preset=None, prompt=None, max_tokens=None, stream=True, chat=False, completion=False, model=None,
          url=None, server=None, engine=None, timeout=None, agents_file=None):
    """Send one real request to the running server; show the answer, tokens, TTFT and total time.

    inv smoke                                  # the blue_sky preset to the running server
    inv smoke --preset hello --chat
    inv smoke --url http://127.0.0.1:8000 --prompt "2+2=" --max-tokens 4 --no-stream
    """
    from gpuops import smoke as sm
    from gpuops.errors import RequestFailed, UsageError

    if chat and completion:
        raise UsageError("--chat and --completion contradict each other", hint="pass one of them")
    use_chat = chat or (not completion and bool(setting(c, "smoke_chat")))
    text, tokens = sm.resolve_preset(_smoke_presets(c, agents_file), preset, prompt, max_tokens)
    seconds = number("--timeout", setting(c, "smoke_timeout", timeout))
    target = sm.find_target(run_dir(c), url=url, server=setting(c, "server", server), engine=engine)
    try:
        result = sm.run_smoke(target.url, target.engine, prompt=text, max_tokens=tokens, stream=stream, chat=use_chat,
                              model=model, timeout=seconds, log_shown=bool(target.log_path))
    except RequestFailed as err:
        raise sm.with_server_log(err, target) from None
    for line in result.render(text):
        _out(line)


@task(
    help={
        "num-steps": "How many steps to record (default 25; 10 suits decode-only servers).",
        "with-stack": "Record Python stacks too (bigger traces, more overhead).",
        "dir": "Folder for the trace files (default: do_not_commit/profiles/<timestamp>/, never reused).",
        "load": "Drive a short background load (4 streaming requests) during the capture so decode steps exist.",
        "url": "Profile this server (http://HOST:PORT) instead of the running one gpuops started (add --engine "
        "when gpuops did not start it).",
        "server": "Which running server (recipe name) to profile (default: the newest running one).",
        "engine": "Treat the server as this engine: vllm, sglang, or uvicorn/demo (Fireworks-style GET /profile).",
        "settle-timeout": "Seconds to wait for the trace files to appear and stop growing (default 120).",
        "duration": "vLLM (and SGLang): record for this many seconds instead of counting steps.",
        "top": "How many kernels and operators the summary lists (default 10).",
    }
)
@edge
def profile(c, num_steps=None, with_stack=False, dir=None, load=False, url=None, server=None, engine=None,  # noqa: A002
            settle_timeout=None, duration=None, top=None):
    """Capture a server-side PyTorch profile (optionally under load), list the traces, summarize them.

    inv profile --load                        # 25 steps with 4 streaming requests running
    inv profile --num-steps 10 --with-stack
    inv profile --server vllm --duration 5    # vLLM: start, record 5 s, stop (the flush can take minutes)
    """
    from pathlib import Path

    from gpuops import profiling
    from gpuops import smoke as sm
    from gpuops.errors import RequestFailed

    # bad numbers first: nothing is asked of the server and no folder is made
    steps = number("--num-steps", setting(c, "profile_num_steps", num_steps), whole=True)
    seconds = number("--duration", duration) if duration is not None else None
    settle = number("--settle-timeout", setting(c, "profile_settle_timeout", settle_timeout))
    rows = number("--top", top if top is not None else 10, whole=True)
    quiet = number("gpuops.profile_quiet_seconds", setting(c, "profile_quiet_seconds"))
    rd = run_dir(c)
    target = sm.find_target(rd, url=url, server=setting(c, "server", server), engine=engine)
    flavour = profiling.flavour_of(target.engine)  # no endpoint: say what to use, before making folders
    out = Path(dir) if dir else create_run_folder(rd.profiles)
    rec = target.record
    server_dir = None
    if flavour == "vllm":  # vLLM writes into its own folder: read it from the server process
        server_dir = (profiling.server_profiler_dir(rec.pid, rec.create_time) if rec is not None
                      else profiling.local_profiler_dir(target.url))
    try:
        result = profiling.capture(target.url, target.engine, out_dir=out, num_steps=steps, with_stack=with_stack,
                                   load=load, duration=seconds, settle_timeout=settle, write=_out,
                                   server_dir=server_dir, quiet=quiet, log_shown=bool(target.log_path),
                                   suggest_dir=(rd.root / "vllm_traces").absolute())
    except RequestFailed as err:
        raise sm.with_server_log(err, target) from None
    finally:
        if not dir and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed capture leaves no empty timestamp folder behind
    profiling.summarize(result)
    for line in profiling.render_result(result, top=rows):
        _out(line)


# --- load-test tasks ---


@task(
    auto_shortflags=False,  # 26 flags: generated one-letter flags would be arbitrary (and one would be -h)
    help={
        "users": "Concurrent users, each sending its next request when the last one finished (default 4). "
        "With --qps: the cap on requests in flight (default 64; the '## Load test' block's --users applies "
        "only if the block also gives --qps).",
        "spawn-rate": "Users started per second (default: all at once; with --qps, like --users).",
        "run-time": "How long to send load: 30s, 90, 2m, 1m30s, 1h (default 30s). Requests in flight then "
        "get up to 30 s to finish.",
        "prompt-tokens": "Prompt length in words, about one token each (default 128); reported from the server's usage.",
        "max-tokens": "Tokens to generate per request (default 64; vLLM, SGLang, llama.cpp and the demo get ignore_eos).",
        "stream": "Stream answers and measure TTFT, ITL and TPOT (the default).",
        "no-stream": "Ask for whole answers: end-to-end latency and throughput only.",
        "chat": "Use /v1/chat/completions.",
        "completion": "Use /v1/completions (the default).",
        "model": "Model name to send (default: the first id of GET /v1/models).",
        "qps": "Open loop: send this many requests per second on a fixed schedule instead of a fixed concurrency; "
        "'off' turns off a --qps from the '## Load test' block.",
        "arrival": "With --qps: poisson (default, like real traffic) or constant spacing.",
        "seed": "Seed for the prompt text and the --qps schedule (default 0). Salts stay unique per run.",
        "url": "Load this server (http://HOST:PORT) instead of the running one gpuops started.",
        "server": "Which running server (recipe name) to load (default: the newest running one).",
        "workers": "Load-generating processes (default 1). Above 1: a Locust master plus N workers, to use more cores.",
        "sweep": "Run one test per level and chart them: user counts (1,2,4,8) or, with --qps, rates (0.5,1,2); "
        "'off' turns off the block's --sweep.",
        "detach": "Run in the background with its own log (do_not_commit/server_logs/locust-*.log), follow it "
        "here; Ctrl-C stops following, not the test.",
        "web": "Open Locust's own web UI (http://127.0.0.1:PORT) instead of a headless run; Ctrl-C here ends it.",
        "shared-prefix": "Send the same prompt every time (measures a warm prefix cache); default: salted per request.",
        "no-shared-prefix": "Salt every prompt (the default): turns off the block's --shared-prefix.",
        "slo-ttft-ms": "Goodput: a request counts as good only with TTFT at most this many ms ('off' or 0: none).",
        "slo-tpot-ms": "Goodput: a request counts as good only with TPOT at most this many ms ('off' or 0: none).",
        "slo-e2el-ms": "Goodput: a request counts as good only with end-to-end latency at most this many ms "
        "('off' or 0: none).",
        "request-timeout": "Seconds a request may wait for its next bytes before it fails (default 300).",
        "out": "Write the report into this new (or empty) folder instead of do_not_commit/load_tests/<timestamp>/.",
        "agents-file": "Path of the file whose '## Load test' block gives default flags (default: AGENTS.local.md).",
    }
)
@edge
def load_test(c, users=None, spawn_rate=None, run_time=None, prompt_tokens=None, max_tokens=None, stream=False,
              no_stream=False, chat=False, completion=False, model=None, qps=None, arrival=None, seed=None, url=None,
              server=None, workers=None, sweep=None, detach=False, web=False, shared_prefix=False,
              no_shared_prefix=False, slo_ttft_ms=None, slo_tpot_ms=None, slo_e2el_ms=None, request_timeout=None,
              out=None, agents_file=None):
    """Load-test the running server with Locust: TTFT, ITL, TPOT, E2EL percentiles from raw records.

    inv load-test                              # flags from AGENTS.local.md's '## Load test' block
    inv load-test --users 32 --run-time 1m --workers 2
    inv load-test --qps 4 --arrival poisson --slo-ttft-ms 500 --slo-tpot-ms 50
    inv load-test --sweep 1,4,16,64 --run-time 30s --detach
    """
    from gpuops.errors import UsageError
    from gpuops.loadtest import command

    for (a, given_a), (b, given_b) in ((("stream", stream), ("no-stream", no_stream)),
                                       (("chat", chat), ("completion", completion)),
                                       (("shared-prefix", shared_prefix), ("no-shared-prefix", no_shared_prefix))):
        if given_a and given_b:
            raise UsageError(f"--{a} and --{b} contradict each other", hint=f"give one of --{a}, --{b}")
    cli = {"users": users, "spawn_rate": spawn_rate, "run_time": run_time, "prompt_tokens": prompt_tokens,
           "max_tokens": max_tokens, "model": model, "qps": qps, "arrival": arrival, "seed": seed, "url": url,
           "server": setting(c, "server", server), "workers": workers, "sweep": sweep, "slo_ttft_ms": slo_ttft_ms,
           "slo_tpot_ms": slo_tpot_ms, "slo_e2el_ms": slo_e2el_ms, "request_timeout": request_timeout, "out": out,
           "stream": True if stream else (False if no_stream else None),
           "api": "chat" if chat else ("completion" if completion else None),
           "shared_prefix": True if shared_prefix else (False if no_shared_prefix else None),
           "detach": detach or None, "web": web or None}
    prepared = command.prepare(cli, agents_file=_agents_file(c, agents_file), run_dir=run_dir(c, agents_file))
    if prepared.opts.detach:
        code = command.run_detached(prepared, _out)
        if code:
            from invoke.exceptions import Exit

            raise Exit(code=code)
        return
    command.run_foreground(prepared, _out)


ns = Collection.from_module(sys.modules[__name__])
ns.configure({"gpuops": DEFAULTS})
