"""The `inv load-test` flow: options from their sources, the target, new folders, then foreground or detached.

    >>> prepared = prepare({"users": "8", "run_time": "20s"}, agents_file="AGENTS.local.md",
    ...                    run_dir=RunDir("do_not_commit"))
    >>> run_foreground(prepared, write=print)      # or: run_detached(prepared, write=print)

Bad input fails in prepare(), before any folder or log is made: flags (exit 2), no server and no
--url (exit 6), a server that does not answer or does not stream (exit 6 / 7).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gpuops.probes.loadtest import options, runner
from gpuops.probes.loadtest.runner import Target, Write
from gpuops.rundir import RunDir
from gpuops.server.logs import create_run_folder


@dataclass
class Prepared:
    opts: options.LoadTestOptions
    target: Target
    report_dir: Path
    log_path: Path
    plan_path: Path


def recipe_flags(agents_file: str | Path | None) -> dict:
    """The flags of AGENTS.local.md's `## Load test` block ({} when the file or the block is absent)."""
    if not agents_file:
        return {}
    path = Path(agents_file)
    if not path.is_file():
        return {}
    from gpuops.server.recipes import load_recipes

    words = list(load_recipes(path).load_test_args or [])
    return options.parse_flag_words(words, source=f"{path}, '## Load test' block")


def prepare(cli: dict, *, agents_file: str | Path | None, run_dir: RunDir) -> Prepared:
    """Validate, find and check the server, then create the report folder, the log and plan.json."""
    opts = options.build_options(options.merge(recipe_flags(agents_file), cli))
    if opts.out:
        runner.check_out_dir(Path(opts.out))  # before the server is even asked: a usage error comes first
    target = runner.preflight(runner.resolve_target(opts, run_dir), opts)
    from gpuops.server.logs import create_log

    report_dir = runner.claim_out_dir(Path(opts.out)) if opts.out else create_run_folder(run_dir.load_tests)
    log_path = create_log(run_dir.logs, "locust")
    plan_path = runner.write_plan(report_dir, opts, target, log_path)
    return Prepared(opts, target, report_dir, log_path, plan_path)


def _tee(write: Write, log_path: Path) -> tuple[Write, object]:
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the caller

    def both(line: str) -> None:
        write(line)
        log.write(line + "\n")

    return both, log


def run_foreground(p: Prepared, write: Write) -> None:
    """Run here, printing progress and the summary (also into the locust log); raise on a bad outcome.

    Ctrl-C and `kill PID` alike stop Locust and keep partial results (runner.StopGuard, for the whole
    run): ending this process at once would leave Locust, in its own session, running on."""
    out, log = _tee(write, p.log_path)
    try:
        with runner.StopGuard(out) as guard:
            try:
                results = runner.execute(p.opts, p.target, p.report_dir, p.log_path, out, guard=guard)
            except KeyboardInterrupt:  # a Ctrl-C honoured once the report being written was complete
                out(f"interrupted: results kept in {p.report_dir}")
                raise
            if results and results[-1].status == "interrupted":
                out(f"interrupted: partial results kept in {p.report_dir}")
                raise KeyboardInterrupt
            err = runner.outcome_error(results, p.report_dir, p.log_path)
            if err is not None:
                raise err
    finally:
        log.close()


def run_detached(p: Prepared, write: Write, *, poll: float = 0.1) -> int:
    """Start the run in its own session, then follow its log until it ends (Ctrl-C stops following only).

    Returns the run's exit status (0 when following was stopped early: the run goes on)."""
    from gpuops.probes.loadtest import background
    from gpuops.server.logs import LogReader

    start_at = p.log_path.stat().st_size
    proc = background.start(p.plan_path, p.log_path)
    write(f"load test running detached: pid {proc.pid}, log {p.log_path}, report {p.report_dir}")
    write("following its log; Ctrl-C stops following, not the test (`inv logs --follow --prefix locust` "
          f"follows again, `kill {proc.pid}` stops it and keeps partial results)")
    try:
        with LogReader(p.log_path, offset=start_at) as reader:
            while True:
                ended = proc.poll() is not None
                for line in reader.read_lines():
                    write(line)
                if ended:
                    for line in reader.flush_partial():
                        write(line)
                    return proc.returncode
                time.sleep(poll)
    except KeyboardInterrupt:
        write(f"(stopped following; the load test keeps running as pid {proc.pid})")
        return 0
