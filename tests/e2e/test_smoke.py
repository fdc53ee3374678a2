"""inv smoke: presets, request shapes, and real requests to real servers (the protocol's parsing is
tested in tests/unit/test_openai.py, the choice of server in tests/unit/test_target.py).

The demo server (python -m gpuops.demo) is the real OpenAI-compatible server; a raw socket that accepts
and never answers is the hung server; small http.server servers play ComfyUI and broken servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuops.errors import RequestFailed, UsageError
from gpuops.probes import smoke
from gpuops.probes.smoke import SmokeResult, resolve_preset, run_smoke
from gpuops.rundir import RunDir
from gpuops.server.logs import add_log_tail
from gpuops.settings import DEFAULTS
from support.fixtures import free_port, gpuops, repo_pythonpath, save_record, wait_for
from support.scripted import drain, send

PRESETS = DEFAULTS["smoke_presets"]
DEMO_MODEL = "acme/tiny-chat-1b"
BLUE = PRESETS["blue_sky"]["prompt"]
HELLO = PRESETS["hello"]["prompt"]

# the demo servers of this module (the `demo` fixture): quick, and answering as DEMO_MODEL
pytestmark = pytest.mark.demo_options(load_seconds=0.1, ttft_ms=20, itl_ms=2, profile_delay=0.5,
                                      model=DEMO_MODEL)


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "name,prompt,max_tokens,expected",
    [
        (None, None, None, (BLUE, PRESETS["blue_sky"]["max_tokens"])),  # nothing given: blue_sky
        ("hello", None, None, (HELLO, 16)),
        ("hello", None, 5, (HELLO, 5)),  # --max-tokens beats the preset
        ("hello", "Count to three.", None, ("Count to three.", 16)),  # --prompt beats the preset's prompt
        (None, "Count to three.", None, ("Count to three.", smoke.DEFAULT_MAX_TOKENS)),
        (None, "Count to three.", "7", ("Count to three.", 7)),  # flags may arrive as strings
    ],
)
def test_resolve_preset_flags_beat_preset_beats_defaults(name, prompt, max_tokens, expected):
    assert resolve_preset(PRESETS, name, prompt, max_tokens) == expected


def test_without_blue_sky_the_first_preset_is_the_default():
    presets = {"mine": {"prompt": "Ping?", "max_tokens": 3}, "other": {"prompt": "x"}}
    assert resolve_preset(presets, None, None, None) == ("Ping?", 3)


@pytest.mark.parametrize(
    "presets,name,prompt,max_tokens,words",
    [
        (PRESETS, "nope", None, None, ["unknown smoke preset 'nope'", "blue_sky, hello"]),
        ({}, None, None, None, ["no smoke presets", "--prompt"]),
        ({"p": {"max_tokens": 3}}, "p", None, None, ["'p' has no prompt"]),
        ({"p": {"prompt": "x", "max_token": 3}}, "p", None, None, ["unknown key(s) max_token"]),
        ({"p": "just text"}, "p", None, None, ["must be a mapping"]),
        (PRESETS, None, None, 0, ["--max-tokens must be a whole number of at least 1, not 0"]),
        (PRESETS, None, None, "many", ["--max-tokens must be", "'many'"]),
        (PRESETS, None, None, 2.5, ["--max-tokens must be", "at least 1"]),
        ({"p": {"prompt": "x", "max_tokens": 0}}, "p", None, None, ["smoke preset 'p': max_tokens must be", "0"]),
        (PRESETS, None, "   ", None, ["prompt is empty"]),
    ],
)
def test_resolve_preset_rejects_bad_input_with_clear_message(presets, name, prompt, max_tokens, words):
    with pytest.raises(UsageError) as info:
        resolve_preset(presets, name, prompt, max_tokens)
    for word in words:
        assert word in info.value.render()
    assert info.value.exit_code == 2


def test_agents_presets_are_laid_over_config_presets():
    merged = smoke.merge_presets(PRESETS, {"hello": {"prompt": "Hi!", "max_tokens": 4}, "code": {"prompt": "def"}})
    assert merged["hello"] == {"prompt": "Hi!", "max_tokens": 4}
    assert merged["blue_sky"] == PRESETS["blue_sky"] and merged["code"] == {"prompt": "def"}
    assert PRESETS["hello"]["prompt"] == HELLO  # the defaults are not modified


# ---------------------------------------------------------------- request shapes


@pytest.mark.parametrize(
    "engine,chat,stream,model,path,keys,absent",
    [
        ("vllm", False, True, "m", "/v1/completions", {"prompt", "model", "stream_options"}, {"messages"}),
        ("sglang", True, True, "m", "/v1/chat/completions", {"messages", "stream_options"}, {"prompt"}),
        ("llama.cpp", False, False, None, "/v1/completions", {"prompt"}, {"stream_options", "model"}),
        ("mlx_lm", True, False, "m", "/v1/chat/completions", {"messages", "model"}, {"stream_options"}),
        ("demo", False, True, None, "/v1/completions", {"prompt"}, {"model"}),
        ("openai", False, True, None, "/v1/completions", {"prompt"}, set()),
        ("uvicorn", True, True, None, "/v1/chat/completions", {"messages"}, set()),
    ],
)
def test_request_shape_per_engine(engine, chat, stream, model, path, keys, absent):
    req = smoke.request_for(engine, prompt="Why?", max_tokens=8, stream=stream, chat=chat, model=model)
    assert (req.method, req.path, req.stream) == ("POST", path, stream)
    assert keys <= set(req.body) and not (absent & set(req.body))
    assert req.body["max_tokens"] == 8 and req.body["stream"] is stream and req.body["temperature"] == 0
    if chat:
        assert req.body["messages"] == [{"role": "user", "content": "Why?"}]


def test_comfyui_gets_system_stats_not_a_completion():
    req = smoke.request_for("comfyui", prompt="Why?", max_tokens=8)
    assert (req.method, req.path, req.body) == ("GET", "/system_stats", None)


def test_unknown_engine_is_a_usage_error():
    with pytest.raises(UsageError, match="no smoke request known for engine 'tgi'"):
        smoke.request_for("tgi", prompt="x", max_tokens=1)


def sse(obj) -> str:
    return "data: " + json.dumps(obj)


# ---------------------------------------------------------------- what to try, what it says


@pytest.mark.parametrize(
    "status,message,chat,words",
    [
        (404, "The model `llama` does not exist.", False, "--model"),
        (404, "Not Found", True, "without --chat"),
        (404, "Not Found", False, "--chat"),
        (401, "Unauthorized", False, "--api-key"),
        (401, "Unauthorized", False, "OPENAI_API_KEY"),
        (400, "Cannot use chat template functions because tokenizer.chat_template is not set", True, "drop --chat"),
        (400, "max_tokens is too large", False, "smaller --max-tokens"),
        (503, "Loading model", False, "still loading"),
        (500, "boom", False, "its log says why"),
    ],
)
def test_http_error_hint_by_status_and_message(status, message, chat, words):
    req = smoke.request_for("vllm", prompt="x", max_tokens=1, chat=chat)
    assert words in smoke.http_error_hint(status, message, req)


def test_http_error_hint_points_below_only_when_the_log_is_shown():
    req = smoke.request_for("vllm", prompt="x", max_tokens=1)
    assert "below" not in smoke.http_error_hint(500, "boom", req)
    assert "its log below shows why" in smoke.http_error_hint(500, "boom", req, log_shown=True)


@pytest.mark.parametrize(
    "fields,stats",
    [
        (dict(output_tokens=64, ttft_s=0.12, total_s=1.38, tokens_from="usage"),
         "64 tokens in 1.38 s (TTFT 0.120 s, 50.0 tok/s)"),
        (dict(output_tokens=3, ttft_s=0.5, total_s=0.7, tokens_from="chunks"), "~3 tokens in 0.70 s (TTFT 0.500 s, 10.0 tok/s)"),
        (dict(output_tokens=1, ttft_s=0.5, total_s=0.5, tokens_from="usage"), "1 token in 0.50 s (TTFT 0.500 s)"),
        (dict(output_tokens=None, ttft_s=None, total_s=2.0, stream=False), "? tokens in 2.00 s (not streamed)"),
    ],
)
def test_result_stats_line(fields, stats):
    r = SmokeResult(text="x", model=None, endpoint="/v1/completions", **fields)
    assert r.stats() == stats


def test_summary_is_one_line_with_model_and_answer_excerpt():
    r = SmokeResult(text="The sky\nis blue because " + "air " * 40, output_tokens=64, ttft_s=0.1, total_s=1.0,
                    model="Qwen/Qwen3-8B", endpoint="/v1/completions", tokens_from="usage")
    line = r.summary()
    assert "\n" not in line and line.startswith("64 tokens in 1.00 s") and "from Qwen/Qwen3-8B" in line
    assert '"The sky is blue because air' in line and line.endswith('…"')


def test_comfyui_stats_describe_devices_and_queue():
    stats = {"system": {"os": "posix", "comfyui_version": "0.3.40", "pytorch_version": "2.7.0+cu126"},
             "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                          "vram_total": 25393692672, "vram_free": 23727108096}]}
    head, details = smoke.comfyui_stats(stats, {"queue_running": [[1]], "queue_pending": []})
    assert head == "ComfyUI 0.3.40 up (PyTorch 2.7.0+cu126), 1 device(s), queue 1 running / 0 pending"
    assert details == ["cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync: 22.1 of 23.6 GiB free",
                       "queue: 1 running, 0 pending"]


# ---------------------------------------------------------------- servers that fail


@pytest.fixture
def hung_server():
    """A socket that accepts connections (the kernel does, from the backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_smoke_against_dead_port_says_connection_refused():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RequestFailed) as info:
        run_smoke(url, "vllm", prompt="x", max_tokens=4, timeout=5)
    err = info.value
    assert err.exit_code == 7
    assert url in err.message and "connection refused" in err.message
    assert "inv status" in err.hint


