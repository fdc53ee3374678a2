"""gpuops settings: one table from which Invoke's config defaults, each flag's help and its check come.

Every value can be set, lowest to highest, in: the defaults below < `invoke.yaml` (`gpuops:` key)
< environment `INVOKE_GPUOPS_<KEY>` < command-line flags.

    >>> SETTINGS["stop_timeout"].default, SETTINGS["stop_timeout"].flags["stop-server"]
    (10.0, 'timeout')
    >>> help_for("stop-server")["timeout"]
    'Seconds between SIGTERM and SIGKILL (default 10).'
    >>> check("stop_timeout", "abc", flag="--timeout")
    Traceback (most recent call last):
    gpuops.errors.UsageError: --timeout must be a number above 0, not 'abc'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuops.checks import number
from gpuops.errors import UsageError


@dataclass(frozen=True)
class Setting:
    """One setting: its config key, default, help text, check, and the flag each task spells it as."""

    key: str
    default: Any
    help: str
    check: Callable[[str, Any], Any] | None = None  # (name shown in errors, raw value) -> checked value
    flags: dict[str, str] = field(default_factory=dict)  # task name -> flag name (without --)
    show_default: bool = True  # append "(default X)" to the help
    shown: Any = None  # the default the help shows when `default` is None ("not set": a lower layer decides)


# --- checks: (name, raw value) -> value, or UsageError naming the flag or config key ---


def seconds(name: str, value):
    return number(name, value)


def whole(name: str, value):
    return number(name, value, whole=True)


def whole_or_zero(name: str, value):
    return number(name, value, whole=True, low_ok=True)


def mib(name: str, value):
    return number(name, value, low_ok=True)


def port(name: str, value):
    return number(name, value, whole=True, high=65535)


def port_range(name: str, value) -> tuple[int, int]:
    """`8001-8099` (or one port) -> (first, last).

    >>> port_range("--ports", "8001-8099"), port_range("--ports", 8005)
    ((8001, 8099), (8005, 8005))
    """
    first, sep, last = str(value).strip().partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        low = high = 0
    if not 1 <= low <= high <= 65535:
        raise UsageError(f"{name} must be a range of ports like 8001-8099, not {value!r}",
                         hint="FIRST-LAST, both between 1 and 65535, e.g. 8001-8099")
    return low, high


def flag(name: str, value) -> bool:
    """A yes/no setting; INVOKE_GPUOPS_* env values arrive as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{name} must be true or false, not {value!r}", hint=f"e.g. {name}: true")


def text(name: str, value):
    return None if value is None else str(value)


def table(name: str, value):
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a mapping, not {value!r}", hint="see docs/configuration.md")
    return value


def loadtest(key: str) -> Callable[[str, Any], Any]:
    """The check of a load-test option: the load-test's own rules (`off`, durations, URLs), imported when used."""

    def check_value(name: str, value):
        from gpuops.probes.loadtest.options import check_value as load_check

        return load_check(key, value, source=name)

    return check_value


_SERVER_TASKS = ("start-server", "stop-server", "smoke", "profile", "load-test")
_ENGINES = "demo, vllm, sglang, llama.cpp, comfyui, mlx_lm, uvicorn, generic; smoke also openai"

