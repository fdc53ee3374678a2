"""gpuops against llama.cpp's real server (xllamacpp, gemma3 270M Q4_K_M), only through the CLI.

One server is started per module (a few seconds): ready only once /health stops answering 503
"Loading model", reuse, status, smoke, profile (no endpoint: what to use instead), load-test,
stop with requests in flight; then failed starts (a bad flag, a model file that does not exist)
and a server that dies after it was ready.
"""

from __future__ import annotations

import http.client
import json
import os
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
)

from support.fixtures import Project, free_port, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(180)]

RECIPE = """\
# AGENTS.local.md — llama.cpp's server on CPU

## Server

```bash
# gemma3 270M, 4-bit; two slots so a load test and a smoke can overlap
{llama_server} -m {gguf} --host 127.0.0.1 --port {port} -c 2048 -np 2 --metrics
```

## Server: bad-flag

```bash
{llama_server} -m {gguf} --host 127.0.0.1 --port {port2} --no-such-flag 3
```

## Server: missing-model

```bash
{llama_server} -m {root}/models/missing.gguf --host 127.0.0.1 --port {port2}
```

## Load test

```bash
--users 2 --run-time 5s --prompt-tokens 8 --max-tokens 2
```
"""


class LlamaCpp:
    def __init__(self, project: Project, port: int, port2: int):
        self.project, self.port, self.port2 = project, port, port2
        self.url = f"http://127.0.0.1:{port}"
        self.started = None

    def record(self, name: str = "server") -> dict:
        return self.project.record(name)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    paths = engine_paths("LLAMA_SERVER", "GGUF_MODEL")
    root = tmp_path_factory.mktemp("llamacpp-project")
    port, port2 = free_port(), free_port()
    project = Project(root)
    project.write_agents(RECIPE.format(root=root, llama_server=paths["LLAMA_SERVER"], gguf=paths["GGUF_MODEL"],
                                       port=port, port2=port2))
    server = LlamaCpp(project, port, port2)
    server.started = start_watched(project, server.url, "--no-follow")
    yield server
    project.gpuops("stop-server", "--all", timeout=60)
    kill_leftovers(project)


@pytest.fixture
def running(llama):
    if not healthy(llama.url):
        pytest.fail("the module's llama.cpp server is not ready any more (see the earlier failures)")
    return llama


# ---------------------------------------------------------------- start


def test_start_is_not_ready_while_health_says_loading_model(llama):
    s = llama.started
    assert s.result.code == 0, s.result.text
    out = s.result.out
    assert "'server' is ready" in out, out
    ready = s.time_of("'server' is ready")
    loading = [t for t, code, body in s.health if code == 503 and "Loading model" in body]
    # the server listened before its model was in (503 "Loading model"), and gpuops said ready only after
    assert loading, s.health[:10]
    assert max(loading) < ready, (max(loading), ready)
    assert s.not_ok_after(ready) == []
    assert s.time_of("model loaded") is not None and s.time_of("model loaded") <= ready, out
    assert requests.get(f"{llama.url}/health", timeout=5).json() == {"status": "ok"}


def test_start_smoke_shows_the_models_text(llama):
    smoke = banner_smoke(llama.started.result.out)
    assert smoke.answer.strip() and smoke.tokens >= 1, llama.started.result.out


def test_second_start_reuses_the_running_server(running):
    pid = running.record()["pid"]
    r = running.project.gpuops("start-server", "--no-follow", "--no-smoke", timeout=60)
    assert r.code == 0, r.text
    assert "already running" in r.text, r.text
    assert running.record()["pid"] == pid


def test_status_shows_it_ready_as_llama_cpp(running):
    row = status_of(running.project)
    assert row["state"] == "ready", row
    assert row["port"] == running.port and row["engine"] == "llama.cpp", row


# ---------------------------------------------------------------- probes


def test_smoke_gets_real_text_and_counts_tokens_from_usage(running):
    r = running.project.gpuops("smoke", "--prompt", "The capital of France is", "--max-tokens", "8", timeout=60)
    assert r.code == 0, r.text
    smoke = smoke_report(r.out)
    assert smoke.answer and smoke.answer != "(empty)", r.out
    assert smoke.from_usage and 1 <= smoke.tokens <= 8, r.out


def test_profile_says_there_is_no_profiler_endpoint_and_what_to_use(running):
    r = running.project.gpuops("profile", timeout=60)
    assert r.code == 2, r.text
    assert "llama-server has no profiler endpoint" in r.err, r.err
    assert "nsys profile" in r.err and "perf record" in r.err, r.err
    assert not (running.project.run_dir / "profiles").exists() or not any((running.project.run_dir / "profiles").iterdir())


