"""The load test's own HTML report: one self-contained file per run, made from its records.

    write_run_report(out_dir, summary, records, plan)          # -> out_dir / "report.html"
    write_levels_report(report_dir, rows, mode, title=...)     # a sweep or --find-max: the latency/throughput curve

Everything is inline (SVG drawn here, CSS in a <style>): no network, no script, no CDN; it opens from
a file on a laptop with no connection. Locust's own `locust.html` stays beside it. Pure: data in, text
out (the writers only add the file).

    >>> page = run_report({"completed": 2, "failed": 0, "duration": 1.0}, [], {})
    >>> page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("<body")[0]
    True
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path

COLORS = {"p50": "#1f77b4", "p90": "#ff7f0e", "p99": "#d62728", "throughput": "#2ca02c", "fail": "#d62728",
          "hist": "#1f77b4", "ttft": "#1f77b4", "tpot": "#9467bd", "knee": "#2ca02c"}
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 560, 240, 58, 36, 14, 12
SUMMARY_ROWS = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2EL", "e2el"))
STATS = ("mean", "median", "std", "p90", "p95", "p99", "max")

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}code,pre{background:#f5f5f5;padding:2px 4px}
pre{white-space:pre-wrap;padding:8px}.warn{color:#a00;font-weight:bold}.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-weight:bold;margin:4px 0}svg{background:#fff;border:1px solid #ddd}
.legend span{margin-right:12px}
"""


def _e(text) -> str:
    return _html.escape(str(text))


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


# ---------------------------------------------------------------- SVG


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _frame(x_lo, x_hi, y_hi, x_label, y_label, chart_id) -> tuple[list[str], callable, callable]:
    """The axes of a chart from (x_lo, 0) to (x_hi, y_hi) and the two mappings to pixels."""
    y_hi = y_hi if y_hi > 0 else 1.0
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    yt = _ticks(0.0, y_hi * 1.05)
    y_top = max(yt[-1], y_hi)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x):
        return PAD_L + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y):
        return PAD_T + ph - (y / y_top) * ph

    parts = [f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img">',
             f'<line x1="{PAD_L}" y1="{PAD_T + ph}" x2="{W - PAD_R}" y2="{PAD_T + ph}" stroke="#444"/>',
             f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + ph}" stroke="#444"/>']
    for t in yt:
        y = py(t)
        parts.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for t in _ticks(x_lo, x_hi):
        x = px(t)
        parts.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{PAD_L + pw / 2}" y="{H - 4}" font-size="11" text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="12" y="{PAD_T + ph / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {PAD_T + ph / 2})">{_e(y_label)}</text>')
    return parts, px, py


def line_chart(series: list[tuple[str, str, list[tuple[float, float | None]]]], *, x_label: str, y_label: str,
               chart_id: str, markers: bool = False, mark_x: float | None = None) -> str:
    """An SVG line chart: series of (label, color, [(x, y or None)]); a None breaks the line."""
    points = [(x, y) for _, _, pts in series for x, y in pts if y is not None]
    if not points:
        return _empty(chart_id, "no data")
    xs = [x for x, _ in points]
    parts, px, py = _frame(min(xs), max(xs), max(y for _, y in points), x_label, y_label, chart_id)
    if mark_x is not None:
        parts.append(f'<line class="mark" x1="{px(mark_x):.1f}" y1="{PAD_T}" x2="{px(mark_x):.1f}" '
                     f'y2="{H - PAD_B}" stroke="{COLORS["knee"]}" stroke-width="2" stroke-dasharray="6 3"/>')
    for label, color, pts in series:
        runs, run = [], []
        for x, y in pts:
            if y is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((px(x), py(y)))
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1 or markers:
                parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in r]
            if len(r) > 1:
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in r)
                parts.append(f'<polyline class="series" data-label="{_e(label)}" fill="none" stroke="{color}" '
                             f'stroke-width="2" points="{d}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span style="color:{c}">&#9632; {_e(lbl)}</span>' for lbl, c, _ in series)
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def histogram(values: list[float], *, x_label: str, chart_id: str, bins: int = 30) -> str:
    """An SVG histogram of the values (count per bin), the top 0.5% folded into the last bin."""
    if not values:
        return _empty(chart_id, "no data")
    data = sorted(values)
    lo = data[0]
    hi = data[min(len(data) - 1, math.ceil(len(data) * 0.995) - 1)]
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in data:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    parts, px, py = _frame(lo, hi, max(counts), x_label, "requests" if "ITL" not in x_label else "gaps", chart_id)
    for i, n in enumerate(counts):
        if n:
            x0, x1 = px(lo + i * width), px(lo + (i + 1) * width)
            parts.append(f'<rect class="bar" x="{x0:.1f}" y="{py(n):.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                         f'height="{py(0) - py(n):.1f}" fill="{COLORS["hist"]}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _empty(chart_id: str, why: str) -> str:
    return (f'<svg id="{_e(chart_id)}" class="chart empty" xmlns="http://www.w3.org/2000/svg" width="{W}" '
            f'height="60"><text x="10" y="35" font-size="12">{_e(why)}</text></svg>')


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{_e(caption)}</figcaption>{svg}</figure>"


# ---------------------------------------------------------------- pages


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>" + "\n".join(body) + "</body></html>\n")


def _summary_table(s: dict) -> str:
    rows = ["<table id=\"summary\"><tr><th>metric (ms)</th>" + "".join(f"<th>{k}</th>" for k in STATS) + "</tr>"]
    for label, key in SUMMARY_ROWS:
        names = [f"{stat}_{key}_ms" for stat in STATS]
        rows.append(f"<tr><td>{label} <code>{stat_names(key)}</code></td>"
                    + "".join(f"<td>{_fmt(s.get(n))}</td>" for n in names) + "</tr>")
    rows.append("</table>")
    totals = [("completed", s.get("completed")), ("failed", s.get("failed")), ("cancelled", s.get("cancelled")),
              ("duration (s)", s.get("duration")), ("request_throughput (req/s)", s.get("request_throughput")),
              ("output_throughput (tok/s)", s.get("output_throughput")),
              ("total_token_throughput (tok/s)", s.get("total_token_throughput")),
              ("total_input_tokens", s.get("total_input_tokens")),
              ("total_output_tokens", s.get("total_output_tokens")), ("request_goodput (req/s)", s.get("request_goodput"))]
    rows.append("<table id=\"totals\"><tr><th>whole run</th><th>value</th></tr>"
                + "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_fmt(v, 2)}</td></tr>" for k, v in totals)
                + "</table>")
    return "".join(rows)


