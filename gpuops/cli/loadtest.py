"""Load-test task: load-test.

    inv load-test [--users N] [--sweep]
"""

from __future__ import annotations

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.project import agents_file_path, run_dir, say, setting


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
    from gpuops.probes.loadtest import command

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
    prepared = command.prepare(cli, agents_file=agents_file_path(c, agents_file), run_dir=run_dir(c, agents_file))
    if prepared.opts.detach:
        code = command.run_detached(prepared, say)
        if code:
            from invoke.exceptions import Exit

            raise Exit(code=code)
        return
    command.run_foreground(prepared, say)
