"""One load test, end to end: find the server, check it streams, run Locust, merge records, report.

    target = preflight(resolve_target(opts, RunDir("do_not_commit")), opts)
    results = execute(opts, target, report_dir, log_path, write=print)
    results[0].summary["median_ttft_ms"], results[0].report_dir
    # -> (101.4, PosixPath('do_not_commit/load_tests/20261122-101500'))

Locust runs as separate processes (`python -m locust -f <shipped locustfile>`): one process, or a
master plus --workers N worker processes on a free port on 127.0.0.1. Each load-generating
process appends its raw records to its own file; they are merged when Locust has exited. While it
runs, this process tails the records to print progress and to notice a server that has gone away,
and the client samples to notice one that has stopped answering (a stall); it then stops Locust
early and keeps what was measured. From the first Ctrl-C (or SIGTERM) until the report is
written, further ones are ignored: Locust is always reaped and the report always written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, RequestFailed, ServerNotRunning, UsageError
from gpuops.probes.loadtest import metrics, workloads
from gpuops.probes.loadtest.options import LoadTestOptions, normalize_url
from gpuops.probes.openai import (
    API_PATHS,
    IGNORE_EOS_ENGINES,
    chunk_text,
    model_ids,
    parse_sse_line,
    request_body,
)
from gpuops.probes.openai import headers as _headers
from gpuops.rundir import RunDir
from gpuops.server.recipes import mask_secrets

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
STOP_TIMEOUT_S = 30  # after --run-time, requests in flight get this long to finish
PROGRESS_EVERY_S = 5.0
POLL_S = 0.2
GRACE_S = 20.0  # after SIGINT, how long Locust gets to write its reports before it is killed
PREFLIGHT_TIMEOUT_S = 30.0
STALL_WINDOW = 500  # the stall limit follows the median wait of this many latest answers

Write = Callable[[str], None]


@dataclass
class Target:
    """Where the load goes, and (when gpuops started it) which process serves it."""

    url: str
    engine: str = "openai"
    model: str | None = None
    server_name: str | None = None
    server_pid: int | None = None
    server_create_time: float | None = None
    server_log: str | None = None
    workload: dict | None = None  # how prompts are built and counted (gpuops.probes.loadtest.workloads)


@dataclass
class RunResult:
    """One Locust run (one sweep level): its folder, summary, and how it ended."""

    report_dir: Path
    summary: dict
    status: str  # finished | server_lost | stalled | interrupted | crashed
    reason: str | None = None
    level: float | None = None
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the target


def resolve_target(opts: LoadTestOptions, run_dir: RunDir, *, default_name: str | None = None) -> Target:
    """--url, else the running server by the one rule (gpuops.probes.target.find_target: --server, the
    only one, the first recipe's `default_name`, else exit 2 listing them; none: exit 6). A --url at
    which a server gpuops started still runs brings that server along (its engine, process and log)."""
    from gpuops.probes.target import find_target

    found = find_target(run_dir, url=opts.url, server=opts.server, default_name=default_name)
    rec = found.record
    if rec is None:  # a --url gpuops has no live server at: an OpenAI-compatible server, as given
        return Target(url=opts.url or normalize_url(found.url), model=opts.model)
    if rec.engine == "comfyui":
        raise UsageError(f"server '{rec.name}' is ComfyUI, which has no OpenAI-compatible text API to load-test",
                         hint="pass --url to an OpenAI-compatible server")
    return Target(url=opts.url or normalize_url(rec.url), engine=rec.engine, model=opts.model, server_name=rec.name,
                  server_pid=rec.pid, server_create_time=rec.create_time, server_log=rec.log_path)


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def preflight(target: Target, opts: LoadTestOptions, timeout: float = PREFLIGHT_TIMEOUT_S) -> Target:
    """Before any load: the server answers, names its model, and streams (when asked to). Returns the
    target with the model filled in from /v1/models when --model was not given."""
    import requests

    url = target.url
    with _answering(url, "GET /v1/models", timeout, ServerNotRunning):
        models = requests.get(f"{url}/v1/models", headers=_headers(False), timeout=timeout)
    model = target.model
    served: list[str] = []
    if models.status_code == 200:
        try:
            served = model_ids(models.json())
        except ValueError:
            served = []
    if model is None and served:
        model = served[0]

    if opts.api == "embeddings":
        workloads.preflight_embeddings(url, model, timeout)
        return Target(**{**asdict(target), "model": model})
    path = API_PATHS[opts.api]
    body = request_body(opts.api, model, "Say hi.", max_tokens=2, stream=opts.stream,
                        ignore_eos=target.engine in IGNORE_EOS_ENGINES)
    for attempt in range(3):
        with _answering(f"{url}{path}", "a 2-token request", timeout, RequestFailed):
            resp = requests.post(f"{url}{path}", json=body, headers=_headers(opts.stream), timeout=timeout,
                                 stream=opts.stream)
        if resp.status_code < 500 or attempt == 2:
            break
        time.sleep(0.5)  # a 5xx may be passing: try twice more before refusing to start
    with resp:
        if resp.status_code != 200:
            hint = {404: f"the server has no {path}: try {'--completion' if opts.api == 'chat' else '--chat'}"}.get(
                resp.status_code)
            if hint is None and resp.status_code in (400, 422):
                hint = (f"check --model (the server lists: {', '.join(served)})" if served
                        else "check --model, --max-tokens and --prompt-tokens")
            raise RequestFailed(f"{url}{path} refused a test request: HTTP {resp.status_code}: {_excerpt(resp.text)}",
                                hint=hint or "`inv logs` shows the server's log")
        ctype = resp.headers.get("content-type", "")
        if opts.stream and "text/event-stream" not in ctype:
            raise RequestFailed(
                f"{url}{path} answered a streaming request with {ctype or 'no content type'}, not an event "
                "stream: this server does not stream, so TTFT, ITL and TPOT cannot be measured",
                hint="pass --no-stream to measure end-to-end latency and throughput only")
        if opts.stream:
            got_text = False
            for line in resp.iter_lines():
                chunk = parse_sse_line(line) if line else None
                if isinstance(chunk, dict) and chunk_text(chunk):
                    got_text = True
            if not got_text:
                raise RequestFailed(f"{url}{path} streamed no generated text for a test request",
                                    hint="check --model and the server's log (`inv logs`)")
    return Target(**{**asdict(target), "model": model})


@contextmanager
def _answering(where: str, what: str, timeout: float, on_timeout: type[GpuopsError]) -> Iterator[None]:
    """A request to `where` that is refused (ServerNotRunning) or not answered in time (on_timeout),
    as the error the user can act on."""
    import requests

    try:
        yield
    except requests.ConnectionError as err:
        raise ServerNotRunning(f"nothing answers at {where} ({_connect_reason(err)})",
                               hint="is the server up? `inv status` shows it; check --url") from None
    except requests.Timeout:
        raise on_timeout(f"{where} did not answer {what} within {timeout:.0f} s",
                         hint="the server may be overloaded or hung: `inv logs` shows its log") from None


def _connect_reason(err) -> str:
    text = str(err)
    if "refused" in text.lower():
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _excerpt(text, 120)


# ---------------------------------------------------------------- folders and plans


def check_out_dir(path: Path) -> None:
    """--out must name a new or empty folder: gpuops never writes over an earlier report."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path} already exists and is not empty: gpuops never overwrites a report",
                         hint="choose a new folder, or leave --out off for a timestamped one")


