"""The bundled demo server: an OpenAI-compatible server that behaves like a GPU inference server.

    python -m gpuops.demo --port 8000 --load-seconds 3 --ttft-ms 50 --itl-ms 20
    GPUOPS_DEMO_FAULT=crash_oom python -m gpuops.demo          # dies like an OOM while loading

It loads a "model" (progress lines, no GPU), serves /v1/completions and /v1/chat/completions with
timed token streams, can spawn worker processes, write profiler traces, and misbehave on purpose, so
gpuops' whole flow runs and is tested on a laptop. See docs/demo.md.

This package's __init__ stays import-free: worker processes import it on start.
"""