_ROWS = (
    # --- where things are ---
    Setting("agents_file", "AGENTS.local.md", "Path of the file holding the commands.", text,
            {t: "agents-file" for t in ("start-server", "stop-server", "smoke", "load-test", "servers")}),
    Setting("project_dir", None, "The project folder: relative agents_file and run_dir are taken from there. "
            "A project's tasks.py sets it (`ns = project_tasks(__file__)`); unset for the gpuops command.", text),
    Setting("run_dir", "do_not_commit", "Folder for logs, state, profiles and load-test reports (git-ignored).", text),
    Setting("server", None, "Which server recipe of AGENTS.local.md (default: see docs/configuration.md, "
            "'Which server').", text, {t: "server" for t in _SERVER_TASKS}, show_default=False),
    Setting("json", False, "Print one JSON document on stdout (schema in docs/json.md); human text goes to stderr.",
            flag, {t: "json" for t in ("start-server", "stop-server", "status", "logs", "gpus", "smoke", "profile",
                                        "load-test", "servers")}, show_default=False),
    Setting("url", None, "Talk to this server (http://HOST:PORT) instead of the running one gpuops started.",
            text, {t: "url" for t in ("smoke", "profile", "load-test")}, show_default=False),
    Setting("model", None, "Model name to send (default: the first id of GET /v1/models).", text,
            {t: "model" for t in ("smoke", "load-test")}, show_default=False),
    # --- start and stop ---
    Setting("restart", False, "Stop the running server first, then start it again.", flag,
            {"start-server": "restart"}, show_default=False),
    Setting("start_all", False, "Start every server recipe of AGENTS.local.md but those marked `disabled: yes`: "
            "what they need first, the others together.", flag, {"start-server": "all", "restart-server": "all"},
            show_default=False),
    Setting("fail_fast", False, "With several servers: after the first one fails, start no more and stop those "
            "this run started.", flag, {"start-server": "fail-fast"}, show_default=False),
    Setting("share_gpus", False, "Let servers of this box share GPUs (else two asking for one GPU are refused "
            "before launch; per recipe: `share-gpus: yes`).", flag, {"start-server": "share-gpus"},
            show_default=False),
    Setting("follow", True, "Keep following the log after ready; --no-follow returns at once (scripts, CI).", flag,
            {"start-server": "follow"}, show_default=False),
    Setting("smoke", True, "Send one real request once ready and show the answer; --no-smoke skips it.", flag,
            {"start-server": "smoke"}, show_default=False),
    Setting("smoke_preset", "blue_sky", "Which smoke preset to send (presets live in gpuops.smoke_presets and "
            "AGENTS.local.md).", text, {"start-server": "smoke-preset", "smoke": "preset"}),
    Setting("hang_timeout", 60.0, "Seconds without new log output, while not ready, before the start counts as hung.",
            seconds, {"start-server": "hang-timeout"}),
    Setting("start_timeout", 1800.0, "Overall seconds the server may take to become ready.", seconds,
            {"start-server": "start-timeout"}),
    Setting("stop_timeout", 10.0, "Seconds between SIGTERM and SIGKILL.", seconds,
            {"start-server": "stop-timeout", "stop-server": "timeout"}),
    Setting("engine", None, f"Treat the server as this engine ({_ENGINES}) instead of guessing from the command "
            "or the state record.", text, {t: "engine" for t in ("start-server", "smoke", "profile")},
            show_default=False),
    Setting("keep_on_failure", False, "Leave a hung or timed-out server running for inspection instead of "
            "stopping it.", flag, {"start-server": "keep-on-failure"}, show_default=False),
    Setting("kill_gpu_procs", False, "Terminate the processes holding the GPUs this server needs, then wait until "
            "the memory is free.", flag, {"start-server": "kill-gpu-procs"}, show_default=False),
    Setting("yes", False, "Do not ask for confirmation before terminating processes.", flag,
            {"start-server": "yes"}, show_default=False),
    Setting("stop_port", None, "Instead, stop what listens on this port, with its process group: gpuops' "
            "orphans of earlier runs at once, any other process only once listed and confirmed (or --yes).", port,
            {"stop-server": "port"}),
    Setting("stop_all", False, "Stop every server gpuops has a record of.", flag, {"stop-server": "all"},
            show_default=False),
    Setting("stop_yes", False, "With --port: also stop the listed processes gpuops did not start, without asking "
            "(another user's only with this, and as root).", flag, {"stop-server": "yes"}, show_default=False),
    # --- GPUs ---
    Setting("gpu_busy_mib", 300, "A GPU on which other processes use more than this many MiB is busy.", mib,
            {"gpus": "busy-mib"}),
    Setting("gpu_release_timeout", 30.0, "Seconds to wait for NVML to show a stopped server's memory released.",
            seconds),
    # --- logs ---
    Setting("log_lines", 50, "How many of the last lines to show.", whole_or_zero, {"logs": "lines"}),
    Setting("log_name", None, "A log file name or path (default: the newest log).", text, {"logs": "name"}),
    Setting("log_prefix", None, "Only logs of this kind: a server name (e.g. server) or locust.", text,
            {"logs": "prefix"}),
    Setting("log_follow", False, "Keep printing new lines as they are written (Ctrl-C to stop).", flag,
            {"logs": "follow"}, show_default=False),
    Setting("log_list", False, "List the logs, newest last, instead of showing one.", flag, {"logs": "list"},
            show_default=False),
    # --- smoke ---
    Setting("smoke_presets", {
        "blue_sky": {"prompt": "Why is the sky blue?", "max_tokens": 64},
        "hello": {"prompt": "Say hello in one short sentence.", "max_tokens": 16},
    }, "Prompt presets for smoke tests (AGENTS.local.md's 'Smoke presets' block is laid over them).", table),
    Setting("smoke_timeout", 60.0, "Seconds one smoke request may take, model lookup included.", seconds,
            {"smoke": "timeout"}),
    Setting("smoke_prompt", None, "Send this prompt instead of the preset's.", text, {"smoke": "prompt"}),
    Setting("smoke_max_tokens", None, "How many tokens to ask for (default: the preset's, else 64).", None,
            {"smoke": "max-tokens"}, show_default=False),
    Setting("smoke_stream", True, "Stream the answer and measure time to first token (default); --no-stream asks "
            "for it whole.", flag, {"smoke": "stream"}, show_default=False),
    Setting("smoke_chat", False, "Smoke tests use /v1/chat/completions (--chat / --completion override it).", flag,
            {"smoke": "chat"}),
    # --- profile ---
    Setting("profile_num_steps", 25, "How many steps to record (10 suits decode-only servers).", whole,
            {"profile": "num-steps"}),
    Setting("profile_settle_timeout", 120.0, "Seconds to wait for the trace files to appear and stop growing.",
            seconds, {"profile": "settle-timeout"}),
    Setting("profile_quiet_seconds", 5.0, "Trace sizes unchanged this long count as written (per-worker files can "
            "start seconds apart).", seconds),
    Setting("profile_with_stack", False, "Record Python stacks too (bigger traces, more overhead).", flag,
            {"profile": "with-stack"}, show_default=False),
    Setting("profile_dir", None, "Folder for the trace files (default: do_not_commit/profiles/<timestamp>/, never "
            "reused).", text, {"profile": "dir"}),
    Setting("profile_load", False, "Drive a short background load (4 streaming requests) during the capture so "
            "decode steps exist.", flag, {"profile": "load"}, show_default=False),
    Setting("profile_duration", None, "vLLM (and SGLang): record for this many seconds instead of counting steps.",
            seconds, {"profile": "duration"}),
    Setting("profile_top", 10, "How many kernels and operators the summary lists.", whole, {"profile": "top"}),
    # --- remote hosts (gpuops -H, docs/remote.md) ---
    Setting("hosts", None, "Default hosts of `gpuops` when -H is not given, and what `-H all` means: a list or "
            "'gpu1,gpu2'.", None),
    Setting("groups", {}, "Named groups of hosts for -H, e.g. {fleet: [gpu1, gpu2]}.", table),
    Setting("host_settings", {}, "Per-host overrides: {gpu2: {remote_dir: /data/llm, remote_venv: ..., "
            "remote_python: ..., remote_env: {...}}}.", table),
    Setting("remote_dir", None, "The project folder on the host (default: this folder's path relative to ~).",
            text),
    Setting("remote_venv", "~/.gpuops/venv", "The virtualenv of gpuops on the host.", text, {"install": "venv"}),
    Setting("remote_python", "python3", "The interpreter on the host that makes the virtualenv (3.11+).", text,
            {"install": "python"}),
    Setting("remote_env", {}, "Extra environment for the remote gpuops; sent in a 0600 file, never on a command "
            "line.", table),
    Setting("ssh_config", None, "An ssh_config file to read instead of ~/.ssh/config.", text),
    Setting("ssh_agent", True, "Use the SSH agent.", flag, show_default=False),
    Setting("ssh_key_search", True, "Try the ~/.ssh/id_* keys.", flag, show_default=False),
    Setting("connect_timeout", 10.0, "Seconds to connect, unless the host's ssh_config sets ConnectTimeout.",
            seconds),
    Setting("remote_parallel", True, "Run the hosts in parallel (false: one after another, for benchmarks).",
            flag, show_default=False),
    Setting("install_loadtest", False, "Also install the [loadtest] extra (Locust, matplotlib) for "
            "`load-test --on-host`.", flag, {"install": "loadtest"}, show_default=False),
    Setting("install_extras", None, "Extras to install on the host, comma-separated (e.g. loadtest).", text,
            {"install": "extras"}),
    # --- load test ---
    # config default None = "not set": AGENTS.local.md's '## Load test' block sits below invoke.yaml / env, so
    # only a value set there may hide the block's; gpuops.probes.loadtest.options applies `shown` after the block
    Setting("load_users", None, "Concurrent users, each sending its next request when the last one finished. "
            "With --qps: the cap on requests in flight (default 64 there; the '## Load test' block's or config's "
            "--users applies only if the same place also gives --qps).", loadtest("users"),
            {"load-test": "users"}, shown=4),
    Setting("load_spawn_rate", None, "Users started per second (default: all at once; with --qps, like --users).",
            loadtest("spawn_rate"), {"load-test": "spawn-rate"}),
    Setting("load_run_time", None, "How long to send load: 30s, 90, 2m, 1m30s, 1h. Requests in flight then get "
            "up to 30 s to finish.", loadtest("run_time"), {"load-test": "run-time"}, shown="30s"),
    Setting("load_prompt_tokens", None, "Prompt length in tokens, counted by the server's POST /tokenize or "
            "--tokenizer (in words, about one token each, where neither exists); or a seeded distribution: "
            "uniform:A,B, normal:MEAN,SD.", loadtest("prompt_tokens"), {"load-test": "prompt-tokens"}, shown=128),
    Setting("load_max_tokens", None, "Tokens to generate per request, or a distribution like --prompt-tokens "
            "(vLLM, SGLang, llama.cpp and the demo get ignore_eos).", loadtest("max_tokens"),
            {"load-test": "max-tokens"}, shown=64),
    Setting("load_stream", None, "Stream answers and measure TTFT, ITL and TPOT (the default; "
            "gpuops.load_stream: false is --no-stream).", loadtest("stream"), {"load-test": "stream"}, shown=True),
    Setting("load_chat", None, "Use /v1/chat/completions (gpuops.load_chat: true; the default is "
            "/v1/completions).", loadtest("chat"), {"load-test": "chat"}, shown=False),
    Setting("load_qps", None, "Open loop: send this many requests per second on a fixed schedule instead of a "
            "fixed concurrency; 'off' turns off a --qps from the '## Load test' block.", loadtest("qps"),
            {"load-test": "qps"}),
    Setting("load_arrival", None, "With --qps: poisson (like real traffic) or constant spacing.",
            loadtest("arrival"), {"load-test": "arrival"}, shown="poisson"),
    Setting("load_seed", None, "Seed for the prompt text and the --qps schedule. Salts stay unique per run.",
            loadtest("seed"), {"load-test": "seed"}, shown=0),
    Setting("load_workers", None, "Load-generating processes. Above 1: a Locust master plus N workers, to use "
            "more cores.", loadtest("workers"), {"load-test": "workers"}, shown=1),
    Setting("load_workers_on", None, "Run the Locust workers on these hosts (ssh_config aliases, "
            "comma-separated; --workers of them on each) instead of here; the master stays here and writes the "
            "report. Each host needs `gpuops -H HOST install --loadtest`.", loadtest("workers_on"),
            {"load-test": "workers-on"}),
    Setting("load_sweep", None, "Run one test per level and chart them: user counts (1,2,4,8) or, with --qps, "
            "rates (0.5,1,2); 'off' turns off the block's --sweep.", loadtest("sweep"), {"load-test": "sweep"}),
    Setting("load_detach", None, "Run in the background with its own log (do_not_commit/server_logs/locust-*.log), "
            "follow it here; Ctrl-C stops following, not the test. With --json: print the run's folder and log "
            "and return at once.", loadtest("detach"), {"load-test": "detach"}, shown=False),
    Setting("load_web", None, "Open Locust's own web UI (http://127.0.0.1:PORT) instead of a headless run; "
            "Ctrl-C here ends it (not with --json).", loadtest("web"), {"load-test": "web"}, shown=False),
    Setting("load_shared_prefix", None, "Send the same prompt every time (measures a warm prefix cache); "
            "default: salted per request.", loadtest("shared_prefix"), {"load-test": "shared-prefix"},
            shown=False),
    Setting("load_slo_ttft_ms", None, "Goodput: a request counts as good only with TTFT at most this many ms "
            "('off' or 0: none).", loadtest("slo_ttft_ms"), {"load-test": "slo-ttft-ms"}),
    Setting("load_slo_tpot_ms", None, "Goodput: a request counts as good only with TPOT at most this many ms "
            "('off' or 0: none).", loadtest("slo_tpot_ms"), {"load-test": "slo-tpot-ms"}),
    Setting("load_slo_e2el_ms", None, "Goodput: a request counts as good only with end-to-end latency at most "
            "this many ms ('off' or 0: none).", loadtest("slo_e2el_ms"), {"load-test": "slo-e2el-ms"}),
    Setting("load_request_timeout", None, "Seconds a request may wait for its next bytes before it fails.",
            loadtest("request_timeout"), {"load-test": "request-timeout"}, shown=300),
    Setting("load_out", None, "Write the report into this new (or empty) folder instead of "
            "do_not_commit/load_tests/<timestamp>/.", loadtest("out"), {"load-test": "out"}),
    Setting("load_warmup", None, "Leave this long out of the steady-state numbers after every user runs (5s, 10); "
            "added to the run so that --run-time stays the steady state.", loadtest("warmup"),
            {"load-test": "warmup"}, shown="0s"),
    Setting("load_cooldown", None, "Leave this long out of the steady-state numbers before the load stops; added "
            "to the run.", loadtest("cooldown"), {"load-test": "cooldown"}, shown="0s"),
    Setting("load_find_max", None, "Search for the highest load (users, or rates with --qps) at which "
            "--slo-quantile of the requests meet the SLOs given: doubling, then bisection.", loadtest("find_max"),
            {"load-test": "find-max"}, shown=False),
    Setting("load_slo_quantile", None, "With --find-max: the share of requests that must meet every SLO (0.99, "
            "99 or 99%).", loadtest("slo_quantile"), {"load-test": "slo-quantile"}, shown="99%"),
    Setting("load_locustfile", None, "Run your own locustfile (Locust's -f) in gpuops' run instead of gpuops' "
            "user: logged, its CSV and HTML kept, Locust's stats summarised.", loadtest("locustfile"),
            {"load-test": "locustfile"}),
    Setting("load_tokenizer", None, "Count prompt tokens with this local Hugging Face tokenizer (a tokenizer.json, "
            "a model folder, or a NAME in the local cache; offline) instead of the server's POST /tokenize.",
            loadtest("tokenizer"), {"load-test": "tokenizer"}),
    Setting("load_dataset", None, "Send the prompts of this file instead of generated ones: JSONL ({\"prompt\": ...} "
            "or {\"messages\": [...]} a line), ShareGPT JSON, or 'builtin' (shipped, works offline).",
            loadtest("dataset"), {"load-test": "dataset"}),
    Setting("load_max_prompts", None, "Use at most this many prompts of --dataset (after the seeded shuffle).",
            loadtest("max_prompts"), {"load-test": "max-prompts"}),
    Setting("load_dataset_min_tokens", None, "Leave out --dataset prompts shorter than this many tokens.",
            loadtest("dataset_min_tokens"), {"load-test": "dataset-min-tokens"}),
    Setting("load_dataset_max_tokens", None, "Leave out --dataset prompts longer than this many tokens.",
            loadtest("dataset_max_tokens"), {"load-test": "dataset-max-tokens"}),
    Setting("load_shared_prefix_tokens", None, "Start prompts with the same N tokens (prefix-cache hits); the "
            "rest stays salted per request.", loadtest("shared_prefix_tokens"),
            {"load-test": "shared-prefix-tokens"}, shown=0),
    Setting("load_shared_prefix_share", None, "The share of requests that reuse --shared-prefix-tokens (0.5: "
            "half of them).", loadtest("shared_prefix_share"), {"load-test": "shared-prefix-share"}, shown=1),
    Setting("load_turns", None, "Chat sessions (with --chat): each user carries its conversation for this many "
            "turns, every request sending the previous turns and answers.", loadtest("turns"),
            {"load-test": "turns"}, shown=1),
    Setting("load_embeddings", None, "Load /v1/embeddings instead of completions (end-to-end latency and input "
            "tokens only).", loadtest("embeddings"), {"load-test": "embeddings"}, shown=False),
    # --- servers (inv servers: the recipes; --discover: a recipe per model file) ---
    Setting("discover_dir", None, "Scan this folder for models (`*.gguf`, split shards once; folders with "
            "`config.json` and `*.safetensors`) and print a `## Server: NAME` recipe for each, made from the template.",
            text, {"servers": "discover"}),
    Setting("discover_template", None, "The recipe to copy for each model: its command holds `{model}` and `{port}` "
            "(`{name}` too, if it likes). Default: the only recipe holding `{model}`.", text, {"servers": "template"},
            show_default=False),
    Setting("discover_ports", "8001-8099", "Ports for the new recipes, FIRST-LAST: ports other recipes name and "
            "ports in use now are skipped.", port_range, {"servers": "ports"}),
    Setting("discover_write", False, "Append the new recipes to AGENTS.local.md instead of printing them.", flag,
            {"servers": "write"}, show_default=False),
)

