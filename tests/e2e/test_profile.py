"""inv profile: flavours per engine, waiting for trace files to settle, and real captures from the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from gpuops.cli.render_probes import profile_lines
from gpuops.demo.traces import LAYERS
from gpuops.errors import RequestFailed, UsageError
from gpuops.probes import profile as profiling
from gpuops.probes import traces
from gpuops.probes.profile import Settler
from gpuops.server.logs import create_run_folder
from support.fixtures import free_port, gpuops, repo_pythonpath, save_record
from support.scripted import drain, send

# the demo servers of this module (the `demo` fixture): quick, writing traces half a second after being asked
pytestmark = pytest.mark.demo_options(load_seconds=0.1, ttft_ms=20, itl_ms=2, profile_delay=0.5)


# ---------------------------------------------------------------- flavours


@pytest.mark.parametrize(
    "engine,flavour",
    [("demo", "fireworks"), ("uvicorn", "fireworks"), ("vllm", "vllm"), ("sglang", "sglang")],
)
def test_flavour_per_engine(engine, flavour):
    assert profiling.flavour_of(engine) == flavour


@pytest.mark.parametrize(
    "engine,words",
    [
        ("llama.cpp", ["llama-server has no profiler endpoint", "nsys profile"]),
        ("comfyui", ["ComfyUI has no profiler endpoint", "--verbose", "nsys"]),
        ("mlx_lm", ["Metal", "mx.metal.start_capture"]),
        ("generic", ["--engine vllm|sglang|uvicorn"]),
        ("openai", ["--engine vllm|sglang|uvicorn"]),
    ],
)
def test_engines_without_profiler_say_what_to_use_instead(engine, words):
    with pytest.raises(UsageError) as info:
        profiling.flavour_of(engine)
    for word in words:
        assert word in info.value.render()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["vllm", "serve", "m"], None),
        (["vllm", "serve", "m", "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/t/p"}'], "/t/p"),
        (["vllm", "serve", "m", '--profiler-config={"profiler": "torch", "torch_profiler_dir": "rel"}'], "rel"),
        (["vllm", "serve", "m", "--profiler-config.profiler", "torch", "--profiler-config.torch_profiler_dir", "/x"],
         "/x"),
        (["vllm", "serve", "m", "--profiler-config.torch_profiler_dir=/y"], "/y"),
        (["vllm", "serve", "m", "--profiler-config", '{"profiler": "cuda"}'], None),
        (["vllm", "serve", "m", "--profiler-config", "{broken"], None),
        (["vllm", "serve", "m", "--profiler-config"], None),
    ],
)
def test_profiler_dir_from_vllm_arguments(argv, expected):
    assert profiling.profiler_dir_from_args(argv) == expected


@pytest.mark.parametrize(
    "n,text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (718_950, "702.1 KB"), (1_468_006, "1.4 MB"), (5 * 2**30, "5.0 GB"),
     (3 * 2**40, "3072.0 GB")],
)
def test_format_size(n, text):
    assert profiling.format_size(n) == text


@pytest.mark.parametrize(
    "path,cwd,text",
    [("/w/proj/do_not_commit/profiles/x", "/w/proj", "do_not_commit/profiles/x"),
     ("/elsewhere/traces", "/w/proj", "/elsewhere/traces")],
)
def test_paths_are_shown_relative_to_the_current_folder(path, cwd, text):
    from pathlib import Path

    assert profiling.shown(Path(path), Path(cwd)) == text


def test_vllm_hint_names_both_ways_to_enable_profiling():
    hint = profiling.vllm_enable_hint("/abs/traces")
    assert "VLLM_TORCH_PROFILER_DIR=/abs/traces" in hint
    assert '--profiler-config \'{"profiler": "torch", "torch_profiler_dir": "/abs/traces"}\'' in hint
    assert "inv start-server --restart" in hint


def test_vllm_hint_commands_survive_the_shell_as_written():
    import json
    import re
    import shlex

    hint = profiling.vllm_enable_hint("/home/me/my traces")
    env, flag = re.findall(r"`([^`]*)`", hint)[:2]
    assert shlex.split(env) == ["VLLM_TORCH_PROFILER_DIR=/home/me/my traces"]
    name, value = shlex.split(flag)
    assert name == "--profiler-config" and json.loads(value)["torch_profiler_dir"] == "/home/me/my traces"


# ---------------------------------------------------------------- settling


@pytest.mark.parametrize(
    "observations,settled_at",
    [
        # (time, files) ... -> index of the first observation that counts as settled (None: never)
        ([(0, {}), (1, {}), (5, {})], None),  # nothing appeared
        ([(0, {"a": 10}), (1, {"a": 10}), (2, {"a": 10})], 2),  # unchanged for 2 s
        ([(0, {"a": 10}), (1, {"a": 20}), (2, {"a": 20}), (3, {"a": 20})], 3),  # grew, then 2 s quiet
        ([(0, {"a": 10}), (1.5, {"a": 10, "b": 5}), (3, {"a": 10, "b": 5}), (3.5, {"a": 10, "b": 5})], 3),
        ([(0, {"a": 0}), (2, {"a": 0}), (4, {"a": 0})], None),  # an empty file is not a written trace
        ([(0, {"a": 10}), (1.9, {"a": 10})], None),  # not quiet long enough
    ],
)
def test_settler_waits_for_files_to_stop_changing(observations, settled_at):
    s = Settler(quiet=2.0)
    results = [s.observe(files, now) for now, files in observations]
    assert (results.index(True) if True in results else None) == settled_at


def test_wait_for_files_returns_only_new_files_once_they_stop_growing(tmp_path):
    (tmp_path / "old.pt.trace.json").write_text("{}")
    before = set(profiling.snapshot(tmp_path))
    chunks = [b'{"traceEvents": [', b'{"ph": "X"}', b"]}"]

    def writer():
        time.sleep(0.3)
        with open(tmp_path / "generator-0-0.1.pt.trace.json", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.2)

    t = threading.Thread(target=writer)
    t.start()
    try:
        done = profiling.wait_for_files(tmp_path, before, timeout=20, quiet=0.5, poll=0.05)
    finally:
        t.join()
    assert done.settled
    assert done.files == {"generator-0-0.1.pt.trace.json": sum(len(c) for c in chunks)}  # the final size
    assert done.waited >= 0.3 + 0.4 + 0.5 - 0.1  # appeared late, grew, then stayed quiet


def test_wait_for_files_gives_up_at_the_timeout(tmp_path):
    t0 = time.monotonic()
    done = profiling.wait_for_files(tmp_path / "not-yet", set(), timeout=0.3, quiet=0.1, poll=0.05)
    assert (done.files, done.settled) == ({}, False)
    assert 0.3 <= time.monotonic() - t0 < 5


def test_a_new_profile_folder_never_reuses_one(tmp_path):
    now = time.mktime((2026, 11, 22, 10, 15, 0, 0, 0, -1))
    first = create_run_folder(tmp_path, now)
    second = create_run_folder(tmp_path, now)
    third = create_run_folder(tmp_path, now)
    assert [p.name for p in (first, second, third)] == ["20261122-101500", "20261122-101500-2", "20261122-101500-3"]
    assert all(p.is_dir() for p in (first, second, third))


def test_copy_new_never_overwrites(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "a.pt.trace.json.gz").write_bytes(b"new")
    (src / "sub" / "b.json").write_bytes(b"bb")
    dest.mkdir()
    (dest / "a.pt.trace.json.gz").write_bytes(b"old")
    copied = profiling.copy_new(src, ["a.pt.trace.json.gz", "sub/b.json"], dest)
    assert (dest / "a.pt.trace.json.gz").read_bytes() == b"old"
    assert [p.relative_to(dest).as_posix() for p in copied] == ["a.pt.trace.json.gz.2", "sub/b.json"]
    assert copied[0].read_bytes() == b"new"


@pytest.fixture
def sleeper(tmp_path):
    """A real process with VLLM_TORCH_PROFILER_DIR set (relative), as a vLLM server would have."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path,
                            env={**os.environ, "VLLM_TORCH_PROFILER_DIR": "traces/vllm"})
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait()


