"""`inv load-test`: Locust load tests that measure LLM serving latency the way vLLM defines it.

    options.py        flags (and AGENTS.local.md's `## Load test` block) -> validated LoadTestOptions
    prompts.py        salted prompts of a chosen length
    arrivals.py       open-loop arrival schedules (constant or Poisson) for --qps
    locustfile.py     the Locust user, run only inside Locust's own processes (gevent)
    metrics.py        raw per-request records -> vLLM-named statistics (pure)
    command.py        the use case: options -> preflight -> run (here, detached, web) -> LoadTestResult
    runner.py         preflight, Locust command lines, processes, record merging
    report.py         terminal table, summary.json, PNG charts
    background.py     the detached (--detach) entry point

Nothing here imports locust or matplotlib at module level: `inv --list` stays fast.
"""
