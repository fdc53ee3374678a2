"""From raw per-request records to the statistics people compare, named as `vllm bench serve` names them.

    s = summarize(read_records(Path("do_not_commit/load_tests/20261122-101500/records.jsonl")))
    s["completed"], s["median_ttft_ms"], s["p99_tpot_ms"], s["output_throughput"]   # -> (412, 101.3, 20.4, 1311.7)

Definitions (per request, then over the run):
    TTFT   time from sending the request to the first chunk that carries generated text
    ITL    each gap between two consecutive text chunks (all gaps of all requests pooled)
    E2EL   time from sending the request to the end of its answer
    TPOT   (E2EL - TTFT) / (output_tokens - 1), for requests with more than one output token
    output tokens: the server's `usage.completion_tokens` (counted chunks only when it sends none)
    duration: first request sent to last answer finished; throughputs divide by it
    goodput: completed requests per second that met every SLO given

Every statistic is computed from the exact per-request values, never from histogram buckets
(Locust's own percentiles round response times to about two significant digits). Percentiles
interpolate linearly between the closest ranks, as numpy.percentile does by default.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "p90", "p95", "p99", "max")
LATE_MS = 25.0  # a request sent this much later than due counts as late
MAX_LATE_FRACTION = 0.05  # more late requests than this: the client fell behind the schedule
CPU_BOUND_PCT = 85.0  # a load-generating process this busy (% of one core) is near saturation
LOOP_LAG_BOUND_MS = 20.0  # its event loop this late (p90 of per-second maxima) delays every timestamp
STALL_MIN_S = 10.0  # a server silent this long (at least) while requests are in flight has stalled
STALL_FACTOR = 3.0  # ... or this many times its usual wait (median TTFT streamed, median E2EL not)
STALL_FIRST_S = 60.0  # before any request has finished there is no usual wait: this much silence


# ---------------------------------------------------------------- order statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def describe(values: Iterable[float]) -> dict[str, float | None]:
    """mean, median, std (population, as numpy), p90, p95, p99, max of the values; all None if empty."""
    data = sorted(values)
    if not data:
        return {k: None for k in STATS}
    n = len(data)
    mean = math.fsum(data) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in data) / n)
    return {
        "mean": mean,
        "median": percentile(data, 50),
        "std": std,
        "p90": percentile(data, 90),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": data[-1],
    }


# ---------------------------------------------------------------- per request

_ID = re.compile(r"\b(?=[0-9a-fA-F-]*\d)[0-9a-fA-F-]{12,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def reason_key(reason: str) -> str:
    """A failure reason with its varying parts (numbers, ids) blanked, so alike failures group together.

    'HTTP 500: request 17 failed (id 3f9a2c4b1d7e)' -> 'HTTP 500: request N failed (id …)'
    """
    head, sep, rest = reason.partition(": ")
    if not (head.startswith("HTTP ") and sep):
        head, sep, rest = "", "", reason
    return head + sep + _NUMBER.sub("N", _ID.sub("…", rest))



def tpot_ms(e2el_ms: float | None, ttft_ms: float | None, output_tokens: int | None) -> float | None:
    """(E2EL - TTFT) / (output_tokens - 1); None when there is no second token to time."""
    if e2el_ms is None or ttft_ms is None or not output_tokens or output_tokens < 2:
        return None
    return (e2el_ms - ttft_ms) / (output_tokens - 1)


def meets_slo(record: dict, slo: dict[str, float]) -> bool:
    """Whether a completed request met every SLO given (keys ttft/tpot/e2el, values in ms).

    A one-token answer has no TPOT and so cannot miss a TPOT target.
    """
    values = {"ttft": record.get("ttft_ms"), "e2el": record.get("e2el_ms"),
              "tpot": tpot_ms(record.get("e2el_ms"), record.get("ttft_ms"), record.get("output_tokens"))}
    for key, limit in slo.items():
        value = values[key]
        if value is None:
            if key == "tpot":
                continue
            return False
        if value > limit:
            return False
    return True


# ---------------------------------------------------------------- the run


def read_records(path: Path) -> list[dict]:
    """Records from a JSON-lines file; a torn last line (a process killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _flat(prefix_metric: str, stats: dict) -> dict:
    return {f"{stat}_{prefix_metric}_ms": value for stat, value in stats.items()}


def summarize(records: list[dict], slo: dict[str, float] | None = None, due: int | None = None) -> dict:
    """The run's statistics from its raw records: flat vLLM-style keys plus failure reasons and send lag.

    `due`: in --qps mode, how many requests the schedule made due (sent or not); see send_lag."""
    done = [r for r in records if not r.get("cancelled")]
    ok = [r for r in done if r.get("ok")]
    failed = [r for r in done if not r.get("ok")]
    cancelled = len(records) - len(done)

    duration = (max(r["end"] for r in done) - min(r["start"] for r in done)) if done else 0.0
    out_tokens = sum(r.get("output_tokens") or 0 for r in ok)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in ok)

    def per_s(x):
        return x / duration if duration > 0 else None

    summary: dict = {
        "completed": len(ok),
        "failed": len(failed),
        "cancelled": cancelled,
        "duration": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(out_tokens + in_tokens),
        "mean_output_tokens": (out_tokens / len(ok)) if ok else None,
        "mean_input_tokens": (in_tokens / len(ok)) if ok else None,
        "usage_missing": sum(1 for r in ok if r.get("tokens_from") != "usage"),
    }
    ttfts = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
    tpots = [t for t in (tpot_ms(r.get("e2el_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in ok)
             if t is not None]
    itls = [gap for r in ok for gap in (r.get("itl_ms") or ())]
    e2els = [r["e2el_ms"] for r in ok if r.get("e2el_ms") is not None]
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        summary.update(_flat(name, describe(values)))

    summary["failure_reasons"] = dict(Counter(reason_key(r.get("error") or "unknown") for r in failed).most_common())
    summary["failure_kinds"] = dict(Counter(r.get("error_kind") or "unknown" for r in failed).most_common())

    slo = {k: float(v) for k, v in (slo or {}).items() if v is not None}
    summary["slo"] = slo or None
    if slo:
        good = sum(1 for r in ok if meets_slo(r, slo))
        summary["goodput_completed"] = good
        summary["request_goodput"] = per_s(good)
    else:
        summary["goodput_completed"] = None
        summary["request_goodput"] = None

    summary.update(send_lag(records, due))
    return summary


def send_lag(records: list[dict], due: int | None = None, late_ms: float = LATE_MS,
             max_late_fraction: float = MAX_LATE_FRACTION) -> dict:
    """Open-loop (--qps) runs: how late requests left compared to when they were due.

    `due` is how many requests the schedule made due before the load stopped (known from the
    schedule itself, see arrivals.due_count); the ones never sent (every user busy until the end)
    count as late, like the ones sent late. `fell_behind` means the client could not keep the
    schedule: the server saw less load than asked for and latency under the asked-for load was not
    measured (coordinated omission). `*_ttft_from_due_ms` counts TTFT from the due time: what a user
    arriving on schedule would have waited.
    """
    sent = [r for r in records if r.get("due") is not None and r.get("lag_ms") is not None]
    scheduled = max(len(sent), due or 0)
    if not scheduled:
        return {"scheduled": 0, "sent": 0, "never_sent": 0, "fell_behind": None, "late_requests": None,
                "late_fraction": None, **_flat("send_lag", {k: None for k in STATS}),
                **_flat("ttft_from_due", {k: None for k in STATS})}
    lags = [r["lag_ms"] for r in sent]
    never_sent = scheduled - len(sent)
    late = sum(1 for lag in lags if lag > late_ms) + never_sent
    fraction = late / scheduled
    from_due = [r["ttft_ms"] + r["lag_ms"] for r in sent
                if r.get("ok") and not r.get("cancelled") and r.get("ttft_ms") is not None]
    return {
        "scheduled": scheduled,
        "sent": len(sent),
        "never_sent": never_sent,
        "late_requests": late,
        "late_fraction": fraction,
        "fell_behind": fraction > max_late_fraction,
        **_flat("send_lag", describe(lags)),
        **_flat("ttft_from_due", describe(from_due)),
    }


def peak_in_flight(records: list[dict]) -> tuple[int, dict[int, int]]:
    """The most requests in flight at once, over the run and per load process (from start/end times)."""

    def peak(rows):
        events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
        top = now = 0
        for _, step in events:  # at equal times an end (-1) sorts first: a freed user is reused at once
            now += step
            top = max(top, now)
        return top

    rows = [r for r in records if r.get("start") is not None and r.get("end") is not None]
    by_worker: dict[int, list[dict]] = {}
    for r in rows:
        by_worker.setdefault(r.get("worker", 0), []).append(r)
    return peak(rows), {w: peak(rs) for w, rs in sorted(by_worker.items())}


def behind_cause(summary: dict, records: list[dict], *, users: int, spawn_rate: float, workers: int = 1) -> str:
    """What held the open-loop client back, as advice: the in-flight cap, the spawn rate, or the CPU.

    >>> records = [{"start": 0.0, "end": 2.0} for _ in range(4)]   # 4 requests in flight at once
    >>> behind_cause({}, records, users=4, spawn_rate=4.0)
    'all 4 users were busy at once: in --qps mode --users caps the requests in flight; raise --users'
    """
    total, per_worker = peak_in_flight(records)
    share = max(1, users // max(1, workers))
    if total >= users or (workers > 1 and per_worker and max(per_worker.values()) >= share):
        who = "the only user was" if users == 1 else f"all {users} users were"
        return f"{who} busy at once: in --qps mode --users caps the requests in flight; raise --users"
    ramp_s = users / spawn_rate if spawn_rate > 0 else 0.0
    late = [r for r in records if (r.get("lag_ms") or 0.0) > LATE_MS and r.get("due") is not None]
    if ramp_s >= 1.0 and late:
        t0 = min(r["due"] for r in records if r.get("due") is not None)
        if sum(1 for r in late if r["due"] - t0 < ramp_s) * 2 >= len(late):
            return (f"users were still being started (--spawn-rate {spawn_rate:g} starts {users} users over "
                    f"{ramp_s:.0f} s) when requests fell due; raise --spawn-rate")
    if (summary.get("client") or {}).get("client_bound"):
        return "the load generator was saturated (see client-bound below); add --workers"
    return ("the client sent late although users were free and it was not saturated; "
            "lower --qps or add --workers")


def stall_after_s(summary: dict, stream: bool) -> float:
    """How long the server may send nothing while requests are in flight before the run counts as
    stalled: max(10 s, 3 x its usual wait), the usual wait being the median TTFT (streamed: later
    chunks come faster) or the median E2EL (not streamed); 60 s before any request has finished."""
    usual = summary.get("median_ttft_ms") if stream else summary.get("median_e2el_ms")
    if usual is None:
        usual = summary.get("median_e2el_ms")
    if usual is None:
        return STALL_FIRST_S
    return max(STALL_MIN_S, STALL_FACTOR * usual / 1000.0)


def silent_cut_offs(records: list[dict], silence_s: float) -> list[dict]:
    """The requests cut off at the end of the run (still in flight after the stop grace) when the
    server had sent nothing to anyone for `silence_s` or more before the cut: a server that stopped
    answering. [] when anything arrived in that time (a request still queued behind others on a
    busy server is not a stall)."""
    cut = [r for r in records if r.get("cancelled") and r.get("cut") == "end" and r.get("end") is not None]
    if not cut:
        return []
    cut_at = max(r["end"] for r in cut)
    heard = [r["end"] - (r.get("silent_ms") or 0.0) / 1000.0 for r in cut]  # each one's last data
    heard += [r["end"] for r in records if not r.get("cancelled") and r.get("end") is not None]
    return cut if cut_at - max(heard) >= silence_s else []


def client_load(samples: list[dict], cpu_bound_pct: float = CPU_BOUND_PCT,
                loop_lag_bound_ms: float = LOOP_LAG_BOUND_MS) -> dict:
    """Per load-generating process: CPU use and event-loop lag while users ran; whether it was client-bound.

    Samples are {"worker", "t", "cpu" (% of one core), "loop_lag_ms" (worst timer overshoot in
    the interval), "users", "stopping"}. A process's first sample covers its start-up and is left
    out, and so are samples taken while the run was being stopped (Locust then writes its reports,
    which blocks the loop but delays no measured request).
    """
    by_worker: dict[int, list[dict]] = {}
    for s in sorted(samples, key=lambda s: s["t"]):
        by_worker.setdefault(s["worker"], []).append(s)
    workers = {}
    reasons = []
    for worker, rows in sorted(by_worker.items()):
        busy = [s for s in rows[1:] if s.get("users", 0) > 0 and not s.get("stopping")]
        if not busy:
            continue
        cpu = [s["cpu"] for s in busy]
        lag = [s.get("loop_lag_ms", 0.0) for s in busy]
        stats = {"cpu_mean": math.fsum(cpu) / len(cpu), "cpu_max": max(cpu),
                 "loop_lag_p90_ms": percentile(sorted(lag), 90), "loop_lag_max_ms": max(lag),
                 "samples": len(busy)}
        workers[worker] = stats
        if stats["cpu_mean"] >= cpu_bound_pct:
            reasons.append(f"load generator process {worker} used {stats['cpu_mean']:.0f}% of a core on "
                           f"average (saturation is 100%)")
        if stats["loop_lag_p90_ms"] >= loop_lag_bound_ms:
            reasons.append(f"load generator process {worker}'s event loop ran up to "
                           f"{stats['loop_lag_p90_ms']:.0f} ms late (p90), which delays every timestamp it takes")
    return {"workers": workers, "client_bound": bool(reasons), "client_bound_reasons": reasons}


def time_series(records: list[dict], bin_s: float | None = None) -> dict:
    """Per time bin since the first request: latency percentiles of requests finished in it, and the
    output tokens/s streamed in it (each chunk placed at its own arrival time). Each bin has its
    start `t` and `width_s`; the last one may be shorter or (up to 1.5 bins) longer."""
    done = [r for r in records if not r.get("cancelled")]
    if not done:
        return {"bin_s": bin_s or 1.0, "bins": []}
    t0 = min(r["start"] for r in done)
    span = max(r["end"] for r in done) - t0
    if bin_s is None:
        bin_s = max(1.0, round(span / 50.0))
    n_bins = max(1, math.ceil(span / bin_s))
    # the last bin covers only what is left of the run: rates there divide by that width (a full
    # width would show a false drop at the end); a sliver under half a bin joins the one before
    widths = [bin_s] * n_bins
    widths[-1] = span - (n_bins - 1) * bin_s if span > 0 else bin_s
    if n_bins > 1 and widths[-1] < bin_s / 2:
        n_bins -= 1
        widths = widths[:n_bins - 1] + [bin_s + (span - n_bins * bin_s)]
    finished: list[list[dict]] = [[] for _ in range(n_bins)]
    tokens = [0.0] * n_bins
    for r in done:
        finished[min(n_bins - 1, int((r["end"] - t0) // bin_s))].append(r)
        if not r.get("ok"):
            continue
        out = r.get("output_tokens") or 0
        if r.get("ttft_ms") is None:  # not streamed: all tokens at the end
            tokens[min(n_bins - 1, int((r["end"] - t0) // bin_s))] += out
            continue
        times = [r["start"] + r["ttft_ms"] / 1000.0]
        for gap in r.get("itl_ms") or ():
            times.append(times[-1] + gap / 1000.0)
        per_chunk = out / len(times)
        for t in times:
            tokens[min(n_bins - 1, max(0, int((t - t0) // bin_s)))] += per_chunk
    bins = []
    for i in range(n_bins):
        ok = [r for r in finished[i] if r.get("ok")]
        ttft = sorted(r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None)
        tpot = sorted(t for t in (tpot_ms(r.get("e2el_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in ok)
                      if t is not None)
        e2el = sorted(r["e2el_ms"] for r in ok if r.get("e2el_ms") is not None)
        row = {"t": i * bin_s, "width_s": widths[i], "completed": len(ok), "failed": len(finished[i]) - len(ok),
               "output_throughput": tokens[i] / widths[i]}
        for name, data in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
            for q in (50, 90, 99):
                row[f"p{q}_{name}_ms"] = percentile(data, q) if data else None
        bins.append(row)
    return {"bin_s": bin_s, "bins": bins}


SWEEP_KEYS = ("completed", "failed", "request_throughput", "output_throughput",
              "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p90_tpot_ms", "p99_tpot_ms",
              "median_itl_ms", "median_e2el_ms", "p99_e2el_ms", "request_goodput", "fell_behind", "never_sent")


def sweep_row(level: float, summary: dict, client: dict | None = None) -> dict:
    """One row of a sweep: the load level and the headline numbers of its run."""
    row = {"level": level}
    row.update({k: summary.get(k) for k in SWEEP_KEYS})
    row["client_bound"] = bool(client and client.get("client_bound"))
    return row


# ---------------------------------------------------------------- steady state


def ramp_s(users: int, spawn_rate: float) -> float:
    """How long Locust takes to start every user. It starts them in batches of floor(spawn_rate) (at least
    one), a batch every batch / spawn_rate s, the first at once.

    >>> ramp_s(32, 4.0), ramp_s(4, 4.0), ramp_s(4, 2.0), ramp_s(3, 0.5)
    (7.0, 0.0, 1.0, 4.0)
    """
    if spawn_rate <= 0 or users <= 1:
        return 0.0
    batch = max(1, math.floor(spawn_rate))
    return (math.ceil(users / batch) - 1) * batch / spawn_rate


def all_running_at(records: list[dict], users: int) -> float | None:
    """When the load first had `users` requests in flight at once (every user running), from start/end
    times; None if it never did (failures that back off, a run too short for the ramp)."""
    events = sorted([(r["start"], 1) for r in records if r.get("start") is not None and r.get("end") is not None]
                    + [(r["end"], -1) for r in records if r.get("start") is not None and r.get("end") is not None])
    now = 0
    for t, step in events:  # at equal times an end (-1) sorts first: a freed user is reused at once
        now += step
        if now >= users:
            return t
    return None


def steady_window(records: list[dict], *, users: int, spawn_rate: float, mode: str = "users",
                  warmup_s: float = 0.0, cooldown_s: float = 0.0) -> dict:
    """The steady-state window of a run: from when every user runs (+ `warmup_s`) to when the load
    stopped (the last request sent, - `cooldown_s`). Epoch seconds `start`/`end`, plus `ramp_s` (from the
    first request to all users running) and `ramp_from` (`observed`: `users` requests were in flight at
    once; `expected`: the spawn schedule, in --qps mode or when that never happened). `start` is None
    when nothing was sent; `empty` says why a window has no length.

    >>> rs = [{"start": 0.0 + i, "end": 10.0} for i in range(4)] + [{"start": 10.0, "end": 12.0}]
    >>> w = steady_window(rs, users=4, spawn_rate=1.0)
    >>> w["start"], w["end"], w["ramp_s"], w["ramp_from"]
    (3.0, 10.0, 3.0, 'observed')
    """
    sent = [r for r in records if r.get("start") is not None]
    out = {"start": None, "end": None, "ramp_s": None, "ramp_from": None, "warmup_s": warmup_s,
           "cooldown_s": cooldown_s, "empty": None}
    if not sent:
        out["empty"] = "no request was sent"
        return out
    t0 = min(r["start"] for r in sent)
    load_end = max(r["start"] for r in sent)
    seen = all_running_at(sent, users) if mode == "users" else None
    if seen is not None:
        ramp_end, out["ramp_from"] = seen, "observed"
    else:
        ramp_end, out["ramp_from"] = t0 + ramp_s(users, spawn_rate), "expected"
    out["ramp_s"] = ramp_end - t0
    start, end = ramp_end + warmup_s, load_end - cooldown_s
    out["start"], out["end"] = start, end
    if end <= start:
        out["empty"] = (f"the load stopped {load_end - t0:.1f} s after the first request, before the ramp "
                        f"({ramp_end - t0:.1f} s) + warm-up ({warmup_s:g} s) + cool-down ({cooldown_s:g} s) were over")
    return out


STEADY_KEYS = ("completed", "failed", "duration", "request_throughput", "output_throughput",
               "total_token_throughput", "request_goodput")


def steady_state(records: list[dict], *, users: int, spawn_rate: float, mode: str = "users",
                 warmup_s: float = 0.0, cooldown_s: float = 0.0, slo: dict[str, float] | None = None) -> dict:
    """The run's statistics inside its steady-state window (see steady_window), next to the whole run's.

    Rates count what happened inside the window per second of it: requests that finished in it,
    output tokens streamed in it (each chunk at its own arrival time), input tokens of the requests
    that finished in it. Latencies are those of the requests sent inside it. The ramp (users still
    starting) and the drain (the last answers after the load stopped) are outside, so a 32-user run
    that ramps at 4 users/s no longer reads low.
    """
    w = steady_window(records, users=users, spawn_rate=spawn_rate, mode=mode, warmup_s=warmup_s,
                      cooldown_s=cooldown_s)
    t0 = min((r["start"] for r in records if r.get("start") is not None), default=None)
    out: dict = {"window": {"start_s": None if w["start"] is None else w["start"] - t0,
                            "end_s": None if w["end"] is None else w["end"] - t0,
                            "ramp_s": w["ramp_s"], "ramp_from": w["ramp_from"], "warmup_s": warmup_s,
                            "cooldown_s": cooldown_s, "users": users, "empty": w["empty"]}}
    if w["empty"] is not None:
        return out
    start, end = w["start"], w["end"]
    width = end - start
    done = [r for r in records if not r.get("cancelled") and r.get("start") is not None and r.get("end") is not None]
    ended = [r for r in done if start <= r["end"] <= end]
    ok_ended = [r for r in ended if r.get("ok")]
    sent_in = [r for r in done if start <= r["start"] <= end and r.get("ok")]
    out_tokens = 0.0
    for r in done:
        if not r.get("ok"):
            continue
        out_tok = r.get("output_tokens") or 0
        if r.get("ttft_ms") is None:  # not streamed: every token arrives at the end
            out_tokens += out_tok if start <= r["end"] <= end else 0
            continue
        times = [r["start"] + r["ttft_ms"] / 1000.0]
        for gap in r.get("itl_ms") or ():
            times.append(times[-1] + gap / 1000.0)
        out_tokens += out_tok / len(times) * sum(1 for t in times if start <= t <= end)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in ok_ended)
    out.update({"completed": len(ok_ended), "failed": len(ended) - len(ok_ended), "duration": width,
                "total_output_tokens": out_tokens, "request_throughput": len(ok_ended) / width,
                "output_throughput": out_tokens / width, "total_token_throughput": (out_tokens + in_tokens) / width})
    slo = {k: float(v) for k, v in (slo or {}).items() if v is not None}
    out["request_goodput"] = (sum(1 for r in ok_ended if meets_slo(r, slo)) / width) if slo else None
    ttfts = [r["ttft_ms"] for r in sent_in if r.get("ttft_ms") is not None]
    tpots = [t for t in (tpot_ms(r.get("e2el_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in sent_in)
             if t is not None]
    itls = [gap for r in sent_in for gap in (r.get("itl_ms") or ())]
    e2els = [r["e2el_ms"] for r in sent_in if r.get("e2el_ms") is not None]
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        out.update(_flat(name, describe(values)))
    return out


def slo_share(records: list[dict], slo: dict[str, float]) -> float | None:
    """The share of the requests that ended (completed or failed; cut-off ones left out) that completed
    within every SLO: a failed request misses them all. None when none ended.

    >>> slo_share([{"ok": True, "ttft_ms": 90.0, "e2el_ms": 500.0, "output_tokens": 10},
    ...            {"ok": True, "ttft_ms": 300.0, "e2el_ms": 900.0, "output_tokens": 10}], {"ttft": 100.0})
    0.5
    """
    ended = [r for r in records if not r.get("cancelled")]
    if not ended:
        return None
    return sum(1 for r in ended if r.get("ok") and meets_slo(r, slo)) / len(ended)
