"""Your own locustfile (`-f FILE` in the '## Load test' block, `--locustfile FILE` on the command line),
run inside gpuops' run: detached or not, logged, timestamped, Locust's CSV and HTML kept, its stats summarised.

    summary = locust_summary(out_dir)           # from Locust's locust_stats.csv and locust_failures.csv
    for line in summary_lines(summary): print(line)
    ┏━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┳━━━━━┳━━━━━┳━━━━━━━┓
    ┃ type ┃ name            ┃ requests ┃ failed ┃ median  ┃ p95 ┃ p99 ┃ req/s ┃
    ...

gpuops cannot time your user's requests to the chunk, so the numbers are Locust's own: bucketed to
about two significant digits, response time = what your user reports. Pure but for reading the CSVs.
"""

from __future__ import annotations

import csv
from pathlib import Path


def _num(value: str | None):
    if value in (None, "", "N/A"):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


def read_stats(path: Path) -> list[dict]:
    """Locust's locust_stats.csv as rows: type, name, requests, failures, median/mean/min/max ms, p50..p99, rps."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({"type": row.get("Type") or "", "name": row.get("Name") or "",
                         "requests": _num(row.get("Request Count")) or 0,
                         "failures": _num(row.get("Failure Count")) or 0,
                         "median_ms": _num(row.get("Median Response Time")),
                         "mean_ms": _num(row.get("Average Response Time")),
                         "min_ms": _num(row.get("Min Response Time")), "max_ms": _num(row.get("Max Response Time")),
                         "p90_ms": _num(row.get("90%")), "p95_ms": _num(row.get("95%")), "p99_ms": _num(row.get("99%")),
                         "requests_per_s": _num(row.get("Requests/s")), "failures_per_s": _num(row.get("Failures/s"))})
    return rows


def read_failures(path: Path) -> dict[str, int]:
    """Locust's locust_failures.csv: '<method> <name>: <error>' -> occurrences, most first."""
    if not path.is_file():
        return {}
    out: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = f"{row.get('Method', '')} {row.get('Name', '')}: {row.get('Error', '')}".strip()
            out[key] = out.get(key, 0) + int(_num(row.get("Occurrences")) or 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def locust_summary(out_dir: Path) -> dict:
    """summary.json's fields for a run of your own locustfile: Locust's rows, totals, failure reasons.

    `completed`/`failed` are over every row but Locust's "Aggregated" one."""
    rows = read_stats(out_dir / "locust_stats.csv")
    own = [r for r in rows if r["name"] != "Aggregated"]
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    requests = sum(r["requests"] for r in own)
    failures = sum(r["failures"] for r in own)
    return {"source": "locust", "locust_stats": own, "locust_aggregated": total,
            "completed": requests - failures, "failed": failures, "cancelled": 0,
            "request_throughput": (total or {}).get("requests_per_s"),
            "failure_reasons": read_failures(out_dir / "locust_failures.csv"), "failure_kinds": {}}


def summary_lines(s: dict) -> list[str]:
    """Your locustfile's run as text: Locust's stats per request name, then totals and failures."""
    from rich.table import Table

    from gpuops.probes.loadtest.report import _render

    lines: list[str] = []
    stats = s.get("locust_stats") or []
    if stats:
        table = Table(title=None)
        for name, right in (("type", False), ("name", False), ("requests", True), ("failed", True),
                            ("median ms", True), ("p95 ms", True), ("p99 ms", True), ("req/s", True)):
            table.add_column(name, justify="right" if right else "left")
        for r in stats:
            table.add_row(r["type"], r["name"], str(r["requests"]), str(r["failures"]), _v(r["median_ms"]),
                          _v(r["p95_ms"]), _v(r["p99_ms"]), _v(r["requests_per_s"], 2))
        lines += _render(table)
    rate = s.get("request_throughput")
    lines.append(f"requests (Locust's stats of your locustfile): {s['completed']} completed, {s['failed']} failed"
                 + (f" ({rate:.2f} req/s)" if isinstance(rate, (int, float)) else ""))
    lines.append("note: these are Locust's own numbers, bucketed to about two significant digits; gpuops' "
                 "TTFT/TPOT/ITL need its own user (drop -f)")
    from gpuops.probes.loadtest.report import outcome_lines

    return lines + outcome_lines(s)


def _v(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) or digits else str(value)
