"""The start-up banner: one block that says where the server is and how it started.

    for line in ready_banner(record, outcome, gpu_lines=["GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB"]):
        print(line)
    ==== gpuops: 'server' is ready (demo) ====
      time       2026-11-22 10:15:03
      url        http://127.0.0.1:8000   (listening on 127.0.0.1:8000)
      pid        41234 (process group 41234)
      ready in   3.27 s
      log        do_not_commit/server_logs/server-20261122-101500.log
      gpu        GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB
      stop with  inv stop-server
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gpuops.server.logs import shown
from gpuops.server.state import StateRecord, command_for

if TYPE_CHECKING:
    from gpuops.server.watch import Outcome


def ready_banner(record: StateRecord, outcome: Outcome | None, *, gpu_lines: list[str] = (),
                 model_lines: list[str] = (), smoke_line: str | None = None) -> list[str]:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.ready_at or time.time()))
    lines = [
        f"==== gpuops: '{record.name}' is ready ({record.engine}) ====",
        f"  time       {stamp}",
        f"  url        {record.url}   (listening on {record.host}:{record.port})",
        f"  pid        {record.pid} (process group {record.pgid})",
    ]
    if outcome is not None:
        lines.append(f"  ready in   {outcome.elapsed:.2f} s")
    lines.append(f"  log        {shown(record.log_path)}")
    lines += [f"  gpu        {g}" for g in gpu_lines]
    lines += [f"  model      {m}" for m in model_lines]
    if smoke_line:
        lines.append(f"  smoke      {smoke_line}")
    lines.append(f"  stop with  {command_for('stop-server', record.name)}")
    return lines
