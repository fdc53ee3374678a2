"""Shared by the engine tier: where .ci/install-engines put the engines, and helpers to watch them through gpuops.

The tier runs only with the engines installed: `.ci/install-engines` writes `.engines/engines.env`
(or `$GPUOPS_ENGINES_DIR/engines.env`). Without it every test here is skipped with that reason,
except under CI=true, where a missing engine fails the tier so CI cannot pass by skipping it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests

from support.fixtures import REPO, Project, Result, port_free  # noqa: F401 - the engine modules import it from here

ENGINES_DIR = Path(os.environ.get("GPUOPS_ENGINES_DIR") or REPO / ".engines")
INSTALL = ".ci/install-engines"


def engine_paths(*keys: str) -> dict[str, str]:
    """KEY -> value from engines.env for the keys a module needs; skip (or fail under CI) without them."""
    env_file = ENGINES_DIR / "engines.env"
    problem = None
    found: dict[str, str] = {}
    if not env_file.is_file():
        problem = f"the engines are not installed ({env_file} is missing): run {INSTALL}"
    else:
        pairs = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        for key in keys:
            value = pairs.get(key)
            if not value or (key != "VLLM_VERSION" and key != "XLLAMACPP_VERSION" and not Path(value).exists()):
                problem = f"{key} is missing from {env_file} or points nowhere ({value!r}): run {INSTALL}"
                break
            found[key] = value
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"engine tier cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return found


# ---------------------------------------------------------------- processes


def server_procs(record: dict) -> list[psutil.Process]:
    """Live (non-zombie) processes of a server: in its process group, or carrying gpuops' tag.

    Both, because vLLM's EngineCore and Worker rename themselves (setproctitle), which overwrites
    what /proc/PID/environ shows: the tag cannot be read back from them, their process group can.
    """
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(p.pid) == record["pgid"] or p.environ().get("GPUOPS_SERVER") == record["tag"]:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def tag_readable(p: psutil.Process, tag: str) -> bool:
    try:
        return p.environ().get("GPUOPS_SERVER") == tag
    except (psutil.Error, OSError):
        return False


def names(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
    return out


def kill_leftovers(project: Project) -> None:
    """Teardown: SIGKILL every process group gpuops recorded in this project, and tagged processes under it."""
    for rec_file in (project.run_dir / "state").glob("*.json"):
        try:
            pgid = json.loads(rec_file.read_text())["pgid"]
            if pgid > 1:
                os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            continue
    for p in psutil.process_iter(["pid"]):
        try:
            if "GPUOPS_SERVER" in p.environ() and str(p.cwd()).startswith(str(project.root)):
                p.kill()
        except (psutil.Error, OSError):
            continue


# ---------------------------------------------------------------- a started server, watched from outside


@dataclass
class Started:
    """What `inv start-server` said, when it said ready, and what /health answered meanwhile."""

    result: Result
    lines: list[tuple[float, str]]  # (monotonic time, line) as gpuops printed them
    health: list[tuple[float, int | None, str]] = field(default_factory=list)  # (time sent, status, body)

    def time_of(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def not_ok_after(self, t: float) -> list[tuple[float, int | None, str]]:
        """Health samples sent after `t` that did not answer 200 (after "ready" there must be none)."""
        return [sample for sample in self.health if sample[0] > t and sample[1] != 200]


def start_watched(project: Project, url: str, *args: str, timeout: float = 170) -> Started:
    """Run `inv start-server ARGS` while polling url/health (every 100 ms, 5 s timeout) from the side."""
    health: list[tuple[float, int | None, str]] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            sent = time.monotonic()  # a sample is dated when it was sent
            try:
                r = requests.get(f"{url}/health", timeout=5)
                health.append((sent, r.status_code, r.text[:200]))
            except requests.RequestException:
                health.append((sent, None, ""))
            stop.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    proc = project.spawn("start-server", *args)
    lines: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
            if time.monotonic() > deadline:
                break
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    finally:
        stop.set()
        poller.join()
        proc.stdout.close()
    text = "".join(line for _, line in lines)
    return Started(Result(code, text, ""), lines, health)


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def status_of(project: Project, name: str = "server") -> dict:
    r = project.gpuops("status", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    servers = doc["servers"] if isinstance(doc, dict) else doc  # {"servers": [...]} (newer) or a bare list
    return {row.get("name", row.get("server")): row for row in servers}[name]


@dataclass
class Smoke:
    answer: str
    tokens: int
    from_usage: bool


def smoke_report(out: str) -> Smoke:
    """The answer and token count `inv smoke` printed (`answer:` block, then `N tokens in ... s (...)`)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "answer:")
    stats = next(i for i in range(start + 1, len(lines)) if re.match(r"~?\d+ tokens? in ", lines[i]))
    answer = "\n".join(line.strip() for line in lines[start + 1:stats]).strip()
    tokens = int(re.match(r"~?(\d+)", lines[stats]).group(1))
    return Smoke(answer, tokens, "tokens counted by the server" in lines[stats])


def banner_smoke(out: str) -> Smoke:
    """The smoke line of start-server's ready banner: `smoke      N tokens in S s (...) from MODEL: "answer"`."""
    m = re.search(r"^\s*smoke\s+(~?)(\d+) tokens? in .*?: \"(.*)\"\s*$", out, re.MULTILINE)
    assert m, out
    return Smoke(m.group(3).rstrip("…"), int(m.group(2)), not m.group(1))
