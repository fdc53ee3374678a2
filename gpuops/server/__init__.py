"""The server's life on this machine: recipes, engines, launch, watch, stop, status, state records.

    recipes.py    AGENTS.local.md -> ServerRecipe (pure parsing, secrets masking)
    engines.py    per-engine ready lines, health paths, ports, failure signatures (pure)
    procs.py      process identity (PID + start time), port owners, process trees, stopping
    logs.py       timestamped never-overwritten logs, tail, follow
    watch.py      log + health -> ready / exited / hung / timeout
    state.py      state records, locks, "which running server"
    lifecycle.py  preflight, launch, watch, start / stop / status use cases
"""
