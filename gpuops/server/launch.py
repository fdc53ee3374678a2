"""Launch a server detached: its log (header first), its environment, its own session, its record.

    ep = endpoint_of(recipe, engines.detect(recipe.argv))
    ep.url
    'http://127.0.0.1:8000'
    record, proc, offset = launch_recorded(recipe, RunDir("do_not_commit"), Path("."), ep, engine, gpus=[0])
    record.log_path                 # the server's own output starts at byte `offset`
    '/home/alice/proj/do_not_commit/server_logs/server-20261122-101500.log'

A launched server is never left untracked: the command is started behind a gate (a `sh` that waits
on a pipe) and only runs once its state record is saved. If anything fails or is interrupted before
that (a full disk, Ctrl-C, even kill -9 of gpuops: the pipe closes), the gate exits without running it.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
    """What the terminal shows before the server runs: when, where, the command (secrets masked), and
    a warning when only the container it runs in could reach it (container.binding_note)."""
    from gpuops.server.container import binding_note

    where = f"{ep.host}:{ep.port}" if ep.port else ep.host
    lines = [f"starting '{recipe.name}' at {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}, "
             f"listening on {where}" + (f", {ep.url}" if ep.url else "")]
    lines += [f"  {line}" for line in recipe.display(mask=True).splitlines()]
    note = binding_note(ep.host, ep.port)
    return lines + ([f"warning: {note}"] if note else [])


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


# Waits for "go" on stdin, then becomes the server (same PID, same start time, same session) with
# stdin from /dev/null; end of input without "go" (gpuops failed, was interrupted or killed) exits 125.
GATE = 'read -r go || exit 125; [ "$go" = go ] || exit 125; exec "$@" </dev/null'


@dataclass
class Gated:
    """A launched command that waits at its gate: `release()` runs it, `abort()` ends it unrun."""

    proc: subprocess.Popen
    _go: int | None  # the pipe's write end

    def release(self) -> None:
        """Let the command run: it execs in place of the gate (an ended gate is the watch's to report)."""
        fd, self._go = self._go, None
        if fd is None:
            return
        try:
            os.write(fd, b"go\n")
        except BrokenPipeError:  # the gate is gone already (killed): the watch sees it exit
            pass
        finally:
            os.close(fd)

    def abort(self) -> None:
        """The command never runs: close the pipe (the gate exits 125), and reap the gate."""
        fd, self._go = self._go, None
        if fd is not None:
            os.close(fd)
        try:  # its whole session: released a moment ago, it may have started children
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


def launch(recipe: ServerRecipe, log_path: Path, cwd: Path, tag: str) -> Gated:
    """Start the command in its own session, held at its gate: once released it outlives `inv`, Ctrl-C
    and a closed terminal."""
    env = child_environment(recipe, tag)
    argv = ["bash", "-c", recipe.script] if recipe.shell else [os.path.expanduser(a) if a.startswith("~") else a
                                                                 for a in recipe.argv]
    wait_end, go = os.pipe()  # not inherited by anything but the gate's stdin
    try:
        with open(log_path, "ab", buffering=0) as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", GATE, "gpuops-gate", *argv],
                cwd=cwd,
                env=env,
                stdin=wait_end,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as err:
        os.close(go)
        raise StartupFailed(f"could not run {argv[0]}: {err.strerror or err}",
                            hint=f"check the command in {recipe.path}:{recipe.line}") from None
    except BaseException:
        os.close(go)  # a gate started before the interrupt exits at once
        raise
    finally:
        os.close(wait_end)
    return Gated(proc, go)


def pause_point(name: str) -> None:
    """A test hook: with GPUOPS_TEST_PAUSE=name and GPUOPS_TEST_SYNC=folder, create folder/paused-NAME
    and wait until folder/resume-NAME exists (tests interrupt or change things at exactly that point)."""
    if os.environ.get("GPUOPS_TEST_PAUSE") != name:
        return
    sync = Path(os.environ["GPUOPS_TEST_SYNC"])
    (sync / f"paused-{name}").touch()
    while not (sync / f"resume-{name}").exists():
        time.sleep(0.01)


def launch_recorded(recipe: ServerRecipe, run_dir: RunDir, cwd: Path, ep: Endpoint, engine: engines.Engine,
                    gpus: list[int], share_gpus: bool = False) -> tuple[StateRecord, subprocess.Popen, int]:
    """Create the log, launch at the gate, save the state record, then let the command run.
    Returns (record, process, header length). Whatever fails or interrupts it before the record is
    saved, the command has not run and nothing is left behind (but the log)."""
    header = log_header(recipe, cwd, ep)
    log_path = _new_log(run_dir, recipe.name, header)
    tag = f"{recipe.name}:{uuid.uuid4().hex[:12]}"
    pause_point("launch")
    gated = launch(recipe, log_path, cwd, tag)
    saved = False
    try:
        pause_point("record")
        proc = gated.proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # the gate was killed already; the watch reports it
            create_time = 0.0
        record = StateRecord(
            name=recipe.name, pid=proc.pid, create_time=create_time, pgid=proc.pid, tag=tag,
            host=ep.host, port=ep.port, url=ep.url, log_path=str(log_path.resolve()),  # found from any folder
            command=mask_secrets(recipe.script, recipe.env), cwd=str(cwd),
            engine=engine.name, health_path=engine.health_path, gpus=list(gpus), share_gpus=share_gpus,
        )
        state.save(run_dir, record)
        saved = True
        pause_point("release")
        gated.release()
    except BaseException:
        gated.abort()
        if saved:  # the record of a command that never ran would read as a crash
            with contextlib.suppress(OSError):
                state.remove(run_dir, recipe.name)
        raise
    pause_point("released")
    return record, proc, len(header.encode())


def _new_log(run_dir: RunDir, name: str, header: str) -> Path:
    """A new log holding `header`; a run folder that cannot take it is one clear error, nothing launched."""
    log_path = None
    try:
        log_path = create_log(run_dir.logs, name)
        with open(log_path, "w") as f:
            f.write(header)
    except OSError as err:
        if log_path is not None:
            with contextlib.suppress(OSError):
                log_path.unlink()
        where = log_path or (Path(err.filename) if err.filename else run_dir.logs / f"{name}-*.log")
        raise state.run_folder_error(where, err) from None
    return log_path
