"""The command line: Invoke tasks per area over the core's use cases, and the `gpuops` program.

    server.py    start-server, stop-server, status, logs
    gpu.py       gpus
    probes.py    smoke, profile
    loadtest.py  load-test
    catalog.py   servers (the recipes; --discover: a recipe per model file)
    project.py   the run folder, AGENTS.local.md and settings of the project a task runs in
    edge.py      errors -> one message and an exit code
    banner.py    the ready banner
    program.py   the `gpuops` console script (same collection as `inv`)

    # tasks.py at the root of a project: settings' relative paths are that folder's
    from gpuops.cli import project_tasks
    ns = project_tasks(__file__)
"""

from __future__ import annotations

import os

from invoke import Collection

from gpuops.cli import catalog, gpu, loadtest, probes, server
from gpuops.settings import config_defaults

ns = Collection()
for _module in (server, catalog, gpu, probes, loadtest):
    for _task in Collection.from_module(_module).tasks.values():
        ns.add_task(_task)
ns.configure({"gpuops": config_defaults()})


def project_tasks(tasks_file: str) -> Collection:
    """The task collection for the project whose tasks.py is `tasks_file`: a relative AGENTS.local.md or
    run folder in the settings means that folder's, from whichever subfolder `inv` runs."""
    project = Collection()
    for task in ns.tasks.values():
        project.add_task(task)
    project.configure({"gpuops": {**config_defaults(), "project_dir": os.path.dirname(os.path.abspath(tasks_file))}})
    return project


def main() -> None:
    """The `gpuops` console script."""
    from gpuops.cli.program import program

    program.run()