def stat_names(key: str) -> str:
    return f"*_{key}_ms"


def _steady_table(st: dict | None) -> str:
    if not st:
        return ""
    w = st.get("window") or {}
    if w.get("empty"):
        return f"<p class=\"warn\">no steady-state window: {_e(w['empty'])}</p>"
    head = (f"<p>steady state: all {w.get('users')} users running, {_fmt(w.get('start_s'))} s to "
            f"{_fmt(w.get('end_s'))} s after the first request (ramp {_fmt(w.get('ramp_s'))} s, "
            f"warm-up {_fmt(w.get('warmup_s'))} s, cool-down {_fmt(w.get('cooldown_s'))} s left out)</p>")
    keys = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
            "request_goodput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
            "median_e2el_ms", "p99_e2el_ms")
    return head + ("<table id=\"steady\"><tr><th>steady state</th><th>value</th></tr>"
                   + "".join(f"<tr><td><code>{k}</code></td><td>{_fmt(st.get(k), 2)}</td></tr>" for k in keys)
                   + "</table>")


def _series(bins: list[dict], key: str) -> list[tuple[str, str, list]]:
    return [(f"p{q}", COLORS[f"p{q}"], [(b["t"] + b["width_s"] / 2, b.get(f"p{q}_{key}_ms")) for b in bins])
            for q in (50, 90, 99)]


