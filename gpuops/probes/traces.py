"""Read PyTorch profiler traces (Chrome-trace JSON, plain or gzipped) and say where the time went.

    s = summarize_files([Path("generator-0-0.1763.pt.trace.json"), Path("rank0.pt.trace.json.gz")])
    for line in format_summary(s, top=3): print(line)
    trace summary: 25 steps x 2 files (mean 16.10 ms), window 412.30 ms, GPU busy 71%
    top GPU kernels by total time (share of all GPU time):
       41.2%   120.50 ms    300  sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_...
    ...
    top CPU operators by self time (share of all operator self time; total includes children):

The shape is what `torch.profiler` (Kineto) writes: `{"traceEvents": [...]}` (or a bare list), with
complete events (`"ph": "X"`, `ts`/`dur` in microseconds) whose `cat` says what they are: `cpu_op`,
`user_annotation` (ProfilerStep#N), `cuda_runtime`, `kernel`, `gpu_memcpy`, `gpu_memset`, ...
Kineto marks each step twice: `user_annotation` on the CPU thread and `gpu_user_annotation` on the
stream; a step counts once. Each file is one process or rank recording the same steps, so steps are
reported per file ("25 steps x 2 files"), not added up. Everything here is pure except `load_trace`,
`decompressed_size` and `summarize_files`, which read files.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError

# Kineto's category names, and the older names some torch versions wrote.
CPU_OP_CATS = frozenset({"cpu_op", "operator"})
KERNEL_CATS = frozenset({"kernel"})
MEMCPY_CATS = frozenset({"gpu_memcpy", "memcpy"})
MEMSET_CATS = frozenset({"gpu_memset", "memset"})
GPU_CATS = KERNEL_CATS | MEMCPY_CATS | MEMSET_CATS
STEP_PREFIX = "ProfilerStep#"  # torch.profiler's schedule marks each step with this annotation

STEP_CAT = "user_annotation"  # the CPU-side step marks; `gpu_user_annotation` repeats them on the GPU

GZIP_MAGIC = b"\x1f\x8b"
GZIP_MIN_RATIO = 4  # JSON traces compress 10-20x: assume at least this much (ISIZE wraps at 4 GiB)


@dataclass
class OpStat:
    """One name's aggregate over all its calls (microseconds)."""

    count: int = 0
    total_us: float = 0.0
    self_us: float = 0.0  # CPU operators: total minus time in nested operators; GPU: equals total

    def add(self, other: OpStat) -> None:
        self.count += other.count
        self.total_us += other.total_us
        self.self_us += other.self_us


@dataclass(frozen=True)
class Row:
    name: str
    count: int
    total_us: float
    self_us: float
    share: float  # 0..1 of the table's whole (all GPU time, or all operator self time)


