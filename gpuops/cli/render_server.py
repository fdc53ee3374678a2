"""Renderers of the server tasks: a use case's result -> the lines (or table) people read.

    for line in start_lines(result):  out.say(line)      # the ready banner, or "already running"
    for line in stop_lines(stop):     out.say(line)      # "stopped 'server': 3 process(es) in 0.41 s; ..."
    status_table(result, Console())                       # server, state, pid, port, url, uptime, engine, log
    log_list_lines(files, folder)                         # "      1234  do_not_commit/server_logs/server-....log"

Under --json the task prints the result's as_dict() instead (docs/json.md); these are for people.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuops.server.logs import shown
from gpuops.server.status import format_uptime

if TYPE_CHECKING:
    from gpuops.server.logs import LogFile
    from gpuops.server.start import StartResult
    from gpuops.server.status import StatusResult
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
    """The status table (or one line when gpuops knows no server) on a rich Console."""
    if not result.servers:
        console.print("no servers known (start one with `inv start-server`)", markup=False, highlight=False)
        return
    from rich.table import Table

    table = Table(caption=f"logs in {shown(result.logs)}; `inv logs --name FILE` shows one")
    for column in ("server", "state", "pid", "port", "url", "uptime", "engine", "log"):
        table.add_column(column, overflow="fold")  # a URL or log path cut short with "…" is useless
    for s in result.servers:
        table.add_row(s.name, s.state, str(s.pid), str(s.port or "-"), s.url or "-", format_uptime(s.uptime),
                      s.engine, Path(s.log_path).name)
    console.print(table)


def log_list_lines(files: list[LogFile], folder: Path) -> list[str]:
    """`inv logs --list`: size and path of each log, newest last."""
    if not files:
        return [f"no logs in {folder}"]
    return [f"{f.size:>10}  {f.path}" for f in files]


def log_tail_lines(path: Path, lines: list[str]) -> list[str]:
    """`inv logs`: a header naming the file, then its last lines."""
    return [f"==> {path} <==", *lines]