@pytest.fixture(scope="module")
def load_test(llama):
    """One short load test (flags from the '## Load test' block: 2 users, 5 s, 2 tokens: ~40 requests)."""
    if not healthy(llama.url):
        pytest.fail("the module's llama.cpp server is not ready any more (see the earlier failures)")
    r = llama.project.gpuops("load-test", timeout=120)
    assert r.code == 0, r.text
    (folder,) = list((llama.project.run_dir / "load_tests").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line.strip()]
    return summary, records


def test_short_load_test_reports_plausible_latencies_and_usage_token_counts(load_test):
    s, records = load_test
    assert s["completed"] >= 1, s  # how many depends on the machine; that they carry usage does not
    assert 0 < s["median_ttft_ms"] < 20_000, s
    assert 0 < s["median_tpot_ms"] < 5_000, s
    ok = [rec for rec in records if rec["ok"]]
    assert all(rec["tokens_from"] == "usage" for rec in ok), ok[:2]
    assert {rec["output_tokens"] for rec in ok} == {2}  # llama.cpp gets ignore_eos: exactly --max-tokens
    assert all(rec["prompt_tokens"] >= 5 for rec in ok)  # ~8 words, counted by the server's tokenizer
    # llama.cpp closes the connection after each streamed answer (next test); the client sends a request
    # that met such a close once more on a fresh connection, so none is lost.
    assert s["failure_reasons"] == {}, s["failure_reasons"]


def test_llama_cpp_closes_the_connection_after_every_streamed_response(running):
    """An engine fact the load-test client has to live with (it resends a request that met the close):
    the Keep-Alive header promises 100 requests, yet a streamed answer ends the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    body = json.dumps({"prompt": "Hi", "max_tokens": 2, "stream": True})
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 200 and b"[DONE]" in first.read()
        assert "max=" in (first.getheader("Keep-Alive") or "")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.request("GET", "/health")
            conn.getresponse()
    finally:
        conn.close()


# ---------------------------------------------------------------- stop


def test_stop_with_requests_in_flight_leaves_nothing_and_frees_the_port(running):
    rec = running.record()
    first_chunk, ended = threading.Event(), threading.Event()

    def stream():
        body = {"prompt": "Tell me a long story.", "max_tokens": 400, "stream": True, "ignore_eos": True}
        try:
            with requests.post(f"{running.url}/v1/completions", json=body, stream=True, timeout=60) as resp:
                for _ in resp.iter_lines():
                    first_chunk.set()
        except requests.RequestException:
            pass
        finally:
            ended.set()

    threading.Thread(target=stream, daemon=True).start()
    assert first_chunk.wait(60)
    r = running.project.gpuops("stop-server", timeout=60)
    assert r.code == 0, r.text
    assert names(server_procs(rec)) == []
    assert port_free(running.port)
    assert ended.wait(10)
    assert status_of(running.project)["state"] == "stopped"


# ---------------------------------------------------------------- failures


def test_missing_model_file_fails_with_llama_cpps_own_error_named(llama):
    r = llama.project.gpuops("start-server", "--server", "missing-model", "--no-follow", "--no-smoke", timeout=60)
    assert r.code == 3, r.text
    assert "exited during start-up (exit code 1)" in r.err, r.err
    cause = r.err.split("root cause:")[1].splitlines()[0]
    assert "missing.gguf" in cause and "No such file or directory" in cause, r.err
    assert port_free(llama.port2)


def test_bad_flag_fails_with_the_servers_own_message(llama):
    r = llama.project.gpuops("start-server", "--server", "bad-flag", "--no-follow", "--no-smoke", timeout=60)
    assert r.code == 3, r.text
    assert "exited during start-up (exit code 1)" in r.err, r.err
    assert "error: invalid argument: --no-such-flag" in r.err, r.err


def test_bad_flag_is_named_as_the_root_cause(llama):
    r = llama.project.gpuops("start-server", "--server", "bad-flag", "--no-follow", "--no-smoke", timeout=60)
    assert r.code == 3, r.text
    assert "root cause:" in r.err, r.err
    assert "--no-such-flag" in r.err.split("root cause:")[1].splitlines()[0], r.err


def test_server_killed_after_ready_is_reported_exited_and_leaves_nothing(llama):
    p = llama.project
    r = p.gpuops("start-server", "--no-follow", "--no-smoke", timeout=90)
    assert r.code == 0, r.text
    rec = p.record()
    os.kill(rec["pid"], signal.SIGKILL)
    assert wait_for(lambda: not psutil.pid_exists(rec["pid"]) or
                    psutil.Process(rec["pid"]).status() == psutil.STATUS_ZOMBIE, timeout=10)
    assert status_of(p)["state"] == "exited"
    r = p.gpuops("smoke", timeout=30)
    assert r.code == 6, r.text
    assert "has exited" in r.text, r.text
    assert names(server_procs(rec)) == []
    assert port_free(llama.port)
    r = p.gpuops("start-server", "--no-follow", "--no-smoke", timeout=90)  # and it starts again on that port
    assert r.code == 0, r.text
