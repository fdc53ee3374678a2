"""`inv load-test --detach`: the load test as its own process, writing to its log, surviving the terminal.

    proc = start(report_dir / "plan.json", log_path)     # in the `inv` process
    $ python -m gpuops.probes.loadtest.background do_not_commit/load_tests/20261122-101500/plan.json   # what it runs

The detached process runs exactly what the foreground command runs (runner.execute) with its
output going to the `locust-YYYYMMDD-HHMMSS.log` that `inv logs --prefix locust` finds. SIGTERM
(`kill PID`) stops it like Ctrl-C does: Locust is stopped, partial results are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def start(plan_path: Path, log_path: Path) -> subprocess.Popen:
    """Start the detached run: its own session (no terminal signals), stdout and stderr to the log."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed here right after
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("GPUOPS_SERVER", None)
        return subprocess.Popen([sys.executable, "-m", "gpuops.probes.loadtest.background", str(plan_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    finally:
        log.close()


def main(argv: list[str]) -> int:
    from gpuops.errors import GpuopsError
    from gpuops.probes.loadtest import runner
    from gpuops.probes.loadtest.options import LoadTestOptions

    plan_path = Path(argv[0])
    plan = json.loads(plan_path.read_text())
    opts_dict = dict(plan["options"])
    opts_dict["sweep"] = tuple(opts_dict.get("sweep") or ())
    opts = LoadTestOptions(**opts_dict)
    target = runner.Target(**plan["target"])
    report_dir = plan_path.parent
    log_path = Path(plan["log"])

    def write(line: str) -> None:
        print(line, flush=True)

    print(f"detached load test, pid {os.getpid()}", flush=True)
    try:
        results = runner.execute(opts, target, report_dir, log_path, write, run_id=plan.get("run_id"))
    except KeyboardInterrupt:  # SIGTERM: execute's StopGuard stopped Locust and kept the partial results
        print(f"interrupted: partial results kept in {report_dir}", flush=True)
        return 130
    except GpuopsError as err:
        print(f"error: {err.render()}", flush=True)
        return err.exit_code
    if results and results[-1].status == "interrupted":
        print(f"interrupted: partial results kept in {report_dir}", flush=True)
        return 130
    err = runner.outcome_error(results, report_dir, log_path)
    if err is not None:
        print(f"error: {err.render()}", flush=True)
        return err.exit_code
    print("load test finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
