"""GPU inventory speed, side by side: one NVML session against nvidia-smi queries (one process each).

    .venv/bin/python bench/bench_gpus.py [--reps 20]

1. in-process: gpuops' inventory() + render_table (one NVML session, psutil for user/command)
   against `nvidia-smi --query-gpu=...` + `nvidia-smi --query-compute-apps=...` (two processes,
   the pair a script runs to get the same GPUs + processes, without users or command lines).
2. end to end: `inv gpus` as a user types it (Python start-up + Invoke + one NVML session)
   against the same nvidia-smi pair.

Prints the median of each and the ratio (nvidia-smi pair / gpuops). Exits 0 with a "skipped:" line
where there is no GPU (or no nvidia-smi to compare with).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rich.console import Console  # noqa: E402

from gpuops.gpu import inventory as gpus  # noqa: E402

SMI_QUERIES = [
    ["--query-gpu=index,name,uuid,memory.used,memory.total,utilization.gpu", "--format=csv,noheader,nounits"],
    ["--query-compute-apps=gpu_uuid,pid,used_memory,process_name", "--format=csv,noheader,nounits"],
]


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: page cache, driver state
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def inventory_and_render() -> None:
    inv = gpus.inventory()
    gpus.render_table(inv, Console(file=io.StringIO(), width=200))


def smi_pair(smi: str) -> None:
    for query in SMI_QUERIES:
        subprocess.run([smi, *query], check=True, capture_output=True)


def inv_gpus() -> None:
    inv_bin = Path(sys.executable).parent / "inv"
    subprocess.run([str(inv_bin), "gpus"], check=True, capture_output=True, cwd=HERE.parent,
                   env={**os.environ, "COLUMNS": "200"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions of each (median reported)")
    args = parser.parse_args()

    inv = gpus.inventory()
    if inv.unavailable:
        print(f"skipped: no GPU ({inv.unavailable})")
        return 0
    procs = sum(len(g.processes) for g in inv.gpus)
    print(f"{len(inv.gpus)} GPU(s): {', '.join(sorted({g.name for g in inv.gpus}))}; driver {inv.driver}; "
          f"{procs} GPU process(es); {args.reps} repetitions, medians")

    ours = median_seconds(inventory_and_render, args.reps)
    print(f"  inventory() + render, in-process (1 NVML session)  {ours * 1000:8.1f} ms")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        print("skipped: nvidia-smi not found on PATH, nothing to compare with")
        return 0
    pair = median_seconds(lambda: smi_pair(smi), args.reps)
    cli = median_seconds(inv_gpus, args.reps)
    print(f"  `inv gpus`, end to end (new Python process)         {cli * 1000:8.1f} ms")
    print(f"  nvidia-smi --query-gpu + --query-compute-apps       {pair * 1000:8.1f} ms")
    print(f"ratio nvidia-smi pair / inventory() in-process: {pair / ours:.1f}x")
    print(f"ratio nvidia-smi pair / `inv gpus` end to end:  {pair / cli:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