@dataclass
class TraceSummary:
    files: int = 0
    window_us: float = 0.0  # longest span covered by one file's complete events
    busy_us: float = 0.0  # GPU time covered by at least one kernel/memcpy/memset, summed over files
    busy_window_us: float = 0.0  # the windows of the files that have GPU events, summed
    step_counts: list[int] = field(default_factory=list)  # ProfilerStep#N marks, one entry per file
    step_us: float = 0.0  # summed duration of the ProfilerStep#N annotations
    ops: dict[str, OpStat] = field(default_factory=dict)
    gpu: dict[str, OpStat] = field(default_factory=dict)

    def merge(self, other: TraceSummary) -> None:
        self.files += other.files
        self.window_us = max(self.window_us, other.window_us)
        self.busy_us += other.busy_us
        self.busy_window_us += other.busy_window_us
        self.step_counts += other.step_counts
        self.step_us += other.step_us
        for mine, theirs in ((self.ops, other.ops), (self.gpu, other.gpu)):
            for name, stat in theirs.items():
                mine.setdefault(name, OpStat()).add(stat)

    @property
    def steps(self) -> int:
        """Steps the capture recorded: every file (process, rank) records the same ones, so the most of any file."""
        return max(self.step_counts, default=0)

    @property
    def step_mean_us(self) -> float | None:
        marks = sum(self.step_counts)
        return self.step_us / marks if marks else None

    @property
    def gpu_busy(self) -> float | None:
        """Share of the captured window in which the GPU ran something (None: no GPU events)."""
        return self.busy_us / self.busy_window_us if self.busy_window_us > 0 else None

    def top_gpu(self, n: int = 10) -> list[Row]:
        whole = sum(s.total_us for s in self.gpu.values())
        return _top(self.gpu, whole, n, key=lambda s: s.total_us)

    def top_ops(self, n: int = 10) -> list[Row]:
        whole = sum(s.self_us for s in self.ops.values())
        return _top(self.ops, whole, n, key=lambda s: s.self_us)

    def as_dict(self, top: int = 10) -> dict:
        """The summary as data (`inv profile --json`): times in ms, shares 0..1, the top `top` rows.

        >>> TraceSummary(files=1, step_counts=[2], step_us=2000.0).as_dict()["step_mean_ms"]
        1.0
        """
        mean = self.step_mean_us
        return {"files": self.files, "steps": self.steps, "step_counts": list(self.step_counts),
                "step_mean_ms": None if mean is None else round(mean / 1000, 4),
                "window_ms": round(self.window_us / 1000, 4),
                "gpu_busy": None if self.gpu_busy is None else round(self.gpu_busy, 4),
                "top_gpu_kernels": [_row_dict(r) for r in self.top_gpu(top)],
                "top_cpu_ops": [_row_dict(r) for r in self.top_ops(top)]}


def _row_dict(row: Row) -> dict:
    return {"name": row.name, "calls": row.count, "total_ms": round(row.total_us / 1000, 4),
            "self_ms": round(row.self_us / 1000, 4), "share": round(row.share, 4)}


def _top(stats: dict[str, OpStat], whole: float, n: int, key) -> list[Row]:
    ranked = sorted(stats.items(), key=lambda kv: (-key(kv[1]), kv[0]))[:n]
    return [Row(name, s.count, s.total_us, s.self_us, key(s) / whole if whole > 0 else 0.0) for name, s in ranked]


# ---------------------------------------------------------------- pure: events -> summary


