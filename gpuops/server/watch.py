"""Watch a starting server: follow its log, probe its health, decide ready | exited | hung | timed out.

    outcome = wait_until_ready(log, engine, url, exit_code=proc.poll, write=print, tree=server_pids)
    outcome.state, round(outcome.elapsed, 2), outcome.url
    ('ready', 3.27, 'http://127.0.0.1:9001')

The log is read every few milliseconds (a read() of nothing costs a syscall), and health is probed
the moment a ready line appears, so "ready" is reported within tens of milliseconds of the server
being ready, without a sleep-and-poll loop. Engines without a known ready line are probed once a second.

With `tree` (the PIDs of the server's own process tree), ready also means *this* server answers: the
socket listening on the port must belong to the tree (a stranger that took the port while it loaded is
named, never called ready), and when the port was not in the command (`port_given=False`: a wrapper
script, `bash -c '...'`) it is learned from the ready line (`Uvicorn running on http://H:9001`) or
from what the tree listens on. A server that printed its ready line but listens nowhere is reported
as exactly that ("not_listening"), not as hung.

Lines for the terminal go through a bounded queue to a thread: a slow terminal drops lines (and says
how many) instead of delaying the decision; the log is read in bounded chunks (logs.READ_CHUNK).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gpuops.server.engines import Diagnosis, Engine, diagnose
from gpuops.server.health import HealthProbe
from gpuops.server.logs import LogReader

READ_INTERVAL = 0.005  # seconds between log reads while nothing new arrives
PROBE_INTERVAL = 1.0  # health probe when no ready line has told us to look
READY_RECHECK = 0.05  # after a ready line whose probe failed, look again this soon
PROGRESS_INTERVAL = 2.0  # a progress bar redrawn with \r is streamed at most this often
SHOWN_BACKLOG = 2000  # log lines waiting for a slow terminal; beyond that they are dropped (and counted)
DRAIN_WAIT = 1.0  # at the end, seconds the terminal gets to show what is still queued

# Where a ready line says the server listens: "Uvicorn running on http://0.0.0.0:9001",
# "server is listening on http://127.0.0.1:8080", "Starting httpd at 127.0.0.1 on port 8080..."
_LINE_PORT = re.compile(r"https?://(?:\[[^\]]*\]|[^\s/:\[]+):(\d{1,5})\b|\bon port (\d{1,5})\b")
# Processes that hold a container's published port for it (docker run -p, podman): the server is inside
CONTAINER_PROXIES = ("docker-proxy", "rootlessport", "rootlesskit", "slirp4netns", "pasta", "conmon")


@dataclass
class Outcome:
    state: str  # "ready" | "exited" | "hung" | "timeout" | "not_listening" (ready line, but no socket)
    elapsed: float  # seconds since watching began
    exit_code: int | None = None
    tail: list[str] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    ready_line: str | None = None
    quiet: float = 0.0  # seconds since the log last grew
    url: str | None = None  # where the server answered (or was last looked for)
    port: int | None = None  # the port of `url`
    port_learned: str | None = None  # how a port not in the command was learned: "ready line" | "listening socket"
    stranger: str | None = None  # who answered on the port instead of this server (the last one seen)
    dropped: int = 0  # log lines not shown: the terminal was slower than the log
    port_guessed: bool = False  # the port is only the engine's default: the command did not say, nothing told


def port_in_line(line: str) -> int | None:
    """The port a ready line says the server listens on, or None.

    >>> port_in_line("INFO:     Uvicorn running on http://0.0.0.0:9001 (Press CTRL+C to quit)")
    9001
    >>> port_in_line("Starting httpd at 127.0.0.1 on port 8080..."), port_in_line("Application startup complete.")
    (8080, None)
    """
    m = _LINE_PORT.search(line)
    if not m:
        return None
    port = int(m[1] or m[2])
    return port if 0 < port < 65536 else None


def with_port(url: str, port: int) -> str:
    """`url` with another port.

    >>> with_port("http://127.0.0.1:8000", 9001), with_port("http://[::1]:8000", 9001)
    ('http://127.0.0.1:9001', 'http://[::1]:9001')
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or 'http'}://{netloc}:{port}"


def _port_of(url: str | None) -> int | None:
    try:
        return urlsplit(url).port if url else None
    except ValueError:
        return None