def claim_out_dir(path: Path) -> Path:
    """Create the --out folder (checked again: it must still be new or empty)."""
    check_out_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def locust_plan(opts: LoadTestOptions, target: Target, out_dir: Path, run_id: str) -> dict:
    """What every Locust process reads (through GPUOPS_LOADTEST_PLAN)."""
    return {
        "url": target.url, "api": opts.api, "model": target.model, "prompt_tokens": opts.prompt_tokens,
        "max_tokens": opts.max_tokens, "stream": opts.stream, "shared_prefix": opts.shared_prefix,
        "seed": opts.seed, "qps": opts.qps, "arrival": opts.arrival, "run_time_s": opts.locust_run_time_s,
        "workers": opts.workers * max(1, len(opts.workers_on)), "request_timeout": opts.request_timeout,
        "ignore_eos": target.engine in IGNORE_EOS_ENGINES, "run_id": run_id, "out_dir": str(out_dir.resolve()),
        "headless": not opts.web,
        **workloads.plan_fields(opts, target),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def locust_commands(opts: LoadTestOptions, target: Target, out_dir: Path, *, master_port: int | None = None,
                    web_port: int | None = None, python: str = sys.executable) -> list[list[str]]:
    """The Locust command lines: [single] or [master, worker, worker, ...]."""
    out = out_dir.resolve()
    base = [python, "-m", "locust", "-f", str(Path(opts.locustfile).resolve() if opts.locustfile else LOCUSTFILE),
            "--host", target.url]
    # your own locustfile's other words go first: gpuops' report paths below win over a --csv of yours
    reports = [*opts.locust_args, "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
               "--exit-code-on-error", "0"]
    load = ["--users", str(opts.users), "--spawn-rate", f"{opts.spawn_rate:g}"]
    if opts.web:
        drive = ["--web-host", "127.0.0.1", "--web-port", str(web_port or 8089), *load]
    else:
        drive = ["--headless", "--only-summary", *load, "--run-time", f"{opts.locust_run_time_s}s",
                 "--stop-timeout", str(min(STOP_TIMEOUT_S, int(opts.request_timeout)))]
    remote = opts.workers * len(opts.workers_on)  # --workers-on: the workers run there (gpuops.hosts.workers)
    if opts.workers <= 1 and not remote:
        return [base + drive + reports]
    port = str(master_port or 5557)
    master = base + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                     "--expect-workers", str(remote or opts.workers), "--expect-workers-max-wait", "60"] + drive + reports
    if remote:
        return [master]
    worker = base + ["--worker", "--master-host", "127.0.0.1", "--master-port", port]
    return [master] + [list(worker) for _ in range(opts.workers)]


