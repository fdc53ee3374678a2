"""What gpuops knows about each server kind: how it says it is ready, how to ask, how it fails.

    >>> engine = detect(["vllm", "serve", "Qwen/Qwen3-8B", "--port", "8000"])
    >>> engine.name, engine.health_path, engine.is_ready_line("INFO:     Application startup complete.")
    ('vllm', '/health', True)
    >>> diagnose(["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory. ..."])
    Diagnosis(kind='CUDA out of memory', line='torch.OutOfMemoryError: CUDA out of memory. ...', hint='...')
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    name: str
    ready_lines: tuple[str, ...]  # regexes; a match means "probe health now"
    health_path: str | None  # 200 here means ready (None: the ready line alone decides)
    default_port: int
    profiler: str | None  # "fireworks" | "vllm" | "sglang" | None
    any_answer_is_up: bool = False  # unknown servers: any HTTP answer but 5xx means it serves

    def is_ready_line(self, line: str) -> bool:
        return any(re.search(p, line) for p in self.ready_lines)


UVICORN_RUNNING = r"Uvicorn running on https?://"

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        # The demo and in-house uvicorn servers: uvicorn binds the socket after "Application startup
        # complete.", so only "Uvicorn running on" means the port answers.
        Engine("demo", (UVICORN_RUNNING,), "/health", 8000, "fireworks"),
        Engine("uvicorn", (UVICORN_RUNNING,), "/health", 8000, "fireworks", any_answer_is_up=True),
        # vLLM passes uvicorn an already bound socket: no "Uvicorn running on" line.
        Engine("vllm", (r"Application startup complete\.", UVICORN_RUNNING), "/health", 8000, "vllm"),
        Engine("sglang", (r"The server is fired up and ready to roll!",), "/health", 30000, "sglang"),
        # llama-server listens early and answers /health 503 "Loading model" until ready;
        # /v1/models answers 200 while loading, so it is never used for readiness.
        Engine(
            "llama.cpp",
            (r"server is listening on https?://", r"starting the main loop", r"llama_server: model loaded",
             r"(?:srv\s+init|llama_server): listening on https?://"),
            "/health",
            8080,
            None,
        ),
        Engine("comfyui", (r"To see the GUI go to: https?://",), "/system_stats", 8188, None),
        # mlx_lm's /health is always ok; the httpd line is printed once the model is loaded.
        Engine("mlx_lm", (r"Starting httpd at \S+ on port \d+",), None, 8080, None),
        Engine("generic", (UVICORN_RUNNING, r"Application startup complete\."), "/health", 8000, None,
               any_answer_is_up=True),
    )
}

_DETECT: list[tuple[str, str]] = [
    (r"(^|[\s/])gpuops\.demo\b", "demo"),
    (r"(^|[\s/])vllm(\s+serve\b|\.entrypoints)", "vllm"),
    (r"sglang(\.launch_server|\s+serve\b|\.srt)", "sglang"),
    (r"(^|[\s/])llama-server\b|llama_cpp\.server", "llama.cpp"),
    (r"mlx_lm(\.server|\s+server\b)|mlx_lm\.server", "mlx_lm"),
    (r"(?i)comfyui|(^|[\s/])main\.py\b.*--listen", "comfyui"),
    (r"(^|[\s/])uvicorn\b|fastapi\s+run\b", "uvicorn"),
]


def detect(words: list[str] | str, override: str | None = None) -> Engine:
    """The engine a command runs (by its words), or `override` when the user names one."""
    if override:
        try:
            return ENGINES[override]
        except KeyError:
            from gpuops.errors import UsageError

            raise UsageError(
                f"unknown engine '{override}'", hint=f"choose one of: {', '.join(sorted(ENGINES))}"
            ) from None
    text = words if isinstance(words, str) else " ".join(words)
    for pattern, name in _DETECT:
        if re.search(pattern, text):
            return ENGINES[name]
    return ENGINES["generic"]


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # short name of what went wrong
    line: str  # the log line that shows it (the root cause)
    hint: str | None


# Most specific first: the first signature found anywhere in the tail wins (a wrapper such as
# "Engine core initialization failed" comes last: the real cause is printed above it).
SIGNATURES: list[tuple[str, str, str | None]] = [
    (r"Free memory on device .* is less than desired GPU memory utilization", "GPU memory taken",
     "another process holds GPU memory: check `inv gpus`, free it with `inv start-server --kill-gpu-procs`, "
     "or lower --gpu-memory-utilization"),
    (r"cudaMalloc failed: out of memory|failed to allocate .* buffer", "CUDA out of memory",
     "the model does not fit: lower -ngl (layers on GPU) or the context size (-c), or free the GPU (`inv gpus`)"),
    (r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", "CUDA out of memory",
     "the GPU ran out of memory: check `inv gpus` for other holders; lower --gpu-memory-utilization, "
     "--max-model-len or the batch size, or pick a free GPU with CUDA_VISIBLE_DEVICES"),
    (r"NCCL error|ncclUnhandledCudaError|ncclSystemError|ncclInternalError|NCCL WARN", "NCCL error",
     "ranks could not talk: check CUDA_VISIBLE_DEVICES and --tensor-parallel-size agree; rerun with "
     "NCCL_DEBUG=INFO; on consumer GPUs try NCCL_P2P_DISABLE=1"),
    (r"Address already in use|couldn't bind HTTP server socket|\[Errno 98\]", "port already in use",
     "another process took the port: `inv status`, `inv stop-server --port PORT`, or change --port"),
    (r"error: (?:invalid argument|unrecognized arguments|unknown argument|the following arguments are required)\b",
     "bad command-line flag", "the server rejected a flag of its command: fix it in AGENTS.local.md "
     "(`PROGRAM --help` lists them)"),
    (r"ModuleNotFoundError: No module named|ImportError: ", "missing Python module",
     "the command runs in the wrong environment: activate the right virtualenv in AGENTS.local.md "
     "(`source .venv/bin/activate && ...`) or install the package"),
    (r"command not found|exec: .*: not found|No such file or directory", "command or file not found",
     "check the paths in AGENTS.local.md (program, model, working directory)"),
    (r"Engine core initialization failed", "engine failed to start",
     "the real cause is printed above this line in the log (`inv logs`)"),
    (r"Application startup failed", "application startup failed", "see the traceback above it in the log"),
]

_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b:?.*")


def diagnose(lines: list[str]) -> Diagnosis | None:
    """The root cause in a server's last log lines.

    The most specific known signature found anywhere wins (SIGNATURES' order). Its line is the last
    exception line (`SomeError: ...`, a traceback's own last line) that carries it, else the first
    line that does: a traceback's exception says more than a wrapper's "ERROR ... CUDA out of memory".
    With no known signature: the last exception line, else None.

    >>> diagnose(["ERROR [core.py] EngineCore failed: CUDA out of memory",
    ...           "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]).line
    'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'
    """
    for pattern, kind, hint in SIGNATURES:
        rx = re.compile(pattern)
        matching = [line for line in lines if rx.search(line)]
        if matching:
            raised = [line for line in matching if _EXCEPTION_LINE.match(line)]
            return Diagnosis(kind, (raised[-1] if raised else matching[0]).strip(), hint)
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return Diagnosis("Python exception", line.strip(), "see the traceback above it in the log")
    return None
