"""The two profiler protocols the demo speaks, and when their trace files appear.

    GET /profile?dir=D&num_steps=N&with_stack=false   (Fireworks style) answers at once; profile_delay
        seconds later generator-0-0.<ms>.pt.trace.json and generator-1-0.<ms>.pt.trace.json grow in D.
    POST /start_profile, POST /stop_profile            (vLLM style, only with VLLM_TORCH_PROFILER_DIR)
        stop answers after <hostname>_<pid>.<ns>.pt.trace.json.gz is written (it takes ~0.5 s).

    >>> parse_profile_query({"dir": "prof", "num_steps": "5"})
    ProfileRequest(dir='prof', num_steps=5, with_stack=False)
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gpuops.demo import traces
from gpuops.demo.console import Console
from gpuops.demo.protocol import BadRequest

GENERATORS = 2  # Fireworks writes one trace per generator process
MAX_STEPS = 100  # more would write tens of megabytes of made-up events
GROW_SECONDS = 1.0  # how long each Fireworks file keeps growing
VLLM_STOP_SECONDS = 0.5  # real stops are slow: torch exports and gzips the trace before answering
VLLM_MAX_STEPS = 50


class ProfilerConflict(Exception):
    """The request does not fit the capture state (already running, or not running); answered with 409."""


@dataclass(frozen=True)
class ProfileRequest:
    dir: str
    num_steps: int
    with_stack: bool


def parse_profile_query(query) -> ProfileRequest:
    """Check GET /profile's query parameters; raises BadRequest naming the bad one."""
    directory = (query.get("dir") or "").strip()
    if not directory:
        raise BadRequest("query parameter 'dir' is required: where to write the trace files", "dir")
    raw_steps = query.get("num_steps")
    if raw_steps is None:
        raise BadRequest("query parameter 'num_steps' is required", "num_steps")
    try:
        steps = int(raw_steps)
    except ValueError:
        raise BadRequest(f"'num_steps' must be an integer, got {raw_steps!r}", "num_steps") from None
    if not 1 <= steps <= MAX_STEPS:
        raise BadRequest(f"'num_steps' must be between 1 and {MAX_STEPS}, got {steps}", "num_steps")
    raw_stack = (query.get("with_stack") or "false").lower()
    if raw_stack not in ("true", "false"):
        raise BadRequest(f"'with_stack' must be true or false, got {query.get('with_stack')!r}", "with_stack")
    return ProfileRequest(directory, steps, raw_stack == "true")


class FireworksProfiler:
    """Answers at once; a background thread writes the per-generator traces `delay` seconds later."""

    def __init__(self, console: Console, delay: float, grow_seconds: float = GROW_SECONDS):
        self.console = console
        self.delay = delay
        self.grow_seconds = grow_seconds
        self._busy = threading.Lock()

    def start(self, req: ProfileRequest) -> None:
        if not self._busy.acquire(blocking=False):
            raise ProfilerConflict("a profile is already being captured; wait for its files, then ask again")
        threading.Thread(target=self._capture, args=(req,), name="demo-profiler", daemon=True).start()

    def _capture(self, req: ProfileRequest) -> None:
        try:
            self.console.info(f"profiling {req.num_steps} steps into {req.dir} (with_stack={req.with_stack})")
            time.sleep(self.delay)
            folder = Path(req.dir)
            folder.mkdir(parents=True, exist_ok=True)
            now_us = time.time() * 1e6
            files = {}
            for generator in range(GENERATORS):
                ts_ms = int(time.time() * 1000)
                name = traces.generator_trace_name(generator, 0, ts_ms)
                trace = traces.make_trace(req.num_steps, seed=generator, pid=os.getpid() + generator,
                                          start_us=now_us, with_stack=req.with_stack, rank=generator,
                                          world_size=GENERATORS, trace_name=name)
                files[folder / name] = json.dumps(trace)
            traces.write_growing(files, self.grow_seconds)
            self.console.info(f"profiler wrote {', '.join(str(p) for p in files)}")
        except OSError as err:
            self.console.error(f"profiler could not write traces to {req.dir}: {err}")
        finally:
            self._busy.release()


class VllmProfiler:
    """Like vLLM with VLLM_TORCH_PROFILER_DIR: start_profile begins a capture, stop_profile writes it."""

    def __init__(self, console: Console, directory: str, stop_seconds: float = VLLM_STOP_SECONDS):
        self.console = console
        self.folder = Path(directory)
        self.stop_seconds = stop_seconds
        self.started_us: float | None = None
        self.tokens = 0
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)  # vLLM creates it at start-up too
        console.info(f"Torch profiler enabled. Traces will be saved to: {self.folder}")

    @property
    def running(self) -> bool:
        return self.started_us is not None

    def note_token(self) -> None:
        if self.started_us is not None:
            self.tokens += 1

    def start(self) -> None:
        with self._lock:
            if self.started_us is not None:
                raise ProfilerConflict("the profiler is already running; POST /stop_profile first")
            self.started_us, self.tokens = time.time() * 1e6, 0
        self.console.info("Starting profiler...")

    def stop(self) -> Path:
        """Blocking (run it off the event loop): export and gzip the trace, taking at least stop_seconds."""
        begin = time.monotonic()
        with self._lock:
            if self.started_us is None:
                raise ProfilerConflict("the profiler is not running; POST /start_profile first")
            started, steps = self.started_us, max(1, min(VLLM_MAX_STEPS, self.tokens))
            self.started_us = None
        self.console.info("Stopping profiler...")
        name = traces.vllm_trace_name(socket.gethostname(), os.getpid(), time.time_ns())
        path = self.folder / name
        traces.write_gzip(path, traces.make_trace(steps, pid=os.getpid(), start_us=started, trace_name=name))
        time.sleep(max(0.0, self.stop_seconds - (time.monotonic() - begin)))
        self.console.info(f"Profiler stopped; trace written to {path}")
        return path