for _row in _ROWS:  # restart-server takes start-server's flags (but --restart: it is one)
    if "start-server" in _row.flags and _row.key != "restart":
        _row.flags.setdefault("restart-server", _row.flags["start-server"])

SETTINGS: dict[str, Setting] = {s.key: s for s in _ROWS}


def config_defaults() -> dict:
    """Invoke's `gpuops` config defaults: every key, all None ("not set"; the table's default applies).
    Typed defaults would make Invoke cast INVOKE_GPUOPS_* text to them: "false" -> True, "abc" -> a crash."""
    # a mapping stays a mapping ({}): Invoke refuses to merge invoke.yaml's dict over a None
    return {key: {} if isinstance(s.default, dict) else None for key, s in SETTINGS.items()}


def defaults() -> dict:
    """The built-in default of every setting."""
    import copy

    return {key: copy.deepcopy(s.default) for key, s in SETTINGS.items()}


def _shown(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def help_text(s: Setting) -> str:
    default = s.default if s.shown is None else s.shown
    if not s.show_default or default is None or isinstance(default, (dict, bool)):
        return s.help
    return f"{s.help.rstrip('.')} (default {_shown(default)})."


def help_for(task: str, **extra: str) -> dict[str, str]:
    """Invoke's `help=` for a task: every setting it takes as a flag, plus flags that are no setting."""
    helps = {s.flags[task]: help_text(s) for s in SETTINGS.values() if task in s.flags}
    helps.update(extra)
    return helps


def check(key: str, value, *, flag: str | None = None):
    """The value checked by the setting's rule; errors name the flag, or `gpuops.<key>` for config."""
    s = SETTINGS[key]
    if value is None or s.check is None:
        return value
    return s.check(flag or f"gpuops.{key}", value)


DEFAULTS = defaults()


def markdown_table() -> str:
    """The settings as docs/configuration.md shows them (a test keeps the two the same)."""
    lines = ["| key | default | flags | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS.values():
        shown = s.shown if getattr(s, "shown", None) is not None else s.default
        if shown is None:
            default = "—"
        elif isinstance(shown, dict):
            default = "see below"
        else:
            default = f"`{str(shown).lower() if isinstance(shown, bool) else _shown(shown)}`"
        by_flag: dict[str, list[str]] = {}
        for task, name in s.flags.items():
            by_flag.setdefault(name, []).append(task)
        flags = "; ".join(f"`--{name}` ({', '.join(tasks)})" for name, tasks in by_flag.items()) or "—"
        lines.append(f"| `{s.key}` | {default} | {flags} | {s.help} |")
    return "\n".join(lines)
