"""Start-up cost of gpuops' commands, side by side in one run with the floor they are measured against.

    .venv/bin/python bench/bench_startup.py [--runs 15]

A fleet runs `gpuops ... --json` once per host per command, and every `inv` pays its start-up:
1. `inv --list` against a bare Invoke program (a tasks.py with one empty task) listing its tasks;
2. `inv status --json` (one server on record) against the same bare program running its one task;
3. `inv start-server --no-follow --no-smoke` against the engine's own time to ready: the server
   (bench/fake_server.py, 1 s load) records the moment it prints its ready line; started directly,
   its own time is that moment minus the moment it was spawned. gpuops' overhead is the median
   command wall time minus the median direct time. Each server is stopped after (not timed).
Runs alternate between the two sides so that machine noise hits both alike; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INV = str(Path(sys.executable).with_name("inv"))

BARE_TASKS = '''from invoke import task


@task
def hello(c):
    """An empty task: the floor an Invoke program cannot go under."""
'''


def timed(argv: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(tmp: Path, port: int, mark: Path) -> Path:
    folder = tmp / "project"
    folder.mkdir()
    (folder / "tasks.py").write_text((REPO / "tasks.py").read_text())
    (folder / "AGENTS.local.md").write_text(
        f"## Server\n\n```bash\n{sys.executable} {HERE / 'fake_server.py'} --port {port} 1.0 {mark}\n```\n")
    return folder


def direct_start(port: int, mark: Path, env: dict) -> float:
    """The engine alone: spawn it, wait for its own ready mark, stop it. Seconds from spawn to ready."""
    ready = Path(f"{mark}.ready")
    ready.unlink(missing_ok=True)
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_server.py"), "--port", str(port), "1.0", str(mark)],
                            stdout=subprocess.DEVNULL, env=env)
    try:
        while not ready.exists() or not ready.read_text():
            time.sleep(0.001)
        return float(ready.read_text()) - spawned
    finally:
        proc.terminate()
        proc.wait()


def ratio_rows(name: str, ours: list[float], floor: list[float], target: float) -> str:
    a, b = statistics.median(ours), statistics.median(floor)
    verdict = "met" if a / b <= target else "NOT met"
    return f"{name:<34} {a * 1000:8.0f} ms  vs {b * 1000:8.0f} ms   {a / b:5.2f}x   (target <= {target}x: {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--starts", type=int, default=5, help="start-server runs (each loads for 1 s)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="", COLUMNS="200")
    env.pop("GPUOPS_SERVER", None)
    tmp = Path(tempfile.mkdtemp(prefix="gpuops-bench-startup-"))
    try:
        bare = tmp / "bare"
        bare.mkdir()
        (bare / "tasks.py").write_text(BARE_TASKS)
        port = free_port()
        mark = tmp / "mark"
        proj = project(tmp, port, mark)
        # one server on record, so status has something to report
        timed([INV, "start-server", "--no-follow", "--no-smoke", "--engine", "uvicorn"], proj, env)
        for _ in range(2):  # warm the file cache on both sides
            timed([INV, "--list"], bare, env)
            timed([INV, "--list"], proj, env)
        lists, bare_lists, statuses, bare_runs = [], [], [], []
        for _ in range(args.runs):
            bare_lists.append(timed([INV, "--list"], bare, env))
            lists.append(timed([INV, "--list"], proj, env))
            bare_runs.append(timed([INV, "hello"], bare, env))
            statuses.append(timed([INV, "status", "--json"], proj, env))
        timed([INV, "stop-server"], proj, env)
        walls, engine_times = [], []
        for _ in range(args.starts):
            engine_times.append(direct_start(port, mark, env))
            walls.append(timed([INV, "start-server", "--no-follow", "--no-smoke", "--engine", "uvicorn"], proj, env))
            timed([INV, "stop-server"], proj, env)
        print(f"start-up cost, median of {args.runs} runs (start-server: {args.starts} runs)")
        print(ratio_rows("inv --list", lists, bare_lists, 1.05))
        print(ratio_rows("inv status --json", statuses, bare_runs, 1.3))
        over = statistics.median(walls) - statistics.median(engine_times)
        print(f"{'start-server --no-follow --no-smoke':<34} {over * 1000:8.0f} ms over the engine's own "
              f"{statistics.median(engine_times) * 1000:.0f} ms to ready   (target <= 100 ms: "
              f"{'met' if over <= 0.1 else 'NOT met'})")
    finally:
        subprocess.run([INV, "stop-server", "--all"], cwd=tmp / "project", env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
