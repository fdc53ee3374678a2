"""Renderers of the server tasks: a use case's result -> the lines (or table) people read.

    for line in start_lines(result):  out.say(line)      # the ready banner, or "already running"
    for line in stop_lines(stop):     out.say(line)      # "stopped 'server': 3 process(es) in 0.41 s; ..."
    status_table(result, Console())                       # totals line; server, state, pid, ..., RSS, GPU mem, log
    log_list_lines(files, folder)                         # "      1234  do_not_commit/server_logs/server-....log"

Under --json the task prints the result's as_dict() instead (docs/json.md); these are for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuops.server.logs import shown
from gpuops.server.status import format_bytes, format_mib, format_uptime

if TYPE_CHECKING:
    from gpuops.server.logs import LogFile
    from gpuops.server.start import StartResult
    from gpuops.server.status import ServerStatus, StatusResult
    from gpuops.server.stop import ServerStop


def start_lines(result: StartResult) -> list[str]:
    """The ready banner; for a server that was already running, where it is and how to replace it."""
    rec = result.record
    if result.already_running:
        return [f"'{rec.name}' is already running: pid {rec.pid}, {rec.url}, up {format_uptime(rec.uptime)}, "
                f"log {shown(rec.log_path)}", "(use --restart to stop it and start it again)"]
    from gpuops.cli.banner import ready_banner

    return ready_banner(rec, result.outcome, gpu_lines=result.gpu_lines, model_lines=result.model_lines,
                        smoke_line=result.smoke_line)


def stop_lines(stop: ServerStop) -> list[str]:
    """One server's (or port's) stop: the summary, then each process stopped."""
    return stop.summary().splitlines()


def status_table(result: StatusResult, console) -> None:
    """The totals line, then a row per server (or one line when gpuops knows no server), then the
    notes, on a rich Console:

        3 known: 2 ready, 1 starting; 0 failed; running together: 23.9 GiB RSS, 78.1 GiB GPU memory
        server  state  pid    port  url                    uptime    GPUs  RSS (procs)   GPU mem   log
        ─────────────────────────────────────────────────────────────────────────────────────────────────────
        big     ready  41234  8000  http://127.0.0.1:8000  1h02m05s  0,1   11.8 GiB (3)  70.2 GiB  big-20261122-101500.log
    """
    if not result.servers:
        console.print("no servers known (start one with `inv start-server`)", markup=False, highlight=False)
        return
    from rich import box
    from rich.table import Table

    console.print(totals_line(result.totals()), markup=False, highlight=False)
    caption = f"logs in {shown(result.logs)}; `inv logs --name FILE` shows one"
    if result.gpu_memory_unavailable and any(s.running for s in result.servers):
        caption += f"\nGPU mem n/a: {result.gpu_memory_unavailable}"
    # no side borders and no rules between the columns: narrow terminals fold less
    table = Table(caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in ("server", "state", "pid", "port", "url", "uptime", "GPUs", "RSS (procs)", "GPU mem", "log"):
        # a URL or log path cut short with "…" is useless; short figures stay on one line while they can
        table.add_column(column, overflow="fold", no_wrap=column not in ("server", "url", "log", "RSS (procs)"))
    for s in result.servers:
        table.add_row(*status_row(s), Path(s.log_path).name)
    console.print(table)
    for line in status_notes(result):
        console.print(line, markup=False, highlight=False)


def totals_line(totals: dict) -> str:
    """'3 known: 2 ready, 1 starting; 0 failed; running together: 1.2 GiB RSS, 4.0 GiB GPU memory'."""
    states = [f"{totals['ready']} ready", f"{totals['starting']} starting"]
    if totals.get("unresponsive"):
        states.append(f"{totals['unresponsive']} unresponsive")
    line = f"{totals['known']} known: {', '.join(states)}; {totals['failed']} failed"
    if totals.get("stopped"):
        line += f", {totals['stopped']} stopped"
    if totals.get("running"):
        gpu = totals.get("gpu_memory_mib")
        line += f"; running together: {format_bytes(totals.get('rss_bytes'))} RSS" + (
            f", {format_mib(gpu)} GPU memory" if gpu else "")
    return line


def status_row(s: ServerStatus) -> list[str]:
    """One server's cells: name, state, pid, port, url (and the outside one), uptime, GPUs, RSS (procs), GPU mem."""
    url = s.url or "-"
    if s.outside_url:
        url += f"\noutside: {s.outside_url}"
    if not s.running:
        rss, gpu = "-", "-"
    else:
        rss = f"{format_bytes(s.rss_bytes)} ({s.processes})"
        gpu = "n/a" if s.gpu_memory_mib is None else format_mib(s.gpu_memory_mib)
    return [s.name, s.state, str(s.pid), str(s.port or "-"), url, format_uptime(s.uptime),
            ",".join(map(str, s.gpus)) or "-", rss, gpu]


def status_notes(result: StatusResult) -> list[str]:
    """Lines under the table: the running servers only the container itself can reach."""
    return [f"warning: '{s.name}': {s.binding_note}" for s in result.servers if s.running and s.binding_note]


def log_list_lines(files: list[LogFile], folder: Path) -> list[str]:
    """`inv logs --list`: size and path of each log, newest last."""
    if not files:
        return [f"no logs in {folder}"]
    return [f"{f.size:>10}  {f.path}" for f in files]


def log_tail_lines(path: Path, lines: list[str]) -> list[str]:
    """`inv logs`: a header naming the file, then its last lines."""
    return [f"==> {path} <==", *lines]
