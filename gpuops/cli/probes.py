"""Probe tasks: smoke, profile (thin: flags -> settings -> target -> use case -> renderer or --json).

    inv smoke [--preset blue_sky] [--json]   inv profile [--load] [--json]
"""

from __future__ import annotations

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.project import agents_file_path, output, resolved, run_dir, smoke_presets
from gpuops.settings import help_for

_URL_HELP = "Talk to this server (http://HOST:PORT) instead of the running one gpuops started."


def _target(c, *, url, server, engine, agents_file=None):
    """The server to talk to: --url, else the one rule (gpuops.probes.target)."""
    from gpuops.probes.target import find_target, first_recipe_name

    agents = agents_file_path(c, agents_file)
    return find_target(run_dir(c, agents_file), url=url, server=resolved(c, "server", server, "--server"),
                       engine=resolved(c, "engine", engine, "--engine"), default_name=first_recipe_name(agents))


@task(
    auto_shortflags=False,
    help=help_for(
        "smoke",
        chat="Use /v1/chat/completions (the model's chat template applies) instead of /v1/completions "
        "(default: gpuops.smoke_chat).",
        completion="Use /v1/completions (the default; overrides gpuops.smoke_chat: true in invoke.yaml).",
        model="Model name to send (default: the first id of GET /v1/models).",
        url=_URL_HELP,
    ),
)
@edge
def smoke(c, preset=None, prompt=None, max_tokens=None, stream=True, chat=False, completion=False, model=None,
          url=None, server=None, engine=None, timeout=None, agents_file=None, json=False):  # noqa: A002
    """Send one real request to the running server; show the answer, tokens, TTFT and total time.

    inv smoke                                  # the blue_sky preset to the running server
    inv smoke --preset hello --chat
    inv smoke --url http://127.0.0.1:8000 --prompt "2+2=" --max-tokens 4 --no-stream
    inv smoke --json | jq .ttft_s
    """
    from gpuops.cli.render_probes import smoke_lines
    from gpuops.errors import UsageError
    from gpuops.probes import smoke as sm

    out = output(c, json)
    if chat and completion:
        raise UsageError("--chat and --completion contradict each other", hint="pass one of them")
    use_chat = chat or (not completion and resolved(c, "smoke_chat"))
    text, tokens = sm.resolve_preset(smoke_presets(c, agents_file), resolved(c, "smoke_preset", preset, "--preset"),
                                     resolved(c, "smoke_prompt", prompt, "--prompt"),
                                     resolved(c, "smoke_max_tokens", max_tokens, "--max-tokens"))
    stream = resolved(c, "smoke_stream", stream, "--no-stream", True)
    seconds = resolved(c, "smoke_timeout", timeout, "--timeout")
    target = _target(c, url=url, server=server, engine=engine, agents_file=agents_file)
    result = sm.smoke_target(target, prompt=text, max_tokens=tokens, stream=stream, chat=use_chat, model=model,
                             timeout=seconds)
    for line in smoke_lines(result):
        out.say(line)
    out.result("smoke", {"server": target.name, **result.as_dict()})


@task(
    auto_shortflags=False,
    help=help_for(
        "profile",
        url="Profile this server (http://HOST:PORT) instead of the running one gpuops started (add --engine "
        "when gpuops did not start it).",
    ),
)
@edge
def profile(c, num_steps=None, with_stack=False, dir=None, load=False, url=None, server=None, engine=None,  # noqa: A002
            settle_timeout=None, duration=None, top=None, json=False):  # noqa: A002
    """Capture a server-side PyTorch profile (optionally under load), list the traces, summarize them.

    inv profile --load                        # 25 steps with 4 streaming requests running
    inv profile --num-steps 10 --with-stack
    inv profile --server vllm --duration 5    # vLLM: start, record 5 s, stop (the flush can take minutes)
    inv profile --json | jq '.files[].name'   # progress on stderr, the result on stdout
    """
    from pathlib import Path

    from gpuops.cli.render_probes import profile_lines
    from gpuops.probes import profile as profiling

    out = output(c, json)
    # bad numbers first: nothing is asked of the server and no folder is made
    steps = resolved(c, "profile_num_steps", num_steps, "--num-steps")
    seconds = resolved(c, "profile_duration", duration, "--duration")
    with_stack = resolved(c, "profile_with_stack", with_stack, "--with-stack", False)
    load = resolved(c, "profile_load", load, "--load", False)
    dir = resolved(c, "profile_dir", dir, "--dir")  # noqa: A001
    settle = resolved(c, "profile_settle_timeout", settle_timeout, "--settle-timeout")
    rows = resolved(c, "profile_top", top, "--top")
    quiet = resolved(c, "profile_quiet_seconds")
    rd = run_dir(c)
    target = _target(c, url=url, server=server, engine=engine)
    result = profiling.run_profile(target, profiles_root=rd.profiles, out_dir=Path(dir) if dir else None,
                                   num_steps=steps, with_stack=with_stack, load=load, duration=seconds,
                                   settle_timeout=settle, quiet=quiet, write=out.say,
                                   suggest_dir=(rd.root / "vllm_traces").absolute())
    for line in profile_lines(result, top=rows):
        out.say(line)
    out.result("profile", {**result.as_dict(top=rows), "top": rows})
