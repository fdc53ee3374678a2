"""Launch a server detached: its log (header first), its environment, its own session, its record.

    ep = endpoint_of(recipe, engines.detect(recipe.argv))
    ep.url
    'http://127.0.0.1:8000'
    record, proc, offset = launch_recorded(recipe, RunDir("do_not_commit"), Path("."), ep, engine, gpus=[0])
    record.log_path                 # the server's own output starts at byte `offset`
    '/home/alice/proj/do_not_commit/server_logs/server-20261122-101500.log'
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpuops.errors import RecipeError, StartupFailed
from gpuops.rundir import RunDir
from gpuops.server import engines, state
from gpuops.server.logs import create_log
from gpuops.server.recipes import ServerRecipe, mask_secrets
from gpuops.server.state import TAG_VAR, StateRecord


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens and where gpuops talks to it."""

    host: str  # where the server binds
    port: int | None
    url: str | None  # where gpuops talks to it (0.0.0.0 -> 127.0.0.1)


def endpoint_of(recipe: ServerRecipe, engine: engines.Engine) -> Endpoint:
    """Host, port and URL from the command's flags, else the engine's defaults."""
    host = recipe.option("--host", "--listen") or "127.0.0.1"
    raw = recipe.option("--port", "-p") if engine.name != "comfyui" else recipe.option("--port")
    if raw is None:
        port = engine.default_port
    elif raw.isdigit() and 0 < int(raw) < 65536:
        port = int(raw)
    else:
        raise RecipeError(f"--port {raw!r} is not a port number", path=recipe.path, line=recipe.line,
                          hint="use a number between 1 and 65535")
    talk = "127.0.0.1" if host in ("0.0.0.0", "", "::", "localhost") else host
    if ":" in talk:
        talk = f"[{talk}]"
    return Endpoint(host, port, f"http://{talk}:{port}")


def log_header(recipe: ServerRecipe, cwd: Path, ep: Endpoint) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    lines = [
        f"# gpuops server '{recipe.name}' started {stamp}",
        f"# host: {socket.gethostname()}  cwd: {cwd}",
        f"# url: {ep.url}",
        f"# recipe: {recipe.path}:{recipe.line}",
    ]
    lines += [f"#   {line}" for line in recipe.display(mask=True).splitlines()]
    return "\n".join(lines) + "\n" + OUTPUT_MARK


OUTPUT_MARK = "# ---- server output ----\n"


def output_offset(log_path: str | Path) -> int:
    """Where the server's own output starts in a gpuops log (after the header), 0 if unknown."""
    try:
        with open(log_path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return 0
    at = head.find(OUTPUT_MARK.encode())
    return at + len(OUTPUT_MARK) if at >= 0 else 0


def launch_banner(recipe: ServerRecipe, ep: Endpoint) -> list[str]:
    """What the terminal shows before the server runs: when, where, and the command (secrets masked)."""
    where = f"{ep.host}:{ep.port}" if ep.port else ep.host
    lines = [f"starting '{recipe.name}' at {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, "
             f"listening on {where}" + (f", {ep.url}" if ep.url else "")]
    return lines + [f"  {line}" for line in recipe.display(mask=True).splitlines()]


def child_environment(recipe: ServerRecipe, tag: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours, plus the recipe's variables, plus the gpuops tag.

    When gpuops itself runs from a virtualenv that is not activated (`.venv/bin/inv`), that
    virtualenv's bin/ goes first on PATH, as if it were activated, so `python -m ...` in
    AGENTS.local.md means the same Python that runs gpuops.
    """
    env = dict(os.environ if base is None else base)
    if sys.prefix != sys.base_prefix:
        venv_bin = str(Path(sys.prefix) / "bin")
        path = env.get("PATH", "")
        if venv_bin not in path.split(os.pathsep):
            env["PATH"] = venv_bin + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")  # so Python servers' lines reach the log as they happen
    env.update(recipe.env)
    env[TAG_VAR] = tag
    return env


def launch(recipe: ServerRecipe, log_path: Path, cwd: Path, tag: str) -> subprocess.Popen:
    """Start the command in its own session: it outlives `inv`, Ctrl-C and a closed terminal."""
    env = child_environment(recipe, tag)
    argv = ["bash", "-c", recipe.script] if recipe.shell else [os.path.expanduser(a) if a.startswith("~") else a
                                                                 for a in recipe.argv]
    with open(log_path, "ab", buffering=0) as log:
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            raise StartupFailed(f"could not run {argv[0]}: {err.strerror or err}",
                                hint=f"check the command in {recipe.path}:{recipe.line}") from None


def launch_recorded(recipe: ServerRecipe, run_dir: RunDir, cwd: Path, ep: Endpoint, engine: engines.Engine,
                    gpus: list[int]) -> tuple[StateRecord, subprocess.Popen, int]:
    """Create the log, launch, save the state record. Returns (record, process, header length)."""
    log_path = create_log(run_dir.logs, recipe.name)
    header = log_header(recipe, cwd, ep)
    log_path.write_text(header)
    tag = f"{recipe.name}:{uuid.uuid4().hex[:12]}"
    proc = launch(recipe, log_path, cwd, tag)
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:  # it died already; the watch reports why
        create_time = 0.0
    record = StateRecord(
        name=recipe.name, pid=proc.pid, create_time=create_time, pgid=proc.pid, tag=tag,
        host=ep.host, port=ep.port, url=ep.url, log_path=str(log_path.resolve()),  # found from any folder
        command=mask_secrets(recipe.script, recipe.env), cwd=str(cwd),
        engine=engine.name, health_path=engine.health_path, gpus=list(gpus),
    )
    state.save(run_dir, record)
    return record, proc, len(header.encode())
