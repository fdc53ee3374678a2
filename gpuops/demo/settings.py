"""The demo server's settings: each from its flag, else its GPUOPS_DEMO_* variable, else the default.

    >>> s = parse_settings(["--port", "9000"], {"GPUOPS_DEMO_PORT": "7000", "GPUOPS_DEMO_TTFT_MS": "80"})
    >>> s.port, s.ttft_ms, s.itl_ms
    (9000, 80.0, 20.0)
    >>> parse_settings([], {"GPUOPS_DEMO_FAULT": "segfault"})
    Traceback (most recent call last):
    gpuops.demo.settings.SettingsError: GPUOPS_DEMO_FAULT='segfault' is not a fault; choose one of: none, crash_oom, hang, ignore_sigterm

Pure: argv and the environment come in, a Settings or a SettingsError (one line for the user) comes out.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

FAULTS = ("none", "crash_oom", "hang", "ignore_sigterm")
MAX_WORKERS = 64  # a real node has at most a few dozen GPUs; more is a typo
VLLM_PROFILER_VAR = "VLLM_TORCH_PROFILER_DIR"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


class SettingsError(Exception):
    """A bad flag or environment value; str() is the one line the user reads."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "gpuops-demo-1b"
    load_seconds: float = 3.0
    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    ttft_per_request_ms: float = 0.0  # TTFT grows by this much per other request in flight: latency that grows with load
    fault: str = "none"
    workers: int = 0
    orphan_worker: bool = False
    abandon_workers: bool = False
    error_every: int = 0
    no_stream_support: bool = False
    profile_delay: float = 2.0
    vllm_profiler_dir: str | None = None  # VLLM_TORCH_PROFILER_DIR: the vLLM-style profiler routes exist


def _number(kind: type, minimum: float, maximum: float | None = None) -> Callable[[str], float]:
    def convert(text: str):
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("is not a finite number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}")
        return value

    return convert


def _fault(text: str) -> str:
    if text.strip() not in FAULTS:
        raise ValueError(f"is not a fault; choose one of: {', '.join(FAULTS)}")
    return text.strip()


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("is not a yes/no value; use 1 or 0")


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    return text


@dataclass(frozen=True)
class Option:
    dest: str
    flag: str
    env: str
    convert: Callable[[str], object]
    help: str
    switch: bool = False  # a flag without a value (sets True); the variable takes 1/0
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "GPUOPS_DEMO_HOST", _text, "address to bind (default 127.0.0.1)", metavar="ADDR"),
    Option("port", "--port", "GPUOPS_DEMO_PORT", _number(int, 0, 65535), "port to bind (default 8000)",
           metavar="PORT"),
    Option("model", "--model", "GPUOPS_DEMO_MODEL", _text,
           "model name served in /v1/models and echoed by default (default gpuops-demo-1b)", metavar="NAME"),
    Option("load_seconds", "--load-seconds", "GPUOPS_DEMO_LOAD_SECONDS", _number(float, 0),
           "seconds spent 'loading the model' before the port is bound (default 3.0)", metavar="SECONDS"),
    Option("ttft_ms", "--ttft-ms", "GPUOPS_DEMO_TTFT_MS", _number(float, 0),
           "milliseconds from a request's arrival to its first token (default 50)", metavar="MS"),
    Option("itl_ms", "--itl-ms", "GPUOPS_DEMO_ITL_MS", _number(float, 0),
           "milliseconds between later tokens (default 20)", metavar="MS"),
    Option("ttft_per_request_ms", "--ttft-per-request-ms", "GPUOPS_DEMO_TTFT_PER_REQUEST_MS", _number(float, 0),
           "milliseconds added to TTFT per other request in flight: latency that grows with load (default 0)",
           metavar="MS"),
    Option("fault", "--fault", "GPUOPS_DEMO_FAULT", _fault,
           f"misbehave on purpose: {', '.join(FAULTS)} (default none)", metavar="NAME"),
    Option("workers", "--workers", "GPUOPS_DEMO_WORKERS", _number(int, 0, MAX_WORKERS),
           "spawn N worker processes, like tensor-parallel workers (default 0)", metavar="N"),
    Option("orphan_worker", "--orphan-worker", "GPUOPS_DEMO_ORPHAN_WORKER", _boolean,
           "also spawn one worker that leaves the process group (os.setsid), like a re-parented scheduler",
           switch=True),
    Option("abandon_workers", "--abandon-workers", "GPUOPS_DEMO_ABANDON_WORKERS", _boolean,
           "with crash_oom: die without stopping the workers, like a vLLM API server whose engine core "
           "outlives it", switch=True),
    Option("error_every", "--error-every", "GPUOPS_DEMO_ERROR_EVERY", _number(int, 0),
           "answer every Nth generation request with HTTP 500 (default 0: never)", metavar="N"),
    Option("no_stream_support", "--no-stream-support", "GPUOPS_DEMO_NO_STREAM", _boolean,
           "ignore \"stream\": true and always answer plain JSON, like a server that cannot stream",
           switch=True),
    Option("profile_delay", "--profile-delay", "GPUOPS_DEMO_PROFILE_DELAY", _number(float, 0),
           "seconds after GET /profile answers before the trace files appear (default 2.0)", metavar="SECONDS"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error; argparse would exit 2 too
        raise SettingsError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m gpuops.demo",
        description="A simulated OpenAI-compatible GPU inference server (no GPU needed). "
        "Every flag falls back to its environment variable, then to its default.",
        epilog=f"{VLLM_PROFILER_VAR}=DIR enables POST /start_profile and /stop_profile, like vLLM.",
    )
    for opt in OPTIONS:
        helptext = f"{opt.help} [env {opt.env}]"
        if opt.switch:
            parser.add_argument(opt.flag, dest=opt.dest, action="store_const", const="1", default=None, help=helptext)
        else:
            parser.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar,
                                help=helptext)
    return parser


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flag > environment variable > default, each value checked; raises SettingsError naming its source."""
    args = build_parser().parse_args(list(argv))
    values: dict[str, object] = {}
    for opt in OPTIONS:
        flag_value = getattr(args, opt.dest)
        if flag_value is not None:
            raw, source = flag_value, opt.flag
        elif opt.env in environ:
            raw, source = environ[opt.env], opt.env
        else:
            continue
        try:
            values[opt.dest] = opt.convert(raw)
        except ValueError as err:
            shown = f"{opt.flag} {raw!r}" if source == opt.flag else f"{opt.env}={raw!r}"
            raise SettingsError(f"{shown} {err}") from None
    profiler_dir = environ.get(VLLM_PROFILER_VAR, "").strip()
    return Settings(**values, vllm_profiler_dir=profiler_dir or None)