def _itl_over_time(records: list[dict], bin_s: float, t0: float, n: int) -> list[tuple[str, str, list]]:
    """ITL percentiles per time bin, each gap placed at the time its chunk arrived."""
    gaps: list[list[float]] = [[] for _ in range(n)]
    for r in records:
        if not r.get("ok") or r.get("ttft_ms") is None:
            continue
        t = r["start"] + r["ttft_ms"] / 1000.0
        for gap in r.get("itl_ms") or ():
            t += gap / 1000.0
            gaps[min(n - 1, max(0, int((t - t0) // bin_s)))].append(gap)
    from gpuops.probes.loadtest.metrics import percentile

    out = []
    for q in (50, 90, 99):
        pts = [((i + 0.5) * bin_s, percentile(sorted(g), q) if g else None) for i, g in enumerate(gaps)]
        out.append((f"p{q}", COLORS[f"p{q}"], pts))
    return out


def run_report(summary: dict, records: list[dict], plan: dict, client: list[dict] | None = None) -> str:
    """The HTML of one run's report (see the module docstring)."""
    from gpuops.probes.loadtest.metrics import time_series, tpot_ms
    from gpuops.probes.loadtest.report import warnings

    target = summary.get("target") or plan.get("target") or {}
    server = summary.get("server") or {}
    title = f"load test: {target.get('model') or target.get('url') or 'server'}"
    body = ["<h2>Run</h2><table id=\"run\">"]
    facts = [("command", plan.get("command")), ("status", summary.get("status")),
             ("server", target.get("url")), ("engine", target.get("engine")), ("model", target.get("model")),
             ("server version", server.get("version") or "not said by the server"),
             ("gpuops server name", target.get("server")), ("mode", summary.get("mode")),
             ("level", summary.get("level")), ("why it stopped", summary.get("status_hint")),
             ("prompt lengths", summary.get("prompt_lengths")), ("tokens counted by", summary.get("tokens_counted_by")),
             ("dataset", summary.get("dataset"))]
    body.append("".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in facts if v is not None))
    body.append("</table>")
    opts = summary.get("options") or plan.get("options") or {}
    if opts:
        body.append("<details><summary>options</summary><pre>"
                    + _e("\n".join(f"{k}: {v}" for k, v in opts.items())) + "</pre></details>")
    warn = warnings(summary) if "completed" in summary else []
    body.append("<h2>Warnings and client self-checks</h2>")
    body.append("<ul id=\"warnings\">" + "".join(f"<li class=\"warn\">{_e(w)}</li>" for w in warn) + "</ul>"
                if warn else "<p id=\"warnings\">no warning: the client kept up and measured the server</p>")
    workers = (summary.get("client") or {}).get("workers") or {}
    if workers:
        body.append("<table id=\"client\"><tr><th>load process</th><th>CPU mean %</th><th>CPU max %</th>"
                    "<th>event-loop lag p90 ms</th></tr>" + "".join(
                        f"<tr><td>{_e(w)}</td><td>{_fmt(v.get('cpu_mean'))}</td><td>{_fmt(v.get('cpu_max'))}</td>"
                        f"<td>{_fmt(v.get('loop_lag_p90_ms'))}</td></tr>" for w, v in sorted(workers.items()))
                    + "</table>")
    body.append("<h2>Summary (vLLM's metric names)</h2>" + _summary_table(summary) + _steady_table(summary.get("steady")))

    ok = [r for r in records if r.get("ok") and not r.get("cancelled")]
    series = time_series(records)
    bins = series["bins"]
    body.append("<h2>Over time</h2><div class=\"charts\">")
    x_label = f"seconds since the first request (bins of {series['bin_s']:g} s)"
    body.append(_figure("TTFT (ms)", line_chart(_series(bins, "ttft"), x_label=x_label, y_label="ms",
                                                chart_id="ttft-over-time")))
    if bins:
        body.append(_figure("ITL (ms)", line_chart(
            _itl_over_time(records, series["bin_s"], min(r["start"] for r in records if not r.get("cancelled")),
                           len(bins)), x_label=x_label, y_label="ms", chart_id="itl-over-time")))
    else:
        body.append(_figure("ITL (ms)", _empty("itl-over-time", "no data")))
    body.append(_figure("E2EL (ms)", line_chart(_series(bins, "e2el"), x_label=x_label, y_label="ms",
                                                chart_id="e2el-over-time")))
    body.append(_figure("throughput", line_chart(
        [("output tok/s", COLORS["throughput"], [(b["t"] + b["width_s"] / 2, b["output_throughput"]) for b in bins]),
         ("failed req/s", COLORS["fail"], [(b["t"] + b["width_s"] / 2, b["failed"] / b["width_s"]) for b in bins])],
        x_label=x_label, y_label="per second", chart_id="throughput-over-time")))
    body.append("</div><h2>Distributions</h2><div class=\"charts\">")
    body.append(_figure("TTFT histogram", histogram([r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None],
                                                    x_label="TTFT (ms)", chart_id="ttft-histogram")))
    body.append(_figure("ITL histogram", histogram([g for r in ok for g in (r.get("itl_ms") or ())],
                                                   x_label="ITL (ms)", chart_id="itl-histogram")))
    body.append(_figure("E2EL histogram", histogram([r["e2el_ms"] for r in ok if r.get("e2el_ms") is not None],
                                                    x_label="E2EL (ms)", chart_id="e2el-histogram")))
    tpots = [t for t in (tpot_ms(r.get("e2el_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in ok)
             if t is not None]
    body.append(_figure("TPOT histogram", histogram(tpots, x_label="TPOT (ms)", chart_id="tpot-histogram")))
    body.append("</div>")
    reasons = summary.get("failure_reasons") or {}
    body.append("<h2>Failures by cause</h2>")
    if reasons:
        top = max(reasons.values())
        body.append("<table id=\"failures\"><tr><th>cause</th><th>requests</th><th></th></tr>" + "".join(
            f"<tr><td>{_e(k)}</td><td>{n}</td><td><svg width=\"200\" height=\"12\"><rect class=\"bar\" "
            f"width=\"{200 * n / top:.0f}\" height=\"12\" fill=\"{COLORS['fail']}\"/></svg></td></tr>"
            for k, n in reasons.items()) + "</table>")
    else:
        body.append("<p id=\"failures\">none</p>")
    body.append("<h2>Files</h2><p><a href=\"locust.html\">Locust's own report</a> (bucketed percentiles), "
                "<code>records.jsonl</code> (every request), <code>summary.json</code>, "
                "<code>client.jsonl</code>.</p>")
    return _page(title, body)


def levels_report(rows: list[dict], mode: str, *, title: str, knee: dict | None = None, plan: dict | None = None) -> str:
    """The HTML of a sweep or a --find-max search: per level, and the latency against throughput curve."""
    rows = sorted(rows, key=lambda r: r["level"])
    level_name = "requests/s asked" if mode == "qps" else "concurrent users"
    body = []
    if plan and plan.get("command"):
        body.append(f"<p>command: <code>{_e(plan['command'])}</code></p>")
    if knee is not None:
        best = knee.get("max_level")
        body.append(f"<p id=\"knee\"><b>highest load meeting the SLOs</b> ({_e(knee.get('slo_text'))}, "
                    f"{knee.get('quantile', 0.99):.0%} of requests): "
                    + (f"{best:g} {level_name}" if best is not None else "none of the levels tried")
                    + (f"; the next level tried, {knee['failed_level']:g}, missed them" if knee.get("failed_level")
                       else "") + "</p>")
    pts = [(r.get("output_throughput"), r) for r in rows if r.get("output_throughput") is not None]
    curve = [(stat, COLORS[{"median": "p50", "p90": "p90", "p99": "p99"}[stat]],
              [(x, r.get(f"{stat}_{key}_ms")) for x, r in pts]) for key in ("ttft",) for stat in ("median", "p90", "p99")]
    tpot = [(stat, COLORS[{"median": "p50", "p90": "p90", "p99": "p99"}[stat]],
             [(x, r.get(f"{stat}_tpot_ms")) for x, r in pts]) for stat in ("median", "p90", "p99")]
    knee_x = None
    if knee is not None and knee.get("max_level") is not None:
        knee_x = next((r.get("output_throughput") for r in rows if r["level"] == knee["max_level"]), None)
    body.append("<h2>Latency against throughput</h2><div class=\"charts\">")
    body.append(_figure("TTFT (ms) against output tokens/s", line_chart(
        curve, x_label="output tokens/s", y_label="TTFT ms", chart_id="latency-throughput-ttft", markers=True,
        mark_x=knee_x)))
    body.append(_figure("TPOT (ms) against output tokens/s", line_chart(
        tpot, x_label="output tokens/s", y_label="TPOT ms", chart_id="latency-throughput-tpot", markers=True,
        mark_x=knee_x)))
    body.append(_figure(f"output tokens/s against {level_name}", line_chart(
        [("output tok/s", COLORS["throughput"], [(r["level"], r.get("output_throughput")) for r in rows])],
        x_label=level_name, y_label="tok/s", chart_id="throughput-by-level", markers=True,
        mark_x=knee["max_level"] if knee and knee.get("max_level") is not None else None)))
    body.append("</div><h2>Levels</h2><table id=\"levels\"><tr><th>" + _e(level_name) + "</th>" + "".join(
        f"<th>{k}</th>" for k in ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
                                  "median_tpot_ms", "p99_tpot_ms", "failed", "slo share", "report")) + "</tr>")
    for r in rows:
        link = r.get("folder")
        body.append(f"<tr><td>{r['level']:g}</td>" + "".join(f"<td>{_fmt(r.get(k), 2)}</td>" for k in (
            "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
            "p99_tpot_ms", "failed")) + f"<td>{_fmt(r.get('slo_share'), 3)}</td>"
            + (f"<td><a href=\"{_e(link)}/report.html\">{_e(link)}</a></td>" if link else "<td>-</td>") + "</tr>")
    body.append("</table>")
    return _page(title, body)


def _write(path: Path, text: str) -> Path:
    with open(path, "x", encoding="utf-8") as f:  # like every report file: never over an earlier one
        f.write(text)
    return path


def write_run_report(out_dir: Path, summary: dict, records: list[dict], plan: dict,
                     client: list[dict] | None = None) -> Path:
    return _write(out_dir / "report.html", run_report(summary, records, plan, client))


def write_levels_report(report_dir: Path, rows: list[dict], mode: str, *, title: str, knee: dict | None = None,
                        plan: dict | None = None) -> Path:
    return _write(report_dir / "report.html", levels_report(rows, mode, title=title, knee=knee, plan=plan))
