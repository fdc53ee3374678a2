"""Lifecycle speed, side by side in one run: gpuops against the shell loops people use today.

    .venv/bin/python bench/bench_lifecycle.py [--runs 8] [--poll 5]

1. ready latency: the server prints its ready line (time recorded by the server itself) -> gpuops'
   wait_until_ready returns; against `until curl -sf URL/health; do sleep POLL; done`.
2. stop latency: the last server process exits (time recorded by the process just before it exits)
   -> gpuops' stop returns (stop_record: what `inv stop-server` runs, tag scan and port check included); against `kill PID; while kill -0 PID; do sleep 1; done`.
3. CPU while waiting: CPU seconds gpuops uses per wall second while a server loads (% of one core).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gpuops.server import procs  # noqa: E402
from gpuops.server.engines import ENGINES  # noqa: E402
from gpuops.server.state import StateRecord  # noqa: E402
from gpuops.server.stop import stop_record  # noqa: E402
from gpuops.server.watch import wait_until_ready  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake(tmp: Path, load: float) -> tuple[subprocess.Popen, Path, Path, int]:
    port = free_port()
    mark = tmp / f"mark-{port}"
    log = tmp / f"server-{port}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(HERE / "fake_server.py"), str(port), str(load), str(mark)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log, mark, port


def read_mark(path: Path, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
            if text:
                return float(text)
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    raise RuntimeError(f"no mark {path}")


def gpuops_ready(tmp: Path, load: float) -> tuple[float, float]:
    proc, log, mark, port = start_fake(tmp, load)
    try:
        cpu0, wall0 = time.process_time(), time.monotonic()
        out = wait_until_ready(log, ENGINES["uvicorn"], f"http://127.0.0.1:{port}", exit_code=proc.poll)
        done = time.time()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        assert out.state == "ready", out
        return done - read_mark(Path(str(mark) + ".ready")), cpu / wall
    finally:
        stop(proc)


def shell_ready(tmp: Path, load: float, poll: float) -> float:
    proc, _, mark, port = start_fake(tmp, load)
    try:
        subprocess.run(["bash", "-c", f"until curl -sf http://127.0.0.1:{port}/health >/dev/null; do sleep {poll}; done"],
                       check=True)
        return time.time() - read_mark(Path(str(mark) + ".ready"))
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.wait()


def gpuops_stop(tmp: Path) -> float:
    """The path `inv stop-server` takes: group, descendants and a scan for tagged processes, then the port check."""
    proc, log, mark, port = start_fake(tmp, 0.05)
    read_mark(Path(str(mark) + ".ready"))
    record = StateRecord(name="bench", pid=proc.pid, create_time=procs.psutil.Process(proc.pid).create_time(),
                         pgid=proc.pid, tag=f"bench:{port}", host="127.0.0.1", port=port,
                         url=f"http://127.0.0.1:{port}", log_path=str(log), command="fake_server.py", cwd=str(tmp),
                         engine="uvicorn")
    stopped = stop_record(record, timeout=10)
    done = time.time()
    assert stopped.port_free and stopped.report.stopped
    return done - read_mark(Path(str(mark) + ".exit"))


def shell_stop(tmp: Path) -> float:
    proc, log, mark, port = start_fake(tmp, 0.05)
    read_mark(Path(str(mark) + ".ready"))
    # the loop people write: the fake server is not this shell's child, like a detached server
    subprocess.run(["bash", "-c", f"kill {proc.pid}; while kill -0 {proc.pid} 2>/dev/null && "
                                  f"! grep -q Z /proc/{proc.pid}/stat 2>/dev/null; do sleep 1; done"], check=True)
    done = time.time()
    proc.wait()
    return done - read_mark(Path(str(mark) + ".exit"))


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:8.1f} ms   max {max(xs) * 1000:8.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8, help="repetitions of each measurement")
    ap.add_argument("--poll", type=float, default=5.0, help="sleep of the shell readiness loop (people use 5-10 s)")
    ap.add_argument("--load", type=float, default=1.0, help="seconds the fake server loads before ready")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        g_ready, g_cpu, s_ready, g_stop, s_stop = [], [], [], [], []
        for _ in range(args.runs):
            lat, cpu = gpuops_ready(tmp, args.load)
            g_ready.append(lat)
            g_cpu.append(cpu)
            s_ready.append(shell_ready(tmp, args.load, args.poll))
            g_stop.append(gpuops_stop(tmp))
            s_stop.append(shell_stop(tmp))
    print(f"runs: {args.runs}, load {args.load} s, shell poll {args.poll} s, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print(f"ready -> reported   gpuops: {ms(g_ready)}")
    print(f"                    shell : {ms(s_ready)}")
    print(f"                    ratio (shell/gpuops, medians): {statistics.median(s_ready) / statistics.median(g_ready):.0f}x")
    print(f"exit  -> stop done  gpuops: {ms(g_stop)}")
    print(f"                    shell : {ms(s_stop)}")
    print(f"                    ratio (shell/gpuops, medians): {statistics.median(s_stop) / statistics.median(g_stop):.0f}x")
    print(f"CPU while waiting   gpuops: median {statistics.median(g_cpu) * 100:.1f}% of one core "
          f"(max {max(g_cpu) * 100:.1f}%)")


if __name__ == "__main__":
    main()
