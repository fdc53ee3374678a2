"""Text for several servers started at once: a live line per server while they load, one table at the end.

    view = GroupView(["model", "app"], Console(stderr=True))   # live only on a terminal
    with view:
        start_group(plan, recipes, start_one, write=view.say, stream=view.stream, on_event=view.event)
    group_table(result, Console())
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpuops.server.group import GroupResult
from gpuops.server.logs import shown

_STYLE = {"ready": "green", "running": "green", "failed": "red", "skipped": "yellow", "stopped": "yellow",
          "starting": "cyan", "waiting": "dim"}


def group_table(result: GroupResult, console: Console) -> None:
    """name, state, PID, port, URL, time to ready, log: one row per server."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("server", "state", "pid", "port", "url", "ready in", "log"):
        table.add_column(column, no_wrap=True, overflow="ellipsis" if column == "log" else "fold")
    folders = set()
    for s in result.servers:
        r = s.result
        rec = r.record if r is not None else s.record
        ready_in = ("reused" if r.already_running else f"{r.outcome.elapsed:.1f} s") if r is not None and (
            r.already_running or r.outcome is not None) else "-"
        table.add_row(s.name, f"[{_STYLE.get(s.state, '')}]{s.state}[/]", str(rec.pid) if rec else "-",
                      str(rec.port) if rec and rec.port else "-", rec.url if rec and rec.url else "-", ready_in,
                      Path(rec.log_path).name if rec else "-")
        if rec is not None:
            folders.add(shown(Path(rec.log_path).parent))
    console.print(table)
    if folders:
        console.print(f"logs in {', '.join(sorted(folders))}; `inv logs --name FILE` shows one", highlight=False)
    for s in result.servers:
        if not s.ok:
            err = s.error or (s.result.smoke_error if s.result else None)
            why = s.skipped or s.stopped or (err.message if err is not None else s.state)
            console.print(f"[{_STYLE.get(s.state, 'red')}]{s.name}[/]: {why}", highlight=False)
    ok = sum(s.ok for s in result.servers)
    console.print(f"{ok} of {len(result.servers)} servers up in {result.elapsed:.1f} s", highlight=False)


class GroupView:
    """While servers start: on a terminal a live line each (state, seconds, last log line), with gpuops'
    own lines printed above it; elsewhere gpuops' lines only (logs stay in their files)."""

    def __init__(self, names: list[str], console: Console, *, live: bool | None = None):
        self.names = names
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.states = {n: "waiting" for n in names}
        self.began = {n: 0.0 for n in names}
        self.took: dict[str, float] = {}
        self.last = {n: "" for n in names}
        self._lock = threading.Lock()
        self._live = None

    def __enter__(self) -> GroupView:
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def stream(self, line: str) -> None:
        name, _, text = line.partition(" | ")
        with self._lock:
            if name.strip() in self.last:
                self.last[name.strip()] = text.strip()

    def event(self, name: str, state: str) -> None:
        with self._lock:
            self.states[name] = state
            if state == "starting":
                self.began[name] = time.monotonic()
            elif self.began[name]:
                self.took[name] = time.monotonic() - self.began[name]
        if not self.live and state in ("ready", "failed", "skipped", "stopped"):
            self.say(f"{name}: {state}")

    def _render(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for column in ("server", "state", "time", "last line"):
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=None if column != "last line"
                             else max(20, self.console.width - 40))
        now = time.monotonic()
        with self._lock:
            for n in self.names:
                st = self.states[n]
                secs = (f"{now - self.began[n]:.0f} s" if st == "starting" and self.began[n] else
                        f"{self.took[n]:.1f} s" if n in self.took else "")
                table.add_row(n, f"[{_STYLE.get(st, '')}]{st}[/]", secs, self.last[n])
        return table