def test_server_profiler_dir_is_read_from_the_server_environment(sleeper, tmp_path):
    create_time = psutil.Process(sleeper.pid).create_time()
    assert profiling.server_profiler_dir(sleeper.pid, create_time) == tmp_path / "traces" / "vllm"
    # a pid whose start time does not match is not our server: nothing is read from it
    assert profiling.server_profiler_dir(sleeper.pid, create_time - 100) is None


# ---------------------------------------------------------------- captures from the real demo

def test_profile_end_to_end_waits_for_late_growing_files_and_summarizes_them(tmp_path, demo):
    out = tmp_path / "capture"
    out.mkdir()
    old = out / "generator-0-0.1.pt.trace.json"  # an earlier capture's file in the chosen --dir
    old.write_text('{"traceEvents": []}')
    lines: list[str] = []
    with demo(profile_delay=0.8) as d:
        t0 = time.monotonic()
        result = profiling.capture(d.url, "demo", out_dir=out, num_steps=3, load=True, write=lines.append,
                                   quiet=0.6)
        elapsed = time.monotonic() - t0
    # the demo answers at once, writes 0.8 s later, and grows each file for 1 s: we waited for all of it
    assert elapsed >= 0.8 + 1.0
    assert result.settled and len(result.files) == 2
    assert old not in [p for p, _ in result.files] and old.read_text() == '{"traceEvents": []}'
    names = sorted(p.name for p, _ in result.files)
    assert names[0].startswith("generator-0-0.") and names[1].startswith("generator-1-0.")
    assert all(n.endswith(".pt.trace.json") for n in names)
    for path, size in result.files:
        assert path.parent == out.resolve() and path.stat().st_size == size  # final sizes, not partial
    assert result.load is not None and result.load.tokens > 0 and result.load.errors == 0

    profiling.summarize(result)
    s = result.summary
    assert result.unreadable == []
    # computed from the files' contents: 2 generators x 3 steps, one flash-attention kernel per layer per step
    assert (s.files, s.steps, s.step_counts) == (2, 3, [3, 3])  # 3 steps, each generator's own trace of them
    flash = next(name for name in s.gpu if "flash_fwd" in name)
    assert s.gpu[flash].count == 2 * 3 * LAYERS
    assert s.ops["aten::linear"].self_us < s.ops["aten::linear"].total_us  # nested aten::mm excluded
    assert s.gpu_busy is not None and 0 < s.gpu_busy < 1
    text = "\n".join(profile_lines(result, top=3))
    assert "trace files (2, " in text and "ui.perfetto.dev" in text and "trace summary: 3 steps x 2 files" in text
    assert "load during the capture: 4 streams" in text


