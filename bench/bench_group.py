"""Several servers at once: `inv start-server --all` against starting them one after another.

    .venv/bin/python bench/bench_group.py [--rounds 5] [--loads 1,2,3]

Three demo servers (`python -m gpuops.demo`, loading for 1, 2 and 3 s) in one project, timed side by
side in each round (each side starts from nothing; everything is stopped between, not timed):
1. `inv start-server --all --no-follow --no-smoke`: all three together;
2. three `inv start-server --server X --no-follow --no-smoke`, one after another (what a justfile does);
3. the slowest one alone (`--server` of the 3 s one): the floor for (1).
Prints the median wall times and the ratios; the goal: --all within 1.1x the slowest single start,
where one after another costs about the sum.

    started 3 servers (loads 1, 2, 3 s), median of 5 rounds
    --all together                       3796 ms   (min 3663, max 3942)
    slowest alone (gamma, 3 s)           3686 ms   --all / slowest: 1.03x   (target <= 1.1x: met)
    one after another                    7893 ms   sequential / --all: 2.08x   (sum of loads 6 s)
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

INV = str(Path(sys.executable).with_name("inv"))
NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
START = ("start-server", "--no-follow", "--no-smoke")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(tmp: Path, loads: list[float]) -> tuple[Path, list[str]]:
    """A project folder with one demo-server recipe per load time; returns it and the recipe names."""
    folder = tmp / "project"
    folder.mkdir()
    (folder / "tasks.py").write_text("from gpuops.cli import project_tasks\n\nns = project_tasks(__file__)\n")
    names = list(NAMES[:len(loads)])
    sections = [f"## Server: {name}\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS={load} {sys.executable} -m gpuops.demo "
                f"--host 127.0.0.1 --port {free_port()}\n```\n\n" for name, load in zip(names, loads, strict=True)]
    (folder / "AGENTS.local.md").write_text("# Bench servers\n\n" + "".join(sections))
    return folder, names


def run(args: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.run([INV, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"inv {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def timed(steps: list[list[str]], cwd: Path, env: dict) -> float:
    """Wall seconds of the commands run one after another; everything is stopped afterwards (not timed)."""
    began = time.perf_counter()
    for args in steps:
        run(args, cwd, env)
    elapsed = time.perf_counter() - began
    run(["stop-server", "--all"], cwd, env)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loads", default="1,2,3", help="load seconds of the servers, comma-separated")
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    if not 1 <= len(loads) <= len(NAMES):
        parser.error(f"--loads: 1 to {len(NAMES)} servers")
    env = dict(os.environ, COLUMNS="200")
    env.pop("GPUOPS_SERVER", None)
    tmp = Path(tempfile.mkdtemp(prefix="gpuops-bench-group-"))
    folder = tmp / "project"
    try:
        folder, names = project(tmp, loads)
        slowest = names[loads.index(max(loads))]
        timed([[*START, "--server", names[0]]], folder, env)  # warm the file cache
        together, one_by_one, alone = [], [], []
        for _ in range(args.rounds):  # the sides alternate: machine noise hits all three alike
            together.append(timed([[*START, "--all"]], folder, env))
            one_by_one.append(timed([[*START, "--server", n] for n in names], folder, env))
            alone.append(timed([[*START, "--server", slowest]], folder, env))
        t, s, a = (statistics.median(x) for x in (together, one_by_one, alone))
        shown = ", ".join(f"{x:g}" for x in loads)
        print(f"started {len(names)} servers (loads {shown} s), median of {args.rounds} rounds")
        print(f"{'--all together':<34} {t * 1000:6.0f} ms   (min {min(together) * 1000:.0f}, "
              f"max {max(together) * 1000:.0f})")
        print(f"{f'slowest alone ({slowest}, {max(loads):g} s)':<34} {a * 1000:6.0f} ms   --all / slowest: "
              f"{t / a:.2f}x   (target <= 1.1x: {'met' if t / a <= 1.1 else 'NOT met'})")
        print(f"{'one after another':<34} {s * 1000:6.0f} ms   sequential / --all: {s / t:.2f}x   "
              f"(sum of loads {sum(loads):g} s)")
    finally:
        if folder.exists():
            subprocess.run([INV, "stop-server", "--all"], cwd=folder, env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