def test_smoke_against_hung_server_times_out_on_time(hung_server):
    t0 = time.monotonic()
    with pytest.raises(RequestFailed) as info:
        run_smoke(hung_server, "vllm", prompt="x", max_tokens=4, timeout=1.0)
    assert time.monotonic() - t0 < 10  # bounded by --timeout (1 s), with generous slack
    assert "no answer within 1 s" in info.value.message and hung_server in info.value.message
    assert "hung" in info.value.hint


def test_smoke_names_the_error_the_server_returned(scripted):
    def respond(h):
        drain(h) if h.command == "POST" else None
        if h.path == "/v1/models":
            send(h, 200, json.dumps({"data": [{"id": "tiny"}]}).encode())
        else:
            send(h, 500, json.dumps({"object": "error", "message": "CUDA error: out of memory", "code": 500}).encode())

    url = scripted(respond)
    with pytest.raises(RequestFailed) as info:
        run_smoke(url, "vllm", prompt="x", max_tokens=4, timeout=5)
    assert "HTTP 500" in info.value.message and "CUDA error: out of memory" in info.value.message


def test_smoke_reports_malformed_stream(scripted):
    def respond(h):
        drain(h) if h.command == "POST" else None
        if h.path == "/v1/models":
            send(h, 404, b"{}")
        else:
            send(h, 200, b'data: {"choices": [{"text": "ok"}]}\n\ndata: {"choices": [{"te\n\n',
                 ctype="text/event-stream", length=False)

    with pytest.raises(RequestFailed) as info:
        run_smoke(scripted(respond), "openai", prompt="x", max_tokens=4, timeout=5)
    assert "malformed answer" in info.value.message and "not JSON" in info.value.message


