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


_SERVER_TASKS = ("start-server", "stop-server", "smoke", "profile", "load-test")
_ENGINES = "demo, vllm, sglang, llama.cpp, comfyui, mlx_lm, uvicorn, generic"

_ROWS = (
    # --- where things are ---
    Setting("agents_file", "AGENTS.local.md", "Path of the file holding the commands.", text,
            {t: "agents-file" for t in ("start-server", "stop-server", "smoke", "load-test")}),
    Setting("run_dir", "do_not_commit", "Folder for logs, state, profiles and load-test reports (git-ignored).", text),
    Setting("server", None, "Which server recipe of AGENTS.local.md (default: see docs/configuration.md, "
            "'Which server').", text, {t: "server" for t in _SERVER_TASKS}, show_default=False),
    Setting("json", False, "Print one JSON document on stdout (schema in docs/json.md); human text goes to stderr.",
            flag, {t: "json" for t in ("start-server", "stop-server", "status", "logs", "gpus", "smoke", "profile",
                                        "load-test")}, show_default=False),
    # --- start and stop ---
    Setting("restart", False, "Stop the running server first, then start it again.", flag,
            {"start-server": "restart"}, show_default=False),
    Setting("follow", True, "Keep following the log after ready; --no-follow returns at once (scripts, CI).", flag,
            {"start-server": "follow"}, show_default=False),
    Setting("smoke", True, "Send one real request once ready and show the answer; --no-smoke skips it.", flag,
            {"start-server": "smoke"}, show_default=False),
    Setting("smoke_preset", "blue_sky", "Which smoke preset the automatic smoke test uses.", text,
            {"start-server": "smoke-preset"}),
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
    # --- GPUs ---
    Setting("gpu_busy_mib", 300, "A GPU on which other processes use more than this many MiB is busy.", mib,
            {"gpus": "busy-mib"}),
    Setting("gpu_release_timeout", 30.0, "Seconds to wait for NVML to show a stopped server's memory released.",
            seconds),
    # --- logs ---
    Setting("log_lines", 50, "How many of the last lines to show.", whole_or_zero, {"logs": "lines"}),
    # --- smoke ---
    Setting("smoke_presets", {
        "blue_sky": {"prompt": "Why is the sky blue?", "max_tokens": 64},
        "hello": {"prompt": "Say hello in one short sentence.", "max_tokens": 16},
    }, "Prompt presets for smoke tests (AGENTS.local.md's 'Smoke presets' block is laid over them).", table),
    Setting("smoke_timeout", 60.0, "Seconds one smoke request may take, model lookup included.", seconds,
            {"smoke": "timeout"}),
    Setting("smoke_chat", False, "Smoke tests use /v1/chat/completions (--chat / --completion override it).", flag),
    # --- profile ---
    Setting("profile_num_steps", 25, "How many steps to record (10 suits decode-only servers).", whole,
            {"profile": "num-steps"}),
    Setting("profile_settle_timeout", 120.0, "Seconds to wait for the trace files to appear and stop growing.",
            seconds, {"profile": "settle-timeout"}),
    Setting("profile_quiet_seconds", 5.0, "Trace sizes unchanged this long count as written (per-worker files can "
            "start seconds apart).", seconds),
    Setting("profile_top", 10, "How many kernels and operators the summary lists.", whole, {"profile": "top"}),
)

SETTINGS: dict[str, Setting] = {s.key: s for s in _ROWS}


def defaults() -> dict:
    """Invoke's `gpuops` config defaults."""
    import copy

    return {key: copy.deepcopy(s.default) for key, s in SETTINGS.items()}


def _shown(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def help_text(s: Setting) -> str:
    if not s.show_default or s.default is None or isinstance(s.default, (dict, bool)):
        return s.help
    return f"{s.help.rstrip('.')} (default {_shown(s.default)})."


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
