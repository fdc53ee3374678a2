"""Watch a starting server: follow its log, probe its health, decide ready | exited | hung | timed out.

    outcome = wait_until_ready(log, engine, url, exit_code=proc.poll, write=print)
    outcome.state, round(outcome.elapsed, 2)
    ('ready', 3.27)

The log is read every few milliseconds (a read() of nothing costs a syscall), and health is probed
the moment a ready line appears, so "ready" is reported within tens of milliseconds of the server
being ready, without a sleep-and-poll loop. Engines without a known ready line are probed once a second.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gpuops.server.engines import Diagnosis, Engine, diagnose
from gpuops.server.health import HealthProbe
from gpuops.server.logs import LogReader

READ_INTERVAL = 0.005  # seconds between log reads while nothing new arrives
PROBE_INTERVAL = 1.0  # health probe when no ready line has told us to look
READY_RECHECK = 0.05  # after a ready line whose probe failed, look again this soon
PROGRESS_INTERVAL = 2.0  # a progress bar redrawn with \r is streamed at most this often


@dataclass
class Outcome:
    state: str  # "ready" | "exited" | "hung" | "timeout"
    elapsed: float  # seconds since watching began
    exit_code: int | None = None
    tail: list[str] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    ready_line: str | None = None
    quiet: float = 0.0  # seconds since the log last grew


def wait_until_ready(
    log_path,
    engine: Engine,
    base_url: str | None,
    *,
    exit_code: Callable[[], int | None],
    write: Callable[[str], None] = lambda line: None,
    hang_timeout: float = 60.0,
    start_timeout: float = 1800.0,
    offset: int | None = 0,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Stream the log to `write` until the server is ready, exits, goes quiet, or runs out of time.

    `exit_code()` returns None while the server runs (Popen.poll, or a psutil check for a server
    started by another gpuops process). Reading starts at byte `offset` (None: the current end).
    """
    t0 = clock()
    last_output = t0
    tail: deque[str] = deque(maxlen=200)
    probe = HealthProbe(base_url, engine) if base_url and engine.health_path else None
    next_probe = t0 + PROBE_INTERVAL
    ready_line: str | None = None
    shown_progress, next_progress = "", t0

    def result(state: str, code: int | None = None) -> Outcome:
        lines = list(tail)
        now = clock()
        return Outcome(state, now - t0, code, lines[-40:], diagnose(lines) if state != "ready" else None,
                       ready_line, quiet=now - last_output)

    with LogReader(log_path, start_at_end=offset is None, offset=offset or 0) as reader:
        while True:
            lines = reader.read_lines()
            now = clock()
            for line in lines:
                tail.append(line)
                write(line)
                if ready_line is None and engine.is_ready_line(line):
                    ready_line = line
                    next_probe = now  # look right away
            if reader.grew:  # bytes count as output: a download bar redrawn with \r is not a hang
                last_output = now
                bar = reader.progress()
                if bar and bar != shown_progress and now >= next_progress:
                    write(bar)
                    shown_progress, next_progress = bar, now + PROGRESS_INTERVAL

            if ready_line is not None and probe is None:
                return result("ready")
            if probe is not None and now >= next_probe:
                if probe():
                    return result("ready")
                next_probe = now + (READY_RECHECK if ready_line is not None else PROBE_INTERVAL)

            code = exit_code()
            if code is not None:
                for line in reader.read_lines() + reader.flush_partial():
                    tail.append(line)
                    write(line)
                return result("exited", code)
            if now - last_output >= hang_timeout:
                return result("hung")
            if now - t0 >= start_timeout:
                return result("timeout")
            if not lines:
                time.sleep(READ_INTERVAL)
