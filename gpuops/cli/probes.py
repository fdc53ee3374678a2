"""Probe tasks: smoke, profile.

    inv smoke [--preset blue_sky]   inv profile [--load]
"""

from __future__ import annotations

from invoke import task

from gpuops.checks import number
from gpuops.cli.edge import edge
from gpuops.cli.project import run_dir, say, setting, smoke_presets
from gpuops.server.logs import create_run_folder


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
    from gpuops.errors import RequestFailed, UsageError
    from gpuops.probes import smoke as sm

    if chat and completion:
        raise UsageError("--chat and --completion contradict each other", hint="pass one of them")
    use_chat = chat or (not completion and bool(setting(c, "smoke_chat")))
    text, tokens = sm.resolve_preset(smoke_presets(c, agents_file), preset, prompt, max_tokens)
    seconds = number("--timeout", setting(c, "smoke_timeout", timeout))
    target = sm.find_target(run_dir(c), url=url, server=setting(c, "server", server), engine=engine)
    try:
        result = sm.run_smoke(target.url, target.engine, prompt=text, max_tokens=tokens, stream=stream, chat=use_chat,
                              model=model, timeout=seconds, log_shown=bool(target.log_path))
    except RequestFailed as err:
        raise sm.with_server_log(err, target) from None
    for line in result.render(text):
        say(line)


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

    from gpuops.errors import RequestFailed
    from gpuops.probes import profile as profiling
    from gpuops.probes import smoke as sm

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
                                   load=load, duration=seconds, settle_timeout=settle, write=say,
                                   server_dir=server_dir, quiet=quiet, log_shown=bool(target.log_path),
                                   suggest_dir=(rd.root / "vllm_traces").absolute())
    except RequestFailed as err:
        raise sm.with_server_log(err, target) from None
    finally:
        if not dir and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed capture leaves no empty timestamp folder behind
    profiling.summarize(result)
    for line in profiling.render_result(result, top=rows):
        say(line)
