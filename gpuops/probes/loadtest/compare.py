"""`inv load-test --compare A --compare B`: two load-test reports side by side, with the change in percent.

    result = compare_reports(Path("do_not_commit/load_tests/20261122-101500"), Path(".../20261122-113000"))
    for line in compare_lines(result): print(line)
    metric                     before      after   change
    median_ttft_ms              101.4       83.2   -17.9%   better
    output_throughput          1311.7     1544.0   +17.7%   better
    ...

A report folder is one run's (its summary.json), or a sweep's or --find-max's top folder (compared
level by level: the levels both ran). Pure but for reading the two summaries; a folder that is not
a report is a UsageError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.errors import UsageError

# (metric, lower is better); vLLM's names
METRICS: tuple[tuple[str, bool], ...] = (
    ("request_throughput", False), ("output_throughput", False), ("total_token_throughput", False),
    ("request_goodput", False),
    ("mean_ttft_ms", True), ("median_ttft_ms", True), ("p90_ttft_ms", True), ("p99_ttft_ms", True),
    ("mean_tpot_ms", True), ("median_tpot_ms", True), ("p99_tpot_ms", True),
    ("mean_itl_ms", True), ("median_itl_ms", True), ("p99_itl_ms", True),
    ("mean_e2el_ms", True), ("median_e2el_ms", True), ("p99_e2el_ms", True),
    ("completed", False), ("failed", True),
)
STEADY = ("request_throughput", "output_throughput", "total_token_throughput")
SAME_LOAD = ("mode", "max_concurrency", "request_rate")
SAME_OPTIONS = ("prompt_tokens", "max_tokens", "api", "stream", "run_time_s")


@dataclass
class Comparison:
    """Two reports' metrics, row by row: {metric, before, after, change_pct, better}."""

    before: Path
    after: Path
    rows: list[dict] = field(default_factory=list)
    levels: list[dict] = field(default_factory=list)  # sweeps: per common level, its rows
    notes: list[str] = field(default_factory=list)  # e.g. the two ran different loads

    def as_dict(self) -> dict:
        return {"before": str(self.before), "after": str(self.after), "rows": self.rows, "levels": self.levels,
                "notes": self.notes}


def change_pct(before, after) -> float | None:
    """(after - before) / before in percent; None without both or from zero.

    >>> change_pct(100.0, 83.0), change_pct(0, 5), change_pct(None, 1)
    (-17.0, None, None)
    """
    if before is None or after is None or before == 0:
        return None
    return (after - before) / abs(before) * 100.0


def compare_summaries(a: dict, b: dict) -> list[dict]:
    """The rows for two summary.json documents (their steady state too, when both have one)."""
    rows = []
    for name, lower_better in METRICS:
        rows.append(_row(name, a.get(name), b.get(name), lower_better))
    sa, sb = (a.get("steady") or {}), (b.get("steady") or {})
    for name in STEADY:
        if sa.get(name) is not None and sb.get(name) is not None:
            rows.append(_row(f"steady {name}", sa[name], sb[name], False))
    return [r for r in rows if r["before"] is not None or r["after"] is not None]


def _row(name: str, before, after, lower_better: bool) -> dict:
    pct = change_pct(before, after)
    better = None
    if pct is not None and pct != 0:
        better = (pct < 0) == lower_better
    return {"metric": name, "before": before, "after": after, "change_pct": pct, "better": better}


def _read(folder: Path, which: str) -> tuple[dict | None, dict | None]:
    """(summary.json, sweep-or-find-max rows) of a report folder."""
    if not folder.is_dir():
        raise UsageError(f"--compare {folder}: no such report folder ({which})",
                         hint="give two folders of do_not_commit/load_tests/")
    summary = folder / "summary.json"
    for name in ("sweep.json", "find_max.json"):
        levels = folder / name
        if levels.is_file():
            data = json.loads(levels.read_text())
            return None, {"rows": data.get("rows") or data.get("levels") or [], "mode": data.get("mode")}
    if summary.is_file():
        try:
            return json.loads(summary.read_text()), None
        except ValueError:
            raise UsageError(f"--compare {folder}: summary.json is not valid JSON",
                             hint="was the run still writing it?") from None
    raise UsageError(f"--compare {folder}: not a load-test report (no summary.json, sweep.json or find_max.json)",
                     hint="give two folders of do_not_commit/load_tests/")


def compare_reports(before: Path, after: Path) -> Comparison:
    """Compare two report folders (see the module docstring)."""
    a, a_levels = _read(before, "before")
    b, b_levels = _read(after, "after")
    result = Comparison(before, after)
    if a is not None and b is not None:
        result.rows = compare_summaries(a, b)
        for key in SAME_LOAD:
            if a.get(key) != b.get(key):
                result.notes.append(f"the two ran different loads: {key} {a.get(key)} vs {b.get(key)}")
        oa, ob = a.get("options") or {}, b.get("options") or {}
        for key in SAME_OPTIONS:
            if oa.get(key) != ob.get(key):
                result.notes.append(f"different {key}: {oa.get(key)} vs {ob.get(key)}")
        return result
    if a_levels is None or b_levels is None:
        raise UsageError(f"--compare {before} {after}: one is a single run, the other a sweep",
                         hint="compare a run with a run, or a sweep with a sweep")
    by_level = {r["level"]: r for r in b_levels["rows"]}
    for ra in a_levels["rows"]:
        rb = by_level.get(ra["level"])
        if rb is not None:
            result.levels.append({"level": ra["level"], "rows": compare_summaries(ra, rb)})
    if not result.levels:
        result.notes.append("the two sweeps ran no level in common")
    return result


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def compare_lines(result: Comparison) -> list[str]:
    """The comparison as a text table (one per sweep level)."""
    from rich.table import Table

    from gpuops.probes.loadtest.report import _render

    def table(rows: list[dict], title: str | None) -> list[str]:
        t = Table(title=title)
        t.add_column("metric")
        for col in ("before", "after", "change"):
            t.add_column(col, justify="right")
        t.add_column("")
        for r in rows:
            pct = r["change_pct"]
            t.add_row(r["metric"], _num(r["before"]), _num(r["after"]), "-" if pct is None else f"{pct:+.1f}%",
                      {True: "better", False: "worse", None: ""}[r["better"]])
        return _render(t)

    lines = [f"before: {result.before}", f"after:  {result.after}"]
    if result.rows:
        lines += table(result.rows, None)
    for level in result.levels:
        lines += table(level["rows"], f"level {level['level']:g}")
    lines += [f"note: {n}" for n in result.notes]
    return lines


def folders(given: list[str] | str) -> tuple[Path, Path]:
    """The two folders of `--compare A --compare B` (or `--compare A,B`); anything else is a UsageError.

    >>> folders(["a", "b"]), folders(["a,b"])
    ((PosixPath('a'), PosixPath('b')), (PosixPath('a'), PosixPath('b')))
    """
    items = [given] if isinstance(given, str) else list(given)
    paths = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if len(paths) != 2:
        raise UsageError(f"--compare takes two report folders, got {len(paths)}: {' '.join(paths) or '(none)'}",
                         hint="inv load-test --compare do_not_commit/load_tests/A --compare do_not_commit/load_tests/B")
    return Path(paths[0]), Path(paths[1])
