"""What a load test leaves behind and shows: the terminal table, summary.json, PNG charts.

    for line in summary_lines(summary): print(line)
    ┏━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━┳━━━━━━━┳━━━━━━━┳━━━━━━━┳━━━━━━━┓
    ┃ ms        ┃  mean ┃ median ┃   p90 ┃   p95 ┃   p99 ┃   max ┃
    ┡━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━╇━━━━━━━╇━━━━━━━╇━━━━━━━╇━━━━━━━┩
    │ TTFT      │ 101.9 │  101.2 │ 103.0 │ 104.1 │ 109.8 │ 112.0 │
    ...
    requests: 412 completed, 0 failed in 30.4 s (13.55 req/s)

matplotlib is imported inside the chart functions (Agg backend, no display needed).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from gpuops.rundir import open_private

ROWS = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2EL", "e2el"))
COLUMNS = ("mean", "median", "p90", "p95", "p99", "max")


def write_json(path: Path, data) -> Path:
    """Write a new JSON file, 0600; an existing one is never overwritten (mode 'x')."""
    with open_private(path, "x", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return path


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _render(table) -> list[str]:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None, force_terminal=False).print(table)
    return buf.getvalue().rstrip("\n").splitlines()


def summary_lines(s: dict) -> list[str]:
    """The run's summary as text lines: a latency table, then totals, warnings and failures."""
    from rich.table import Table

    table = Table(title=None)
    table.add_column("ms")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    rows = list(ROWS)
    if s.get("scheduled"):
        rows += [("TTFT from due", "ttft_from_due"), ("send lag", "send_lag")]
    shown = 0
    for label, key in rows:
        if s.get(f"median_{key}_ms") is None:
            continue  # not streamed, or nothing succeeded: nothing to show
        table.add_row(label, *(_ms(s.get(f"{col}_{key}_ms")) for col in COLUMNS))
        shown += 1
    lines = _render(table) if shown else []

    rate = s.get("request_throughput")
    lines.append(f"requests: {s['completed']} completed, {s['failed']} failed"
                 + (f", {s['cancelled']} cut off (not counted)" if s.get("cancelled") else "")
                 + f" in {s['duration']:.1f} s" + (f" ({rate:.2f} req/s)" if rate is not None else ""))
    if s.get("completed") and s.get("output_throughput") is not None:
        lines.append(f"tokens: {s['total_output_tokens']} output ({s['output_throughput']:.1f} tok/s), "
                     f"{s['total_input_tokens']} input; total {s['total_token_throughput']:.1f} tok/s; "
                     f"mean {s['mean_output_tokens']:.1f} output tokens per request")
    lines += steady_lines(s.get("steady"))
    if s.get("usage_missing"):
        lines.append(f"note: {s['usage_missing']} answer(s) carried no usage; their output tokens are counted "
                     "chunks, which servers may batch")
    if s.get("slo"):
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in s["slo"].items())
        good = s.get("request_goodput")
        lines.append(f"goodput: {good:.2f} req/s met {slo} ({s['goodput_completed']} of {s['completed']})"
                     if good is not None else f"goodput: none met {slo}")
    if s.get("scheduled"):
        never = f", {s['never_sent']} never sent" if s.get("never_sent") else ""
        lines.append(f"open loop: {s['scheduled']} requests due, {s.get('sent', s['scheduled'])} sent{never}; "
                     f"{s['late_requests']} late (sent more than 25 ms after due, or never); "
                     f"send lag p50 {_ms(s.get('median_send_lag_ms'))} ms, p99 {_ms(s.get('p99_send_lag_ms'))} ms")
        if s.get("fell_behind"):
            lines.append(f"WARNING: the client fell behind its schedule ({s['late_fraction']:.0%} of requests "
                         "late or never sent): the server saw less load than asked for, and latencies under the "
                         "asked-for load were not measured (coordinated omission). 'TTFT from due' counts the "
                         "wait. Cause: " + (s.get("fell_behind_cause") or "not known") + ".")
    client = s.get("client") or {}
    for worker, w in sorted((client.get("workers") or {}).items()):
        lines.append(f"client process {worker}: CPU {w['cpu_mean']:.0f}% of a core (max {w['cpu_max']:.0f}%), "
                     f"event-loop lag p90 {w['loop_lag_p90_ms']:.1f} ms")
    if client.get("client_bound"):
        lines.append("WARNING: client-bound: " + "; ".join(client["client_bound_reasons"])
                     + ". These numbers include the load generator's own delays; re-run with more --workers "
                     "(or fewer users per process).")
    return lines + outcome_lines(s)


