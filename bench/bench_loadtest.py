"""Load-test accuracy and client capacity, side by side in one run: gpuops' Locust client against a
minimal asyncio + aiohttp client written the way `vllm bench serve` measures.

    .venv/bin/python bench/bench_loadtest.py [--levels 1,8,32] [--run-time 8] [--max-tokens 64] [--skip-capacity]

1. accuracy: the demo server streams with a known TTFT (100 ms) and inter-token delay (20 ms). At
   each concurrency level, each client (gpuops with 1 load process, gpuops with --workers 2, the
   reference) runs a closed loop for --run-time seconds, one after the other; printed: the median
   TTFT and ITL each client measured minus the configured truth (ms), the client's CPU use, and
   gpuops' errors minus the reference's (the server's own delay is in both; the rest is the client).
2. capacity: a second demo server streams with no delay (ttft 0, itl 0), so tokens come as fast as
   the server can send them; at --capacity-users concurrent streams each client reports the output
   tokens/s it received and its CPU (% of one core). tokens/s per core (= tokens/s / CPU share) is
   what one load-generating process sustains before saturating, even when the server, not the
   client, is the bottleneck on a small machine.

Both clients get the same requests (completions, --prompt-tokens words, --max-tokens tokens, usage
asked for) and the same start: each of their users opens its connection with one GET /v1/models
before its first measured request (what gpuops' users do), and both count the duration from the
first request sent to the last answer finished. Error numbers include the demo server's own
scheduling delay, which is the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TRUTH_TTFT_MS, TRUTH_ITL_MS = 100.0, 20.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the reference client (own process)


async def _reference_request(session, url: str, payload: dict) -> dict:
    """One streamed request, timed as vLLM's benchmark backend does (perf_counter after parsing a chunk)."""
    st = time.perf_counter()
    most_recent = st
    ttft = 0.0
    itl: list[float] = []
    out_tokens = None
    ok = False
    try:
        async with session.post(url, json=payload) as response:
            if response.status == 200:
                async for chunk_bytes in response.content:
                    chunk_bytes = chunk_bytes.strip()
                    if not chunk_bytes:
                        continue
                    chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                    if chunk == "[DONE]":
                        continue
                    data = json.loads(chunk)
                    if data.get("choices"):
                        timestamp = time.perf_counter()
                        if ttft == 0.0:
                            ttft = timestamp - st
                        else:
                            itl.append(timestamp - most_recent)
                        most_recent = timestamp
                    elif usage := data.get("usage"):
                        out_tokens = usage.get("completion_tokens")
                ok = True
    except Exception:  # noqa: BLE001 - a failed request is just counted as failed, as in vLLM
        ok = False
    return {"ok": ok, "ttft_ms": ttft * 1000, "itl_ms": [x * 1000 for x in itl], "output_tokens": out_tokens,
            "e2el_ms": (most_recent - st) * 1000, "start": st, "end": time.perf_counter()}


async def _reference(url: str, users: int, seconds: float, prompt_tokens: int, max_tokens: int) -> dict:
    import aiohttp
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(None)
    words = ("the river under green morning light " * (prompt_tokens // 6 + 1)).split()
    records: list[dict] = []
    deadline = time.perf_counter() + seconds
    seq = 0

    async def user(session):
        nonlocal seq
        # the same per-connection warm-up gpuops' users do: without it the reference's first request per
        # connection also pays the TCP connect and aiohttp's first-call costs, inflating its first TTFTs
        async with session.get(f"{url}/v1/models") as warm:
            await warm.read()
        while time.perf_counter() < deadline:
            seq += 1
            prompt = " ".join([f"ref-{seq}"] + words[: prompt_tokens - 1])
            payload = {"prompt": prompt, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}, "ignore_eos": True}
            records.append(await _reference_request(session, f"{url}/v1/completions", payload))

    cpu: list[float] = []

    async def sampler():
        while True:
            await asyncio.sleep(1.0)
            cpu.append(proc.cpu_percent(None))

    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    connector = aiohttp.TCPConnector(limit=users, keepalive_timeout=60, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(user(session) for _ in range(users)))
        sampling.cancel()
    # like gpuops' summary: first request sent to last answer finished (warm-up left out)
    duration = (max(r["end"] for r in records) - min(r["start"] for r in records)) if records else 0.0
    return {"records": records, "duration": duration, "cpu": cpu}


def reference_main(argv: list[str]) -> None:
    url, users, seconds, prompt_tokens, max_tokens, out = argv
    result = asyncio.run(_reference(url, int(users), float(seconds), int(prompt_tokens), int(max_tokens)))
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the bench


def start_demo(ttft: float, itl: float) -> tuple[subprocess.Popen, str]:
    import requests

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpuops.demo", "--port", str(port), "--load-seconds", "0",
                             "--ttft-ms", str(ttft), "--itl-ms", str(itl)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError("demo server did not start")


def run_gpuops(url: str, users: int, workers: int, args, work: Path) -> dict:
    out = work / f"gpuops-{users}-{workers}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "gpuops", "load-test", "--url", url, "--users", str(users), "--run-time",
           f"{args.run_time}s", "--max-tokens", str(args.max_tokens), "--prompt-tokens", str(args.prompt_tokens),
           "--workers", str(workers), "--out", str(out)]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=args.run_time + 120)
    if done.returncode != 0:
        raise RuntimeError(f"gpuops load-test failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    from gpuops.probes.loadtest import metrics

    records = [r for r in metrics.read_records(out / "records.jsonl") if r["ok"]]
    summary = json.loads((out / "summary.json").read_text())
    workers_cpu = summary["client"]["workers"]
    return {"records": records, "duration": summary["duration"],
            "cpu": sum(w["cpu_mean"] for w in workers_cpu.values()),
            "cpu_max_process": max((w["cpu_mean"] for w in workers_cpu.values()), default=0.0)}


def run_reference(url: str, users: int, args, work: Path) -> dict:
    out = work / f"ref-{users}-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, __file__, "--reference-client", url, str(users), str(args.run_time),
                    str(args.prompt_tokens), str(args.max_tokens), str(out)], check=True, timeout=args.run_time + 120)
    result = json.loads(out.read_text())
    busy = result["cpu"][1:] or result["cpu"]  # the first second includes start-up
    return {"records": [r for r in result["records"] if r["ok"]], "duration": result["duration"],
            "cpu": statistics.fmean(busy) if busy else 0.0}


