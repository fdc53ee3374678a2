"""Which engine a command runs, what its ready lines look like, and what killed a failed start."""

import pytest

from gpuops.errors import UsageError
from gpuops.server.engines import ENGINES, detect, diagnose


@pytest.mark.parametrize(
    "command, engine",
    [
        ("python -m gpuops.demo --port 8000", "demo"),
        ("vllm serve Qwen/Qwen3-8B --tensor-parallel-size 2", "vllm"),
        ("python -m vllm.entrypoints.openai.api_server --model m", "vllm"),
        ("python -m sglang.launch_server --model-path m --tp 2", "sglang"),
        ("./build/bin/llama-server -m models/x.gguf -ngl 99", "llama.cpp"),
        ("python main.py --listen 0.0.0.0 --port 8188", "comfyui"),
        ("cd ~/ComfyUI && python main.py", "comfyui"),
        ("mlx_lm.server --model mlx-community/Qwen3-4B-4bit", "mlx_lm"),
        ("uvicorn app.server:app --port 9000", "uvicorn"),
        ("python serve.py", "generic"),
    ],
)
def test_detect_engine_from_command(command, engine):
    assert detect(command.split()).name == engine


def test_engine_override_and_unknown_override():
    assert detect(["python", "serve.py"], override="vllm").name == "vllm"
    with pytest.raises(UsageError, match="unknown engine 'tgi'"):
        detect(["x"], override="tgi")


@pytest.mark.parametrize(
    "engine, line, ready",
    [
        ("demo", "INFO:     Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)", True),
        ("demo", "INFO:     Application startup complete.", False),  # uvicorn binds after this line
        ("vllm", "INFO:     Application startup complete.", True),  # vLLM passes a bound socket
        ("vllm", "INFO 11-22 10:15:01 [api_server.py:1] Starting vLLM API server 0 on http://0.0.0.0:8000", False),
        ("sglang", "[2026-11-22 10:15:03] The server is fired up and ready to roll!", True),
        ("llama.cpp", "main: server is listening on http://127.0.0.1:8080 - starting the main loop", True),
        ("llama.cpp", "llama_server: model loaded", True),
        ("llama.cpp", "llama_model_loader: loaded meta data with 33 key-value pairs", False),
        ("comfyui", "To see the GUI go to: http://0.0.0.0:8188", True),
        ("mlx_lm", "Starting httpd at 127.0.0.1 on port 8080...", True),
    ],
)
def test_ready_lines(engine, line, ready):
    assert ENGINES[engine].is_ready_line(line) is ready


def test_llama_server_readiness_is_judged_by_health_not_models():
    assert ENGINES["llama.cpp"].health_path == "/health"  # /v1/models answers 200 while loading


@pytest.mark.parametrize(
    "tail, kind, line_has",
    [
        (["Traceback (most recent call last):", '  File "x.py", line 3, in load',
          "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."],
         "CUDA out of memory", "torch.OutOfMemoryError"),
        (["ggml_backend_cuda_buffer_type_alloc_buffer: allocating 8000.00 MiB on device 0: cudaMalloc failed: out of memory"],
         "CUDA out of memory", "cudaMalloc failed"),
        (["ValueError: Free memory on device (10.2/79.1 GiB) on startup is less than desired GPU memory "
          "utilization (0.9, 71.2 GiB)."], "GPU memory taken", "Free memory on device"),
        (["RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error"],
         "NCCL error", "NCCL error"),
        (["ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use"],
         "port already in use", "Errno 98"),
        (["main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080"], "port already in use", "couldn't bind"),
        (["ModuleNotFoundError: No module named 'vllm'"], "missing Python module", "No module named"),
        (["RuntimeError: Engine core initialization failed. See root cause above."], "engine failed to start", "Engine core"),
        (["Traceback (most recent call last):", "KeyError: 'rope_scaling'"], "Python exception", "KeyError"),
        (["bash: line 1: exec: vllmm: not found"], "command or file not found", "vllmm"),  # a shell recipe's typo
        (["bash: line 1: vllmm: command not found"], "command or file not found", "vllmm"),
    ],
)
def test_diagnose_finds_the_root_cause(tail, kind, line_has):
    d = diagnose(tail)
    assert d is not None and d.kind == kind and line_has in d.line and d.hint


def test_diagnose_prefers_the_specific_cause_over_the_wrapper():
    tail = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB",
            "RuntimeError: Engine core initialization failed. See root cause above."]
    assert diagnose(tail).kind == "CUDA out of memory"


def test_diagnose_quiet_log_has_no_cause():
    assert diagnose(["Loading safetensors checkpoint shards: 50% Completed"]) is None


@pytest.mark.parametrize(
    "tail, line",
    [
        # a wrapper's log line names the cause first; the traceback's exception line says more
        (["ERROR 11-22 10:15:01 [core.py:700] EngineCore failed to start: CUDA out of memory",
          "Traceback (most recent call last):", '  File "worker.py", line 9, in load',
          "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 79.1 GiB in use"],
         "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 79.1 GiB in use"),
        # two tracebacks with the same cause: the last one is the one that ended the start
        (["RuntimeError: CUDA error: out of memory (rank 1)", "Traceback (most recent call last):",
          "torch.OutOfMemoryError: CUDA out of memory (rank 0)"],
         "torch.OutOfMemoryError: CUDA out of memory (rank 0)"),
        # the specific signature wins over a wrapper's exception line below it
        (["ERROR cudaMalloc failed: out of memory", "RuntimeError: Engine core initialization failed. See root "
          "cause above."], "ERROR cudaMalloc failed: out of memory"),
        # no exception line carries the signature: the first line that does
        (["WARN ggml: cudaMalloc failed: out of memory", "WARN ggml: cudaMalloc failed: out of memory (retry)",
          "KeyError: 'unrelated'"], "WARN ggml: cudaMalloc failed: out of memory"),
        # no signature at all: the last exception line
        (["Traceback (most recent call last):", "KeyError: 'rope_scaling'", "Traceback (most recent call last):",
          "ValueError: bad config"], "ValueError: bad config"),
    ],
)
def test_diagnose_takes_the_last_exception_line_that_carries_the_winning_signature(tail, line):
    assert diagnose(tail).line == line
