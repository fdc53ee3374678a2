"""Speed of `gpuops -H`: fan-out over several hosts, and the cost of SSH against running locally.

    .venv/bin/python bench/bench_remote.py [--runs 7]

Starts the system's sshd on 127.0.0.1 (tests/support/sshd.py: throwaway keys, aliases gpu1..gpu8 that
all lead to it), installs this gpuops over SSH into a temporary venv (not timed), then measures:
1. fan-out: `gpuops -H gpu1[,..gpuN] status --json` for N = 1, 4, 8, in parallel (the default) and
   with gpuops.remote_parallel: false (one host after another); ratio N hosts / 1 host. All "hosts"
   are this machine, so every host's gpuops shares its cores: the ratio here is an upper bound of a
   real fleet's, where each host runs its gpuops on its own CPU.
2. SSH alone: connect + `true` over N aliases through gpuops.hosts.fleet (no remote Python), parallel
   against sequential: the client side's fan-out without the shared-CPU effect.
3. overhead: `gpuops -H gpu1 status --json` against the same `gpuops status --json` run locally in the
   same project folder (what the host runs), and `inv status --json` of this repo.
Runs alternate between the sides so that machine noise hits both alike; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))


def timed(argv: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def ssh_only(hosts: list[str], ssh_config: Path, parallel: bool) -> float:
    from gpuops.hosts.fleet import fan_out, on_host
    from gpuops.hosts.ssh import SshOptions, run_script

    options = SshOptions(ssh_config=str(ssh_config), agent=False, key_search=False)
    start = time.perf_counter()
    results = fan_out(hosts, lambda h: on_host(h, options, lambda c: run_script(c, h, "true")), parallel=parallel)
    elapsed = time.perf_counter() - start
    bad = [r.error_line() for r in results if not r.ok]
    if bad:
        raise SystemExit("; ".join(bad))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    from support.sshd import Remote, running_sshd

    with tempfile.TemporaryDirectory(prefix="gpuops-bench-remote-") as tmp:
        (Path(tmp) / "sshd").mkdir()
        with running_sshd(Path(tmp) / "sshd") as sshd:
            measure(Remote(sshd, Path(tmp)), sshd, args.runs)


def measure(remote, sshd, runs: int) -> None:
    print("installing gpuops over SSH (not timed) ...", flush=True)
    done = remote.gpuops("-H", "gpu1", "install", timeout=900)
    if done.code != 0:
        raise SystemExit(done.text)
    sequential = remote.root / "sequential.yaml"
    sequential.write_text(json.dumps({"gpuops": {**json.loads(remote.config.read_text())["gpuops"],
                                                 "remote_parallel": False}}))
    env = remote.env
    cmd = [sys.executable, "-m", "gpuops"]
    hosts = {n: ",".join(f"gpu{i}" for i in range(1, n + 1)) for n in (1, 4, 8)}
    times: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    for _ in range(runs):
        for n, spec in hosts.items():
            add(f"parallel {n}", timed([*cmd, "-f", str(remote.config), "-H", spec, "status", "--json"],
                                       remote.root, env))
            add(f"sequential {n}", timed([*cmd, "-f", str(sequential), "-H", spec, "status", "--json"],
                                         remote.root, env))
            names = spec.split(",")
            add(f"ssh parallel {n}", ssh_only(names, sshd.ssh_config, True))
            add(f"ssh sequential {n}", ssh_only(names, sshd.ssh_config, False))
        add("remote status", timed([*cmd, "-f", str(remote.config), "-H", "gpu1", "status", "--json"],
                                   remote.root, env))
        add("local gpuops status", timed([str(remote.venv / "bin" / "gpuops"), "status", "--json"],
                                         remote.project, {**env, "GPUOPS_LOCAL": "1"}))
        add("local inv status", timed([str(Path(sys.executable).with_name("inv")), "status", "--json"], REPO,
                                      {**env, "GPUOPS_LOCAL": "1"}))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedians of {runs} runs, seconds (host: {os.cpu_count()} cores; all 'hosts' are this machine)\n")
    print("fan-out: gpuops -H N hosts status --json")
    print(f"{'hosts':>6} {'parallel':>10} {'sequential':>11} {'par/1 host':>11} {'seq/par':>8}")
    for n in hosts:
        p, s = med[f"parallel {n}"], med[f"sequential {n}"]
        print(f"{n:>6} {p:>10.3f} {s:>11.3f} {p / med['parallel 1']:>10.2f}x {s / p:>7.2f}x")
    print("\nSSH alone: connect + `true` per host (no remote Python)")
    print(f"{'hosts':>6} {'parallel':>10} {'sequential':>11} {'par/1 host':>11} {'seq/par':>8}")
    for n in hosts:
        p, s = med[f"ssh parallel {n}"], med[f"ssh sequential {n}"]
        print(f"{n:>6} {p:>10.3f} {s:>11.3f} {p / med['ssh parallel 1']:>10.2f}x {s / p:>7.2f}x")
    r, g, i = med["remote status"], med["local gpuops status"], med["local inv status"]
    print("\nremote overhead")
    print(f"  gpuops -H gpu1 status --json   {r:.3f}")
    print(f"  gpuops status --json (local)   {g:.3f}   remote adds {r - g:+.3f} s ({r / g:.2f}x)")
    print(f"  inv status --json (local)      {i:.3f}   remote / inv = {r / i:.2f}x")


if __name__ == "__main__":
    main()
