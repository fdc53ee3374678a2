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
    htmlreport.py     the self-contained report.html of a run, a sweep or a --find-max search (inline SVG)
    findmax.py        --find-max: doubling, then bisection, for the highest load that meets the SLOs
    compare.py        --compare A,B: two report folders side by side, change in percent
    userfile.py       -f FILE: the user's own locustfile run in gpuops' run, Locust's stats summarised
    serverinfo.py     the server's engine version for the report (vLLM /version, SGLang, llama.cpp /props)

Nothing here imports locust or matplotlib at module level: `inv --list` stays fast.
"""
