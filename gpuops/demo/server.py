"""The demo server's life: check settings, spawn workers, "load the model", serve with uvicorn, shut down.

    main(["--port", "8001", "--load-seconds", "0.5"], os.environ)   # runs until SIGTERM / Ctrl-C

Exit codes: 0 after Ctrl-C, 1 after crash_oom, 2 for a bad setting, uvicorn's own start-up failure
code (3 in current uvicorn) when the port is taken; after SIGTERM uvicorn shuts down gracefully and
re-raises the signal, so the process ends by SIGTERM, as any uvicorn server does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import uvicorn

from gpuops.demo.app import build_app
from gpuops.demo.console import Console
from gpuops.demo.faults import OOM_TRACEBACK, hang_forever
from gpuops.demo.loading import load_plan, run_plan
from gpuops.demo.settings import Settings, SettingsError, parse_settings
from gpuops.demo.workers import WorkerPool

GRACEFUL_SHUTDOWN_SECONDS = 5.0  # open streams get this long to finish after SIGTERM


class _Server(uvicorn.Server):
    """uvicorn's server; with ignore_sigterm its SIGTERM handler is replaced by SIG_IGN once installed."""

    def __init__(self, config: uvicorn.Config, ignore_sigterm: bool):
        super().__init__(config)
        self.ignore_sigterm = ignore_sigterm

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            if self.ignore_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            yield


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through main's finally, which stops the workers


def serve(settings: Settings, console: Console, pool: WorkerPool) -> None:
    config = uvicorn.Config(build_app(settings, console, pool), host=settings.host, port=settings.port,
                            log_level="info", lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    _Server(config, settings.fault == "ignore_sigterm").run()  # a failed bind raises SystemExit


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except SettingsError as err:
        print(f"python -m gpuops.demo: error: {err}", file=sys.stderr, flush=True)
        return 2
    console = Console(sys.stdout)
    ignore_sigterm = settings.fault == "ignore_sigterm"
    # Set before the workers start: they inherit SIG_IGN, and set it again themselves.
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_sigterm else _exit_on_sigterm)
    if ignore_sigterm:
        console.warning("fault ignore_sigterm: this server and its workers ignore SIGTERM; only SIGKILL stops them")
    pool = WorkerPool(console)
    serving = False
    try:
        pool.spawn(settings.workers, orphan=settings.orphan_worker, ignore_sigterm=ignore_sigterm)
        run_plan(load_plan(settings.model, settings.load_seconds, settings.fault, settings.host, settings.port),
                 console)
        if settings.fault == "crash_oom":
            if not settings.abandon_workers:
                pool.stop()  # first, so the traceback is the last thing in the log, as when vLLM dies
            sys.stderr.write(OOM_TRACEBACK)
            sys.stderr.flush()
            if settings.abandon_workers:
                os._exit(1)  # no clean-up at all: the workers live on, holding what they hold
            return 1
        if settings.fault == "hang":
            hang_forever()
        if not ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what uvicorn restores and re-raises after shutdown
        serving = True
        serve(settings, console, pool)
        return 0
    except KeyboardInterrupt:
        return 0 if serving else 130
    finally:
        pool.stop()
