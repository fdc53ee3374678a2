"""`--find-max`: the highest load (users, or requests/s with --qps) at which a share of the requests meets the SLOs.

Doubling from the starting level until a level misses the SLOs (halving when the first one does), then
bisection between the highest level that met them and the lowest that did not, until that interval
is narrow: one user apart, or 10% of the rate with --qps. Pure: the runner runs each level.

    >>> tried = []
    >>> while (level := next_level("users", 4, tried)) is not None:
    ...     tried.append((level, level <= 5))        # a server that meets the SLOs up to 5 users
    >>> [lvl for lvl, _ in tried], best(tried)
    ([4, 8, 6, 5], 5)
"""

from __future__ import annotations

MAX_USERS = 4096
MAX_QPS = 100_000.0
QPS_PRECISION = 0.10  # stop when the interval is this narrow, relative to its lower end
MAX_LEVELS = 16  # a search never runs more levels than this


def best(tried: list[tuple[float, bool]]) -> float | None:
    """The highest level that met the SLOs below the lowest that missed them (None: none met them)."""
    failed = [lvl for lvl, ok in tried if not ok]
    ceiling = min(failed) if failed else float("inf")
    passed = [lvl for lvl, ok in tried if ok and lvl < ceiling]
    return max(passed) if passed else None


def converged(mode: str, lo: float, hi: float) -> bool:
    return hi - lo <= 1 if mode == "users" else hi - lo <= QPS_PRECISION * lo


def next_level(mode: str, start: float, tried: list[tuple[float, bool]]) -> float | None:
    """The next level to try, or None when the search is over (narrow enough, at a cap, or nothing meets the SLOs)."""
    if not tried:
        return int(start) if mode == "users" else float(start)
    if len(tried) >= MAX_LEVELS:
        return None
    failed = [lvl for lvl, ok in tried if not ok]
    lo = best(tried)
    if not failed:
        up = lo * 2
        cap = MAX_USERS if mode == "users" else MAX_QPS
        return (int(up) if mode == "users" else up) if up <= cap else None
    hi = min(failed)
    if lo is None:  # even the lowest level tried missed: go down
        down = hi // 2 if mode == "users" else hi / 2
        floor = 1 if mode == "users" else start / 64
        return down if down >= floor and down not in [lvl for lvl, _ in tried] else None
    if converged(mode, lo, hi):
        return None
    mid = (lo + hi) // 2 if mode == "users" else round((lo + hi) / 2, 6)
    return None if mid in [lvl for lvl, _ in tried] else mid


def slo_text(slo: dict[str, float]) -> str:
    """{'ttft': 500.0, 'tpot': 50.0} -> 'TTFT <= 500 ms, TPOT <= 50 ms'"""
    return ", ".join(f"{k.upper()} <= {v:g} ms" for k, v in slo.items())


def level_passed(result, quantile: float) -> bool:
    """A level meets the SLOs when it ran to its end, something completed, and at least `quantile` of
    the requests that ended met every SLO (failed ones count as misses)."""
    s = result.summary
    share = s.get("slo_share")
    return result.status == "finished" and bool(s.get("completed")) and share is not None and share >= quantile


def search(opts, target, report_dir, run_level, write, guard) -> list:
    """Run levels (run_level(i, level, label) -> RunResult) until next_level says stop; write find_max.json,
    the curve (report.html, find_max.png) and the answer. A level that loses the server, stalls or is
    interrupted ends the search; what was found so far is still written."""
    from gpuops.probes.loadtest import htmlreport, metrics, report

    mode = opts.mode
    start = opts.qps if mode == "qps" else opts.users
    tried: list[tuple[float, bool]] = []
    results: list = []
    rows: list[dict] = []
    slo = slo_text(opts.slo)
    write(f"searching for the highest load at which {opts.slo_quantile:.0%} of requests meet {slo}")
    complete = True
    try:
        while (level := next_level(mode, start, tried)) is not None:
            if guard.deferred:
                complete = False
                break
            result = run_level(len(results), level, f"find-max level {len(results) + 1}")
            results.append(result)
            ok = level_passed(result, opts.slo_quantile)
            tried.append((level, ok))
            share = result.summary.get("slo_share")
            rows.append({**metrics.sweep_row(level, result.summary, result.summary.get("client")),
                         "slo_share": share, "passed": ok, "status": result.status,
                         "folder": result.report_dir.name})
            write(f"find-max: {level:g} {'req/s' if mode == 'qps' else 'users'}: "
                  f"{'-' if share is None else f'{share:.1%}'} of requests met {slo}: "
                  f"{'meets' if ok else 'misses'} the SLOs")
            if result.status != "finished" or guard.deferred:
                complete = False
                break
    finally:
        found = best(tried)
        failed = [lvl for lvl, ok in tried if not ok]
        above = min((lvl for lvl in failed if found is None or lvl > found), default=None)
        knee = {"mode": mode, "slo": opts.slo, "slo_text": slo, "quantile": opts.slo_quantile,
                "max_level": found, "failed_level": above, "complete": complete, "levels": rows}
        report.write_json(report_dir / "find_max.json", knee)
        if rows:
            ordered = sorted(rows, key=lambda r: r["level"])
            try:
                plan_path = report_dir / "plan.json"
                import json

                plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
                htmlreport.write_levels_report(report_dir, ordered, mode, title=f"find-max: {slo}", knee=knee,
                                               plan=plan)
                if report.charts_available():
                    report.sweep_chart(ordered, mode, report_dir / "find_max.png", title=f"find-max: {slo}")
            except Exception as err:  # a chart is not worth losing the answer over
                write(f"(could not draw the find-max curve: {type(err).__name__}: {err})")
            for line in report.sweep_lines(ordered, mode):
                write(line)
        unit = "requests/s" if mode == "qps" else "users"
        if found is None:
            write(f"find-max: no level tried met {slo} for {opts.slo_quantile:.0%} of requests"
                  + ("" if complete else " (the search was cut short)"))
        else:
            write(f"find-max: the highest load meeting {slo} for {opts.slo_quantile:.0%} of requests: "
                  f"{found:g} {unit}" + (f" ({above:g} {unit} missed them)" if above is not None else
                                         " (the highest level tried)") + ("" if complete else
                                                                           " (the search was cut short)"))
    return results
