"""The bundled demo server (`python -m gpuops.demo`) as tests run it: one process in its own session, as
gpuops starts servers, tagged so that its workers are found wherever they went.

    server = DemoServer.start(tmp_path, port=free_port(), ttft_ms=100).wait_healthy()
    requests.get(server.url + "/health")           # {"status": "ok"}
    server.stop()                                  # its group, then anything still carrying its tag

Tests get it from the `demo` fixture (tests/support/fixtures.py), which picks the port and stops every
server it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

TAG_VAR = "GPUOPS_SERVER"  # gpuops' tag variable: the server's workers inherit it


@dataclass
class DemoServer:
    proc: subprocess.Popen
    port: int
    tag: str
    log: Path | None  # stdout and stderr together; None when started with log=False

    @classmethod
    def start(cls, folder: Path, *args: str, port: int, load_seconds: float = 0.1, ttft_ms: float = 10,
              itl_ms: float = 2, model: str | None = None, profile_delay: float | None = None,
              env: dict[str, str] | None = None, log: bool = True) -> DemoServer:
        """Start it in `folder` (its working directory, and where its log goes) and return at once.

        The timing, model and profile delay travel as GPUOPS_DEMO_* variables, so that `env` and `args`
        (flags beat variables) can still override them."""
        tag = f"demo-test:{uuid.uuid4().hex[:12]}"
        environ = {**os.environ, "GPUOPS_DEMO_LOAD_SECONDS": str(load_seconds),
                   "GPUOPS_DEMO_TTFT_MS": str(ttft_ms), "GPUOPS_DEMO_ITL_MS": str(itl_ms)}
        environ.pop("PYTHONUNBUFFERED", None)  # the demo must flush by itself: a log file is block-buffered
        if model is not None:
            environ["GPUOPS_DEMO_MODEL"] = model
        if profile_delay is not None:
            environ["GPUOPS_DEMO_PROFILE_DELAY"] = str(profile_delay)
        environ.update(env or {})
        environ[TAG_VAR] = tag
        log_path = folder / f"demo-{port}.log" if log else None
        with open(log_path or os.devnull, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gpuops.demo", "--port", str(port), *args],
                                    cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=environ, start_new_session=True)
        return cls(proc, port, tag, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log else "(no log: started with log=False)"

    def healthy(self) -> bool:
        import requests  # here, not at the top: this plugin loads for every run, tests/unit included

        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> DemoServer:
        """Return once GET /health answers 200; fail with its log if it exits or takes longer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited with {self.proc.returncode}:\n{self.output}")
            if self.healthy():
                return self
            time.sleep(0.05)
        raise AssertionError(f"the demo was not healthy within {timeout} s:\n{self.output}")

    def tagged(self) -> list[psutil.Process]:
        """Live processes carrying this demo's tag: the server and every worker, wherever they went."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(TAG_VAR) == self.tag and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def kill(self) -> None:
        """SIGKILL its whole group (as the OOM killer or a segfault would end it) and reap it."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its group, SIGKILL after `grace` s; then SIGKILL whatever still carries its tag (workers
        outlive a killed server by design, and the orphan worker leaves the group)."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            _signal_group(self.proc.pid, signal.SIGCONT)  # a SIGSTOPped server acts on SIGTERM once continued
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        leftovers = self.tagged()
        for p in leftovers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=5)

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