def outcome_lines(s: dict) -> list[str]:
    """The closing lines of a summary: failures by cause, no success at all, a partial run."""
    lines = [f"failed: {n} x {reason}" for reason, n in list((s.get("failure_reasons") or {}).items())[:8]]
    if not s.get("completed"):
        lines.append("NO REQUEST SUCCEEDED: there is no latency or throughput to report"
                     + (f" ({s['failed']} failed)" if s.get("failed") else ""))
    if s.get("partial"):
        lines.append(f"PARTIAL RESULTS: {s.get('status_reason') or s.get('status')}")
    return lines


def steady_lines(st: dict | None) -> list[str]:
    """The steady-state window as one line, next to the whole run's totals.

    >>> steady_lines({"window": {"users": 32, "start_s": 7.8, "end_s": 37.8, "ramp_s": 7.8, "warmup_s": 0,
    ...   "cooldown_s": 0, "empty": None}, "duration": 30.0, "completed": 400, "request_throughput": 13.3,
    ...   "output_throughput": 851.2, "median_ttft_ms": 101.0, "median_tpot_ms": 20.1})[0]
    'steady state (all 32 users running, 7.8-37.8 s after the first request): 400 completed in 30.0 s, 13.30 req/s, 851.2 output tok/s; TTFT p50 101.0 ms, TPOT p50 20.1 ms'
    """
    if not st:
        return []
    w = st.get("window") or {}
    if w.get("empty"):
        return [f"steady state: none ({w['empty']})"]
    edges = [f"warm-up {w['warmup_s']:g} s" for _ in [0] if w.get("warmup_s")]
    edges += [f"cool-down {w['cooldown_s']:g} s" for _ in [0] if w.get("cooldown_s")]
    return [f"steady state (all {w.get('users')} users running, {w['start_s']:.1f}-{w['end_s']:.1f} s after the first "
            f"request{'; ' + ', '.join(edges) + ' left out' if edges else ''}): {st['completed']} completed in "
            f"{st['duration']:.1f} s, {st['request_throughput']:.2f} req/s, {st['output_throughput']:.1f} output "
            f"tok/s; TTFT p50 {_ms(st.get('median_ttft_ms'))} ms, TPOT p50 {_ms(st.get('median_tpot_ms'))} ms"]


def sweep_lines(rows: list[dict], mode: str) -> list[str]:
    """One line per sweep level: load, throughput, TTFT and TPOT percentiles."""
    from rich.table import Table

    table = Table(title="sweep")
    table.add_column("req/s asked" if mode == "qps" else "users", justify="right")
    for name in ("req/s", "out tok/s", "TTFT p50", "TTFT p90", "TTFT p99", "TPOT p50", "TPOT p90", "TPOT p99",
                 "failed", "note"):
        table.add_column(name, justify="right")
    for r in rows:
        notes = []
        if r.get("fell_behind"):
            notes.append("fell behind")
        if r.get("client_bound"):
            notes.append("client-bound")
        table.add_row(f"{r['level']:g}",
                      "-" if r.get("request_throughput") is None else f"{r['request_throughput']:.2f}",
                      "-" if r.get("output_throughput") is None else f"{r['output_throughput']:.0f}",
                      _ms(r.get("median_ttft_ms")), _ms(r.get("p90_ttft_ms")), _ms(r.get("p99_ttft_ms")),
                      _ms(r.get("median_tpot_ms")), _ms(r.get("p90_tpot_ms")), _ms(r.get("p99_tpot_ms")),
                      str(r.get("failed", 0)), ", ".join(notes))
    return _render(table)