def _num(value) -> float | None:
    """Kineto writes ts/dur as numbers; a few exporters write strings. Anything else is skipped."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def events_of(trace) -> list[dict]:
    """The event list of a trace in either Chrome-trace form: an object with traceEvents, or a bare array."""
    if isinstance(trace, dict):
        events = trace.get("traceEvents")
        if isinstance(events, list):
            return [e for e in events if isinstance(e, dict)]
        raise ValueError("no traceEvents list in the trace object")
    if isinstance(trace, list):
        return [e for e in trace if isinstance(e, dict)]
    raise ValueError(f"a trace is a JSON object or array, not {type(trace).__name__}")


def _self_times(ops: list[tuple[float, float, str]]) -> dict[str, OpStat]:
    """Aggregate one thread's operators; an operator's self time excludes operators nested in it.

    Nesting is by time containment (how Kineto's operators nest on one thread): sort by start, longest
    first on ties, and keep a stack of open operators.
    """
    stats: dict[str, OpStat] = {}
    stack: list[list] = []  # open operators: [end, name, time in children, dur]

    def close(entry: list) -> None:
        end, name, child_us, dur = entry
        stat = stats.setdefault(name, OpStat())
        stat.self_us += max(0.0, dur - child_us)

    for ts, dur, name in sorted(ops, key=lambda o: (o[0], -o[1])):
        while stack and stack[-1][0] <= ts:
            close(stack.pop())
        end = ts + dur
        if stack:
            parent = stack[-1]
            parent[2] += min(end, parent[0]) - ts
        stat = stats.setdefault(name, OpStat())
        stat.count += 1
        stat.total_us += dur
        stack.append([end, name, 0.0, dur])
    while stack:
        close(stack.pop())
    return stats


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def _step_durations(steps: list[tuple[str, float]]) -> list[float]:
    """One duration per step: the CPU `user_annotation` marks; traces without them (other exporters,
    old torch) fall back to the non-GPU marks, then to any."""
    for keep in (lambda c: c == STEP_CAT, lambda c: not c.startswith("gpu"), lambda c: True):
        chosen = [dur for cat, dur in steps if keep(cat)]
        if chosen:
            return chosen
    return []


def summarize_events(events: Iterable[dict]) -> TraceSummary:
    """The summary of one trace's events (one file: one process or rank)."""
    summary = TraceSummary(files=1)
    steps: list[tuple[str, float]] = []  # (cat, dur) of each ProfilerStep#N mark
    threads: dict[tuple, list[tuple[float, float, str]]] = {}
    gpu_intervals: dict[object, list[tuple[float, float]]] = {}
    first, last = None, None
    for ev in events:
        if ev.get("ph") != "X":
            continue
        ts, dur = _num(ev.get("ts")), _num(ev.get("dur"))
        if ts is None or dur is None or dur < 0:
            continue
        name = str(ev.get("name", "?"))
        cat = str(ev.get("cat", "")).lower()
        first = ts if first is None else min(first, ts)
        last = ts + dur if last is None else max(last, ts + dur)
        if name.startswith(STEP_PREFIX):
            steps.append((cat, dur))
        elif cat in CPU_OP_CATS:
            threads.setdefault((ev.get("pid"), ev.get("tid")), []).append((ts, dur, name))
        elif cat in GPU_CATS:
            stat = summary.gpu.setdefault(name, OpStat())
            stat.count += 1
            stat.total_us += dur
            stat.self_us += dur
            args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
            device = args.get("device", ev.get("pid"))
            gpu_intervals.setdefault(device, []).append((ts, ts + dur))
    durations = _step_durations(steps)
    summary.step_counts = [len(durations)]
    summary.step_us = sum(durations)
    for ops in threads.values():
        for name, stat in _self_times(ops).items():
            summary.ops.setdefault(name, OpStat()).add(stat)
    if first is not None:
        summary.window_us = last - first
    if gpu_intervals and summary.window_us > 0:
        summary.busy_us = sum(_union_length(iv) for iv in gpu_intervals.values())
        summary.busy_window_us = summary.window_us * len(gpu_intervals)
    return summary


# ---------------------------------------------------------------- pure: formatting

# `at::native::`, `(anonymous namespace)::`, ... inside template arguments: long, and the same everywhere
_QUALIFIERS = re.compile(r"(?<![\w:])(?:[A-Za-z_]\w*::|\(anonymous namespace\)::)+(?=[A-Za-z_~{])")


def short_name(name: str, width: int = 100) -> str:
    """A name that fits `width`. Short names stay as they are; long ones (templated kernels) lose
    `void `, the namespaces inside their template arguments and the nested template arguments and
    parameter lists (the first-level arguments tell kernels apart), and are then cut in the middle
    (kernel names differ at both ends).

    >>> short_name("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, ...)", 70)
    'at::native::vectorized_elementwise_kernel<4, FillFunctor<…>>(…)'
    """
    text = name.strip()
    if len(text) <= width:
        return text
    if text.startswith("void "):
        text = text[5:]
    first = min((i for i in (text.find("<"), text.find("(")) if i >= 0), default=len(text))
    text = text[:first] + _QUALIFIERS.sub("", text[first:])
    pairs = {"<": ">", "(": ")"}
    stack: list[tuple[str, bool]] = []  # (closing char, folded)
    out: list[str] = []
    for ch in text:
        hidden = any(folded for _, folded in stack)
        if ch in pairs:
            fold = ch == "(" or any(closer == ">" for closer, _ in stack)
            if not hidden:
                out.append(ch + ("…" if fold else ""))
            stack.append((pairs[ch], fold))
        elif stack and ch == stack[-1][0]:
            stack.pop()
            if not any(folded for _, folded in stack):
                out.append(ch)
        elif not hidden:
            out.append(ch)
    text = "".join(out)
    if len(text) <= width:
        return text
    head = width * 2 // 3
    return text[:head] + "…" + text[len(text) - (width - head - 1):]


def format_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def _n_steps(n: int) -> str:
    return f"{n} step{'s' if n != 1 else ''}"


def steps_text(summary: TraceSummary) -> str | None:
    """`2 steps (mean 0.95 ms)` for one file, `25 steps x 2 files (...)` for several; None: no steps.

    Files of one capture record the same steps, each its own copy: they are not added up.
    """
    counts = [n for n in summary.step_counts if n]
    if not counts:
        return None
    lo, hi = min(counts), max(counts)
    text = _n_steps(hi) if lo == hi else f"{lo}-{hi} steps"
    if len(summary.step_counts) > 1:
        text += f" x {len(counts)} file{'s' if len(counts) != 1 else ''}"
    return f"{text} (mean {format_ms(summary.step_mean_us)})"


def format_summary(summary: TraceSummary, top: int = 10, width: int = 100) -> list[str]:
    """The lines `inv profile` prints under the file list."""
    files = f"{summary.files} file{'s' if summary.files != 1 else ''}"
    steps = steps_text(summary)
    if steps is None:
        head = f"trace summary: {files}"
    elif summary.files > 1 and sum(1 for n in summary.step_counts if n) == summary.files:
        head = f"trace summary: {steps}"  # "25 steps x 2 files" names the files already
    else:
        head = f"trace summary: {files}, {steps}"
    head += f", window {format_ms(summary.window_us)}"
    if summary.gpu_busy is not None:
        head += f", GPU busy {summary.gpu_busy:.0%}"
    lines = [head]
    gpu = summary.top_gpu(top)
    if gpu:
        lines.append("top GPU kernels by total time (share of all GPU time):")
        lines.append(f"  {'share':>6} {'total':>11} {'calls':>6}  name")
        lines += [f"  {r.share:>6.1%} {format_ms(r.total_us):>11} {r.count:>6}  {short_name(r.name, width)}"
                  for r in gpu]
    else:
        lines.append("no GPU kernels in the trace (CPU-only capture, or the GPU was idle)")
    ops = summary.top_ops(top)
    if ops:
        lines.append("top CPU operators by self time (share of all operator self time; total includes children):")
        lines.append(f"  {'share':>6} {'self':>11} {'total':>11} {'calls':>6}  name")
        lines += [f"  {r.share:>6.1%} {format_ms(r.self_us):>11} {format_ms(r.total_us):>11} {r.count:>6}  "
                  f"{short_name(r.name, width)}" for r in ops]
    return lines


# ---------------------------------------------------------------- I/O


def load_trace(path: str | Path):
    """The parsed JSON of a trace file; gzip is recognised by its magic bytes, whatever the name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise GpuopsError(f"trace file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as err:
        raise GpuopsError(
            f"cannot read trace {path}: {err}",
            hint="the file may still be being written (wait and retry) or be cut short; "
            "try opening it in ui.perfetto.dev",
        ) from None


def decompressed_size(path: str | Path) -> int:
    """Bytes of JSON in a trace file: its size, or for gzip (by magic bytes) the ISIZE trailer, which
    is the uncompressed size mod 4 GiB, taken as at least GZIP_MIN_RATIO x the compressed size so a
    wrapped ISIZE does not pass a 4+ GiB trace for a small one. OSError when it cannot be read."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC or size < 18:  # 18: the smallest gzip (10-byte header, 8-byte trailer)
            return size
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    return max(isize, size * GZIP_MIN_RATIO)


def summarize_file(path: str | Path) -> TraceSummary:
    try:
        events = events_of(load_trace(path))
    except ValueError as err:
        raise GpuopsError(f"{path} is not a Chrome trace: {err}") from None
    return summarize_events(events)


def summarize_files(paths: Iterable[str | Path]) -> TraceSummary:
    """One summary over several files (per-generator or per-rank traces of the same capture)."""
    total = TraceSummary()
    for p in paths:
        total.merge(summarize_file(p))
    return total
