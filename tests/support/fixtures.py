"""Shared fixtures (loaded as a pytest plugin, see pyproject): a throwaway project folder, the gpuops CLI run for real, free ports, cleanup.

Fixtures: `project`, `port`, `stranger`, `demo` (demo servers, tests/support/demo.py), `scripted` (HTTP servers
with scripted answers, tests/support/scripted.py). Test modules import helpers from here and from those modules,
never from another test module.
"""

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

from support.demo import DemoServer
from support.scripted import scripted_servers

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    config.addinivalue_line("markers", "demo_options(**options): defaults for the servers the demo fixture "
                                       "starts in this module, class or test (options of DemoServer.start)")


def repo_pythonpath() -> str:
    """PYTHONPATH with this checkout first: a subprocess imports this gpuops, installed or not."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


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


def gpuops(project: Project, *args: str, timeout: float = 60) -> Result:
    """The CLI in a project folder, importing this checkout's gpuops (see repo_pythonpath)."""
    return project.gpuops(*args, timeout=timeout, env={"PYTHONPATH": repo_pythonpath()})


def save_record(project: Project, proc: subprocess.Popen, url: str, log: Path | None, engine: str = "demo",
                name: str = "server"):
    """A state record in the project for a server the test started, as `inv start-server` leaves one."""
    from gpuops.rundir import RunDir
    from gpuops.server import state

    rec = state.StateRecord(name=name, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                            pgid=os.getpgid(proc.pid), tag=f"{name}:test", host="127.0.0.1",
                            port=int(url.rsplit(":", 1)[1]), url=url, log_path=str(log) if log else "",
                            command="(test)", cwd=str(project.root), engine=engine)
    state.save(RunDir(project.run_dir), rec)
    return rec


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


@pytest.fixture
def demo(request, tmp_path):
    """Start demo servers: demo(*args, **options) -> DemoServer, once healthy (wait=False: at once, for
    servers that crash or hang). Options: those of DemoServer.start (ttft_ms=..., env={...}, log=False, ...),
    defaults from a `demo_options` mark; folder (tmp_path) and port (a free one). `with demo() as d:` stops
    it at the block's end; every server started is stopped afterwards, with its workers."""
    mark = request.node.get_closest_marker("demo_options")
    defaults = mark.kwargs if mark else {}
    started: list[DemoServer] = []

    def start(*args: str, folder: Path | None = None, port: int | None = None, wait: bool = True,
              **options) -> DemoServer:
        options = {**defaults, **options}
        env = {"PYTHONPATH": repo_pythonpath(), **(options.pop("env", None) or {})}
        server = DemoServer.start(folder or tmp_path, *args, port=port or free_port(), env=env, **options)
        started.append(server)
        return server.wait_healthy() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def scripted():
    """Start HTTP servers with scripted answers: scripted(respond) -> url (see tests/support/scripted.py)."""
    with scripted_servers() as start:
        yield start


def live_tagged(root: Path) -> list[psutil.Process]:
    """Processes started from this project (gpuops' tag in their environment, cwd inside it), zombies aside."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if "GPUOPS_SERVER" in p.environ() and str(p.cwd()).startswith(str(root)) \
                    and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def port_free(port: int) -> bool:
    """Nothing listens on `port` (TCP, any address)."""
    return not [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                and c.status == psutil.CONN_LISTEN]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