CHARTS_HINT = "pip install 'gpuops[loadtest]'"


def charts_available() -> bool:
    """matplotlib is part of the loadtest extra: without it the numbers are still written, the charts skipped."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def warnings(s: dict) -> list[str]:
    """The summary's warnings as short lines (the terminal table's WARNING, note and PARTIAL lines).

    >>> warnings({"completed": 3, "usage_missing": 1, "client": {"client_bound": True,
    ...           "client_bound_reasons": ["CPU 98% of a core"]}})[1]
    'client-bound: CPU 98% of a core'
    """
    out = []
    if s.get("usage_missing"):
        out.append(f"{s['usage_missing']} answer(s) carried no usage; their output tokens are counted chunks")
    client = s.get("client") or {}
    if client.get("client_bound"):
        out.append("client-bound: " + "; ".join(client.get("client_bound_reasons") or []))
    if s.get("fell_behind"):
        out.append(f"the client fell behind its schedule ({s.get('late_fraction') or 0:.0%} of requests late or "
                   f"never sent): {s.get('fell_behind_cause') or 'cause not known'}")
    if not s.get("completed"):
        out.append("no request succeeded")
    if s.get("partial"):
        out.append(f"partial results: {s.get('status_reason') or s.get('status')}")
    return out


def _save(fig, path: Path) -> None:
    with open_private(path, "wb") as f:  # 0600 like the rest of the report
        fig.savefig(f, dpi=100, format="png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_chart(records: list[dict], path: Path, title: str = "") -> Path:
    """latency.png: TTFT and TPOT percentiles, and throughput, over the run (bins of ~1/50 of it)."""
    from gpuops.probes.loadtest.metrics import time_series

    plt = _pyplot()
    series = time_series(records)
    bins = series["bins"]
    t = [b["t"] + b["width_s"] / 2 for b in bins]  # each point at the middle of its bin
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for ax, key, label in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "tpot", "TPOT (ms)")):
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            ys = [b[f"p{q}_{key}_ms"] for b in bins]
            ax.plot(t, [float("nan") if y is None else y for y in ys], style, label=f"p{q}")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)  # from zero: small differences are not blown up into cliffs
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    ax = axes[2]
    ax.plot(t, [b["output_throughput"] for b in bins], "-", color="tab:green", label="output tok/s")
    ax.set_ylabel("output tokens/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    width = [b["width_s"] * 0.8 for b in bins]
    ax2.bar(t, [b["completed"] / b["width_s"] for b in bins], width=width, alpha=0.25, color="tab:blue",
            label="completed req/s")
    ax2.bar(t, [b["failed"] / b["width_s"] for b in bins], width=width, alpha=0.6, color="tab:red",
            label="failed req/s")
    ax2.set_ylabel("requests/s")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    ax.set_xlabel(f"seconds since the first request (bins of {series['bin_s']:g} s)")
    fig.suptitle(title or "load test")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def sweep_chart(rows: list[dict], mode: str, path: Path, title: str = "") -> Path:
    """sweep.png: TTFT and TPOT percentiles and output throughput against the load level."""
    plt = _pyplot()
    x = [r["level"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, label in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "tpot", "TPOT (ms)")):
        for stat, style in (("median", "o-"), ("p90", "s--"), ("p99", "^:")):
            ys = [r.get(f"{stat}_{key}_ms") for r in rows]
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=stat)
        ax.set_ylabel(label)
        ax.legend()
    ax = axes[2]
    ax.plot(x, [r.get("output_throughput") or 0.0 for r in rows], "o-", color="tab:green")
    ax.set_ylabel("output tokens/s")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.set_xlabel("requests/s asked" if mode == "qps" else "concurrent users")
        ax.grid(alpha=0.3)
        if len(x) > 2 and min(x) > 0 and max(x) / min(x) >= 8:
            ax.set_xscale("log", base=2)
    fig.suptitle(title or "sweep")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