def test_smoke_reports_stream_closed_before_the_end(scripted):
    def respond(h):
        drain(h) if h.command == "POST" else None
        if h.path == "/v1/models":
            send(h, 404, b"{}")
        else:
            send(h, 200, b'data: {"choices": [{"text": "The sky"}]}\n\n', ctype="text/event-stream", length=False)

    with pytest.raises(RequestFailed, match="without \\[DONE\\]"):
        run_smoke(scripted(respond), "openai", prompt="x", max_tokens=4, timeout=5)


def test_smoke_sends_the_model_from_v1_models_and_counts_chunks_without_usage(scripted):
    seen = {}

    def respond(h):
        if h.path == "/v1/models":
            send(h, 200, json.dumps({"object": "list", "data": [{"id": "org/tiny-1B", "object": "model"}]}).encode())
            return
        seen.update(drain(h))
        chunks = [sse({"model": "org/tiny-1B", "choices": [{"text": w}]}) for w in ("Blue", " light", " scatters")]
        body = "\n\n".join([*chunks, sse({"choices": [{"text": "", "finish_reason": "length"}]}), "data: [DONE]", ""])
        send(h, 200, body.encode(), ctype="text/event-stream")

    r = run_smoke(scripted(respond), "llama.cpp", prompt="Why?", max_tokens=3, timeout=5)
    assert seen["model"] == "org/tiny-1B" and seen["prompt"] == "Why?" and seen["max_tokens"] == 3
    assert (r.text, r.output_tokens, r.tokens_from, r.model) == ("Blue light scatters", 3, "chunks", "org/tiny-1B")
    assert r.ttft_s is not None and 0 <= r.ttft_s <= r.total_s


def test_smoke_of_comfyui_reads_system_stats_and_queue(scripted):
    def respond(h):
        if h.path == "/system_stats":
            send(h, 200, json.dumps({"system": {"comfyui_version": "0.3.40", "pytorch_version": "2.7.0"},
                                     "devices": [{"name": "cuda:0 NVIDIA L4", "vram_total": 2**34,
                                                  "vram_free": 2**33}]}).encode())
        elif h.path == "/queue":
            send(h, 200, json.dumps({"queue_running": [], "queue_pending": [[1], [2]]}).encode())
        else:
            send(h, 404, b"{}")

    r = run_smoke(scripted(respond), "comfyui", prompt="ignored", max_tokens=1, timeout=5)
    assert r.endpoint == "/system_stats" and r.output_tokens is None
    assert "ComfyUI 0.3.40" in r.summary() and "0 running / 2 pending" in r.summary()
    assert "cuda:0 NVIDIA L4: 8.0 of 16.0 GiB free" in r.details


