"""Load-test task: load-test.

    inv load-test [--users N] [--sweep 1,4,16] [--json]

Every flag is also a setting (gpuops.load_users, INVOKE_GPUOPS_LOAD_RUN_TIME=1m, ...): the command
line > invoke.yaml / env > AGENTS.local.md's '## Load test' block > the built-in default.
"""

from __future__ import annotations

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.project import agents_file_path, output, run_dir
from gpuops.settings import help_for

# help of flags that are no row of their own (the other half of a yes/no pair), and of rows that
# other tasks share and may not list load-test yet
_HELP = {
    **help_for("load-test", **{
        "no-stream": "Ask for whole answers: end-to-end latency and throughput only.",
        "completion": "Use /v1/completions (the default).",
        "no-shared-prefix": "Salt every prompt (the default): turns off the block's --shared-prefix.",
        "compare": "Compare two report folders metric by metric, with the change in percent: --compare A "
                   "--compare B (or --compare A,B); runs no load.",
        "host": "Locust's spelling of --url.",
        "processes": "Locust's spelling of --workers (-1: one per core).",
        "headless": "Locust's spelling of a run without the web UI (gpuops' default): turns off a --web set elsewhere.",
    }),
}


@task(auto_shortflags=False, help=_HELP, iterable=["compare"])  # 28 flags: generated one-letter flags would be arbitrary (one -h)
@edge
def load_test(c, users=None, spawn_rate=None, run_time=None, prompt_tokens=None, max_tokens=None, stream=False,
              no_stream=False, chat=False, completion=False, model=None, qps=None, arrival=None, seed=None, url=None,
              server=None, workers=None, workers_on=None, sweep=None, detach=False, web=False, shared_prefix=False,
              no_shared_prefix=False, slo_ttft_ms=None, slo_tpot_ms=None, slo_e2el_ms=None, request_timeout=None,
              out=None, tokenizer=None, dataset=None, max_prompts=None, dataset_min_tokens=None,
              dataset_max_tokens=None, shared_prefix_tokens=None, shared_prefix_share=None, turns=None,
              embeddings=False, warmup=None, cooldown=None, find_max=False, slo_quantile=None, locustfile=None,
              compare=None, host=None, processes=None, headless=False, agents_file=None, json=False):  # noqa: A002
    """Load-test the running server with Locust: TTFT, ITL, TPOT, E2EL percentiles from raw records.

    inv load-test                              # flags from AGENTS.local.md's '## Load test' block
    inv load-test --users 32 --run-time 1m --workers 2
    inv load-test --qps 4 --arrival poisson --slo-ttft-ms 500 --slo-tpot-ms 50
    inv load-test --sweep 1,4,16,64 --run-time 30s --detach
    inv load-test --json | jq .summary.median_ttft_ms
    """
    flags = {k: v for k, v in locals().items() if k not in ("c", "agents_file", "json", "compare")}  # the load's own
    from gpuops.cli.render_loadtest import document
    from gpuops.probes.loadtest import command, options

    out = output(c, json)
    if compare:
        from gpuops.probes.loadtest.compare import compare_lines, compare_reports, folders

        result = compare_reports(*folders(compare))
        for line in compare_lines(result):
            out.say(line)
        out.result("load-test", {"compare": result.as_dict()})
        return
    cli = options.from_command_line(flags)
    from gpuops.cli.remote import configure_workers

    configure_workers(c.config)  # how --workers-on reaches its hosts (ssh_config, venv), if it is given
    result = command.load_test(cli, config=options.from_config(c.config.gpuops.get),
                               agents_file=agents_file_path(c, agents_file), run_dir=run_dir(c, agents_file),
                               write=out.say, json=out.json)
    if result.error is not None:
        out.fail("load-test", document(result), result.error)  # exit 7 etc., the measurements kept
    out.result("load-test", document(result), ok=result.ok)
    if result.mode != "detached" and result.exit_code == command.INTERRUPTED:
        raise KeyboardInterrupt  # @edge: "interrupted", exit 130 (Locust was stopped, the report kept)
    if result.exit_code:
        from invoke.exceptions import Exit

        raise Exit(code=result.exit_code)
