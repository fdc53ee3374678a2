"""One simulated worker process (like a tensor-parallel worker holding a GPU): it starts, says so, sleeps.

    python -m gpuops.demo.worker --index 0            # prints "worker 0 started (pid 41240)"
    python -m gpuops.demo.worker --index 2 --orphan   # started in its own session by the server

It never watches its parent: when the server is SIGKILLed it lives on, as vLLM's engine core does,
and only gpuops' stop (by process group, or by the GPUOPS_SERVER tag in its environment) ends it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def _quiet_exit(index: int):
    def handler(signum, frame):
        print(f"worker {index} exiting ({signal.Signals(signum).name})", flush=True)
        raise SystemExit(0)

    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuops.demo.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True, help="worker number, printed in its lines")
    parser.add_argument("--orphan", action="store_true", help="say that it runs in its own session")
    parser.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM (only SIGKILL ends it)")
    args = parser.parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _quiet_exit(args.index))
    signal.signal(signal.SIGINT, _quiet_exit(args.index))  # Ctrl-C reaches the whole group: no traceback
    where = f", own session {os.getsid(0)}" if args.orphan else ""
    print(f"worker {args.index} started (pid {os.getpid()}{where})", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
