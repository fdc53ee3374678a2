"""GPU tasks: gpus.

    inv gpus [--json]
"""

from __future__ import annotations

import sys

from invoke import task

from gpuops.checks import number
from gpuops.cli.edge import edge
from gpuops.cli.project import setting


@task(
    help={
        "json": "Print machine-readable JSON instead of a table (n/a figures are null).",
        "busy-mib": "Mark GPUs on which processes use more than this many MiB as busy (default 300).",
    }
)
@edge
def gpus(c, json=False, busy_mib=None):  # noqa: A002
    """Each GPU's memory and utilisation, with the processes on it (PID, user, memory, command).

    inv gpus
    inv gpus --json | jq '.gpus[].processes[].pid'
    """
    from gpuops.gpu import inventory as gpuinfo

    busy = number("--busy-mib", setting(c, "gpu_busy_mib", busy_mib), low_ok=True)
    inv = gpuinfo.inventory()
    if json:
        import json as _json

        print(_json.dumps(gpuinfo.to_json(inv), indent=2), flush=True)
        if inv.unavailable:
            print(f"no NVIDIA GPU visible: {inv.unavailable}", file=sys.stderr, flush=True)
        return
    from rich.console import Console

    gpuinfo.render_table(inv, Console(), busy_mib=busy)
