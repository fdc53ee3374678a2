"""The server's worker processes: spawned before loading, stopped when the server shuts down cleanly.

    pool = WorkerPool(console)
    pool.spawn(2, orphan=True, ignore_sigterm=False)   # workers 0 and 1 in our group, worker 2 not
    pool.pids                                          # -> [41240, 41241, 41242]
    pool.stop()

Workers inherit the server's environment (gpuops' GPUOPS_SERVER tag included) and, except the orphan,
its process group; that is how gpuops finds them after the server itself is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from gpuops.demo.console import Console


class WorkerPool:
    def __init__(self, console: Console):
        self.console = console
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def spawn(self, count: int, *, orphan: bool, ignore_sigterm: bool) -> None:
        for index in range(count + (1 if orphan else 0)):
            leaves_group = orphan and index == count
            cmd = [sys.executable, "-m", "gpuops.demo.worker", "--index", str(index)]
            cmd += ["--orphan"] if leaves_group else []
            cmd += ["--ignore-sigterm"] if ignore_sigterm else []
            # stdout/stderr and the environment are inherited; start_new_session runs setsid() in the child.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=leaves_group)
            self.procs.append(proc)
            where = " in its own session (left the process group)" if leaves_group else ""
            self.console.info(f"spawned worker {index} (pid {proc.pid}){where}")

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM the live workers, SIGKILL those still there after `timeout`, and reap them all."""
        alive = [p for p in self.procs if p.poll() is None]
        if not alive:
            return
        self.console.info(f"stopping {len(alive)} worker(s)")
        for p in alive:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.warning(f"worker pid {p.pid} ignored SIGTERM; killing it")
                p.kill()
                p.wait()