def test_smoke_of_a_server_that_is_not_comfyui_fails_clearly(scripted):
    url = scripted(lambda h: send(h, 404, b"not here", ctype="text/plain"))
    with pytest.raises(RequestFailed, match="HTTP 404"):
        run_smoke(url, "comfyui", prompt="x", max_tokens=1, timeout=5)


def not_openai(h):
    drain(h) if h.command == "POST" else None
    send(h, 200 if h.command == "POST" else 404, b"<html>a proxy login page</html>", ctype="text/html")


@pytest.mark.parametrize("stream", [True, False])
def test_malformed_answer_suggests_no_stream_only_when_streaming(scripted, stream):
    with pytest.raises(RequestFailed) as info:
        run_smoke(scripted(not_openai), "openai", prompt="x", max_tokens=4, stream=stream, timeout=5)
    assert "malformed answer" in info.value.message
    assert ("--no-stream" in info.value.hint) is stream  # with --no-stream given, it is no advice


@pytest.mark.parametrize("log_shown", [False, True])
def test_error_in_the_stream_points_at_the_log_below_only_when_shown(scripted, log_shown):
    def respond(h):
        drain(h) if h.command == "POST" else None
        if h.path == "/v1/models":
            send(h, 404, b"{}")
        else:
            send(h, 200, (sse({"error": {"message": "CUDA error: an illegal memory access", "code": 500}})
                          + "\n\n").encode(), ctype="text/event-stream", length=False)

    with pytest.raises(RequestFailed) as info:
        run_smoke(scripted(respond), "vllm", prompt="x", max_tokens=4, timeout=5, log_shown=log_shown)
    assert "reported an error while answering: CUDA error: an illegal memory access" in info.value.message
    assert ("its log below" in info.value.hint) is log_shown


