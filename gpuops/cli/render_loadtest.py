"""load-test's result as data: the fields of its --json document (the text was written while it ran).

    result = command.load_test(...)
    Output(json=True).result("load-test", document(result), ok=result.ok)
    # {"schema": 1, "task": "load-test", "ok": true, "status": "finished", "exit_code": 0,
    #  "report_dir": "/home/me/proj/do_not_commit/load_tests/20261122-101500", "summary": {"median_ttft_ms": 101.4, ...}, ...}

`summary` is the summary.json of the run (of the last level, for a sweep): vLLM's metric names
(`median_ttft_ms`, `p99_tpot_ms`, `request_throughput`, `output_throughput`, `request_goodput`, ...),
the client's self-checks under `client`, how it ended under `status`. Fields are only ever added.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuops.probes.loadtest.command import LoadTestResult


def document(result: LoadTestResult) -> dict:
    """The task-specific fields of load-test's JSON document."""
    from gpuops.probes.loadtest.report import warnings

    last = result.results[-1].summary if result.results else None
    doc = {
        "status": result.status,
        "exit_code": result.exit_code,
        "mode": result.mode,
        "report_dir": str(result.report_dir.resolve()),  # absolute: a script may run elsewhere
        "log": str(result.log_path.resolve()),
        "pid": result.pid,
        "target": {k: v for k, v in asdict(result.target).items()
                   if k in ("url", "model", "engine", "server_name", "server_pid")},
        "options": result.opts.as_dict(),
        "summary": last,
        "warnings": warnings(last) if last is not None else [],
        "sweep": None,
    }
    if result.opts.sweep:
        from gpuops.probes.loadtest.metrics import sweep_row

        doc["sweep"] = {
            "complete": len(result.results) == len(result.opts.sweep) and result.status == "finished",
            "levels": [{**sweep_row(r.level, r.summary, r.summary.get("client")), "status": r.status,
                        "report_dir": str(r.report_dir.resolve())} for r in result.results],
        }
    found = result.report_dir / "find_max.json"
    if getattr(result.opts, "find_max", False) and found.is_file():
        import json

        doc["find_max"] = json.loads(found.read_text())  # the knee, the levels tried, the SLOs
    return doc