class _Terminal:
    """Shows lines through a bounded queue and a thread: a slow (or stuck) terminal never holds up the
    watch; lines that do not fit are dropped and counted."""

    def __init__(self, write: Callable[[str], None], limit: int = SHOWN_BACKLOG):
        self._write = write
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=limit)
        self._discard = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="gpuops-log-shown", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                return
            if self._discard.is_set():
                self.dropped += 1
                continue
            try:
                self._write(line)
            except Exception:  # noqa: BLE001 - a closed terminal must not end the watch
                self._discard.set()

    def show(self, lines: Iterable[str]) -> None:
        for line in lines:
            try:
                self._queue.put_nowait(line)
            except queue.Full:
                self.dropped += 1

    def close(self, wait: float = DRAIN_WAIT) -> int:
        """Let the terminal show what is queued for up to `wait` s, drop the rest; the count dropped."""
        deadline = time.monotonic() + wait
        while not self._queue.empty() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.005)
        self._discard.set()
        while True:  # the writer may be stuck in a write: make room for the end mark ourselves
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    if self._queue.get_nowait() is not None:
                        self.dropped += 1
                except queue.Empty:
                    pass
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
        return self.dropped


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
    tree: Callable[[], Iterable[int]] | None = None,
    port_given: bool = True,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Stream the log to `write` until the server is ready, exits, goes quiet, or runs out of time.

    `exit_code()` returns None while the server runs (Popen.poll, or a psutil check for a server
    started by another gpuops process). Reading starts at byte `offset` (None: the current end).
    `tree()`: the PIDs of the server's process tree (None: the port's owner is not checked).
    `port_given`: the port of `base_url` is the command's own (False: the engine's default, to be
    learned). `say` gets gpuops' own notes (default: `write`).
    """
    from gpuops.server import procs

    say = say or write
    t0 = clock()
    last_output = t0
    tail: deque[str] = deque(maxlen=200)
    url = base_url
    probe = HealthProbe(url, engine) if url and engine.health_path else None
    next_probe = t0 + PROBE_INTERVAL
    ready_line: str | None = None
    learned: str | None = None
    stranger: str | None = None
    shown_progress, next_progress = "", t0
    terminal = _Terminal(write)
    ready_rx = re.compile("|".join(f"(?:{p})" for p in engine.ready_lines)) if engine.ready_lines else None

    def learn(port: int, how: str) -> None:
        nonlocal url, probe, learned
        if url is None or port == _port_of(url):
            return
        url, learned = with_port(url, port), how
        probe = HealthProbe(url, engine) if engine.health_path else None
        say(f"learned the port from the {how}: {port} ({url})")

    def owner_check(port: int | None) -> tuple[bool, list[int]]:
        """(whether this server's tree holds `port` (True when unchecked), the tree's listening ports)."""
        nonlocal stranger
        if tree is None:
            return True, []
        pids = set(tree())
        sockets = procs.listening_sockets()
        mine = sorted({p for p, pid in sockets if pid in pids})
        if port is None or port in mine:
            return True, mine
        holders = sorted({pid for p, pid in sockets if p == port}, key=lambda pid: pid or 0)
        if not sockets or not holders:
            return True, mine  # no socket table to read (or nobody listed): nothing to tell us apart
        described = []
        for pid in holders:
            if pid is None:
                described.append("a process of another user that gpuops may not inspect")
                continue
            try:
                p = procs.psutil.Process(pid)
                if p.name() in CONTAINER_PROXIES:
                    return True, mine  # a container's published port: the server is inside it
                described.append(f"pid {pid} ({procs.command_of(p)})")
            except procs.psutil.Error:
                described.append(f"pid {pid}")
        text = f"port {port} answered, but by {', '.join(described)}, not by this server"
        if text != stranger:
            say(text)
            stranger = text
        return False, mine

    def result(state: str, code: int | None = None) -> Outcome:
        lines = list(tail)
        now = clock()
        dropped = terminal.close()
        if dropped:
            say(f"({dropped} log line(s) not shown: the terminal was slower than the log; all are in {log_path})")
        return Outcome(state, now - t0, code, lines[-40:], diagnose(lines) if state != "ready" else None,
                       ready_line, quiet=now - last_output, url=url, port=_port_of(url), port_learned=learned,
                       stranger=stranger, dropped=dropped, port_guessed=not port_given and learned is None)

    def look_for_ready_line(lines: list[str], now: float) -> None:
        nonlocal ready_line, next_probe
        if ready_line is not None or ready_rx is None:
            return
        text = "\n".join(lines)
        m = ready_rx.search(text)  # one search over the chunk: a burst of log lines is read at C speed
        if not m:
            return
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        ready_line = text[start:end if end >= 0 else len(text)]
        next_probe = now  # look right away
        port = port_in_line(ready_line)
        if port is not None and not port_given:
            learn(port, "ready line")

    try:
        with LogReader(log_path, start_at_end=offset is None, offset=offset or 0) as reader:
            while True:
                lines = reader.read_lines()
                now = clock()
                if lines:
                    tail.extend(lines[-tail.maxlen:])
                    terminal.show(lines)
                    look_for_ready_line(lines, now)
                if reader.grew:  # bytes count as output: a download bar redrawn with \r is not a hang
                    last_output = now
                    bar = reader.progress()
                    if bar and bar != shown_progress and now >= next_progress:
                        terminal.show([bar])
                        shown_progress, next_progress = bar, now + PROGRESS_INTERVAL

                if now >= next_probe:
                    if probe is None:  # no health endpoint (or no URL): the ready line decides
                        if ready_line is not None and (tree is None or owner_check(None)[1]):
                            return result("ready")
                        next_probe = now + (READY_RECHECK if ready_line is not None else PROBE_INTERVAL)
                    else:
                        ours = probe() and owner_check(_port_of(url))[0]
                        if not ours and not port_given and tree is not None:
                            # the command did not say its port: look at what the server listens on
                            for port in owner_check(None)[1]:
                                if port != _port_of(url) and HealthProbe(with_port(url, port), engine)():
                                    learn(port, "listening socket")
                                    ours = True
                                    break
                        if ours:
                            return result("ready")
                        next_probe = now + (READY_RECHECK if ready_line is not None else PROBE_INTERVAL)

                code = exit_code()
                if code is not None:
                    rest = reader.read_lines()
                    while reader.more:
                        rest = (rest + reader.read_lines())[-tail.maxlen:]
                    rest += reader.flush_partial()
                    tail.extend(rest)
                    terminal.show(rest)
                    return result("exited", code)
                silent = now - last_output >= hang_timeout
                if silent or now - t0 >= start_timeout:
                    if ready_line is not None and tree is not None and not owner_check(None)[1]:
                        return result("not_listening")
                    return result("hung" if silent else "timeout")
                if not lines and not reader.more:
                    time.sleep(READ_INTERVAL)
    finally:
        terminal.close(0)
