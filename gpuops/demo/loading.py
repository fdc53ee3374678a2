"""The simulated model load: what is printed when, before the port is bound (like vLLM).

    >>> [s.text for s in load_plan("m", 2.0, "none", "127.0.0.1", 8000)][:3]
    ['Simulated inference server (gpuops demo): no GPU is used, the weights are not real',
     'Loading model m (simulated weights, 4 shards)',
     'Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]']
    >>> progress_line(1, 4, 0.4, 1.2)
    'Loading safetensors checkpoint shards:  25% Completed | 1/4 [00:00<00:01,  2.50it/s]'

`load_plan` decides (pure); `run_plan` prints it against a monotonic schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gpuops.demo.console import Console

SHARDS = 4
WEIGHTS_GIB = 0.73
KV_CACHE_GIB = 61.40
WEIGHTS_SHARE = 0.8  # of load_seconds spent on the shards; the rest is "profiling" and "graph capture"
CRASH_AFTER_SHARDS = 2  # crash_oom dies halfway through the weights
PROGRESS = "Loading safetensors checkpoint shards"


@dataclass(frozen=True)
class Step:
    at: float  # seconds after loading began
    text: str
    stamped: bool = True  # False: a progress bar line (tqdm prints no log prefix)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def progress_line(done: int, total: int, elapsed: float, remaining: float) -> str:
    """A tqdm progress line as vLLM's shard loader prints it."""
    percent = f"{100 * done // total:3d}%"
    if done == 0 or elapsed <= 0:
        timing = f"{_clock(elapsed)}<?, ?it/s"
    else:
        rate = done / elapsed
        speed = f"{rate:5.2f}it/s" if rate >= 1 else f"{1 / rate:5.2f}s/it"
        timing = f"{_clock(elapsed)}<{_clock(remaining)}, {speed}"
    return f"{PROGRESS}: {percent} Completed | {done}/{total} [{timing}]"


def load_plan(model: str, load_seconds: float, fault: str, host: str, port: int) -> list[Step]:
    """The lines of the load phase and when each appears; crash_oom and hang cut it short."""
    weights = load_seconds * WEIGHTS_SHARE
    per_shard = weights / SHARDS
    steps = [
        Step(0.0, "Simulated inference server (gpuops demo): no GPU is used, the weights are not real"),
        Step(0.0, f"Loading model {model} (simulated weights, {SHARDS} shards)"),
        Step(0.0, progress_line(0, SHARDS, 0.0, 0.0), stamped=False),
    ]
    if fault == "hang":
        return steps
    for k in range(1, SHARDS + 1):
        steps.append(Step(k * per_shard, progress_line(k, SHARDS, k * per_shard, (SHARDS - k) * per_shard),
                          stamped=False))
        if fault == "crash_oom" and k == CRASH_AFTER_SHARDS:
            return steps
    rest = load_seconds - weights
    steps += [
        Step(weights, f"Model loading took {WEIGHTS_GIB:.2f} GiB and {weights:.2f} seconds"),
        Step(weights + rest / 2, f"Available KV cache memory: {KV_CACHE_GIB:.2f} GiB (simulated)"),
        Step(weights + rest / 2, "Capturing CUDA graphs (simulated)"),
        Step(load_seconds, f"Graph capturing finished in {rest / 2:.2f} secs"),
        Step(load_seconds, f"Starting demo API server on http://{host}:{port}"),
    ]
    return steps


def run_plan(steps: list[Step], console: Console, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Print each step at its time after the start; sleeping to absolute times keeps delays from adding up."""
    start = clock()
    for step in steps:
        wait = start + step.at - clock()
        if wait > 0:
            sleep(wait)
        if step.stamped:
            console.info(step.text)
        else:
            console.raw(step.text)
