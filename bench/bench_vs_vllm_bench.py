"""gpuops' load-test client against `vllm bench serve`, side by side in one run, on the same truth server.

    .venv/bin/python bench/bench_vs_vllm_bench.py [--levels 1,8,32] [--run-time 8] [--skip-capacity]

The truth server is gpuops' demo server (`python -m gpuops.demo --ttft-ms 100 --itl-ms 20`): its TTFT
and inter-token delay are known, so each client's error against the truth is measurable. At each
concurrency level the two clients run one after the other against that one server (interleaved:
gpuops, then vLLM, then the next level):

- gpuops: `python -m gpuops load-test --url URL --users N --run-time Ts --prompt-tokens P
  --max-tokens M` (a closed loop for T seconds; its per-request records are read back);
- vLLM: `vllm bench serve --backend openai --base-url URL --endpoint /v1/completions --model NAME
  --tokenizer TINY_LLAMA --dataset-name random --random-input-len P --random-output-len M
  --ignore-eos --max-concurrency N --num-prompts K --num-warmups N --save-detailed`, K being the
  number of requests gpuops completed at that level (the same work for both), with the vLLM venv's
  own CLI and offline settings (HF_HUB_OFFLINE=1).

Printed per client and level: the median TTFT and ITL each client measured minus the truth (ms), and
capacity: output tokens/s per client CPU core, the CPU being that of the client's whole process
tree (psutil, sampled every 0.1 s by this script, every process ever seen in the tree counted),
taken over the client's own load window (its first request sent to its last answer), so start-up
(vLLM's ~15 s of imports, gpuops' preflight and report) is left out for both. Then (unless
--skip-capacity) both clients against a second demo server with no delays at all, where the client
itself is the limit (or the server, on a small machine), the ratio gpuops / vLLM.

Where vLLM is not installed (`.ci/install-engines`: `$GPUOPS_ENGINES_DIR` or `.engines/`, or
--vllm PATH) it prints `skipped: ...` with the reason and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

ENGINES_DIR = Path(os.environ.get("GPUOPS_ENGINES_DIR") or REPO / ".engines")
MODEL = "gpuops-demo-1b"  # the demo's served name; given to vLLM explicitly (see --model below)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(ttft: float, itl: float) -> tuple[subprocess.Popen, str]:
    import requests

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpuops.demo", "--port", str(port), "--load-seconds", "0",
                             "--model", MODEL, "--ttft-ms", str(ttft), "--itl-ms", str(itl)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError("demo server did not start")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process this script started, with its whole session (it was started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- CPU of a client's process tree


class TreeCPU:
    """Samples the CPU seconds (user + system) of a process and all its descendants every `every` s.

    Each process ever seen is kept at its last reading, so a child that exits keeps its CPU in the sum.
    Samples carry both clocks: gpuops' records are on time.time(), vLLM's on perf_counter (= the
    system-wide CLOCK_MONOTONIC on Linux, like time.monotonic here).
    """

    def __init__(self, pid: int, every: float = 0.1):
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.seen: dict[tuple[int, float], float] = {}
        self.samples: list[tuple[float, float, float]] = []  # (wall, monotonic, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import psutil

        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                continue
        self.samples.append((time.time(), time.monotonic(), sum(self.seen.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.every)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_between(self, start: float, end: float, clock: int) -> float:
        """CPU seconds used in [start, end] (clock 0: wall, 1: monotonic), interpolated between samples."""
        def at(t: float) -> float:
            s = self.samples
            if not s or t <= s[0][clock]:
                return s[0][2] if s else 0.0
            for a, b in zip(s, s[1:], strict=False):
                if a[clock] <= t <= b[clock]:
                    span = b[clock] - a[clock]
                    return a[2] + (b[2] - a[2]) * ((t - a[clock]) / span if span else 1.0)
            return s[-1][2]
        return at(end) - at(start)


def run_watched(cmd: list[str], cwd: Path, env: dict | None, timeout: float, log: Path) -> tuple[int, TreeCPU]:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cpu = TreeCPU(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            rc = -1
        finally:
            cpu.finish()
    return rc, cpu


# ---------------------------------------------------------------- the two clients


def run_gpuops(url: str, users: int, args, work: Path) -> dict:
    out = work / f"gpuops-{users}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "gpuops", "load-test", "--url", url, "--users", str(users), "--run-time",
           f"{args.run_time}s", "--max-tokens", str(args.max_tokens), "--prompt-tokens", str(args.prompt_tokens),
           "--out", str(out)]
    log = work / f"{out.name}.log"
    rc, cpu = run_watched(cmd, work, None, args.run_time + 150, log)
    if rc != 0:
        raise RuntimeError(f"gpuops load-test failed ({rc}):\n{log.read_text()[-3000:]}")
    from gpuops.probes.loadtest import metrics

    records = [r for r in metrics.read_records(out / "records.jsonl") if r["ok"]]
    start, end = min(r["start"] for r in records), max(r["end"] for r in records)
    return {"ttft_ms": [r["ttft_ms"] for r in records], "itl_ms": [x for r in records for x in r["itl_ms"]],
            "tokens": sum(r["output_tokens"] or 0 for r in records),
            "prompt_tokens": statistics.fmean(r.get("prompt_tokens") or 0 for r in records),
            "n": len(records), "duration": end - start, "cpu_s": cpu.cpu_between(start, end, 0)}


def run_vllm(url: str, users: int, prompts: int, args, work: Path) -> dict:
    name = f"vllm-{users}-{time.monotonic_ns()}"
    cmd = [str(args.vllm), "bench", "serve", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", MODEL, "--tokenizer", str(args.tokenizer),
           "--dataset-name", "random", "--random-input-len", str(args.prompt_tokens),
           "--random-output-len", str(args.max_tokens), "--ignore-eos", "--max-concurrency", str(users),
           "--num-prompts", str(prompts), "--num-warmups", str(users), "--seed", "0", "--disable-tqdm",
           "--save-result", "--save-detailed", "--result-dir", str(work), "--result-filename", f"{name}.json"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", VLLM_CACHE_ROOT=str(work / "vllm-cache"), TMPDIR=str(work))
    log = work / f"{name}.log"
    rc, cpu = run_watched(cmd, work, env, 240 + args.run_time * 3, log)
    if rc != 0:
        raise RuntimeError(f"vllm bench serve failed ({rc}):\n{log.read_text()[-3000:]}")
    res = json.loads((work / f"{name}.json").read_text())
    ok = [i for i, e in enumerate(res["errors"]) if not e]
    # start_times are perf_counter (CLOCK_MONOTONIC) values; latency ends at the last token chunk
    start = min(res["start_times"][i] for i in ok)
    end = max(res["start_times"][i] + res["latencies"][i] for i in ok)
    return {"ttft_ms": [res["ttfts"][i] * 1000 for i in ok],
            "itl_ms": [x * 1000 for i in ok for x in res["itls"][i]],
            "tokens": sum(res["output_lens"][i] for i in ok),
            "prompt_tokens": statistics.fmean(res["input_lens"][i] for i in ok),
            "n": len(ok), "duration": end - start, "cpu_s": cpu.cpu_between(start, end, 1)}


def describe(r: dict, ttft: float, itl: float) -> dict:
    rate = r["tokens"] / r["duration"] if r["duration"] else float("nan")
    cores = r["cpu_s"] / r["duration"] if r["duration"] else float("nan")
    return {"n": r["n"], "prompt_tokens": r["prompt_tokens"],
            "ttft_err": statistics.median(r["ttft_ms"]) - ttft if r["ttft_ms"] else float("nan"),
            "itl_err": statistics.median(r["itl_ms"]) - itl if r["itl_ms"] else float("nan"),
            "p99_ttft": statistics.quantiles(r["ttft_ms"], n=100)[98] if len(r["ttft_ms"]) > 1 else float("nan"),
            "tok_s": rate, "cpu": cores * 100,
            "per_core": rate / cores if cores and cores > 0 else float("nan")}


# ---------------------------------------------------------------- the bench


def what_is_missing(args) -> str | None:
    if not args.vllm.exists():
        return (f"vLLM is not installed ({args.vllm} is missing): run .ci/install-engines, "
                "set GPUOPS_ENGINES_DIR, or pass --vllm PATH")
    if not (args.tokenizer / "tokenizer.json").exists() and not (args.tokenizer / "tokenizer_config.json").exists():
        return f"no offline tokenizer at {args.tokenizer}: run .ci/install-engines or pass --tokenizer DIR"
    return None


def vllm_version(vllm: Path) -> str:
    python = vllm.parent / "python"
    try:
        done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
                              capture_output=True, text=True, timeout=60)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


ROW = "{:>5}  {:<8} {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>6} {:>14}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels against the truth server")
    parser.add_argument("--run-time", type=int, default=8, help="seconds of gpuops load per level")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="input tokens per request")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="the truth server's TTFT")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="the truth server's inter-token delay")
    parser.add_argument("--capacity-users", type=int, default=32)
    parser.add_argument("--skip-capacity", action="store_true", help="no zero-delay capacity part")
    parser.add_argument("--vllm", type=Path, default=ENGINES_DIR / "vllm" / "bin" / "vllm",
                        help="the vllm CLI of a venv with vLLM (default: the engines folder's)")
    parser.add_argument("--tokenizer", type=Path, default=ENGINES_DIR / "models" / "tiny-llama",
                        help="a local tokenizer folder for vllm bench serve (default: the engines folder's tiny Llama)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    missing = what_is_missing(args)
    if missing:
        print(f"skipped: {missing}")
        return
    load = os.getloadavg()
    print(f"gpuops {importlib.metadata.version('gpuops')}, vLLM {vllm_version(args.vllm)} ({args.vllm}); "
          f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"demo server on the same machine")
    print(f"{args.run_time} s of gpuops load per level, vLLM given as many requests as gpuops completed; "
          f"{args.prompt_tokens} prompt tokens asked, {args.max_tokens} output tokens")
    header = ROW.format("users", "client", "requests", "prompt", "TTFT err", "ITL err", "TTFT p99", "tok/s",
                        "CPU %", "tok/s per core")
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        demo, url = start_demo(args.ttft_ms, args.itl_ms)
        try:
            print(f"\n1. accuracy: demo TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms; median measured minus "
                  "truth (ms); capacity over each client's load window")
            print(header)
            for n in levels:
                g = describe(run_gpuops(url, n, args, work), args.ttft_ms, args.itl_ms)
                print(row(n, "gpuops", g), flush=True)
                v = describe(run_vllm(url, n, g["n"], args, work), args.ttft_ms, args.itl_ms)
                print(row(n, "vllm", v), flush=True)
                print(f"{n:>5}  gpuops - vllm: TTFT err {g['ttft_err'] - v['ttft_err']:+.2f} ms, "
                      f"ITL err {g['itl_err'] - v['itl_err']:+.2f} ms; "
                      f"tok/s per core ratio gpuops / vllm {g['per_core'] / v['per_core']:.2f}", flush=True)
        finally:
            stop(demo)

        if not args.skip_capacity:
            demo, url = start_demo(0.0, 0.0)
            try:
                n = args.capacity_users
                print(f"\n2. capacity: demo with no delays, {n} concurrent streams")
                print(header)
                g = describe(run_gpuops(url, n, args, work), 0.0, 0.0)
                print(row(n, "gpuops", g), flush=True)
                v = describe(run_vllm(url, n, g["n"], args, work), 0.0, 0.0)
                print(row(n, "vllm", v), flush=True)
                print(f"ratio gpuops / vllm: tokens/s {g['tok_s'] / v['tok_s']:.2f}, "
                      f"tokens/s per core {g['per_core'] / v['per_core']:.2f}")
            finally:
                stop(demo)
    print(f"\nwhole bench: {time.monotonic() - t_start:.0f} s")


def row(n: int, name: str, d: dict) -> str:
    def f(x: float, spec: str) -> str:
        return "-" if math.isnan(x) else format(x, spec)

    return ROW.format(n, name, d["n"], f(d["prompt_tokens"], ".0f"), f(d["ttft_err"], "+.2f"),
                      f(d["itl_err"], "+.2f"), f(d["p99_ttft"], ".1f"), f(d["tok_s"], ".0f"), f(d["cpu"], ".0f"),
                      f(d["per_core"], ".0f"))


if __name__ == "__main__":
    main()
