"""Which server a probe talks to (smoke, profile, load-test): one rule.

    t = find_target(RunDir("do_not_commit"), default_name=first_recipe_name("AGENTS.local.md"))
    t.url, t.engine, t.name   # -> ('http://127.0.0.1:8000', 'vllm', 'server')
    >>> find_target(RunDir("do_not_commit"), url="http://gpu-box:8000/v1").url
    'http://gpu-box:8000'

`--url`: that server (engine "openai" unless --engine); when gpuops started a server at that URL,
its record comes along (its log for failures, its process for vLLM's profiler folder), and if that
server has exited a failure says so. Without --url: `gpuops.server.state.choose_server` — the named
server; else the only running one; else the first recipe's of AGENTS.local.md if it runs; else a
usage error listing the running ones; none running: ServerNotRunning (exit 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpuops.errors import GpuopsError, UsageError
from gpuops.probes.openai import base_url
from gpuops.rundir import RunDir


@dataclass(frozen=True)
class Target:
    """The server a probe talks to."""

    url: str
    engine: str
    log_path: str | None = None
    record: object | None = None  # state.StateRecord of the live server, when gpuops started it
    note: str | None = None  # said with a failure: e.g. that the server gpuops started at this URL has exited

    @property
    def name(self) -> str | None:
        """The recipe name of the server gpuops started (None for a --url gpuops knows nothing of)."""
        return getattr(self.record, "name", None)


def first_recipe_name(agents_file: str | Path | None) -> str | None:
    """The first server recipe's name in AGENTS.local.md; None when the file is missing or broken
    (choosing a server must not fail over a file the probe does not otherwise need)."""
    if not agents_file:
        return None
    try:
        from gpuops.server.recipes import load_recipes

        servers = load_recipes(agents_file).servers
    except (GpuopsError, OSError, ValueError):
        return None
    return next(iter(servers), None)


def _same_url(rec, base: str) -> bool:
    if not rec.url:
        return False
    try:
        return base_url(rec.url) == base
    except UsageError:
        return False


def find_target(run_dir: RunDir, *, url: str | None = None, server: str | None = None, engine: str | None = None,
                default_name: str | None = None) -> Target:
    """`--url`, else the running server chosen by the one rule (see the module docstring).

    `default_name`: the first recipe's name (first_recipe_name), preferred when several servers run.
    """
    from gpuops.server import procs, state

    if url:
        base = base_url(url)
        same = sorted((r for r in state.all_records(run_dir) if _same_url(r, base)), key=lambda r: r.started_at)
        live = [r for r in same if procs.matches(r.pid, r.create_time)]
        if live:
            return Target(base, engine or live[-1].engine, live[-1].log_path, live[-1])
        if same:
            rec = same[-1]
            state_word = "was stopped" if rec.stopped_at else "has exited"
            return Target(base, engine or rec.engine, rec.log_path,
                          note=f"server '{rec.name}' (pid {rec.pid}), which gpuops started at this URL at "
                               f"{state.started_text(rec)}, {state_word}")
        return Target(base, engine or "openai")
    rec = state.choose_server(run_dir, server, default_name=default_name)
    if not rec.url:
        raise UsageError(f"server '{rec.name}' has no URL (its command names no port)",
                         hint="pass --url http://HOST:PORT")
    return Target(rec.url, engine or rec.engine, rec.log_path, rec)


def with_server_log(err: GpuopsError, target: Target) -> GpuopsError:
    """A failed request's error with what gpuops knows of the server: the note, then its last log lines."""
    from gpuops.server.logs import add_log_tail

    if target.note:
        err.details.append(target.note)
    return add_log_tail(err, target.log_path)
