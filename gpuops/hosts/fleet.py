"""Several hosts at once: one thread and one SSH connection per host, a result per host, none hidden.

    results = fan_out(["gpu1", "gpu2"], lambda host: on_host(host, options, work))
    [r.host for r in results if not r.ok]     # the failed ones, each with a one-line error
    exit_code(results)                        # 0 when all succeeded

A dead host costs its own connect timeout and nothing else: the others run beside it, never after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpuops.errors import GpuopsError, RemoteError
from gpuops.hosts.ssh import ABORT, HostError, SshOptions, connect

MAX_PARALLEL = 64


@dataclass
class HostResult:
    """What one host gave: a value (usually a RemoteRun), or the error that stopped it."""

    host: str
    value: Any = None
    error: GpuopsError | None = None
    seconds: float = 0.0
    documents: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    def error_line(self) -> str:
        """The error in one line, starting with the host's name."""
        if self.error is None:
            return ""
        if isinstance(self.error, HostError):
            return self.error.one_line()
        text = self.error.message + (f"; {self.error.hint}" if self.error.hint else "")
        return f"{self.host}: {text}"


def on_host(host: str, options: SshOptions, work: Callable[[Any], Any]):
    """Open one connection to `host`, run `work(conn)`, close it: the value of work."""
    conn = connect(host, options)
    try:
        return work(conn)
    finally:
        conn.close()


def _one(host: str, job: Callable[[str], Any]) -> HostResult:
    start = time.monotonic()
    try:
        value = job(host)
    except GpuopsError as err:
        return HostResult(host, error=err, seconds=time.monotonic() - start)
    except Exception as err:  # a bug or an unexpected library error must not hide the other hosts
        return HostResult(host, error=RemoteError(f"{host}: {type(err).__name__}: {err}",
                                                  hint="re-run with GPUOPS_DEBUG=1 and report it"),
                          seconds=time.monotonic() - start)
    documents = list(getattr(value, "documents", None) or [])
    return HostResult(host, value=value, seconds=time.monotonic() - start, documents=documents)


def fan_out(hosts: list[str], job: Callable[[str], Any], *, parallel: bool = True) -> list[HostResult]:
    """`job(host)` for every host, in parallel threads; results in the order of `hosts`."""
    if not parallel or len(hosts) == 1:
        return [_one(h, job) for h in hosts]
    pool = ThreadPoolExecutor(max_workers=min(len(hosts), MAX_PARALLEL), thread_name_prefix="gpuops-host")
    try:
        return list(pool.map(lambda h: _one(h, job), hosts))
    except KeyboardInterrupt:  # Ctrl-C reaches only this thread: tell the others to let go
        ABORT.set()
        raise
    finally:
        pool.shutdown(wait=not ABORT.is_set(), cancel_futures=True)


def exit_code(results: list[HostResult]) -> int:
    """0 when every host succeeded; else the failed hosts' exit code when they agree, else 8 (RemoteError).

    >>> exit_code([HostResult("a"), HostResult("b", error=HostError("b", "refused", "x"))])
    8
    """
    codes = {r.exit_code for r in results if not r.ok}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else RemoteError.exit_code