def describe(result: dict) -> dict:
    recs = result["records"]
    ttft = [r["ttft_ms"] for r in recs]
    itl = [x for r in recs for x in r["itl_ms"]]
    tokens = sum(r["output_tokens"] or 0 for r in recs)
    rate = tokens / result["duration"] if result["duration"] else 0.0
    return {"n": len(recs), "ttft_err": statistics.median(ttft) - TRUTH_TTFT_MS if ttft else float("nan"),
            "itl_err": statistics.median(itl) - TRUTH_ITL_MS if itl else float("nan"),
            "p99_ttft": statistics.quantiles(ttft, n=100)[98] if len(ttft) > 1 else float("nan"),
            "tok_s": rate, "cpu": result["cpu"],
            "tok_s_per_core": rate / (result["cpu"] / 100.0) if result["cpu"] > 0 else float("nan")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--reference-client":
        reference_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels for the accuracy part")
    parser.add_argument("--run-time", type=int, default=8, help="seconds per client and level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--capacity-users", type=int, default=32)
    parser.add_argument("--skip-capacity", action="store_true", help="accuracy part only")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    clients = (("gpuops", lambda url, n, w: run_gpuops(url, n, 1, args, w)),
               ("gpuops --workers 2", lambda url, n, w: run_gpuops(url, n, 2, args, w)),
               ("reference (aiohttp)", lambda url, n, w: run_reference(url, n, args, w)))
    print(f"machine: {os.cpu_count()} cores; demo server on the same machine; "
          f"{args.run_time} s per run, {args.prompt_tokens} prompt words, {args.max_tokens} output tokens")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo, url = start_demo(TRUTH_TTFT_MS, TRUTH_ITL_MS)
        try:
            print(f"\n1. accuracy: demo TTFT {TRUTH_TTFT_MS:g} ms, ITL {TRUTH_ITL_MS:g} ms; "
                  "median measured minus truth (ms)")
            print(f"{'users':>5}  {'client':<20} {'requests':>8} {'TTFT err':>9} {'ITL err':>8} {'TTFT p99':>9} "
                  f"{'CPU %':>6}")
            for n in levels:
                level = {}
                for name, run in clients:
                    d = level[name] = describe(run(url, n, work))
                    print(f"{n:>5}  {name:<20} {d['n']:>8} {d['ttft_err']:>+9.2f} {d['itl_err']:>+8.2f} "
                          f"{d['p99_ttft']:>9.1f} {d['cpu']:>6.0f}", flush=True)
                # the server's own delay is in both; the difference is what the client adds (or saves)
                ref = level["reference (aiohttp)"]
                for name in ("gpuops", "gpuops --workers 2"):
                    print(f"{n:>5}  {name + ' - reference':<29} {level[name]['ttft_err'] - ref['ttft_err']:>+9.2f} "
                          f"{level[name]['itl_err'] - ref['itl_err']:>+8.2f}", flush=True)
        finally:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait()

        if args.skip_capacity:
            return
        demo, url = start_demo(0.0, 0.0)
        try:
            n = args.capacity_users
            print(f"\n2. capacity: demo with no delays, {n} concurrent streams")
            print(f"{'client':<20} {'out tok/s':>10} {'CPU %':>6} {'tok/s per core':>15}")
            caps = {}
            for name, run in clients:
                d = describe(run(url, n, work))
                caps[name] = d
                print(f"{name:<20} {d['tok_s']:>10.0f} {d['cpu']:>6.0f} {d['tok_s_per_core']:>15.0f}", flush=True)
            ref = caps["reference (aiohttp)"]
            for name in ("gpuops", "gpuops --workers 2"):
                print(f"ratio {name} / reference: tokens/s {caps[name]['tok_s'] / ref['tok_s']:.2f}, "
                      f"tokens/s per core {caps[name]['tok_s_per_core'] / ref['tok_s_per_core']:.2f}")
        finally:
            os.killpg(demo.pid, signal.SIGTERM)
            demo.wait()


if __name__ == "__main__":
    main()
