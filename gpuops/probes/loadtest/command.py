"""The `inv load-test` use case: options from their sources, the target, new folders, then foreground or detached.

    result = load_test({"users": "8"}, config=options.from_config(c.config.gpuops.get),
                       agents_file="AGENTS.local.md", run_dir=RunDir("do_not_commit"), write=print)
    result.status, result.exit_code, result.report_dir
    # -> ('finished', 0, PosixPath('do_not_commit/load_tests/20261122-101500'))

Bad input fails before any folder or log is made: flags (exit 2), no Locust installed (exit 2), no
server and no --url (exit 6), a server that does not answer or does not stream (exit 6 / 7). A run
that measured badly is no exception: the result carries its error (and exit code) next to what was
measured, so --json can show both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, UsageError
from gpuops.probes.loadtest import options, runner
from gpuops.probes.loadtest.runner import RunResult, Target, Write
from gpuops.rundir import RunDir
from gpuops.server.logs import create_run_folder


@dataclass
class Prepared:
    opts: options.LoadTestOptions
    target: Target
    report_dir: Path
    log_path: Path
    plan_path: Path


@dataclass
class LoadTestResult:
    """What one `inv load-test` did: where, how it ended, and what it measured (one RunResult per level)."""

    opts: options.LoadTestOptions
    target: Target
    report_dir: Path
    log_path: Path
    mode: str  # "foreground" | "detached" | "web"
    status: str  # finished | server_lost | stalled | interrupted | crashed | detached (not followed to its end)
    exit_code: int = 0
    results: list[RunResult] = field(default_factory=list)
    error: GpuopsError | None = None
    pid: int | None = None  # the detached run's process

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


EXTRA_HINT = "pip install 'gpuops[loadtest]'"


def require_locust() -> None:
    """Locust is an extra: without it, say how to get it (exit 2) instead of a traceback from a child."""
    import importlib.util

    try:
        found = importlib.util.find_spec("locust") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"load-test needs the loadtest extra: {EXTRA_HINT}",
                         hint="it installs Locust (the load generator) and matplotlib (the charts)")


def resolve_options(cli: dict, *, config: dict | None = None,
                    agents_file: str | Path | None = None) -> options.LoadTestOptions:
    """The options from their four layers: command line > config > the '## Load test' block > built-in."""
    return options.build_options(options.merge(recipe_flags(agents_file), cli, config))


def load_test(cli: dict, *, config: dict | None = None, agents_file: str | Path | None, run_dir: RunDir,
              write: Write, json: bool = False) -> LoadTestResult:
    """The whole `inv load-test`: check, prepare, run (here, detached or with Locust's web UI), report.

    With `json` (a script reads the result): --web is refused, and a detached run is started and
    returned at once (its folder and log in the result) instead of followed."""
    require_locust()
    opts = resolve_options(cli, config=config, agents_file=agents_file)
    if opts.workers_on:  # every worker host reachable, with gpuops and Locust, before any folder is made
        from gpuops.hosts.workers import check

        check(opts)
    if json and opts.web:
        raise UsageError("--web and --json do not go together: the web UI is driven from your browser, "
                         "there is no result to print", hint="drop --web (or --json)")
    from gpuops.probes.target import first_recipe_name

    p = prepare(opts, run_dir=run_dir, default_name=first_recipe_name(agents_file), write=write)
    if opts.detach:
        return run_detached(p, write, follow=not json)
    return run_foreground(p, write)


def recipe_flags(agents_file: str | Path | None) -> dict:
    """The flags of AGENTS.local.md's `## Load test` block ({} when the file or the block is absent)."""
    if not agents_file:
        return {}
    path = Path(agents_file)
    if not path.is_file():
        return {}
    from gpuops.server.recipes import load_recipes

    words = list(load_recipes(path).load_test_args or [])
    return options.parse_flag_words(words, source=f"{path}, '## Load test' block", base=path.parent)


def prepare(opts: options.LoadTestOptions, *, run_dir: RunDir, default_name: str | None = None,
            write: Write | None = None) -> Prepared:
    """Find and check the server (the one which-server rule: `default_name` is the first recipe's), then
    create the report folder, the log and plan.json."""
    if opts.out:
        runner.check_out_dir(Path(opts.out))  # before the server is even asked: a usage error comes first
    target = runner.preflight(runner.resolve_target(opts, run_dir, default_name=default_name), opts)
    rows: list[dict] = []
    if not getattr(opts, "locustfile", None):  # gpuops' own user: token counting, context check, dataset
        from gpuops.probes.loadtest import workloads

        target, rows = workloads.prepare(opts, target, write or (lambda line: None))
    from gpuops.server.logs import create_log

    report_dir = runner.claim_out_dir(Path(opts.out)) if opts.out else create_run_folder(run_dir.load_tests)
    log_path = create_log(run_dir.logs, "locust")
    if rows:
        target = workloads.save(target, rows, report_dir)
    plan_path = runner.write_plan(report_dir, opts, target, log_path)
    return Prepared(opts, target, report_dir, log_path, plan_path)


def _tee(write: Write, log_path: Path) -> tuple[Write, object]:
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the caller

    def both(line: str) -> None:
        write(line)
        log.write(line + "\n")

    return both, log


INTERRUPTED = 130


def run_foreground(p: Prepared, write: Write) -> LoadTestResult:
    """Run here, printing progress and the summary (also into the locust log); the result carries the
    error of a bad outcome (status interrupted, exit 130, after a Ctrl-C).

    Ctrl-C and `kill PID` alike stop Locust and keep partial results (runner.StopGuard, for the whole
    run): ending this process at once would leave Locust, in its own session, running on."""
    out, log = _tee(write, p.log_path)
    result = LoadTestResult(p.opts, p.target, p.report_dir, p.log_path, "web" if p.opts.web else "foreground",
                            "finished")
    try:
        with runner.StopGuard(out) as guard:
            try:
                result.results = runner.execute(p.opts, p.target, p.report_dir, p.log_path, out, guard=guard)
            except KeyboardInterrupt:  # a Ctrl-C honoured once the report being written was complete
                out(f"interrupted: results kept in {p.report_dir}")
                result.status, result.exit_code = "interrupted", INTERRUPTED
                return result
            results = result.results
            if results:
                result.status = results[-1].status
            if results and results[-1].status == "interrupted":
                out(f"interrupted: partial results kept in {p.report_dir}")
                result.exit_code = INTERRUPTED
                return result
            result.error = runner.outcome_error(results, p.report_dir, p.log_path)
            if result.error is not None:
                result.exit_code = result.error.exit_code
                if not results:
                    result.status = "crashed"
    finally:
        log.close()
    return result


def run_detached(p: Prepared, write: Write, *, poll: float = 0.1, follow: bool = True) -> LoadTestResult:
    """Start the run in its own session, then follow its log until it ends (Ctrl-C stops following only;
    `follow=False` returns at once). Its exit status is the result's (0 when not followed to the end:
    the run goes on, status 'detached'); what it measured is in the report folder."""
    from gpuops.probes.loadtest import background
    from gpuops.server.logs import LogReader

    start_at = p.log_path.stat().st_size
    proc = background.start(p.plan_path, p.log_path)
    result = LoadTestResult(p.opts, p.target, p.report_dir, p.log_path, "detached", "detached", pid=proc.pid)
    write(f"load test running detached: pid {proc.pid}, log {p.log_path}, report {p.report_dir}")
    if not follow:
        write(f"`inv logs --follow --prefix locust` follows it, `kill {proc.pid}` stops it and keeps partial "
              "results")
        return result
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
                    result.exit_code = proc.returncode
                    result.results = _read_results(p.report_dir)
                    result.status = _detached_status(result.results, proc.returncode)
                    return result
                time.sleep(poll)
    except KeyboardInterrupt:
        write(f"(stopped following; the load test keeps running as pid {proc.pid})")
        return result


def _read_results(report_dir: Path) -> list[RunResult]:
    """What a detached run measured, read back from its summary.json files (one per sweep level)."""
    import json

    results = []
    for path in sorted(report_dir.glob("**/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except ValueError:
            continue
        results.append(RunResult(path.parent, summary, summary.get("status") or "finished",
                                 summary.get("status_reason"), summary.get("level"),
                                 sorted(x.name for x in path.parent.iterdir())))
    return results


def _detached_status(results: list[RunResult], code: int) -> str:
    """How a detached run that was followed to its end ended: its last summary's status, or its exit status."""
    if results:
        return results[-1].status
    return "interrupted" if code == INTERRUPTED else ("finished" if code == 0 else "crashed")