# ---------------------------------------------------------------- watching a run


class RecordTail:
    """New whole lines of every `records-w*.jsonl` in a folder since the last call."""

    def __init__(self, folder: Path, pattern: str = "records-w*.jsonl"):
        self.folder, self.pattern = folder, pattern
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def read(self) -> list[dict]:
        new = []
        for path in sorted(self.folder.glob(self.pattern)):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            self._offsets[path] = offset + len(data)
            data = self._partial.pop(path, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest
            for line in lines:
                try:
                    new.append(json.loads(line))
                except ValueError:
                    continue
        return new


def silence_s(latest: dict[int, dict], now: float, max_extrapolate_s: float = 2.0) -> float | None:
    """How long every load process with requests in flight has heard nothing from the server, from
    the latest client sample of each (`in_flight`, `quiet_s`, taken at `t`); None when none has a
    request in flight. A sample's age is added (at most `max_extrapolate_s`: a process that stops
    sampling is a client problem, not a server's)."""
    busy = [x for x in latest.values() if x.get("in_flight")]
    if not busy:
        return None
    return min((x.get("quiet_s") or 0.0) + min(max(0.0, now - x["t"]), max_extrapolate_s) for x in busy)


class StopGuard:
    """Ctrl-C and SIGTERM (`kill PID`) while a load test runs: the first one stops Locust
    (KeyboardInterrupt in run_locust); from then on, and while Locust is started or a report is being
    written, further ones only say so. Entered once around the whole run (runner.execute, or its caller).

        with StopGuard(write) as guard:
            guard.phase = "starting"   # a signal is noted (guard.deferred): no Locust is left half-started
            guard.start_running()      # a deferred signal is taken now; later ones raise KeyboardInterrupt
            guard.phase = "writing"    # a signal is noted (guard.deferred) and honoured afterwards
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, write: Write):
        self.write = write
        self.phase = "writing"
        self.engaged = False  # the first interrupt was taken: every later one is ignored
        self.deferred = False  # an interrupt came while writing: stop after the writing
        self._previous: dict = {}

    def __enter__(self) -> StopGuard:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals are not ours to handle
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def start_running(self) -> None:
        """Locust has started: from now on a signal stops it. One that came while it started stops it now."""
        self.phase = "running"
        if self.deferred:
            self.deferred, self.engaged = False, True
            raise KeyboardInterrupt

    def _handle(self, _signum, _frame) -> None:
        if self.engaged or self.deferred:
            self.write("already stopping: waiting for Locust to exit and the report to be written")
        elif self.phase == "running":
            self.engaged = True
            raise KeyboardInterrupt
        else:
            self.deferred = True
            self.write("stopping as soon as Locust has started" if self.phase == "starting"
                       else "stopping once the report being written is complete")


def server_lost(recent: list[dict], min_failures: int) -> bool:
    """The last `min_failures` requests all failed to connect: the server is gone (or its port closed)."""
    if len(recent) < min_failures:
        return False
    return all(r.get("error_kind") == "connect" for r in recent[-min_failures:])


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _reap(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for our Locust processes; SIGTERM then SIGKILL the ones that linger (only our own children)."""
    deadline = time.monotonic() + timeout
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for p in procs:
                _signal(p, sig)
            deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        if all(p.poll() is not None for p in procs):
            return


@dataclass
class LocustRun:
    """How one Locust run ended: status, why, the processes' exit codes, when it was stopped early."""

    status: str
    reason: str | None
    codes: list[int | None]
    stopped_at: float | None = None  # epoch s: when gpuops stopped it (no more load was due after)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGINT to every Locust process: each writes what it has (the master its reports) and quits."""
    for p in procs:
        _signal(p, signal.SIGINT)


def run_locust(opts: LoadTestOptions, target: Target, out_dir: Path, log_path: Path, write: Write,
               *, run_id: str, guard: StopGuard | None = None) -> LocustRun:
    """Run Locust for one level. Stops it early when the server is gone or stalled, on Ctrl-C, or
    past its deadline; always leaves no Locust process behind."""
    guard = guard or StopGuard(write)
    plan_path = out_dir / "plan-locust.json"
    plan_path.write_text(json.dumps(locust_plan(opts, target, out_dir, run_id), indent=2))
    web_port = free_port() if opts.web else None
    master_port = free_port() if opts.workers > 1 or opts.workers_on else None
    commands = locust_commands(opts, target, out_dir, master_port=master_port,
                               web_port=web_port)
    repo_root = str(Path(__file__).resolve().parents[2])
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", GPUOPS_LOADTEST_PLAN=str(plan_path.resolve()),
                    PYTHONPATH=os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p))
    base_env.pop("GPUOPS_SERVER", None)  # Locust is not part of the server's process tree
    procs: list[subprocess.Popen] = []
    remote = None
    status, reason = "finished", None
    stopped: list[float] = []
    with open(log_path, "ab") as log:
        from gpuops.server.recipes import mask_argv

        log.write(f"==> {mask_argv(commands[0])}\n".encode())
        log.flush()
        try:
            # a signal between a fork and procs.append would leave a Locust nobody reaps: defer it
            guard.phase = "starting"
            if opts.workers_on:  # Locust workers on other hosts, reaching this master through SSH tunnels
                from gpuops.hosts.workers import RemoteWorkers

                remote = RemoteWorkers(opts, out_dir, master_port, log_path, write)
                remote.start()
            for i, cmd in enumerate(commands):
                worker = 0 if i == 0 else i - 1
                # own session: a Ctrl-C at the terminal reaches this process only, which then stops
                # Locust gracefully (SIGINT makes it write its HTML report; SIGTERM would not)
                procs.append(subprocess.Popen(cmd, cwd=out_dir, env={**base_env, "GPUOPS_LOADTEST_WORKER": str(worker)},
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            guard.start_running()
            if opts.web:
                write(f"Locust's web UI: http://127.0.0.1:{web_port}  (Ctrl-C here ends the test and writes the report)")
            status, reason = _watch(opts, target, out_dir, procs, write, stopped)
        except KeyboardInterrupt:
            guard.engaged = True
            status, reason = "interrupted", "interrupted (Ctrl-C)"
            stopped.append(time.time())
            write("interrupted: stopping Locust and writing the report (further Ctrl-C are ignored)")
            _stop_all(procs)
        finally:
            guard.phase = "writing"
            _reap(procs, GRACE_S)
            if remote is not None:
                remote.stop()  # their last records copied back, their folders removed
    return LocustRun(status, reason, [p.returncode for p in procs], stopped[0] if stopped else None)


class Progress:
    """Running totals of the records seen so far, and the latencies of those since the last line."""

    def __init__(self):
        self.ok = self.failed = self.tokens = 0
        self.window: list[dict] = []

    def add(self, records: list[dict]) -> None:
        for r in records:
            if r.get("cancelled"):
                continue
            if r.get("ok"):
                self.ok += 1
                self.tokens += r.get("output_tokens") or 0
                self.window.append(r)
            else:
                self.failed += 1

    def line(self, elapsed: float) -> str:
        """`  10 s: 48 ok, 2 failed | TTFT p50 101 ms | TPOT p50 20.1 ms | 1290 output tok/s` (latencies:
        requests finished since the previous line)."""
        parts = [f"{elapsed:5.0f} s: {self.ok} ok, {self.failed} failed"]
        ttft = sorted(r["ttft_ms"] for r in self.window if r.get("ttft_ms") is not None)
        if ttft:
            parts.append(f"TTFT p50 {metrics.percentile(ttft, 50):.0f} ms")
        tpot = sorted(t for t in (metrics.tpot_ms(r.get("e2el_ms"), r.get("ttft_ms"), r.get("output_tokens"))
                                  for r in self.window) if t is not None)
        if tpot:
            parts.append(f"TPOT p50 {metrics.percentile(tpot, 50):.1f} ms")
        if self.ok and elapsed > 0:
            parts.append(f"{self.tokens / elapsed:.0f} output tok/s")
        self.window = []
        return " | ".join(parts)


def _watch(opts, target, out_dir, procs, write, stopped: list[float]) -> tuple[str, str | None]:
    from gpuops.server import procs as proc_ids

    tail = RecordTail(out_dir)
    samples = RecordTail(out_dir, "client-w*.jsonl")
    latest: dict[int, dict] = {}  # each load process's newest client sample
    # the latest answers only: re-sorting all of a long run's every poll would cost more and more
    waits: dict[str, deque[float]] = {k: deque(maxlen=STALL_WINDOW) for k in ("ttft", "e2el")}
    stall_after = metrics.stall_after_s({}, opts.stream)
    progress = Progress()
    min_failures = max(5, min(opts.users, 50))
    recent: deque[dict] = deque(maxlen=min_failures)  # the latest finished requests, for server_lost
    opening: list[dict] = []  # the first finished requests: all failing alike stops the run (fail fast)
    started = time.monotonic()
    last_progress = started
    deadline = None if opts.web else started + opts.locust_run_time_s + STOP_TIMEOUT_S + 90.0
    status, reason, stopping_since = "finished", None, None
    master = procs[0]
    while master.poll() is None:
        time.sleep(POLL_S)
        new = tail.read()
        progress.add(new)
        recent.extend(r for r in new if not r.get("cancelled"))
        opening.extend(r for r in new if not r.get("cancelled") and len(opening) < 16)
        for sample in samples.read():
            latest[sample.get("worker", 0)] = sample
        done = [r for r in new if r.get("ok") and not r.get("cancelled")]
        if done:
            waits["ttft"].extend(r["ttft_ms"] for r in done if r.get("ttft_ms") is not None)
            waits["e2el"].extend(r["e2el_ms"] for r in done if r.get("e2el_ms") is not None)
            stall_after = metrics.stall_after_s(
                {f"median_{k}_ms": metrics.percentile(sorted(v), 50) if v else None for k, v in waits.items()},
                opts.stream)
        silent = silence_s(latest, time.time())
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            write(progress.line(now - started))
        if stopping_since is not None:
            if now - stopping_since > GRACE_S:
                break
            continue
        failing = workloads.uniform_failure(opening, progress.ok, opts.users)
        if failing is not None:
            status = "failing"
            reason = workloads.fail_fast_message(failing, opts, target)[0]
        elif server_lost(list(recent), min_failures):
            status = "server_lost"
            reason = f"the server stopped accepting connections ({min_failures} requests in a row refused)"
        elif target.server_pid and not proc_ids.matches(target.server_pid, target.server_create_time or 0.0):
            status = "server_lost"
            reason = f"the server process (pid {target.server_pid}) exited during the run"
        elif silent is not None and silent >= stall_after:
            in_flight = sum(x.get("in_flight") or 0 for x in latest.values())
            status = "stalled"
            reason = (f"the server stopped answering: nothing received for {silent:.0f} s while {in_flight} "
                      f"request(s) were in flight (the limit is max({metrics.STALL_MIN_S:g} s, "
                      f"{metrics.STALL_FACTOR:g} x the usual wait) = {stall_after:.0f} s)")
        elif deadline is not None and now > deadline:
            status, reason = "crashed", "Locust did not finish within its run time (stopped)"
        if status != "finished":
            write(f"stopping the load test: {reason}")
            stopped.append(time.time())
            _stop_all(procs)
            stopping_since = now
    return status, reason


# ---------------------------------------------------------------- after the run


def merge_parts(out_dir: Path, prefix: str, target_name: str) -> Path:
    """Concatenate `<prefix>-w*.jsonl` into one file sorted by time, then remove the parts."""
    parts = sorted(out_dir.glob(f"{prefix}-w*.jsonl"))
    rows = []
    for part in parts:
        rows += metrics.read_records(part)
    key = "start" if prefix == "records" else "t"
    rows.sort(key=lambda r: (r.get(key) or 0.0))
    target = out_dir / target_name
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    os.replace(tmp, target)
    for part in parts:
        part.unlink()
    return target


def schedule_due(opts: LoadTestOptions, out_dir: Path, stopped_at: float | None,
                 records: list[dict]) -> tuple[int | None, list[dict]]:
    """--qps: how many requests the schedules of all load processes made due before the load
    stopped (their due times are fixed by the seed; each process wrote when its schedule started to
    `schedule-w<N>.json`, folded here into the returned list and removed)."""
    from gpuops.probes.loadtest.arrivals import due_count

    parts = sorted(out_dir.glob("schedule-w*.json"))
    starts = []
    for part in parts:
        try:
            starts.append(json.loads(part.read_text()))
        except ValueError:
            continue
    for part in parts:
        part.unlink()
    if opts.qps is None or not starts:
        return None, starts
    last_end = max((r["end"] for r in records if r.get("end") is not None), default=None)
    due = 0
    for st in starts:
        until = stopped_at if stopped_at is not None else (last_end if st.get("end_s") is None else None)
        if until is None and st.get("end_s") is None:
            continue  # an open-ended schedule with nothing to bound it: nothing to count
        due += due_count(opts.qps, opts.arrival, opts.seed, worker=st.get("schedule_worker", 0),
                         workers=st.get("workers", 1), end_s=st.get("end_s"),
                         until_s=None if until is None else max(0.0, until - st["t0"]))
    return due, starts


def finish_level(opts: LoadTestOptions, target: Target, out_dir: Path, run: LocustRun, write: Write,
                 level: float | None = None, server: dict | None = None) -> RunResult:
    """Merge the records, compute the summary, write summary.json and the chart, print the table."""
    from gpuops.probes.loadtest import report

    status, reason = run.status, run.reason
    if opts.locustfile:
        from gpuops.probes.loadtest import userfile

        return _finish_user_file(opts, target, out_dir, run, write, level, userfile.locust_summary(out_dir))
    records_path = merge_parts(out_dir, "records", "records.jsonl")
    client_path = merge_parts(out_dir, "client", "client.jsonl")
    records = metrics.read_records(records_path)
    due, schedules = schedule_due(opts, out_dir, run.stopped_at, records)
    summary = metrics.summarize(records, opts.slo, due=due)
    client = metrics.client_load(metrics.read_records(client_path))
    summary["client"] = client
    if status == "finished":
        grace = min(STOP_TIMEOUT_S, int(opts.request_timeout))
        limit = max(grace, metrics.stall_after_s(summary, opts.stream))
        silent = metrics.silent_cut_offs(records, limit)
        if silent:
            status = "stalled"
            reason = (f"the server stopped answering: it had sent nothing for {limit:.0f} s or more when the "
                      f"stop grace ({grace} s) ran out and cut off {len(silent)} request(s)")
    if summary.get("fell_behind"):
        summary["fell_behind_cause"] = metrics.behind_cause(summary, records, users=opts.users,
                                                            spawn_rate=opts.spawn_rate, workers=opts.workers)
    summary["schedule"] = schedules or None
    summary["status"] = status
    summary["status_reason"] = reason
    summary["partial"] = status != "finished"
    summary["locust_exit_codes"] = run.codes
    summary["target"] = {"url": target.url, "model": target.model, "engine": target.engine,
                         "server": target.server_name}
    summary.update(workloads.summary_fields(target))
    if status == "failing":
        failing = workloads.uniform_failure(records, 0, opts.users)
        summary["status_hint"] = workloads.fail_fast_message(failing, opts, target)[1] if failing else None
    summary["options"] = opts.as_dict()
    summary["mode"] = opts.mode
    summary["level"] = level
    summary["max_concurrency"] = opts.users
    summary["request_rate"] = opts.qps
    summary["steady"] = metrics.steady_state(records, users=opts.users, spawn_rate=opts.spawn_rate, mode=opts.mode,
                                             warmup_s=opts.warmup_s, cooldown_s=opts.cooldown_s, slo=opts.slo)
    summary["server"] = server or None
    if opts.slo:
        summary["slo_share"] = metrics.slo_share(records, opts.slo)
    report.write_json(out_dir / "summary.json", summary)
    _html_report(out_dir, summary, records, write)
    if not report.charts_available():
        write(f"warning: no latency chart: matplotlib is not installed ({report.CHARTS_HINT})")
    else:
        try:
            report.run_chart(records, out_dir / "latency.png", title=_title(opts, target))
        except Exception as err:  # a chart is not worth losing the numbers over
            write(f"(could not draw the chart: {type(err).__name__}: {err})")
    for line in report.summary_lines(summary):
        write(line)
    files = sorted(p.name for p in out_dir.iterdir())
    return RunResult(out_dir, summary, status, reason, level, files)


def _html_report(out_dir: Path, summary: dict, records: list[dict], write: Write) -> None:
    """report.html beside summary.json: gpuops' own report, no network needed to open it."""
    from gpuops.probes.loadtest import htmlreport

    try:
        plan_path = next((p / "plan.json" for p in (out_dir, out_dir.parent) if (p / "plan.json").is_file()), None)
        plan = json.loads(plan_path.read_text()) if plan_path else {}
        htmlreport.write_run_report(out_dir, summary, records, plan)
    except Exception as err:  # a page is not worth losing the numbers over
        write(f"(could not write report.html: {type(err).__name__}: {err})")


def _finish_user_file(opts, target, out_dir, run, write, level, summary: dict) -> RunResult:
    """A run of your own locustfile: Locust's stats as the summary (gpuops has no records of it)."""
    from gpuops.probes.loadtest import report, userfile

    summary.update(status=run.status, status_reason=run.reason, partial=run.status != "finished",
                   locust_exit_codes=run.codes, options=opts.as_dict(), mode="locustfile", level=level,
                   locustfile=opts.locustfile,
                   target={"url": target.url, "model": target.model, "engine": target.engine,
                           "server": target.server_name})
    report.write_json(out_dir / "summary.json", summary)
    for line in userfile.summary_lines(summary):
        write(line)
    return RunResult(out_dir, summary, run.status, run.reason, level, sorted(p.name for p in out_dir.iterdir()))


def _title(opts: LoadTestOptions, target: Target) -> str:
    load = (f"{opts.qps:g} req/s ({opts.arrival}, at most {opts.users} in flight)" if opts.qps is not None
            else f"{opts.users} users")
    return f"{target.model or target.url} | {load} | {opts.prompt_tokens} in / {opts.max_tokens} out"


def sweep_title(opts: LoadTestOptions, target: Target) -> str:
    levels = ", ".join(f"{x:g}" for x in opts.sweep)
    load = (f"sweep of {levels} req/s ({opts.arrival}, at most {opts.users} in flight)" if opts.mode == "qps"
            else f"sweep of {levels} users")
    return f"{target.model or target.url} | {load} | {opts.prompt_tokens} in / {opts.max_tokens} out"


def write_plan(report_dir: Path, opts: LoadTestOptions, target: Target, log_path: Path) -> Path:
    """plan.json: everything needed to run (or re-read) this load test; the detached run starts from it."""
    from gpuops.probes.loadtest import report

    return report.write_json(report_dir / "plan.json", {"options": opts.as_dict(), "target": asdict(target),
                                                        "log": str(log_path), "run_id": uuid.uuid4().hex[:8],
                                                        "command": command_line()})


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `inv load-test --users 8` (`gpuops ...` for `python -m gpuops`).

    >>> command_line(["/home/me/.venv/bin/inv", "load-test", "--users", "8"])
    'inv load-test --users 8'
    """
    import shlex

    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    name = Path(argv[0]).name
    argv[0] = "gpuops" if name in ("__main__.py", "-m") else name
    return shlex.join(argv)


def execute(opts: LoadTestOptions, target: Target, report_dir: Path, log_path: Path, write: Write,
            run_id: str | None = None, guard: StopGuard | None = None) -> list[RunResult]:
    """Run the load test (or each sweep level) into report_dir; the results, partial ones included.

    A level that loses the server, stalls, is interrupted, or has no request succeed ends a sweep;
    sweep.json is written for the levels run, whatever happens. A Ctrl-C that came while a report
    was being written is honoured after it: KeyboardInterrupt once everything is on disk. `guard`: the
    caller's StopGuard, already entered (one around its whole run); else execute enters its own."""
    run_id = run_id or uuid.uuid4().hex[:8]
    levels = list(opts.sweep) or [None]
    results: list[RunResult] = []
    from gpuops.probes.loadtest import serverinfo

    server = serverinfo.server_facts(target.url, target.engine)

    def run_level(i: int, level: float | None, label: str) -> RunResult:
        level_opts = opts.at_level(level) if level is not None else opts
        out_dir = report_dir
        if level is not None:
            out_dir = report_dir / f"{i + 1:02d}-{_level_name(opts, level)}"
            out_dir.mkdir()
            write(f"=== {label}: {_level_label(opts, level)} ===")
        write(f"load test of {mask_secrets(target.url)}: "
              f"{_title(level_opts, target)}, {level_opts.run_time_s} s, {level_opts.workers} load "
              f"process(es){' on each of ' + ','.join(opts.workers_on) if opts.workers_on else ''}; log {log_path}")
        run = run_locust(level_opts, target, out_dir, log_path, write, run_id=f"{run_id}{i}", guard=guard)
        return finish_level(level_opts, target, out_dir, run, write, level, server=server)

    with nullcontext(guard) if guard is not None else StopGuard(write) as guard:
        if opts.find_max:
            from gpuops.probes.loadtest import findmax

            results = findmax.search(opts, target, report_dir, run_level, write, guard)
            write(f"report: {report_dir}")
            if guard.deferred and not guard.engaged:
                raise KeyboardInterrupt
            return results
        try:
            for i, level in enumerate(levels):
                if guard.deferred:  # a Ctrl-C while the last level's report was written: no next level
                    break
                results.append(run_level(i, level, f"sweep level {i + 1}/{len(levels)}"))
                result = results[-1]
                if result.status != "finished" or not result.summary.get("completed") or guard.deferred:
                    break
        finally:
            if opts.sweep:
                _write_sweep(opts, target, report_dir, results, len(levels), write)
        write(f"report: {report_dir}")
    if guard.deferred and not guard.engaged:
        raise KeyboardInterrupt
    return results


def _write_sweep(opts: LoadTestOptions, target: Target, report_dir: Path, results: list[RunResult],
                 n_levels: int, write: Write) -> None:
    from gpuops.probes.loadtest import report

    rows = [metrics.sweep_row(r.level, r.summary, r.summary.get("client")) for r in results]
    report.write_json(report_dir / "sweep.json", {"mode": opts.mode, "rows": rows,
                                                  "complete": len(results) == n_levels})
    if not rows:
        return
    if not report.charts_available():
        write(f"warning: no sweep chart: matplotlib is not installed ({report.CHARTS_HINT})")
    else:
        try:
            report.sweep_chart(rows, opts.mode, report_dir / "sweep.png", title=sweep_title(opts, target))
        except Exception as err:  # a chart is not worth losing the numbers over
            write(f"(could not draw the sweep chart: {type(err).__name__}: {err})")
    for line in report.sweep_lines(rows, opts.mode):
        write(line)
    from gpuops.probes.loadtest import htmlreport

    try:
        plan = json.loads((report_dir / "plan.json").read_text()) if (report_dir / "plan.json").is_file() else {}
        htmlreport.write_levels_report(report_dir, [{**row, "folder": r.report_dir.name} for row, r in zip(
            rows, results, strict=True)], opts.mode, title=sweep_title(opts, target), plan=plan)
    except Exception as err:  # a page is not worth losing the numbers over
        write(f"(could not write report.html: {type(err).__name__}: {err})")


def _level_name(opts: LoadTestOptions, level: float) -> str:
    return f"qps-{level:g}" if opts.mode == "qps" else f"users-{int(level)}"


def _level_label(opts: LoadTestOptions, level: float) -> str:
    return f"{level:g} requests/s" if opts.mode == "qps" else f"{int(level)} users"


def outcome_error(results: list[RunResult], report_dir: Path, log_path: Path) -> GpuopsError | None:
    """The error that ends the command (its exit code), or None for a run that measured something."""
    if not results:
        return GpuopsError(f"no load test ran; see {log_path}")
    last = results[-1]
    s = last.summary
    kept = f"partial results kept in {report_dir}"
    if last.status == "interrupted":
        return None
    at = f" (sweep level {last.level:g})" if last.level is not None else ""
    if last.status in ("server_lost", "stalled", "failing"):
        return RequestFailed(f"{last.reason}{at}; {s['completed']} request(s) completed before it, "
                             f"{s['failed']} failed; {kept}",
                             details=_reasons(s), hint=s.get("status_hint") or "`inv logs` shows the server's log")
    if last.status == "crashed" or (s["completed"] == 0 and s["failed"] == 0):
        from gpuops.server.logs import tail_lines

        return GpuopsError(f"Locust ended without measuring anything ({last.reason or 'exit codes '}"
                           f"{'' if last.reason else last.summary.get('locust_exit_codes')}); {kept}",
                           details=tail_lines(log_path, 15), hint=f"the full Locust log: {log_path}")
    if s["completed"] == 0:
        kinds = s.get("failure_kinds", {})
        hint = ("pass --no-stream to measure end-to-end latency only" if "not_streamed" in kinds
                else "`inv logs` shows the server's log")
        if "timeout" in kinds:
            hint = "requests ran into --request-timeout: raise it, or check the server (`inv logs`)"
        return RequestFailed(f"no request succeeded{at} ({s['failed']} failed): no latency or throughput "
                             f"was measured; {kept}", details=_reasons(s), hint=hint)
    return None


def _reasons(summary: dict) -> list[str]:
    return [f"{n} x {reason}" for reason, n in list(summary.get("failure_reasons", {}).items())[:5]]
