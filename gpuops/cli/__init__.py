"""The command line: Invoke tasks per area over the core's use cases, and the `gpuops` program.

    server.py    start-server, stop-server, status, logs
    gpu.py       gpus
    probes.py    smoke, profile
    loadtest.py  load-test
    project.py   the run folder, AGENTS.local.md and settings of the project a task runs in
    edge.py      errors -> one message and an exit code
    banner.py    the ready banner
    program.py   the `gpuops` console script (same collection as `inv`)

    from gpuops.cli import ns        # what tasks.py hands to Invoke
"""

from __future__ import annotations

from invoke import Collection

from gpuops.cli import gpu, loadtest, probes, server
from gpuops.settings import DEFAULTS

ns = Collection()
for _module in (server, gpu, probes, loadtest):
    for _task in Collection.from_module(_module).tasks.values():
        ns.add_task(_task)
ns.configure({"gpuops": DEFAULTS})


def main() -> None:
    """The `gpuops` console script."""
    from gpuops.cli.program import program

    program.run()