def test_task_profile_lists_files_in_a_new_timestamped_folder(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        first = gpuops(project, "profile", "--num-steps", "2", "--settle-timeout", "30")
        second = gpuops(project, "profile", "--num-steps", "2", "--with-stack", "--settle-timeout", "30")
    assert first.code == 0, first.text
    assert second.code == 0, second.text
    folders = sorted((project.run_dir / "profiles").iterdir())
    assert len(folders) == 2  # a second capture never lands in the first one's folder
    for r, folder in zip((first, second), folders, strict=True):
        assert "trace files (2, " in r.out
        assert f"in do_not_commit/profiles/{folder.name}:" in r.out
        assert "ui.perfetto.dev" in r.out and "trace summary: 2 steps x 2 files" in r.out
        assert len([p for p in folder.iterdir() if p.name.endswith(".pt.trace.json")]) == 2
    assert "with_stack=true" in second.out


def test_task_profile_vllm_flow_copies_traces_from_the_server_folder(project, tmp_path, demo):
    server_dir = tmp_path / "server-cwd"
    server_dir.mkdir()
    with demo(folder=server_dir, env={"VLLM_TORCH_PROFILER_DIR": "vllm_traces"}) as d:
        save_record(project, d.proc, d.url, d.log, engine="vllm")
        r = gpuops(project, "profile", "--load", "--num-steps", "5", "--settle-timeout", "30")
    assert r.code == 0, r.text
    assert "vLLM POST /start_profile" in r.out and "stopping the profiler" in r.out
    originals = list((server_dir / "vllm_traces").glob("*.pt.trace.json.gz"))
    assert len(originals) == 1  # written by the server where it was told to, and left there
    assert "copied from the server's profiler folder server-cwd/vllm_traces" in r.out  # shown relative
    (folder,) = (project.run_dir / "profiles").iterdir()
    copied = folder / originals[0].name
    assert copied.read_bytes() == originals[0].read_bytes()
    assert "trace summary: 1 file, " in r.out and "top GPU kernels" in r.out


def test_vllm_started_without_profiling_gets_told_what_to_add(project, demo):
    with demo() as d:  # no VLLM_TORCH_PROFILER_DIR: no /start_profile route, as in vLLM
        save_record(project, d.proc, d.url, d.log, engine="vllm")
        r = gpuops(project, "profile", "--duration", "0.2")
    assert r.code == 7, r.text
    assert "was not started with profiling enabled" in r.err and "HTTP 404" in r.err
    assert "VLLM_TORCH_PROFILER_DIR=" in r.err and "--profiler-config" in r.err
    # an absolute folder: inside the single quotes of the JSON, $PWD would stay $PWD
    folder = str(project.run_dir.resolve() / "vllm_traces")
    assert f'"torch_profiler_dir": "{folder}"' in r.err and f"VLLM_TORCH_PROFILER_DIR={folder}`" in r.err
    assert "$PWD" not in r.err
    assert "last " in r.err and str(d.log) in r.err  # the server log's tail comes with it
    assert "Traceback" not in r.text
    assert not any((project.run_dir / "profiles").iterdir())  # no empty capture folder left behind


def test_profile_of_engine_without_endpoint_says_what_to_use(project, demo):
    with demo() as d:
        save_record(project, d.proc, d.url, d.log, engine="llama.cpp")
        r = gpuops(project, "profile")
    assert r.code == 2, r.text
    assert "llama-server has no profiler endpoint" in r.err and "nsys profile" in r.err
    assert not (project.run_dir / "profiles").exists()


def test_profile_gives_up_when_no_file_appears_in_time(tmp_path, demo):
    with demo(profile_delay=30) as d, pytest.raises(RequestFailed) as info:
        profiling.capture(d.url, "demo", out_dir=tmp_path / "cap", num_steps=2, settle_timeout=0.5, write=lambda _: None)
    assert "no trace files appeared" in info.value.message and "within 0.5 s" in info.value.message


def test_unreadable_trace_is_listed_and_noted_not_fatal(tmp_path):
    good = tmp_path / "good.pt.trace.json"
    good.write_text('{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 0, "dur": 5}]}')
    bad = tmp_path / "bad.pt.trace.json"
    bad.write_text('{"traceEvents": [')
    result = profiling.ProfileResult("fireworks", "http://x", tmp_path,
                                     files=[(good, good.stat().st_size), (bad, bad.stat().st_size)])
    profiling.summarize(result)
    assert result.summary.files == 1 and list(result.summary.gpu) == ["k"]
    lines = profile_lines(result)
    assert any(line.startswith("could not summarize: cannot read trace") and str(bad) in line for line in lines)
    assert any(line.endswith("bad.pt.trace.json") for line in lines)


def test_gzipped_captures_are_measured_uncompressed_for_the_size_cap(tmp_path):
    import gzip
    import json

    events = [{"ph": "X", "cat": "kernel", "name": "k", "ts": i, "dur": 1} for i in range(20_000)]
    path = tmp_path / "rank0.pt.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    size = path.stat().st_size
    result = profiling.ProfileResult("vllm", "http://x", tmp_path, files=[(path, size)])
    profiling.summarize(result, max_bytes=size * 5)  # well above its size on disk, far below its JSON
    assert result.summary is None
    assert any("of JSON (uncompressed): too big to summarize" in n for n in result.notes)


def test_huge_captures_are_listed_but_not_parsed(tmp_path):
    path = tmp_path / "big.pt.trace.json"
    path.write_text('{"traceEvents": []}')
    result = profiling.ProfileResult("fireworks", "http://x", tmp_path, files=[(path, 10)])
    profiling.summarize(result, max_bytes=5)
    assert result.summary is None and any("too big to summarize" in n for n in result.notes)


def test_summary_matches_the_trace_parser_on_the_same_files(tmp_path):
    import json

    from gpuops.demo.traces import make_trace

    for i in range(2):
        (tmp_path / f"generator-{i}-0.1.pt.trace.json").write_text(json.dumps(make_trace(4, seed=i)))
    files = sorted(tmp_path.iterdir())
    result = profiling.ProfileResult("fireworks", "http://x", tmp_path, files=[(p, p.stat().st_size) for p in files])
    profiling.summarize(result)
    direct = traces.summarize_files(files)
    assert result.summary.top_gpu(5) == direct.top_gpu(5) and result.summary.step_counts == [4, 4]


def test_vllm_folder_of_a_local_server_gpuops_did_not_start_is_found_by_its_port(project, tmp_path, demo):
    server_dir = tmp_path / "elsewhere"
    server_dir.mkdir()
    with demo(folder=server_dir, env={"VLLM_TORCH_PROFILER_DIR": "traces"}) as d:  # no state record
        r = gpuops(project, "profile", "--url", d.url, "--engine", "vllm", "--duration", "0.3",
                   "--settle-timeout", "30")
    assert r.code == 0, r.text
    assert "copied from the server's profiler folder elsewhere/traces" in r.out
    assert "recording for 0.3 s" in r.out and "(0.3 s, with_stack=false)" in r.out


def crashed_demo(project, demo):
    """A demo server gpuops has a record of, killed with SIGKILL (as the OOM killer would): pid, url, log."""
    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        d.kill()
    return d.proc.pid, d.url, d.log


def test_task_profile_of_crashed_server_says_it_exited_and_shows_its_log(project, demo):
    pid, _, log = crashed_demo(project, demo)
    r = gpuops(project, "profile")
    assert r.code == 6, r.text
    assert f"server 'server' (pid {pid}) has exited" in r.err and "no running server" not in r.err
    assert f"lines of {log}:" in r.err and "Application startup complete." in r.err
    assert "inv start-server" in r.err and "Traceback" not in r.text


def test_task_profile_url_of_crashed_server_shows_its_log(project, demo):
    pid, url, log = crashed_demo(project, demo)
    r = gpuops(project, "profile", "--url", url)  # the engine comes from the record
    assert r.code == 7, r.text
    assert f"GET {url}/profile: connection refused" in r.err
    assert f"server 'server' (pid {pid}), which gpuops started at this URL" in r.err and "has exited" in r.err
    assert f"lines of {log}:" in r.err


def test_task_profile_of_dead_url_exits_7(project):
    url = f"http://127.0.0.1:{free_port()}"
    r = gpuops(project, "profile", "--url", url, "--engine", "demo")
    assert r.code == 7, r.text
    assert f"GET {url}/profile: connection refused" in r.err and "Traceback" not in r.text


def sglang_like(scripted, tmp_path, *, writes_on: str):
    """An HTTP server speaking SGLang's profiler API: writes a per-rank .trace.json.gz into output_dir,
    either by itself after num_steps (`writes_on="steps"`) or only when stopped (`writes_on="stop"`)."""
    import gzip
    import json

    from gpuops.demo.traces import make_trace

    calls: list[tuple[str, dict | None]] = []
    state: dict = {}

    def write_later(output_dir: str, delay: float):
        def run():
            time.sleep(delay)
            path = os.path.join(output_dir, "1763806500.123-TP-0.trace.json.gz")
            with open(path, "wb") as f:
                f.write(gzip.compress(json.dumps(make_trace(3)).encode()))

        threading.Thread(target=run, daemon=True).start()

    def respond(h):
        body = drain(h) if h.command == "POST" else None
        calls.append((h.path, body))
        if h.path == "/start_profile":
            state["dir"] = body.get("output_dir")
            if writes_on == "steps":
                write_later(state["dir"], 0.3)
            send(h, 200, b'{"success": true, "message": "Start profiling."}')
        elif h.path == "/stop_profile":
            if writes_on == "stop":
                write_later(state["dir"], 0.1)
            send(h, 200, b'{"success": true}')
        else:
            send(h, 404, b'{"detail": "Not Found"}')

    return scripted(respond), calls


def test_sglang_flow_sends_output_dir_and_steps_and_waits_for_the_rank_files(scripted, tmp_path):
    url, calls = sglang_like(scripted, tmp_path, writes_on="steps")
    out = tmp_path / "cap"
    result = profiling.capture(url, "sglang", out_dir=out, num_steps=7, with_stack=True, write=lambda _: None,
                               quiet=0.3, settle_timeout=10)
    (path, body), = calls
    assert path == "/start_profile"
    assert body == {"output_dir": str(out.resolve()), "num_steps": 7, "with_stack": True, "activities": ["CPU", "GPU"]}
    assert [p.name for p, _ in result.files] == ["1763806500.123-TP-0.trace.json.gz"]
    profiling.summarize(result)
    assert result.summary.steps == 3


def test_sglang_without_steps_is_stopped_to_write_what_it_has(scripted, tmp_path):
    url, calls = sglang_like(scripted, tmp_path, writes_on="stop")
    lines: list[str] = []
    result = profiling.capture(url, "sglang", out_dir=tmp_path / "cap", num_steps=5, write=lines.append,
                               quiet=0.3, settle_timeout=1.0)
    assert [c[0] for c in calls] == ["/start_profile", "/stop_profile"]
    assert any("send requests now" in line for line in lines)
    assert any("asking SGLang to stop" in line for line in lines)
    assert len(result.files) == 1


def test_sglang_duration_records_for_that_long_then_stops(scripted, tmp_path):
    url, calls = sglang_like(scripted, tmp_path, writes_on="stop")
    t0 = time.monotonic()
    profiling.capture(url, "sglang", out_dir=tmp_path / "cap", duration=0.5, write=lambda _: None, quiet=0.3,
                      settle_timeout=10)
    assert time.monotonic() - t0 >= 0.5
    assert [c[0] for c in calls] == ["/start_profile", "/stop_profile"]
    assert "num_steps" not in calls[0][1]  # it records until told to stop


@pytest.mark.parametrize(
    "args,words",
    [
        (["--num-steps", "0"], "--num-steps must be a whole number above 0, not '0'"),
        (["--num-steps", "2.5"], "--num-steps must be a whole number above 0"),
        (["--duration", "-1"], "--duration must be a number above 0"),
        (["--settle-timeout", "later"], "--settle-timeout must be a number above 0, not 'later'"),
        (["--top", "x"], "--top must be a whole number above 0, not 'x'"),
    ],
)
def test_task_profile_bad_numbers_exit_2_before_any_request(project, args, words):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail with exit 7, not 2
    r = gpuops(project, "profile", "--url", url, "--engine", "demo", *args)
    assert r.code == 2, r.text
    assert words in r.err and "Traceback" not in r.text
    assert not (project.run_dir / "profiles").exists()


def test_task_profile_dir_that_is_a_file_is_a_usage_error(project):
    (project.root / "taken").write_text("not a folder")
    r = gpuops(project, "profile", "--url", f"http://127.0.0.1:{free_port()}", "--engine", "demo", "--dir", "taken")
    assert r.code == 2, r.text
    assert "cannot use taken as the trace folder" in r.err and (project.root / "taken").read_text() == "not a folder"


def test_wait_for_files_by_default_waits_for_a_worker_that_writes_seconds_later(tmp_path):
    def writer():
        time.sleep(0.2)
        (tmp_path / "generator-0-0.1.pt.trace.json").write_text('{"traceEvents": []}')
        time.sleep(3.0)  # the second worker's file starts well after the first one settled
        (tmp_path / "generator-1-0.1.pt.trace.json").write_text('{"traceEvents": []}')

    t = threading.Thread(target=writer)
    t.start()
    try:
        done = profiling.wait_for_files(tmp_path, set(), timeout=30, poll=0.1)
    finally:
        t.join()
    assert done.settled and sorted(done.files) == ["generator-0-0.1.pt.trace.json", "generator-1-0.1.pt.trace.json"]


def late_writer(scripted, second_after: float):
    """A Fireworks-style server whose two generators write their traces `second_after` seconds apart."""
    import json
    from urllib.parse import parse_qs, urlsplit

    from gpuops.demo.traces import make_trace

    def write(folder: str, delay: float, i: int):
        time.sleep(delay)
        with open(os.path.join(folder, f"generator-{i}-0.1.pt.trace.json"), "w") as f:
            json.dump(make_trace(2, seed=i), f)

    def respond(h):
        query = parse_qs(urlsplit(h.path).query)
        if urlsplit(h.path).path != "/profile":
            send(h, 404, b'{"detail": "Not Found"}')
            return
        for i, delay in enumerate((0.1, 0.1 + second_after)):
            threading.Thread(target=write, args=(query["dir"][0], delay, i), daemon=True).start()
        send(h, 200, b'{"status": "profiling"}')

    return scripted(respond)


def test_task_profile_takes_the_quiet_time_from_config(project, scripted):
    url = late_writer(scripted, second_after=2.0)
    (project.root / "gpuops.yaml").write_text("gpuops:\n  profile_quiet_seconds: 0.5\n")
    r = gpuops(project, "-f", "gpuops.yaml", "profile", "--url", url, "--engine", "uvicorn", "--settle-timeout", "30")
    assert r.code == 0, r.text
    # half a second of quiet counts as done: the second file, 2 s later, is not waited for
    assert "trace files (1, " in r.out and "generator-0-0.1.pt.trace.json" in r.out


def test_task_profile_bad_quiet_time_in_config_is_a_usage_error(project):
    (project.root / "gpuops.yaml").write_text("gpuops:\n  profile_quiet_seconds: soon\n")
    r = gpuops(project, "-f", "gpuops.yaml", "profile", "--url", f"http://127.0.0.1:{free_port()}",
               "--engine", "demo")
    assert r.code == 2, r.text
    assert "gpuops.profile_quiet_seconds must be a number above 0, not 'soon'" in r.err


@pytest.mark.parametrize("log_shown", [False, True])
def test_profiler_error_shows_the_servers_message_not_its_json(scripted, tmp_path, log_shown):
    body = b'{"object": "error", "error": {"message": "profiler already running", "type": "Conflict", "code": 500}}'
    url = scripted(lambda h: send(h, 500, body))
    with pytest.raises(RequestFailed) as info:
        profiling.capture(url, "uvicorn", out_dir=tmp_path / "cap", num_steps=2, write=lambda _: None,
                          log_shown=log_shown)
    assert info.value.message.endswith(f"GET {url}/profile answered HTTP 500: profiler already running")
    assert ("below" in info.value.hint) is log_shown  # "its log below" only when the log is shown


def test_fireworks_engine_without_a_profile_route_says_so(scripted, tmp_path):
    url = scripted(lambda h: send(h, 404, b'{"detail": "Not Found"}'))
    with pytest.raises(RequestFailed) as info:
        profiling.capture(url, "uvicorn", out_dir=tmp_path / "cap", num_steps=2, write=lambda _: None)
    assert f"the server has no profiler endpoint: GET {url}/profile answered HTTP 404" in info.value.message
    assert "--engine" in info.value.hint


# ---------------------------------------------------------------- --json


def test_task_profile_json_is_one_document_with_files_and_summary(project, demo):
    import json

    with demo() as d:
        save_record(project, d.proc, d.url, d.log)
        # gpuops.profile_top from the environment, as from invoke.yaml: the summary's tables follow it
        r = project.gpuops("profile", "--num-steps", "2", "--settle-timeout", "30", "--json",
                           env={"PYTHONPATH": repo_pythonpath(), "INVOKE_GPUOPS_PROFILE_TOP": "1"})
    assert r.code == 0, r.text
    doc = json.loads(r.out)  # stdout holds the document and nothing else
    assert (doc["schema"], doc["task"], doc["ok"]) == (1, "profile", True)
    assert (doc["server"], doc["url"], doc["engine"], doc["flavour"], doc["settled"]) == (
        "server", d.url, "demo", "fireworks", True)
    folder = (project.root / doc["folder"]).resolve()
    assert folder.parent == (project.run_dir / "profiles").resolve()
    assert len(doc["files"]) == 2 and doc["total_bytes"] == sum(f["bytes"] for f in doc["files"])
    for f in doc["files"]:
        assert (folder / f["name"]).stat().st_size == f["bytes"] and f["name"].endswith(".pt.trace.json")
    summary = doc["summary"]
    assert (summary["files"], summary["steps"], summary["step_counts"]) == (2, 2, [2, 2])
    assert doc["top"] == 1 and len(summary["top_gpu_kernels"]) == 1 and len(summary["top_cpu_ops"]) == 1
    kernel = summary["top_gpu_kernels"][0]
    assert set(kernel) == {"name", "calls", "total_ms", "self_ms", "share"} and 0 < kernel["share"] <= 1
    assert 0 < summary["gpu_busy"] < 1 and doc["load"] is None and doc["notes"] == []
    # people's text went to stderr: the progress and the listing
    assert "profile: Fireworks-style GET /profile (2 steps" in r.err and "trace files (2, " in r.err


def test_task_profile_json_error_keeps_the_exit_code(project, demo):
    import json

    with demo() as d:
        save_record(project, d.proc, d.url, d.log, engine="llama.cpp")
        r = gpuops(project, "profile", "--json")
    assert r.code == 2, r.text
    doc = json.loads(r.out)
    assert (doc["task"], doc["ok"], doc["error"]["type"], doc["error"]["exit_code"]) == (
        "profile", False, "UsageError", 2)
    assert "llama-server has no profiler endpoint" in doc["error"]["hint"]
    url = f"http://127.0.0.1:{free_port()}"
    dead = gpuops(project, "profile", "--url", url, "--engine", "demo", "--json")
    assert dead.code == 7 and json.loads(dead.out)["error"]["exit_code"] == 7
