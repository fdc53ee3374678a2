"""The status use case: every server gpuops has a record of, and what state it is in now.

    [(s.name, s.state, s.port) for s in status(RunDir("do_not_commit")).servers]
    [('server', 'ready', 8000), ('vision', 'stopped', 8001)]
    format_uptime(3725.0)
    '1h02m05s'

Kept light on purpose (a fleet runs `gpuops status --json` once per host): records, a psutil
identity check and, for running servers, one health GET over a plain socket; no HTTP library, no
launch or watch machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gpuops.rundir import RunDir
from gpuops.server import procs, state
from gpuops.server.health import record_healthy


@dataclass
class ServerStatus:
    name: str
    state: str  # "ready" | "starting" | "unresponsive" | "exited" (by itself) | "stopped" (by stop-server)
    pid: int
    port: int | None
    url: str | None
    uptime: float | None  # seconds; None when it is not running
    log_path: str
    engine: str
    command: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StatusResult:
    servers: list[ServerStatus]
    logs: str  # the folder of the server logs

    def as_dict(self) -> dict[str, Any]:
        return {"servers": [s.as_dict() for s in self.servers], "logs": self.logs}


def server_state(record: state.StateRecord) -> tuple[str, bool]:
    """(state, alive) of a recorded server, asking the server itself when it runs."""
    alive = procs.matches(record.pid, record.create_time)
    if not alive:
        return ("stopped" if record.stopped_at else "exited"), False
    if not record.ready_at:  # its watcher may have been interrupted: ask the server itself
        ready = bool(record.url and record.health_path) and record_healthy(record.url, record.engine)
        return ("ready" if ready else "starting"), True
    return ("ready" if record_healthy(record.url, record.engine) else "unresponsive"), True


def status(run_dir: RunDir) -> StatusResult:
    """Each server on record, in name order."""
    from gpuops.server.recipes import mask_secrets  # records of older versions may hold a secret in clear

    out = []
    for r in state.all_records(run_dir):
        st, alive = server_state(r)
        out.append(ServerStatus(r.name, st, r.pid, r.port, r.url, r.uptime if alive else None, r.log_path,
                                r.engine, mask_secrets(r.command)))
    return StatusResult(out, str(run_dir.logs))


def format_uptime(seconds: float | None) -> str:
    """'1h02m05s', '4m05s', '7s'; '-' when not running."""
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
