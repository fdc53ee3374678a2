"""The server's life on this machine: recipes, engines, preflight, launch, watch, start, stop, status.

    recipes.py    AGENTS.local.md -> ServerRecipe (pure parsing, secrets masking)
    engines.py    per-engine ready lines, health paths, ports, failure signatures (pure)
    procs.py      process identity (PID + start time), port owners, process trees, stopping
    logs.py       timestamped never-overwritten logs: list, choose, tail, follow
    state.py      state records, the per-server lock, "which running server"
    registry.py   the run folder's registry lock; live records reserve their ports and GPUs
    health.py     one health GET over a plain socket (light: `inv status` uses it)
    preflight.py  paths, port and GPUs checked before anything runs
    launch.py     endpoint, log header, environment, detached launch, the record
    watch.py      log + health -> ready / exited / hung / timeout
    start.py      the start-server use case (-> StartResult), following the log
    stop.py       the stop-server use case (-> StopResult): which servers, trees, port and GPUs verified
    status.py     the status use case (-> StatusResult)
    group.py      several servers at once: needs, order, clashes, started together (-> GroupResult)
    catalog.py    the recipes listed, with whether each runs (inv servers)
    discover.py   model files in a folder -> one recipe each from a template (inv servers --discover)
    container.py  inside a container? what a 127.0.0.1 binding means there
"""
