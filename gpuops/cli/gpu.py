"""GPU tasks: gpus.

    inv gpus [--busy-mib 300] [--json]
"""

from __future__ import annotations

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.project import output, resolved
from gpuops.settings import help_for


@task(auto_shortflags=False, help=help_for("gpus"))
@edge
def gpus(c, json=False, busy_mib=None):  # noqa: A002
    """Each GPU's memory and utilisation, with the processes on it (PID, user, memory, command).

    inv gpus
    inv gpus --json | jq '.gpus[].processes[].pid'
    """
    from gpuops.gpu import render
    from gpuops.gpu.inventory import inventory

    out = output(c, json)
    busy = resolved(c, "gpu_busy_mib", busy_mib, "--busy-mib")
    inv = inventory()
    if out.json:
        out.result("gpus", render.to_json(inv, busy_mib=busy))
        if inv.unavailable:
            out.say(f"no NVIDIA GPU visible: {inv.unavailable}")
        return
    from rich.console import Console

    render.render_table(inv, Console(file=out.human), busy_mib=busy)