def test_log_tail_and_likely_cause_are_added_to_the_error(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("INFO starting\n" + "".join(f"line {i}\n" for i in range(30))
                   + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    err = add_log_tail(RequestFailed("smoke test failed"), log, n=5)
    text = err.render()
    assert "likely cause: CUDA out of memory" in text
    assert f"last 5 lines of {log}:" in text and "line 29" in text and "line 25" not in text
    assert add_log_tail(RequestFailed("x"), tmp_path / "missing.log").details == [
        f"(the server log {tmp_path / 'missing.log'} is empty or missing)"]


# ---------------------------------------------------------------- the task, as users run it


HUNG_SERVER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print("INFO listening on", s.getsockname()[1], flush=True)
print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", flush=True)
time.sleep(120)
"""


@pytest.fixture
def hung_process(project):
    """A real process (with a log) that holds a listening socket and never answers."""
    log = project.root / "hung.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", HUNG_SERVER], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if "listening on" in x), None))
        yield proc, f"http://127.0.0.1:{line.split()[-1]}", log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_task_smoke_of_hung_server_exits_7_with_log_tail(project, hung_process):
    proc, url, log = hung_process
    save_record(project, proc, url, log)
    r = gpuops(project, "smoke", "--timeout", "1")
    assert r.code == 7, r.text
    assert "smoke test failed" in r.err and url in r.err and "no answer within 1 s" in r.err
    assert f"last 2 lines of {log}" in r.err and "likely cause: CUDA out of memory" in r.err
    assert "Traceback" not in r.text


def test_task_smoke_of_dead_url_exits_7_without_traceback(project):
    url = f"http://127.0.0.1:{free_port()}"
    r = gpuops(project, "smoke", "--url", url, "--timeout", "5")
    assert r.code == 7, r.text
    assert "connection refused" in r.err and url in r.err and "Traceback" not in r.text


def test_task_smoke_of_crashed_server_says_it_exited_and_shows_its_log(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        d.kill()
    r = gpuops(project, "smoke")
    assert r.code == 6, r.text
    assert f"server 'server' (pid {d.proc.pid}) has exited" in r.err and "no running server" not in r.err
    assert f"lines of {d.log}:" in r.err and "Application startup complete." in r.err  # its log's last lines
    assert "inv start-server" in r.err and "Traceback" not in r.text


def test_task_smoke_names_the_crashed_server_asked_for(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log, name="big")
        d.kill()
    r = gpuops(project, "smoke", "--server", "big")
    assert r.code == 6, r.text
    assert f"server 'big' (pid {d.proc.pid}) has exited" in r.err and "inv start-server --server big" in r.err
    other = gpuops(project, "smoke", "--server", "small")  # never started: nothing to say but that
    assert other.code == 6 and "no running server 'small'" in other.err


def test_task_smoke_of_stopped_server_says_it_was_stopped(project, demo):
    from gpuops.server import state

    with demo() as d:
        rec = save_record(project, d.proc, d.url, d.log)
    rec.stopped_at = time.time()  # as `inv stop-server` leaves the record
    state.save(RunDir(project.run_dir), rec)
    r = gpuops(project, "smoke")
    assert r.code == 6, r.text
    assert "server 'server' is not running: it was stopped at " in r.err and "lines of" not in r.err


def test_task_smoke_url_of_crashed_server_shows_its_log(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        d.kill()
    r = gpuops(project, "smoke", "--url", d.url + "/v1", "--timeout", "5")
    assert r.code == 7, r.text
    assert "connection refused" in r.err
    assert f"server 'server' (pid {d.proc.pid}), which gpuops started at this URL" in r.err and "has exited" in r.err
    assert f"lines of {d.log}:" in r.err


def test_task_smoke_without_a_running_server_exits_6(project):
    r = gpuops(project, "smoke")
    assert r.code == 6, r.text
    assert "no running server" in r.err and "--url" in r.err


@pytest.mark.parametrize(
    "args,words",
    [
        (["--preset", "nope"], "unknown smoke preset 'nope'"),
        (["--max-tokens", "lots"], "--max-tokens must be a whole number of at least 1, not 'lots'"),
        (["--url", "localhost:8000"], "not a server URL"),
        (["--url", "http://127.0.0.1:1", "--engine", "tgi"], "no smoke request known for engine 'tgi'"),
        (["--url", "http://127.0.0.1:1", "--timeout", "soon"], "--timeout must be a number above 0, not 'soon'"),
        (["--url", "http://127.0.0.1:1", "--timeout", "0"], "--timeout must be a number above 0"),
    ],
)
def test_task_smoke_bad_flags_exit_2_before_any_request(project, args, words):
    r = gpuops(project, "smoke", *args)
    assert r.code == 2, r.text
    assert words in r.err and "Traceback" not in r.text


# ---------------------------------------------------------------- against the real demo


def test_smoke_reports_ttft_from_stream(demo):
    with demo(ttft_ms=200, itl_ms=5) as d:
        pieces: list[str] = []
        r = run_smoke(d.url, "demo", prompt="Why is the sky blue?", max_tokens=6, timeout=30, on_text=pieces.append)
    assert r.ttft_s >= 0.2  # the demo waits 200 ms before the first token; our clock starts before sending
    assert r.ttft_s < r.total_s < 20
    assert (r.output_tokens, r.tokens_from, r.finish_reason) == (6, "usage", "length")
    assert len(pieces) == 6 and "".join(pieces) == r.text and r.text.strip()
    assert (r.model, r.endpoint, r.url, r.stream) == (DEMO_MODEL, "/v1/completions", d.url, True)
    assert r.summary().startswith("6 tokens in ") and f"from {DEMO_MODEL}" in r.summary()


def test_smoke_chat_without_stream_gets_the_whole_answer(demo):
    d = demo()
    r = run_smoke(d.url, "demo", prompt="Say hi.", max_tokens=5, stream=False, chat=True, timeout=30)
    assert (r.endpoint, r.stream, r.ttft_s, r.output_tokens, r.tokens_from) == (
        "/v1/chat/completions", False, None, 5, "usage")
    assert r.text.strip() and "not streamed" in r.summary()


def test_smoke_explicit_model_is_sent_as_given(demo):
    d = demo()
    r = run_smoke(d.url, "openai", prompt="x", max_tokens=2, model="other-name", timeout=30)
    assert r.model == "other-name"  # the demo echoes the model it was asked for


def test_smoke_of_demo_failing_every_request_shows_its_error(demo):
    with demo(env={"GPUOPS_DEMO_ERROR_EVERY": "1"}) as d, pytest.raises(RequestFailed) as info:
        run_smoke(d.url, "demo", prompt="x", max_tokens=2, timeout=30)
    assert "HTTP 500" in info.value.message and "simulated internal server error" in info.value.message


def test_smoke_against_demo_that_died_names_the_refused_connection(demo):
    with demo() as d:
        d.kill()
        with pytest.raises(RequestFailed, match="connection refused"):
            run_smoke(d.url, "demo", prompt="x", max_tokens=2, timeout=5)


def test_task_smoke_finds_the_server_from_its_state_record(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        r = gpuops(project, "smoke", "--preset", "hello", "--max-tokens", "4")
    assert r.code == 0, r.text
    assert f"POST {d.url}/v1/completions  (model {DEMO_MODEL}, stream)" in r.out
    assert f"prompt: {HELLO}" in r.out and "answer:" in r.out
    assert "4 tokens in " in r.out and "TTFT" in r.out


def test_task_smoke_chat_no_stream_flags(project, demo):
    d = demo()
    r = gpuops(project, "smoke", "--url", d.url, "--chat", "--no-stream", "--prompt", "Ping?", "--max-tokens", "3")
    assert r.code == 0, r.text
    assert f"POST {d.url}/v1/chat/completions  (model {DEMO_MODEL}, no stream)" in r.out
    assert "prompt: Ping?" in r.out and "3 tokens in " in r.out and "not streamed" in r.out


def test_task_smoke_chat_from_config_and_completion_flag_overrides_it(project, demo):
    d = demo()
    env = {"PYTHONPATH": repo_pythonpath(), "INVOKE_GPUOPS_SMOKE_CHAT": "1"}  # as `smoke_chat: true` in invoke.yaml
    args = ("smoke", "--url", d.url, "--prompt", "Ping?", "--max-tokens", "2")
    chat = project.gpuops(*args, env=env)
    plain = project.gpuops(*args, "--completion", env=env)
    both = project.gpuops(*args, "--chat", "--completion", env=env)
    assert chat.code == 0 and f"POST {d.url}/v1/chat/completions " in chat.out, chat.text
    assert plain.code == 0 and f"POST {d.url}/v1/completions " in plain.out, plain.text
    assert both.code == 2 and "--chat and --completion contradict each other" in both.err

def test_task_smoke_uses_presets_from_invoke_yaml(project, demo):
    d = demo()
    # as in a repository: tasks.py at the root, invoke.yaml next to it
    (project.root / "tasks.py").write_text("from gpuops.cli import project_tasks\n\nns = project_tasks(__file__)\n")
    (project.root / "invoke.yaml").write_text(
        "gpuops:\n  smoke_presets:\n    mine:\n      prompt: Name a colour.\n      max_tokens: 2\n")
    inv = Path(sys.executable).with_name("inv")
    proc = subprocess.run([str(inv), "smoke", "--url", d.url, "--preset", "mine"], cwd=project.root,
                          capture_output=True, text=True, timeout=60,
                          env={**project.env, "PYTHONPATH": repo_pythonpath()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prompt: Name a colour." in proc.stdout and "2 tokens in " in proc.stdout


AGENTS_WITH_PRESETS = """\
## Server

```bash
python -m gpuops.demo --port 8000
```

## Smoke presets

```json
{"agents": {"prompt": "From the agents file.", "max_tokens": 3},
 "hello": {"prompt": "Overridden hello.", "max_tokens": 2}}
```
"""


@pytest.mark.parametrize("preset,prompt,tokens", [("agents", "From the agents file.", 3),
                                                  ("hello", "Overridden hello.", 2)])
def test_task_smoke_uses_presets_from_agents_file_over_config(project, demo, preset, prompt, tokens):
    d = demo()
    project.write_agents(AGENTS_WITH_PRESETS)
    r = gpuops(project, "smoke", "--url", d.url, "--preset", preset)
    assert r.code == 0, r.text
    assert f"prompt: {prompt}" in r.out and f"{tokens} tokens in " in r.out


def test_start_server_runs_the_smoke_test_once_ready(project, port):
    project.demo_agents(port, env=f"GPUOPS_DEMO_MODEL={DEMO_MODEL}")
    r = gpuops(project, "start-server", "--no-follow", "--smoke-preset", "hello")
    assert r.code == 0, r.text
    smoke_line = next(line for line in r.out.splitlines() if line.strip().startswith("smoke "))
    assert "16 tokens in " in smoke_line and f"from {DEMO_MODEL}" in smoke_line
    assert gpuops(project, "stop-server").code == 0


def test_start_server_no_smoke_skips_it(project, port):
    project.demo_agents(port)
    r = gpuops(project, "start-server", "--no-follow", "--no-smoke")
    assert r.code == 0, r.text
    assert not any(line.strip().startswith("smoke ") for line in r.out.splitlines())
    assert gpuops(project, "stop-server").code == 0



# ---------------------------------------------------------------- start-server's automatic smoke test


def ctx(**gpuops_config):
    """An Invoke context with gpuops' defaults and these settings, as invoke.yaml would give them."""
    import copy

    from invoke import Config, Context

    return Context(Config(overrides={"gpuops": {**copy.deepcopy(DEFAULTS), **gpuops_config}}))


def record_for(url: str, log: Path | None, engine: str = "demo"):
    from gpuops.server import state

    return state.StateRecord(name="server", pid=os.getpid(), create_time=0.0, pgid=0, tag="server:test",
                             host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), url=url,
                             log_path=str(log) if log else "", command="(test)", cwd=".", engine=engine)


def test_smoke_plan_takes_presets_from_the_agents_file_given(tmp_path):
    from gpuops.cli.server import _smoke_plan

    agents = tmp_path / "elsewhere.md"
    agents.write_text(AGENTS_WITH_PRESETS)  # not the configured AGENTS.local.md
    plan = _smoke_plan(ctx(), "agents", str(agents))
    assert (plan.prompt, plan.max_tokens) == ("From the agents file.", 3)
    assert _smoke_plan(ctx(agents_file=str(agents)), "hello", None).prompt == "Overridden hello."


def test_smoke_plan_defaults_to_blue_sky_and_honours_smoke_chat_and_timeout(tmp_path):
    from gpuops.cli.server import _smoke_plan

    default = _smoke_plan(ctx(agents_file=str(tmp_path / "none.md")), None, None)
    assert (default.prompt, default.max_tokens, default.chat, default.timeout) == (BLUE, 64, False, 60.0)
    configured = _smoke_plan(ctx(agents_file=str(tmp_path / "none.md"), smoke_chat=True, smoke_timeout="7"),
                             "hello", None)
    assert (configured.prompt, configured.chat, configured.timeout) == (HELLO, True, 7.0)


@pytest.mark.parametrize(
    "preset,config,words",
    [("nope", {}, "unknown smoke preset 'nope'"),
     (None, {"smoke_timeout": "soon"}, "gpuops.smoke_timeout must be a number above 0, not 'soon'")],
)
def test_smoke_plan_rejects_bad_input_before_anything_starts(tmp_path, preset, config, words):
    from gpuops.cli.server import _smoke_plan

    with pytest.raises(UsageError) as info:
        _smoke_plan(ctx(agents_file=str(tmp_path / "none.md"), **config), preset, None)
    assert words in info.value.render() and info.value.exit_code == 2


def test_auto_smoke_sends_the_plan_and_returns_the_summary(scripted):

    seen = []

    def respond(h):
        if h.path == "/v1/models":
            send(h, 200, json.dumps({"data": [{"id": "tiny"}]}).encode())
            return
        seen.append((h.path, drain(h)))
        body = "\n\n".join([sse({"model": "tiny", "choices": [{"delta": {"content": "Hi"}, "finish_reason": "length"}]}),
                             "data: [DONE]", ""])
        send(h, 200, body.encode(), ctype="text/event-stream")

    url = scripted(respond)
    line, err = smoke.auto_smoke(smoke.SmokePlan("Ping?", 3, chat=True, timeout=5), record_for(url, None))
    assert err is None and line.startswith("~1 token in ") and 'from tiny: "Hi"' in line  # no usage: counted
    (path, body), = seen
    assert path == "/v1/chat/completions" and body["messages"][0]["content"] == "Ping?" and body["max_tokens"] == 3


def test_auto_smoke_failure_is_one_short_line_and_an_error_with_the_server_log(demo):

    with demo(env={"GPUOPS_DEMO_ERROR_EVERY": "1"}) as d:
        line, err = smoke.auto_smoke(smoke.SmokePlan("Ping?", 2, timeout=30), record_for(d.url, d.log))
    # the banner's url row names the server and the error follows the banner: one line, no repeats
    assert line.startswith("FAILED: POST /v1/completions answered HTTP 500: simulated internal server error")
    assert line.endswith(" (details below)") and len(line) < 140 and "smoke" not in line and d.url not in line
    assert isinstance(err, RequestFailed) and err.exit_code == 7
    text = err.render()
    assert text.startswith(f"smoke test failed: POST {d.url}/v1/completions answered HTTP 500")
    assert f"lines of {d.log}:" in text and "Application startup complete." in text
    assert "its log below shows why" in err.hint


def test_auto_smoke_keeps_to_the_planned_timeout(hung_server):

    line, err = smoke.auto_smoke(smoke.SmokePlan("Ping?", 2, timeout=1.0), record_for(hung_server, None, "vllm"))
    assert line.startswith("FAILED: ") and "no answer within 1 s" in line and "no answer within 1 s" in err.message


def test_start_server_with_failing_smoke_shows_the_server_log(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_ERROR_EVERY=1")
    r = gpuops(project, "start-server", "--no-follow")
    log = project.record()["log_path"]
    assert gpuops(project, "stop-server").code == 0
    assert r.code == 7, r.text
    smoke_line = next(line for line in r.out.splitlines() if line.strip().startswith("smoke "))
    assert "FAILED: POST /v1/completions answered HTTP 500" in smoke_line
    assert "smoke FAILED" not in r.text and r.text.count("smoke test failed") == 1
    assert f"lines of {log}:" in r.err and "Traceback" not in r.text


def test_start_server_with_unknown_smoke_preset_exits_2_before_starting(project, port):
    project.demo_agents(port)
    r = gpuops(project, "start-server", "--no-follow", "--smoke-preset", "nope")
    assert r.code == 2, r.text
    assert "unknown smoke preset 'nope' (known: blue_sky, hello)" in r.err
    assert not (project.run_dir / "state" / "server.json").exists()  # nothing was started
    assert not list(project.run_dir.glob("server_logs/*.log"))


def test_start_server_smoke_uses_the_presets_of_its_agents_file(project, port):
    agents = project.root / "other.md"
    agents.write_text(
        f"## Server\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.3 {sys.executable} -m gpuops.demo --port {port}\n```\n\n"
        '## Smoke presets\n\n```json\n{"mine": {"prompt": "From other.md.", "max_tokens": 3}}\n```\n')
    r = gpuops(project, "start-server", "--no-follow", "--agents-file", str(agents), "--smoke-preset", "mine")
    assert gpuops(project, "stop-server", "--agents-file", str(agents)).code == 0
    assert r.code == 0, r.text
    smoke_line = next(line for line in r.out.splitlines() if line.strip().startswith("smoke "))
    assert "3 tokens in " in smoke_line


# ---------------------------------------------------------------- --json, settings from config, which server


def test_task_smoke_json_is_one_document_and_the_text_goes_to_stderr(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        r = gpuops(project, "smoke", "--preset", "hello", "--max-tokens", "4", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)  # stdout holds the document and nothing else
    assert (doc["schema"], doc["task"], doc["ok"], doc["server"]) == (1, "smoke", True, "server")
    assert (doc["url"], doc["engine"], doc["endpoint"], doc["model"], doc["stream"]) == (
        d.url, "demo", "/v1/completions", DEMO_MODEL, True)
    assert (doc["prompt"], doc["output_tokens"], doc["tokens_from"], doc["finish_reason"]) == (
        HELLO, 4, "usage", "length")
    assert doc["text"].strip() and doc["reasoning"] == "" and doc["details"] == []
    assert 0 < doc["ttft_s"] <= doc["total_s"] and doc["decode_tok_s"] > 0 and doc["prompt_tokens"] > 0
    assert f"POST {d.url}/v1/completions" in r.err and "4 tokens in " in r.err


@pytest.mark.parametrize("args,code,kind", [(["--url", "DEAD", "--timeout", "5"], 7, "RequestFailed"),
                                             ([], 6, "ServerNotRunning"),
                                             (["--preset", "nope"], 2, "UsageError")])
def test_task_smoke_json_failure_is_a_document_with_the_same_exit_code(project, args, code, kind):
    args = [f"http://127.0.0.1:{free_port()}" if a == "DEAD" else a for a in args]
    r = gpuops(project, "smoke", "--json", *args)
    assert r.code == code, r.text
    doc = json.loads(r.out)
    assert (doc["schema"], doc["task"], doc["ok"]) == (1, "smoke", False)
    assert (doc["error"]["type"], doc["error"]["exit_code"]) == (kind, code) and doc["error"]["message"]
    assert "error: " in r.err  # people still read the error


def test_task_smoke_takes_json_and_timeout_from_config(project, demo):
    d = demo()
    env = {"PYTHONPATH": repo_pythonpath(), "INVOKE_GPUOPS_JSON": "true"}
    ok = project.gpuops("smoke", "--url", d.url, "--prompt", "Ping?", "--max-tokens", "2", env=env)
    assert ok.code == 0 and json.loads(ok.out)["output_tokens"] == 2, ok.text
    (project.root / "gpuops.yaml").write_text("gpuops:\n  smoke_timeout: soon\n")
    bad = gpuops(project, "-f", "gpuops.yaml", "smoke", "--url", d.url)
    assert bad.code == 2 and "gpuops.smoke_timeout must be a number above 0, not 'soon'" in bad.err, bad.text


TWO_SERVERS = """\
## Server: {first}

```bash
python -m gpuops.demo --port 8001
```

## Server: {second}

```bash
python -m gpuops.demo --port 8002
```
"""


def test_task_smoke_of_two_running_servers_talks_to_the_first_recipes(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log, name="big")
        rec = save_record(project, d.proc, d.url, d.log, name="small")
        rec.started_at += 60  # the newer one: no longer what is chosen
        from gpuops.server import state

        state.save(RunDir(project.run_dir), rec)
        project.write_agents(TWO_SERVERS.format(first="big", second="small"))
        first = gpuops(project, "smoke", "--max-tokens", "2", "--json")
        project.write_agents(TWO_SERVERS.format(first="other", second="small"))
        neither = gpuops(project, "smoke", "--max-tokens", "2")
        named = gpuops(project, "smoke", "--max-tokens", "2", "--server", "small", "--json")
    assert first.code == 0, first.text
    assert json.loads(first.out)["server"] == "big"
    assert neither.code == 2, neither.text
    assert "2 servers are running (big, small): which one?" in neither.err and "--server" in neither.err
    assert named.code == 0 and json.loads(named.out)["server"] == "small", named.text
