"""Capture a server-side PyTorch profile while the server works, and bring the trace files back.

    result = run_profile(find_target(RunDir("do_not_commit")), profiles_root=Path("do_not_commit/profiles"),
                         num_steps=25, load=True, write=print)
    # prints: profile: Fireworks-style GET /profile (25 steps, with_stack=false) at http://127.0.0.1:8000 ...
    result.as_dict()["files"][0]
    # -> {'path': '/w/do_not_commit/profiles/20261122-101500/generator-0-0.1763806500.pt.trace.json',
    #     'name': 'generator-0-0.1763806500.pt.trace.json', 'bytes': 718950}

`run_profile` is the use case (a found server in, a summarized ProfileResult out); `capture` is the
capture alone; cli/render_probes.py turns the result into text.

Each engine has its own way in (its "flavour"):
  fireworks  GET /profile?dir=D&num_steps=N&with_stack=B      (the demo, in-house uvicorn servers)
  vllm       POST /start_profile ... POST /stop_profile         (files land in the server's own profiler dir)
  sglang     POST /start_profile {output_dir, num_steps, with_stack}; stops by itself after num_steps
Engines without one (llama-server, ComfyUI, mlx_lm) get a plain "use this instead".

Trace files appear seconds after the call returns and grow while written: `wait_for_files` waits until
new files exist and their sizes have stopped changing, bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, RequestFailed, UsageError
from gpuops.rundir import open_private, private_dir

Write = Callable[[str], None]

DEFAULT_NUM_STEPS = 25
DEFAULT_SETTLE_TIMEOUT = 120.0
DEFAULT_CAPTURE_SECONDS = 10.0  # vLLM without --load or --duration: how long requests may flow
STEP_WAIT_LIMIT = 120.0  # vLLM with --load: longest wait for --num-steps decode steps
QUIET_SECONDS = 5.0  # trace sizes unchanged this long = the writer is done (gpuops.profile_quiet_seconds);
# per-worker files of one capture can start seconds apart: a short wait would leave the late ones out
STOP_TIMEOUT = 1800.0  # /stop_profile flushes the trace; vLLM docs mention minutes for big models
CONTROL_TIMEOUT = 60.0  # start-profile calls
MAX_SUMMARY_BYTES = 512 * 2**20  # more JSON (uncompressed) is listed but not parsed: json.load holds it all
LOAD_STREAMS = 4
LOAD_MAX_TOKENS = 256
LOAD_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
PERFETTO_URL = "https://ui.perfetto.dev"
LARGE_TRACE_BYTES = 200 * 2**20

# What to use where the engine has no profiler endpoint: what the user reads instead of a capture.
NO_ENDPOINT_ADVICE: dict[str, str] = {
    "llama.cpp": (
        "llama-server has no profiler endpoint. Run it under Nsight Systems: put "
        "`nsys profile -o llama-server --trace=cuda,nvtx` in front of the command in AGENTS.local.md and restart; "
        "for CPU time use `perf record -g -p PID`; `llama-bench` times the model's kernels offline."
    ),
    "comfyui": (
        "ComfyUI has no profiler endpoint. Start it with `--verbose DEBUG` for per-node timings in the log, "
        "wrap the slow node in torch.profiler from a custom node, or run ComfyUI under "
        "`nsys profile --trace=cuda,nvtx python main.py ...`."
    ),
    "mlx_lm": (
        "mlx_lm.server runs on Apple silicon (Metal): there is no PyTorch/CUDA profiler. Capture a Metal trace: "
        "start the server with MTL_CAPTURE_ENABLED=1 and call mx.metal.start_capture(\"x.gputrace\") / "
        "mx.metal.stop_capture() around the work, then open it in Xcode (or use Instruments' Metal System Trace)."
    ),
}
UNKNOWN_ENGINE_ADVICE = (
    "gpuops does not know which profiler endpoint this server has. If it is vLLM, SGLang or a Fireworks-style "
    "server (GET /profile), say so with --engine vllm|sglang|uvicorn; otherwise run it under "
    "`nsys profile --trace=cuda,nvtx ...` or wrap its work in torch.profiler."
)

FLAVOUR_TITLES = {
    "fireworks": "Fireworks-style GET /profile",
    "vllm": "vLLM POST /start_profile ... /stop_profile",
    "sglang": "SGLang POST /start_profile",
}


# ---------------------------------------------------------------- decisions (pure)


def flavour_of(engine: str) -> str:
    """fireworks / vllm / sglang for an engine, or UsageError saying what to use instead."""
    from gpuops.server.engines import ENGINES

    known = ENGINES.get(engine)
    if known is not None and known.profiler:
        return known.profiler
    advice = NO_ENDPOINT_ADVICE.get(engine)
    if advice:
        raise UsageError(f"cannot profile a {engine} server from gpuops", hint=advice)
    raise UsageError(f"no profiler endpoint known for engine '{engine}'", hint=UNKNOWN_ENGINE_ADVICE)


def vllm_enable_hint(suggested_dir: str | Path) -> str:
    """What to add to a vLLM command; `suggested_dir` should be absolute (no shell variable survives
    the single quotes around the JSON)."""
    import shlex

    folder = str(suggested_dir)
    config = json.dumps({"profiler": "torch", "torch_profiler_dir": folder})
    return (
        "vLLM serves /start_profile only when started with profiling enabled. Add to the command in "
        f"AGENTS.local.md either `VLLM_TORCH_PROFILER_DIR={shlex.quote(folder)}` in front (vLLM < 0.13) or "
        f"`--profiler-config {shlex.quote(config)}` "
        "(vLLM >= 0.13), then `inv start-server --restart`. Flushing big traces can take minutes: "
        "also set VLLM_RPC_TIMEOUT=1800000."
    )


def profiler_dir_from_args(argv: list[str]) -> str | None:
    """torch_profiler_dir from vLLM's `--profiler-config` (JSON or dotted form), if the command has one.

    >>> profiler_dir_from_args(["vllm", "serve", "m", "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/t"}'])
    '/t'
    """
    for i, word in enumerate(argv):
        key, eq, inline = word.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        if key in ("--profiler-config.torch_profiler_dir", "--profiler-config.torch-profiler-dir") and value:
            return value
        if key == "--profiler-config" and value:
            try:
                config = json.loads(value)
            except json.JSONDecodeError:
                continue
            if isinstance(config, dict) and config.get("torch_profiler_dir"):
                return str(config["torch_profiler_dir"])
    return None


def shown(path: Path, cwd: Path | None = None) -> str:
    """A path as the user reads it: relative when it is under the current folder."""
    base = (cwd or Path.cwd()).resolve()
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path)


def capture_extent(flavour: str, num_steps: int, duration: float | None, load: bool) -> str:
    """How long a capture records, in the words the header uses."""
    if duration is not None and flavour in ("vllm", "sglang"):
        return f"{duration:g} s"
    if flavour == "vllm" and not load:
        return f"{DEFAULT_CAPTURE_SECONDS:g} s"
    return f"{num_steps} steps"


def is_trace_file(name: str) -> bool:
    return name.endswith((".json", ".json.gz"))


def format_size(n: int) -> str:
    """`512 B`, `702.1 KB`, `1.4 MB`, `2.3 GB` (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@dataclass
class Settler:
    """Decides when new trace files are done: some exist, none is empty, sizes unchanged for `quiet` s.

    >>> s = Settler(quiet=2.0); s.observe({"a.json": 10}, now=0.0), s.observe({"a.json": 10}, now=2.0)
    (False, True)
    """

    quiet: float
    seen: dict[str, int] | None = None
    changed_at: float = 0.0

    def observe(self, files: dict[str, int], now: float) -> bool:
        if files != self.seen:
            self.seen = dict(files)
            self.changed_at = now
            return False
        return bool(files) and all(size > 0 for size in files.values()) and now - self.changed_at >= self.quiet


# ---------------------------------------------------------------- files (I/O)


def snapshot(folder: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under `folder` (missing folder: empty)."""
    files: dict[str, int] = {}
    if not folder.is_dir():
        return files
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith("."):
                continue  # editors' and writers' temporary files
            path = Path(root) / name
            try:
                files[str(path.relative_to(folder))] = path.stat().st_size
            except FileNotFoundError:
                continue  # renamed away between listing and stat
    return files


@dataclass
class Settled:
    files: dict[str, int]  # new files (relative to the folder) and their final sizes
    settled: bool  # False: the timeout came first (files may be missing or still growing)
    waited: float


def wait_for_files(folder: Path, before: set[str], *, timeout: float, quiet: float = QUIET_SECONDS,
                   poll: float = 0.2, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Settled:
    """Wait until files not in `before` exist under `folder` and their sizes stop changing."""
    t0 = clock()
    settler = Settler(quiet=quiet)
    while True:
        now = clock()
        current = {k: v for k, v in snapshot(folder).items() if k not in before}
        if settler.observe(current, now):
            return Settled(current, True, now - t0)
        if now - t0 >= timeout:
            return Settled(current, False, now - t0)
        sleep(poll)


def copy_new(source: Path, names: list[str], dest: Path) -> list[Path]:
    """Copy files from the server's profiler folder into the capture folder; never overwrite one."""
    copied = []
    for rel in names:
        target = dest / rel
        private_dir(target.parent)
        n = 2
        while True:
            try:
                out = open_private(target, "xb")  # 0600, whatever mode the server gave its file
                break
            except FileExistsError:
                target = target.with_name(f"{Path(rel).name}.{n}")
                n += 1
        with out, open(source / rel, "rb") as src:
            shutil.copyfileobj(src, out)
        st = (source / rel).stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as copy2 did: the capture's own times
        copied.append(target)
    return copied


def _profiler_dir_of(leader) -> Path | None:
    import psutil

    try:
        family = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return None
    for proc in family:
        try:
            found = proc.environ().get("VLLM_TORCH_PROFILER_DIR") or profiler_dir_from_args(proc.cmdline())
            if found:
                return Path(proc.cwd()) / os.path.expanduser(found)
        except (psutil.Error, OSError):
            continue
    return None


def server_profiler_dir(pid: int, create_time: float) -> Path | None:
    """Where a local vLLM server writes traces: VLLM_TORCH_PROFILER_DIR or --profiler-config, from the
    process itself (psutil), made absolute against its working directory. None: unknown or not ours."""
    import psutil

    from gpuops.server.procs import matches

    if not matches(pid, create_time):
        return None
    try:
        return _profiler_dir_of(psutil.Process(pid))
    except psutil.Error:
        return None


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"})


def local_profiler_dir(url: str) -> Path | None:
    """The same, for a server on this machine that gpuops did not start: found by who listens on the port."""
    from urllib.parse import urlsplit

    import psutil

    from gpuops.server.procs import port_owners

    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS or parts.port is None:
        return None
    for owner in port_owners(parts.port):
        if owner.pid is None:
            continue
        try:
            found = _profiler_dir_of(psutil.Process(owner.pid))
        except psutil.Error:
            continue
        if found:
            return found
    return None


# ---------------------------------------------------------------- background load


@dataclass
class LoadStats:
    streams: int
    requests: int
    tokens: int
    errors: int
    first_error: str | None

    def describe(self) -> str:
        text = (f"load during the capture: {self.streams} streams, {self.requests} requests finished, "
                f"{self.tokens} tokens, {self.errors} errors")
        return text + (f" (first: {self.first_error})" if self.first_error else "")


class BackgroundLoad:
    """A few threads streaming completions while the profiler records, so decode steps exist.

    with BackgroundLoad("http://127.0.0.1:8000", "vllm", "Qwen/Qwen3-8B") as load:
        load.wait_for_tokens(30); time.sleep(5)
    load.stats.describe()   # -> 'background load: 4 streams, 9 requests finished, 2304 tokens, 0 errors'
    """

    def __init__(self, base: str, engine: str, model: str | None, *, streams: int = LOAD_STREAMS,
                 max_tokens: int = LOAD_MAX_TOKENS, prompt: str = LOAD_PROMPT, timeout: float = 120.0):
        from gpuops.probes.openai import API_PATHS, ignore_eos_for, request_body

        self.url = f"{base}{API_PATHS['completion']}"
        # ignore_eos where the engine takes it: keep decoding to max_tokens, steady decode steps
        self.body = request_body("completion", model, prompt, max_tokens=max_tokens, stream=True,
                                 ignore_eos=ignore_eos_for(engine), temperature=0)
        self.streams = streams
        self.timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tokens = [0] * streams
        self._marks = [0] * streams
        self._requests = 0
        self._errors = 0
        self._first_error: str | None = None
        self._active: dict[int, object] = {}
        self._threads: list[threading.Thread] = []
        self.stats: LoadStats | None = None

    def start(self) -> BackgroundLoad:
        for i in range(self.streams):
            t = threading.Thread(target=self._run, args=(i,), name=f"gpuops-load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors += 1
            self._first_error = self._first_error or text[:200]

    def _run(self, i: int) -> None:
        from gpuops.probes.openai import StreamParser, new_session, response_message

        with new_session() as session:
            while not self._stop.is_set():
                resp = None
                try:
                    resp = session.post(self.url, json=self.body, stream=True, timeout=(5.0, self.timeout))
                    with self._lock:
                        self._active[i] = resp
                    if resp.status_code >= 400:
                        self._error(f"HTTP {resp.status_code}: {response_message(resp, 150)}")
                        self._stop.wait(0.5)
                        continue
                    parser = StreamParser()
                    for raw in resp.iter_lines():
                        if self._stop.is_set():
                            break
                        if parser.feed(raw):
                            with self._lock:
                                self._tokens[i] += 1
                        if parser.done:
                            with self._lock:
                                self._requests += 1
                            break
                except Exception as err:  # noqa: BLE001 - any failure of one request is counted, not fatal
                    if not self._stop.is_set():
                        self._error(f"{type(err).__name__}: {err}")
                        self._stop.wait(0.2)
                finally:
                    with self._lock:
                        self._active.pop(i, None)
                    if resp is not None:
                        resp.close()

    def tokens(self) -> int:
        with self._lock:
            return sum(self._tokens)

    def mark(self) -> None:
        """Start counting steps from now."""
        with self._lock:
            self._marks = list(self._tokens)

    def steps(self) -> int:
        """Decode steps since mark(), approximately: a running stream gets one token per step, so the
        busiest stream's token count is the number of steps it saw."""
        with self._lock:
            return max((t - m for t, m in zip(self._tokens, self._marks, strict=True)), default=0)

    def wait_for_tokens(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.tokens() > 0:
                return True
            time.sleep(0.05)
        return self.tokens() > 0

    def stop(self) -> LoadStats:
        if self.stats is None:
            self._stop.set()
            with self._lock:
                active = list(self._active.values())
            for resp in active:
                try:
                    resp.close()  # unblocks a thread waiting for its next token
                except Exception:  # noqa: BLE001 - closing from another thread may race; the thread ends anyway
                    pass
            for t in self._threads:
                t.join(timeout=5.0)
            with self._lock:
                self.stats = LoadStats(self.streams, self._requests, sum(self._tokens), self._errors,
                                       self._first_error)
        return self.stats

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- capture


@dataclass
class ProfileResult:
    """What a capture brought back: the folder, the trace files and their sizes, the summary."""

    flavour: str
    url: str
    out_dir: Path
    files: list[tuple[Path, int]] = field(default_factory=list)
    settled: bool = True
    source_dir: Path | None = None  # vLLM: the server's own profiler folder the files were copied from
    load: LoadStats | None = None
    summary: object | None = None  # traces.TraceSummary
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server: str | None = None  # the recipe name of the server gpuops started (None: a --url it did not)
    engine: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def as_dict(self, top: int = 10) -> dict:
        """The fields of `inv profile --json` (docs/json.md); the summary's tables hold `top` rows."""
        return {"server": self.server, "url": self.url, "engine": self.engine, "flavour": self.flavour,
                "folder": str(self.out_dir), "source_dir": None if self.source_dir is None else str(self.source_dir),
                "settled": self.settled, "total_bytes": self.total_bytes,
                "files": [{"path": str(p), "name": _relative(p, self.out_dir), "bytes": size}
                          for p, size in self.files],
                "load": None if self.load is None else asdict(self.load),
                "summary": None if self.summary is None else self.summary.as_dict(top),
                "notes": list(self.notes), "unreadable": list(self.unreadable)}


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


DEFAULT_SUGGESTED_DIR = Path("do_not_commit") / "vllm_traces"


def _control(method: str, url: str, *, timeout: float, what: str, **kwargs):
    """One profiler control call; transport failures become RequestFailed naming the call."""
    import requests

    from gpuops.probes.openai import auth_headers, transport_cause

    try:
        return requests.request(method, url, timeout=(10.0, timeout), headers=auth_headers(), **kwargs)
    except requests.exceptions.Timeout:
        raise RequestFailed(f"profile failed: {method} {url} got no answer within {timeout:g} s ({what})",
                            hint="the server may be hung or busy flushing traces; check `inv logs`") from None
    except requests.exceptions.RequestException as err:
        raise RequestFailed(f"profile failed: {method} {url}: {transport_cause(err, timeout)}",
                            hint="is the server running? `inv status`, `inv logs`; or check --url") from None


def _check(resp, method: str, url: str, flavour: str, suggested_dir: str | Path, log_shown: bool = False) -> None:
    if resp.status_code < 400:
        return
    from gpuops.probes.openai import response_message
    from gpuops.probes.smoke import log_pointer

    body = response_message(resp, 400)
    if flavour == "vllm" and (resp.status_code in (404, 405) or "not enabled" in body.lower()):
        raise RequestFailed(f"vLLM at {url.rsplit('/', 1)[0]} was not started with profiling enabled "
                            f"({method} {url} answered HTTP {resp.status_code})", hint=vllm_enable_hint(suggested_dir))
    if resp.status_code in (404, 405):
        raise RequestFailed(f"the server has no profiler endpoint: {method} {url} answered HTTP {resp.status_code}",
                            hint=f"is it really a {FLAVOUR_TITLES[flavour]} server? pass the right --engine; "
                                 + UNKNOWN_ENGINE_ADVICE)
    raise RequestFailed(f"profile failed: {method} {url} answered HTTP {resp.status_code}: {body}",
                        hint=f"the profiler failed on the server: {log_pointer(log_shown)}")


def _wait_capture(load: BackgroundLoad | None, num_steps: int, duration: float | None, write: Write) -> None:
    """vLLM records until told to stop: wait --duration seconds, or until the load saw num_steps steps."""
    if duration is not None:
        write(f"recording for {duration:g} s...")
        time.sleep(duration)
        return
    if load is None:
        write(f"recording for {DEFAULT_CAPTURE_SECONDS:g} s: send requests to the server now "
              "(or use --load, or --duration to choose the time)...")
        time.sleep(DEFAULT_CAPTURE_SECONDS)
        return
    write(f"recording until the background load has seen {num_steps} decode steps...")
    deadline = time.monotonic() + STEP_WAIT_LIMIT
    while load.steps() < num_steps and time.monotonic() < deadline:
        time.sleep(0.05)


def capture(url: str, engine: str, *, out_dir: Path, num_steps: int = DEFAULT_NUM_STEPS, with_stack: bool = False,
            load: bool = False, duration: float | None = None, settle_timeout: float = DEFAULT_SETTLE_TIMEOUT,
            write: Write = print, server_dir: Path | None = None, quiet: float = QUIET_SECONDS,
            suggest_dir: Path | None = None, log_shown: bool = False) -> ProfileResult:
    """Record a profile of the server at `url` into `out_dir` and return what came back (not yet summarized).

    `server_dir` is where a vLLM server writes traces (see server_profiler_dir); None: unknown.
    `quiet`: seconds the new files' sizes must stay unchanged before they count as written.
    `suggest_dir`: the folder a vLLM started without profiling is told to use (default
    ./do_not_commit/vllm_traces, made absolute). `log_shown`: the caller adds the server's log to a failure.
    """
    from gpuops.probes.openai import base_url, fetch_model

    flavour = flavour_of(engine)
    if num_steps < 1:
        raise UsageError(f"--num-steps must be at least 1, not {num_steps}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, not {duration:g}")
    base = base_url(url)
    out_dir = out_dir.resolve()
    try:
        private_dir(out_dir)  # a new trace folder is 0700; one the user names is left as it is
    except OSError as err:  # a file of that name, a read-only parent, ...
        raise UsageError(f"cannot use {shown(out_dir)} as the trace folder: {err.strerror or err}",
                         hint="pass --dir with a folder you can write to (or leave it out)") from None
    result = ProfileResult(flavour, base, out_dir)
    write(f"profile: {FLAVOUR_TITLES[flavour]} ({capture_extent(flavour, num_steps, duration, load)}, "
          f"with_stack={str(with_stack).lower()}) at {base}")
    if flavour == "vllm" and with_stack:
        write("note: vLLM takes with_stack from its own profiler settings (--profiler-config "
              "torch_profiler_with_stack, on by default); --with-stack changes nothing there")

    bg: BackgroundLoad | None = None
    if load:
        model = fetch_model(base, timeout=30.0, purpose="profile")
        bg = BackgroundLoad(base, engine, model).start()
        write(f"background load: {bg.streams} streaming requests to {bg.url}")
        if not bg.wait_for_tokens(30.0):
            write("warning: the background load got no tokens in 30 s; capturing anyway")
        bg.mark()
    try:
        if flavour == "vllm":
            _capture_vllm(result, bg, num_steps=num_steps, duration=duration, settle_timeout=settle_timeout,
                          server_dir=server_dir, write=write, quiet=quiet,
                          suggested=server_dir or (suggest_dir or DEFAULT_SUGGESTED_DIR).absolute(),
                          log_shown=log_shown)
        else:
            watch_dir = out_dir
            before = set(snapshot(watch_dir))
            if flavour == "fireworks":
                params = {"dir": str(out_dir), "num_steps": num_steps, "with_stack": str(with_stack).lower()}
                resp = _control("GET", f"{base}/profile", params=params, timeout=max(settle_timeout, CONTROL_TIMEOUT),
                                what="starting the capture")
                _check(resp, "GET", f"{base}/profile", flavour, "", log_shown)
            else:
                body = {"output_dir": str(out_dir), "activities": ["CPU", "GPU"], "with_stack": with_stack}
                if duration is None:
                    body["num_steps"] = num_steps  # SGLang stops by itself after num_steps
                resp = _control("POST", f"{base}/start_profile", json=body,
                                timeout=max(settle_timeout, CONTROL_TIMEOUT), what="starting the capture")
                _check(resp, "POST", f"{base}/start_profile", flavour, "", log_shown)
                if duration is not None:
                    write(f"recording for {duration:g} s...")
                    time.sleep(duration)
                    _stop_sglang(base, write)
                elif bg is None:
                    write("SGLang counts steps only while requests run: send requests now (or use --load)")
            write(f"waiting for trace files in {shown(out_dir)} (up to {settle_timeout:g} s)...")
            done = wait_for_files(watch_dir, before, timeout=settle_timeout, quiet=quiet)
            if flavour == "sglang" and not done.files and duration is None:
                write("no files yet: asking SGLang to stop the profiler and write what it has...")
                _stop_sglang(base, write)
                done = wait_for_files(watch_dir, before, timeout=settle_timeout, quiet=quiet)
            result.settled = done.settled
            result.files = [(out_dir / rel, size) for rel, size in sorted(done.files.items())]
    finally:
        if bg is not None:
            result.load = bg.stop()
    if not result.files:
        where = result.source_dir or out_dir
        raise RequestFailed(
            f"no trace files appeared in {shown(where)} within {settle_timeout:g} s",
            hint="the server may still be writing them (a larger --settle-timeout waits longer); if it runs on "
                 "another machine they are in that folder there; the server log may say why",
        )
    if not result.settled:
        result.notes.append(f"files were still changing after {settle_timeout:g} s: they may be incomplete "
                            "(a larger --settle-timeout waits longer)")
    return result


def _stop_sglang(base: str, write: Write) -> None:
    resp = _control("POST", f"{base}/stop_profile", timeout=STOP_TIMEOUT, what="stopping the profiler")
    if resp.status_code >= 400:
        write(f"note: /stop_profile answered HTTP {resp.status_code} (the profiler had probably stopped already)")


def _capture_vllm(result: ProfileResult, bg: BackgroundLoad | None, *, num_steps: int, duration: float | None,
                  settle_timeout: float, server_dir: Path | None, write: Write, quiet: float,
                  suggested: Path, log_shown: bool = False) -> None:
    base = result.url
    before = set(snapshot(server_dir)) if server_dir else set()
    resp = _control("POST", f"{base}/start_profile", timeout=CONTROL_TIMEOUT, what="starting the profiler")
    _check(resp, "POST", f"{base}/start_profile", "vllm", suggested, log_shown)
    stopped = False
    try:
        _wait_capture(bg, num_steps, duration, write)
        if bg is not None:
            result.load = bg.stop()  # the flush need not compete with our requests
        write("stopping the profiler: vLLM writes the traces now (minutes for big models)...")
        stopped = True
        resp = _control("POST", f"{base}/stop_profile", timeout=STOP_TIMEOUT, what="flushing the traces")
        _check(resp, "POST", f"{base}/stop_profile", "vllm", suggested, log_shown)
    finally:
        if not stopped:  # interrupted while recording: never leave the server profiling
            try:
                _control("POST", f"{base}/stop_profile", timeout=STOP_TIMEOUT, what="stopping the profiler")
            except GpuopsError:
                pass
    if server_dir is None:
        result.notes.append("the traces are in the server's VLLM_TORCH_PROFILER_DIR / torch_profiler_dir "
                            "(gpuops could not read it from the server process)")
        result.files = []
        raise RequestFailed(
            f"the profile was recorded, but gpuops cannot tell where vLLM at {base} wrote it",
            hint="look in the folder named by VLLM_TORCH_PROFILER_DIR or --profiler-config in the server's "
                 "command; gpuops finds it by itself for servers it started (`inv profile --server NAME`)",
        )
    result.source_dir = server_dir
    write(f"waiting for trace files in {shown(server_dir)} (up to {settle_timeout:g} s)...")
    done = wait_for_files(server_dir, before, timeout=settle_timeout, quiet=quiet)
    result.settled = done.settled
    copied = copy_new(server_dir, sorted(done.files), result.out_dir)
    result.files = [(p, p.stat().st_size) for p in copied]


def summarize(result: ProfileResult, max_bytes: int = MAX_SUMMARY_BYTES) -> None:
    """Parse the trace files of a capture into result.summary; unreadable ones are noted, not fatal."""
    from gpuops.probes import traces

    paths = [p for p, _ in result.files if traces_like(p)]
    if not paths:
        result.notes.append("no .json / .json.gz trace among the files: nothing to summarize")
        return
    total = sum(json_bytes(p, size) for p, size in result.files if traces_like(p))
    if total > max_bytes:
        result.notes.append(f"traces hold {format_size(total)} of JSON (uncompressed): too big to summarize here; "
                            "open them in Perfetto")
        return
    summary = traces.TraceSummary()
    for p in paths:
        try:
            summary.merge(traces.summarize_file(p))
        except GpuopsError as err:
            result.unreadable.append(err.message)
    result.summary = summary if summary.files else None


def json_bytes(path: Path, size: int) -> int:
    """How much JSON parsing a trace file means: a .json.gz holds 10-20x its size on disk."""
    from gpuops.probes import traces

    try:
        return traces.decompressed_size(path)
    except OSError:
        return size


def traces_like(path: Path) -> bool:
    return is_trace_file(path.name)


# ---------------------------------------------------------------- the use case


def run_profile(target, *, profiles_root: Path, out_dir: Path | None = None, num_steps: int = DEFAULT_NUM_STEPS,
                with_stack: bool = False, load: bool = False, duration: float | None = None,
                settle_timeout: float = DEFAULT_SETTLE_TIMEOUT, quiet: float = QUIET_SECONDS,
                suggest_dir: Path | None = None, write: Write = print) -> ProfileResult:
    """`inv profile`'s use case: capture from a found server (gpuops.probes.target.Target), summarize.

    Engines without a profiler endpoint fail (UsageError, saying what to use) before any folder is
    made. Without `out_dir`, a new timestamped folder under `profiles_root` (removed again when the
    capture brings nothing back). vLLM's own trace folder is read from the server process (gpuops'
    record, or whoever listens on the URL's port). A failure carries the server's last log lines.
    """
    from gpuops.probes.target import with_server_log
    from gpuops.server.logs import create_run_folder

    flavour = flavour_of(target.engine)
    out = Path(out_dir) if out_dir is not None else create_run_folder(profiles_root)
    rec = target.record
    server_dir = None
    if flavour == "vllm":  # vLLM writes into its own folder: read it from the server process
        server_dir = (server_profiler_dir(rec.pid, rec.create_time) if rec is not None
                      else local_profiler_dir(target.url))
    try:
        result = capture(target.url, target.engine, out_dir=out, num_steps=num_steps, with_stack=with_stack,
                         load=load, duration=duration, settle_timeout=settle_timeout, write=write,
                         server_dir=server_dir, quiet=quiet, log_shown=bool(target.log_path),
                         suggest_dir=suggest_dir)
    except RequestFailed as err:
        raise with_server_log(err, target) from None
    finally:
        if out_dir is None and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed capture leaves no empty timestamp folder behind
    result.server, result.engine = target.name, target.engine
    summarize(result)
    return result
