"""How an inventory looks: the `inv gpus` table and its JSON.

    $ inv gpus
    NVIDIA driver 550.54.15, 3 GPUs
    GPU     PID  user   type        memory MiB  util  name / command
    0                            40123 / 81559   87%  NVIDIA H100 80GB HBM3  busy
          41234  alice  compute          40120          python -m vllm.entrypoints.openai.api_server --port 8000
    1                                3 / 81559    0%  NVIDIA H100 80GB HBM3
    2                            20003 / 81559    0%  NVIDIA H100 80GB HBM3  busy
         123456  ?      compute          20000          (not visible: other container)

Figures NVML does not report are "n/a" (never 0); processes this machine cannot see are kept
with a marker, since they still hold the memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING

from gpuops.gpu.inventory import Gpu, GpuProcess, Inventory, is_busy

if TYPE_CHECKING:
    from rich.console import Console

NA = "n/a"


def _mib(value: float | None) -> str:
    return NA if value is None else f"{value:.0f}"


def _process_text(p: GpuProcess) -> str:
    if not p.visible:
        return "(not visible: other container)"
    if not p.accessible:
        return f"{p.name} (no permission)" if p.name != "?" else "(no permission)"
    return p.cmdline or p.name


def _gpu_status(g: Gpu, busy_mib: float | None) -> str:
    if g.problem:
        return g.problem
    if busy_mib is not None and is_busy(g, busy_mib):
        return "busy"
    return ""


def render_table(inv: Inventory, console: Console, *, busy_mib: float | None = None) -> None:
    """Print the inventory to a rich Console: one row per GPU, its processes indented under it."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    if inv.unavailable:
        console.print(Text(f"no NVIDIA GPU visible: {inv.unavailable}"), soft_wrap=True)  # one line, for grep
        return
    plural = "s" if len(inv.gpus) != 1 else ""
    console.print(Text(f"NVIDIA driver {inv.driver or NA}, {len(inv.gpus)} GPU{plural}"), soft_wrap=True)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("GPU", "left"), ("PID", "right"), ("user", "left"), ("type", "left"),
                          ("memory MiB", "right"), ("util", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("name / command", overflow="fold")
    for g in inv.gpus:
        util = NA if g.utilization_pct is None else f"{g.utilization_pct}%"
        name = g.name + (" [MIG]" if g.mig else "")
        status = _gpu_status(g, busy_mib)
        label = escape(name) + (f"  [bold red]{escape(status)}[/]" if status else "")
        table.add_row(str(g.index), "", "", "", f"{_mib(g.memory_used_mib)} / {_mib(g.memory_total_mib)}", util, label)
        for p in g.processes:
            table.add_row("", str(p.pid), escape(p.user), p.kind, _mib(p.used_mib), "", Text("  " + _process_text(p)))
        if g.processes_error:
            table.add_row("", "", "", "", "", "", Text(f"  (processes: {g.processes_error})"))
    console.print(table)


def to_json(inv: Inventory, *, busy_mib: float | None = None) -> dict:
    """The inventory as plain JSON types (None for n/a), for `inv gpus --json`; with `busy_mib`, each
    GPU also says whether it is `busy` by that threshold.

    >>> to_json(Inventory([], "the NVIDIA kernel driver is not loaded", None))
    {'available': False, 'unavailable': 'the NVIDIA kernel driver is not loaded', 'driver': None, 'gpus': []}
    """
    data = {
        "available": inv.unavailable is None,
        "unavailable": inv.unavailable,
        "driver": inv.driver,
        "gpus": [asdict(g) for g in inv.gpus],
    }
    if busy_mib is not None:
        data["busy_mib"] = busy_mib
        for g, d in zip(inv.gpus, data["gpus"], strict=True):
            d["busy"] = not g.problem and is_busy(g, busy_mib)
    return data


def banner_lines(inv: Inventory, needed: Iterable[int]) -> list[str]:
    """The GPU lines of the start-up banner.

    >>> h100s = [Gpu(i, "NVIDIA H100 80GB HBM3", None, 72100.0, 81559.0, 87, False) for i in (0, 1)]
    >>> banner_lines(Inventory(h100s, None, "550.54.15"), [0])
    ['GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB (72100 MiB in use)', 'uses GPU 0 of 2']
    """
    if inv.unavailable:
        return [f"no NVIDIA GPU visible: {inv.unavailable}"]
    wanted = list(needed)
    shown = [g for g in inv.gpus if g.index in set(wanted)] or inv.gpus
    lines = []
    for g in shown:
        if g.problem:
            lines.append(f"GPU {g.index}: cannot be read ({g.problem})")
            continue
        mig = " [MIG]" if g.mig else ""
        lines.append(f"GPU {g.index}: {g.name}{mig}, {_mib(g.memory_total_mib)} MiB "
                     f"({_mib(g.memory_used_mib)} MiB in use)")
    if wanted and len(shown) < len(inv.gpus):
        lines.append(f"uses GPU {','.join(str(i) for i in wanted)} of {len(inv.gpus)}")
    return lines
