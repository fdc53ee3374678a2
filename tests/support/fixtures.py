"""Shared fixtures (loaded as a pytest plugin, see pyproject): a throwaway project folder, the gpuops CLI run for real, free ports, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def _kill_tagged_under(folder: Path) -> None:
    """Kill every process started from a test project (tagged by gpuops, cwd inside the folder)."""
    for p in psutil.process_iter(["pid"]):
        try:
            env = p.environ()
            if "GPUOPS_SERVER" in env and str(p.cwd()).startswith(str(folder)):
                p.kill()
        except (psutil.Error, OSError):
            continue


def kill_groups(procs: list[subprocess.Popen]) -> None:
    """Fixture teardown for processes started with start_new_session=True: SIGKILL each one's whole
    process group (children too), reap the leader, close its pipe."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Project:
    """A folder with its own AGENTS.local.md and do_not_commit/, where gpuops runs as a user would."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
        self.env.pop("GPUOPS_SERVER", None)

    def write_agents(self, body: str) -> Path:
        path = self.root / "AGENTS.local.md"
        path.write_text(textwrap.dedent(body))
        return path

    def demo_agents(self, port: int, *, env: str = "", args: str = "", title: str = "## Server") -> Path:
        return self.write_agents(
            f"{title}\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.3 GPUOPS_DEMO_TTFT_MS=10 GPUOPS_DEMO_ITL_MS=2 {env} \\\n"
            f"  {sys.executable} -m gpuops.demo --port {port} {args}\n```\n"
        )

    def gpuops(self, *args: str, timeout: float = 60, env: dict | None = None) -> Result:
        proc = subprocess.run([sys.executable, "-m", "gpuops", *args], cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def spawn(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "gpuops", *args], cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL)

    @property
    def run_dir(self) -> Path:
        return self.root / "do_not_commit"

    def record(self, name: str = "server") -> dict:
        import json

        return json.loads((self.run_dir / "state" / f"{name}.json").read_text())


@pytest.fixture
def project(tmp_path):
    proj = Project(tmp_path)
    yield proj
    _kill_tagged_under(tmp_path)


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def stranger():
    """A process that is not ours holding a port: a plain HTTP server in its own session."""
    procs = []

    def start(port: int) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return p
            time.sleep(0.05)
        raise RuntimeError("stranger server did not start")

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
