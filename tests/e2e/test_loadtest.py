"""`load-test` end to end: the real demo server, real Locust processes, real HTTP, real files.

The demo streams with a known time to first token and inter-token delay, so the reported numbers
can be checked against the truth. Runs are kept to a few seconds and a few users (CI has 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from gpuops.errors import ServerNotRunning
from gpuops.probes.loadtest import metrics, options, runner
from gpuops.probes.loadtest.runner import RecordTail, Target, server_lost, silence_s, sweep_title
from support.fixtures import free_port, save_record, wait_for
from support.scripted import drain, send

TTFT_MS, ITL_MS = 100.0, 20.0

# the demo servers of this module (the `demo` fixture) stream with these delays: the reported numbers are
# checked against them
pytestmark = pytest.mark.demo_options(load_seconds=0, ttft_ms=TTFT_MS, itl_ms=ITL_MS, log=False)


def _report_dir(project) -> Path:
    dirs = sorted((project.run_dir / "load_tests").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _load_test(project, *args, timeout=90, env=None):
    return project.gpuops("load-test", *args, timeout=timeout, env=env)


# ---------------------------------------------------------------- accuracy (the product)


@pytest.mark.parametrize("api", ["--completion", "--chat"])
def test_reported_ttft_itl_tpot_match_what_the_demo_was_told(project, demo, api):
    server = demo()
    res = _load_test(project, "--url", server.url, api, "--users", "2", "--run-time", "4s",
                     "--max-tokens", "16", "--prompt-tokens", "24")
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    assert s["completed"] >= 8 and s["failed"] == 0
    # TTFT can only be later than the server's delay; chat's opening role chunk (sent at once) must not count.
    # Lower bounds and definitions only: how close to the demo's timing a run comes is machine speed (bench/)
    assert s["median_ttft_ms"] >= TTFT_MS, s["median_ttft_ms"]
    assert s["median_e2el_ms"] >= TTFT_MS + 15 * ITL_MS, s["median_e2el_ms"]  # 16 tokens: 15 gaps after the first
    for r in (r for r in metrics.read_records(_report_dir(project) / "records.jsonl") if r["ok"]):
        assert len(r["itl_ms"]) == 15 and sum(r["itl_ms"]) <= r["e2el_ms"] - r["ttft_ms"] + 0.01  # gaps after the first
    assert f"{s['median_ttft_ms']:.1f}" in res.out  # the terminal table shows the same numbers


def test_token_counts_come_from_usage_and_percentiles_from_the_raw_records(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "3", "--run-time", "3s", "--max-tokens", "12",
                     "--prompt-tokens", "40")
    assert res.code == 0, res.text
    folder = _report_dir(project)
    records = metrics.read_records(folder / "records.jsonl")
    ok = [r for r in records if r["ok"]]
    assert ok and all(r["tokens_from"] == "usage" for r in ok)
    assert {r["output_tokens"] for r in ok} == {12}
    assert {r["prompt_tokens"] for r in ok} == {40}  # the demo counts words; the prompt has exactly 40
    assert {len(r["itl_ms"]) for r in ok} == {11}  # one gap per chunk after the first
    s = _summary(folder)
    again = metrics.summarize(records)
    for key in ("completed", "total_output_tokens", "median_ttft_ms", "p99_ttft_ms", "p95_itl_ms", "max_e2el_ms",
                "mean_tpot_ms", "output_throughput"):
        assert s[key] == pytest.approx(again[key]), key
    assert s["total_output_tokens"] == 12 * s["completed"]


def test_every_output_is_on_disk(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--max-tokens", "8")
    assert res.code == 0, res.text
    folder = _report_dir(project)
    names = {p.name for p in folder.iterdir()}
    assert {"records.jsonl", "client.jsonl", "summary.json", "plan.json", "locust_stats.csv",
            "locust_stats_history.csv", "locust_failures.csv", "locust.html", "latency.png"} <= names
    assert not any(n.startswith("records-w") for n in names)  # the per-process parts were merged
    assert (folder / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = (folder / "locust_stats.csv").read_text()
    assert "LLM,TTFT" in stats and "LLM,TPOT" in stats  # Locust's own report shows the LLM metrics
    assert "TTFT" in (folder / "locust.html").read_text()
    client = metrics.read_records(folder / "client.jsonl")
    assert client and all(0 <= c["cpu"] for c in client)
    logs = list((project.run_dir / "server_logs").glob("locust-*.log"))
    assert len(logs) == 1 and "report:" in logs[0].read_text()
    assert f"report: {folder.relative_to(project.root)}" in res.out or str(folder) in res.out


def test_failures_are_counted_with_their_reasons(project, demo):
    server = demo(env={"GPUOPS_DEMO_ERROR_EVERY": "3"})
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "3s", "--max-tokens", "8")
    assert res.code == 0, res.text  # some requests succeeded: a result, with its failures shown
    folder = _report_dir(project)
    records = [r for r in metrics.read_records(folder / "records.jsonl") if not r["cancelled"]]
    failed = [r for r in records if not r["ok"]]
    assert failed and all(r["error"].startswith("HTTP 500: simulated internal server error") for r in failed)
    # every third generation request fails (the preflight request was the first)
    assert abs(len(failed) - (len(records) + 1) / 3) <= 1
    s = _summary(folder)
    assert s["failed"] == len(failed) and s["failure_kinds"] == {"http": len(failed)}
    (reason, count), = s["failure_reasons"].items()
    assert reason.startswith("HTTP 500: simulated internal server error") and count == len(failed)
    assert f"failed: {len(failed)} x HTTP 500" in res.out
    assert "HTTP 500" in (folder / "locust_failures.csv").read_text()


# ---------------------------------------------------------------- open loop


def test_qps_mode_keeps_the_schedule_and_records_due_and_sent_times(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--qps", "5", "--arrival", "constant", "--users", "8",
                     "--run-time", "3s", "--max-tokens", "4")
    assert res.code == 0, res.text
    records = metrics.read_records(_report_dir(project) / "records.jsonl")
    dues = sorted(r["due"] for r in records)
    assert 12 <= len(dues) <= 15
    gaps = [b - a for a, b in zip(dues, dues[1:], strict=False)]
    assert gaps == pytest.approx([0.2] * len(gaps), abs=1e-3)  # constant arrivals, 1/5 s apart
    for r in records:
        assert r["start"] - r["due"] == pytest.approx(r["lag_ms"] / 1000, abs=0.01)
    s = _summary(_report_dir(project))
    # the schedule ends when Locust stops (its clock starts before the users' warm-up): every request due
    # was sent and answered, none is left to be cut off
    assert s["scheduled"] == len(records) and s["never_sent"] == 0
    assert not any(r["cancelled"] for r in records)
    assert s["median_send_lag_ms"] < metrics.LATE_MS


def test_qps_mode_flags_a_client_that_falls_behind(project, demo):
    server = demo()
    # one user can finish about 3 requests a second (100 ms + 9 x 20 ms each); 20 a second are asked for
    res = _load_test(project, "--url", server.url, "--qps", "20", "--arrival", "constant", "--users", "1",
                     "--run-time", "3s", "--max-tokens", "10")
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    assert s["fell_behind"] is True
    assert s["max_send_lag_ms"] > 1000
    assert s["median_ttft_from_due_ms"] > s["median_ttft_ms"] + 500  # what on-schedule users would have waited
    assert "fell behind its schedule" in res.out and "coordinated omission" in res.out
    # about 60 were due in 3 s; the ~10 the one user sent are not all: the rest were never sent, and late
    assert s["scheduled"] >= 55 and s["sent"] == len(metrics.read_records(_report_dir(project) / "records.jsonl"))
    assert s["never_sent"] == s["scheduled"] - s["sent"] > 40
    assert s["late_requests"] >= s["never_sent"] and s["late_fraction"] > 0.9
    assert "the only user was busy at once" in res.out and "--users caps the requests in flight" in res.out


def test_qps_from_the_command_line_is_not_capped_by_the_blocks_closed_loop_users(project, demo):
    server = demo()
    # the block's `--users 1` is for its closed loop; a --qps run from the command line gets the open loop's cap
    _agents_with_load_test(project, server.port, "--users 1 --spawn-rate 1 --run-time 3s --max-tokens 4")
    res = _load_test(project, "--url", server.url, "--qps", "8", "--arrival", "constant")
    assert res.code == 0, res.text
    folder = _report_dir(project)
    s = _summary(folder)
    assert s["max_concurrency"] == options.DEFAULT_QPS_USERS and s["options"]["run_time_s"] == 3
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["options"]["users"] == options.DEFAULT_QPS_USERS and plan["options"]["qps"] == 8
    assert s["completed"] >= 1


# ---------------------------------------------------------------- scale


def test_two_workers_records_are_merged(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--workers", "2", "--users", "4", "--run-time", "3s",
                     "--max-tokens", "8")
    assert res.code == 0, res.text
    folder = _report_dir(project)
    records = metrics.read_records(folder / "records.jsonl")
    assert {r["worker"] for r in records} == {0, 1}
    assert len({r["id"] for r in records}) == len(records)
    assert [r["start"] for r in records] == sorted(r["start"] for r in records)
    assert {c["worker"] for c in metrics.read_records(folder / "client.jsonl")} == {0, 1}
    s = _summary(folder)
    assert s["completed"] == sum(1 for r in records if r["ok"])
    assert set(s["client"]["workers"]) == {"0", "1"}
    assert "client process 1:" in res.out


def test_sweep_runs_each_level_and_charts_them(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--sweep", "1,3", "--run-time", "2s", "--max-tokens", "8")
    assert res.code == 0, res.text
    folder = _report_dir(project)
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["complete"] is True and [r["level"] for r in sweep["rows"]] == [1, 3]
    assert (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    one, three = (_summary(folder / name) for name in ("01-users-1", "02-users-3"))
    assert one["max_concurrency"] == 1 and three["max_concurrency"] == 3
    assert three["request_throughput"] > 2 * one["request_throughput"]  # three users do about three times the work
    assert sweep["rows"][1]["median_ttft_ms"] == pytest.approx(three["median_ttft_ms"])
    assert "sweep" in res.out


# ---------------------------------------------------------------- detached


def test_detached_load_test_survives_its_terminal_and_logs_can_find_it(project, demo):
    server = demo()
    proc = project.spawn("load-test", "--url", server.url, "--users", "2", "--run-time", "3s", "--max-tokens", "8",
                         "--detach")
    child = None
    try:
        first = ""
        deadline = time.monotonic() + 30
        while "running detached" not in first and time.monotonic() < deadline:
            first = proc.stdout.readline()
        assert "running detached: pid" in first, first
        child = int(first.split("pid ")[1].split(",")[0])
        proc.kill()  # the terminal goes away
        proc.wait()
        assert psutil.pid_exists(child)
        folder = _report_dir(project)
        assert wait_for(lambda: (folder / "summary.json").exists(), timeout=40)
        assert wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie", 20)
        assert _summary(folder)["completed"] > 0
        shown = project.gpuops("logs", "--prefix", "locust", "--lines", "40")
        assert shown.code == 0 and "locust-" in shown.out and "load test finished" in shown.out
    finally:
        proc.kill()
        proc.wait()
        if child and psutil.pid_exists(child):
            os.killpg(child, signal.SIGTERM)


def test_detached_load_test_followed_to_the_end_returns_its_outcome(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--max-tokens", "8",
                     "--detach")
    assert res.code == 0, res.text
    assert "running detached" in res.out and "TTFT" in res.out and "load test finished" in res.out


# ---------------------------------------------------------------- bad input


def test_no_server_and_no_url_is_exit_6_and_makes_no_folders(project):
    res = _load_test(project, "--run-time", "2s")
    assert res.code == 6, res.text
    assert "no running server" in res.err and "--url" in res.err
    assert "Traceback" not in res.text
    assert not (project.run_dir / "load_tests").exists()


def test_a_crashed_server_is_named_with_its_log_instead_of_no_server(project, demo, tmp_path):
    server = demo()
    log = tmp_path / "server.log"
    log.write_text("INFO:     Application startup complete.\nKilled\n")
    save_record(project, server.proc, server.url, log)
    server.proc.kill()
    server.proc.wait()
    res = _load_test(project, "--run-time", "2s")
    assert res.code == 6, res.text
    assert f"server 'server' (pid {server.proc.pid}) has exited" in res.err and "no running server" not in res.err
    assert "Killed" in res.err  # the log's last lines say why
    assert not (project.run_dir / "load_tests").exists()


def test_unreachable_url_is_a_clear_error(project):
    port = free_port()
    res = _load_test(project, "--url", f"http://127.0.0.1:{port}", "--run-time", "2s")
    assert res.code == 6, res.text
    assert f"nothing answers at http://127.0.0.1:{port}" in res.err and "connection refused" in res.err
    assert "Traceback" not in res.text


def test_non_streaming_server_is_refused_unless_no_stream(project, demo):
    server = demo(env={"GPUOPS_DEMO_NO_STREAM": "1"})
    res = _load_test(project, "--url", server.url, "--run-time", "2s")
    assert res.code == 7, res.text
    assert "does not stream" in res.err and "--no-stream" in res.err
    assert not (project.run_dir / "load_tests").exists()

    res = _load_test(project, "--url", server.url, "--no-stream", "--users", "2", "--run-time", "2s",
                     "--max-tokens", "5")
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    assert s["completed"] > 0 and s["median_ttft_ms"] is None and s["median_e2el_ms"] >= TTFT_MS + 4 * ITL_MS
    assert s["total_output_tokens"] == 5 * s["completed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "--users '0': must be between 1"),
        (["--run-time", "ten"], "--run-time 'ten': must be a duration"),
        (["--qps", "-2"], "--qps '-2': must be a number > 0"),
        (["--stream", "--no-stream"], "--stream and --no-stream contradict"),
        (["--chat", "--completion"], "--chat and --completion contradict"),
        (["--sweep", "1,x"], "--sweep '1,x'"),
        (["--url", "localhost:8000"], "must be an http:// or https:// URL"),
    ],
)
def test_bad_flag_values_exit_2_with_a_clear_message(project, args, message):
    res = _load_test(project, *args)
    assert res.code == 2, res.text
    assert message in res.err and "Traceback" not in res.text


def test_out_folder_that_holds_a_report_is_never_overwritten(project):
    out = project.root / "results"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    res = _load_test(project, "--url", "http://127.0.0.1:9", "--out", str(out))
    assert res.code == 2 and "never overwrites" in res.err
    assert (out / "summary.json").read_text() == "{}"


def _stop(proc: subprocess.Popen) -> None:
    """End an `inv load-test` a test started, the way that lets it stop its Locust (SIGTERM), then for sure."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _records_appear(project) -> bool:
    parts = list((project.run_dir / "load_tests").glob("*/records-w*.jsonl"))
    return bool(parts) and parts[0].stat().st_size > 0


def _samples_appear(project) -> bool:
    parts = list((project.run_dir / "load_tests").glob("*/client-w*.jsonl"))
    return bool(parts) and parts[0].stat().st_size > 0


def _run_until(project, ready: Callable[[object], bool], act: Callable[[subprocess.Popen], None],
               *args: str) -> tuple[int, str]:
    """`inv load-test *args` in the background; once ready(project), act(proc) (kill the server, send a
    signal...); then its exit code and output when it has ended. It is always stopped."""
    proc = project.spawn("load-test", *args)
    try:
        assert wait_for(lambda: ready(project), timeout=40), f"{ready.__name__}: not within 40 s"
        act(proc)
        out, _ = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    return proc.returncode, out


def test_a_run_where_no_request_succeeds_is_exit_7_and_keeps_its_results(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--request-timeout", "0.001")
    assert res.code == 7, res.text
    assert "no request succeeded" in res.err and "partial results kept in" in res.err
    assert "request timeout" in res.err and "Traceback" not in res.text and "internal error" not in res.text
    assert "NO REQUEST SUCCEEDED" in res.out
    s = _summary(_report_dir(project))
    assert s["completed"] == 0 and s["failed"] > 0 and s["failure_kinds"].keys() <= {"timeout"}


def test_a_sweep_level_where_no_request_succeeds_ends_the_sweep_and_keeps_sweep_json(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--sweep", "1,2", "--run-time", "2s", "--request-timeout", "0.001")
    assert res.code == 7, res.text
    assert "no request succeeded (sweep level 1)" in res.err and "Traceback" not in res.text
    folder = _report_dir(project)
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["complete"] is False and [r["level"] for r in sweep["rows"]] == [1]
    assert not (folder / "02-users-2").exists()  # the next level was not run against a failing setup


def test_server_dying_before_its_first_answer_is_exit_7_with_partial_results(project, demo):
    server = demo(ttft_ms=2500)  # the load's requests are all still waiting for their first token
    save_record(project, server.proc, server.url, server.log)
    code, out = _run_until(project, _samples_appear, lambda _: server.kill(),
                           "--users", "2", "--run-time", "60s", "--max-tokens", "4")
    assert code == 7, out
    assert "partial results kept in" in out and "0 request(s) completed" in out
    assert "Traceback" not in out and "internal error" not in out
    s = _summary(_report_dir(project))
    assert s["status"] == "server_lost" and s["partial"] is True and s["completed"] == 0


def test_a_server_that_stops_answering_without_closing_connections_is_a_stall(project, demo):
    server = demo()
    # SIGSTOP: alive, connections open, answering nothing (the fixture's cleanup ends it after)
    code, out = _run_until(project, _records_appear, lambda _: os.kill(server.proc.pid, signal.SIGSTOP),
                           "--url", server.url, "--users", "2", "--run-time", "60s", "--max-tokens", "8")
    assert code == 7, out
    assert "the server stopped answering" in out and "PARTIAL RESULTS" in out and "partial results kept in" in out
    s = _summary(_report_dir(project))
    assert s["status"] == "stalled" and s["partial"] is True and s["completed"] >= 1
    assert s["cancelled"] >= 1  # the requests it never answered, cut off and not counted
    # noticed while it ran, after the stall limit of silence (not when the 60 s were over)
    silent = re.search(r"nothing received for (\d+) s while \d+ request\(s\) were in flight", s["status_reason"])
    assert silent and int(silent[1]) >= metrics.STALL_MIN_S, s["status_reason"]
    assert wait_for(lambda: _no_locust_left(project), timeout=10)


def test_server_killed_mid_run_keeps_partial_results_and_says_so(project, demo):
    server = demo()
    save_record(project, server.proc, server.url, server.log)  # found like a server gpuops started: no --url
    code, out = _run_until(project, _records_appear, lambda _: server.kill(),
                           "--users", "2", "--run-time", "60s", "--max-tokens", "30")
    assert code == 7, out
    assert "partial results kept in" in out and "Traceback" not in out
    s = _summary(_report_dir(project))
    assert s["partial"] is True and s["status"] == "server_lost"
    # what the kill cut off ends as failed (connection reset) or cancelled (the run saw the pid gone and
    # stopped first): which one is a race, so only the answers before it are certain
    assert s["completed"] >= 1
    assert (_report_dir(project) / "records.jsonl").stat().st_size > 0
    assert s["duration"] < 40  # stopped early, not after the full minute


def _no_locust_left(project) -> bool:
    def ours(p):
        try:
            return any(str(project.root) in part for part in p.cmdline()) and "locust" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    return not any(ours(p) for p in psutil.process_iter())


def test_killing_a_foreground_load_test_stops_locust_and_keeps_partial_results(project, demo):
    server = demo()
    # `kill PID`: stops it like Ctrl-C, not leaving an orphaned Locust
    code, out = _run_until(project, _records_appear, lambda proc: proc.terminate(),
                           "--url", server.url, "--users", "2", "--run-time", "60s", "--max-tokens", "8")
    assert code == 130, out
    assert "partial results kept in" in out and "Traceback" not in out
    s = _summary(_report_dir(project))
    assert s["status"] == "interrupted" and s["partial"] is True and s["completed"] >= 1
    assert wait_for(lambda: _no_locust_left(project), timeout=10)


def test_further_ctrl_c_while_stopping_are_ignored_until_the_report_is_written(project, demo):
    server = demo()

    def impatient(proc: subprocess.Popen) -> None:  # Ctrl-C, Ctrl-C, Ctrl-C...
        for _ in range(6):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)

    code, out = _run_until(project, _records_appear, impatient,
                           "--url", server.url, "--users", "2", "--run-time", "60s", "--max-tokens", "8")
    assert code == 130, out
    assert "already stopping" in out and "partial results kept in" in out and "Traceback" not in out
    s = _summary(_report_dir(project))  # the report was written in spite of the later Ctrl-C
    assert s["status"] == "interrupted" and s["partial"] is True and s["completed"] >= 1
    assert (_report_dir(project) / "records.jsonl").exists()
    assert wait_for(lambda: _no_locust_left(project), timeout=10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_web_mode_serves_locusts_ui_and_ctrl_c_writes_the_report(project, demo):
    server = demo()
    proc = project.spawn("load-test", "--url", server.url, "--web", "--users", "2", "--max-tokens", "8")
    try:
        line, deadline = "", time.monotonic() + 30
        while "web UI:" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        web = line.split("web UI: ")[1].split()[0]
        assert wait_for(lambda: _answers(web), timeout=15), "Locust's web UI did not come up"
        # what the UI's start button does
        assert requests.post(f"{web}/swarm", data={"user_count": 2, "spawn_rate": 2}, timeout=5).json()["success"]
        assert wait_for(lambda: _records_appear(project), timeout=30), "no records appeared"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
    finally:
        _stop(proc)
    assert proc.returncode == 130, out
    assert "partial results kept in" in out
    folder = _report_dir(project)
    assert _summary(folder)["completed"] >= 1
    assert "TTFT" in (folder / "locust.html").read_text()
    assert wait_for(lambda: _no_locust_left(project), timeout=10)


# ---------------------------------------------------------------- what the client sends and accepts


@dataclass
class FlakyOpenAI:
    """An OpenAI-like server whose streams cycle through: whole (without usage), cut mid-stream, an error
    event. `bodies`: the JSON of every POST, in order."""

    url: str
    bodies: list[dict]


def _chunk(h, data: bytes) -> None:
    h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    h.wfile.flush()


@pytest.fixture
def flaky_openai(scripted) -> FlakyOpenAI:
    bodies: list[dict] = []
    lock = threading.Lock()

    def respond(h):
        if h.command == "GET":
            send(h, 200, json.dumps({"data": [{"id": "scripted"}]}).encode())
            return
        body = drain(h)
        with lock:
            bodies.append(body)
            n = len(bodies) - 1
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        mode = "ok" if n == 0 else ("ok", "cut", "error")[n % 3]
        for i in range(3):
            finish = "length" if i == 2 and mode == "ok" else None
            _chunk(h, b"data: " + json.dumps({"choices": [{"text": f" t{i}", "finish_reason": finish}]}).encode()
                   + b"\n\n")
            time.sleep(0.005)
            if mode == "cut" and i == 1:
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)  # mid-stream, without the terminating chunk
                return
            if mode == "error" and i == 1:
                _chunk(h, b'data: {"error": {"message": "overloaded, try again"}}\n\n')
                _chunk(h, b"data: [DONE]\n\n")
                h.wfile.write(b"0\r\n\r\n")
                return
        _chunk(h, b"data: [DONE]\n\n")  # no usage chunk: tokens must be counted from chunks
        h.wfile.write(b"0\r\n\r\n")

    return FlakyOpenAI(scripted(respond), bodies)


def test_prompts_are_salted_and_streams_are_judged_to_the_chunk(project, flaky_openai):
    res = _load_test(project, "--url", flaky_openai.url, "--users", "2", "--run-time", "2s",
                     "--prompt-tokens", "20", "--max-tokens", "3")
    assert res.code == 0, res.text
    sent = [b for b in flaky_openai.bodies[1:]]  # the first one is the preflight request
    assert len(sent) >= 6
    prompts = [b["prompt"].split() for b in sent]
    assert all(len(p) == 20 for p in prompts)
    assert len({p[0] for p in prompts}) == len(prompts)  # a unique first word: no prefix-cache hits
    assert len({" ".join(p[1:]) for p in prompts}) == 1  # the same body after it
    assert all(b["stream_options"] == {"include_usage": True} and b["model"] == "scripted" for b in sent)
    assert all("ignore_eos" not in b for b in sent)  # an unknown server is not sent vLLM-only fields

    records = metrics.read_records(_report_dir(project) / "records.jsonl")
    ok = [r for r in records if r["ok"]]
    assert ok and all(r["tokens_from"] == "chunks" and r["output_tokens"] == 3 for r in ok)
    reasons = {r["error"] for r in records if not r["ok"] and not r["cancelled"]}
    assert any(x.startswith("the stream was cut off after 2 chunk(s)") for x in reasons), reasons
    assert "error event in the stream: overloaded, try again" in reasons
    assert "answer(s) carried no usage" in res.out


def test_flags_from_the_agents_file_can_be_turned_off_on_the_command_line(project, flaky_openai):
    project.write_agents("## Load test\n\n```bash\n--qps 50 --shared-prefix --slo-ttft-ms 1 --sweep 1,2 "
                         "--run-time 2s --users 2 --prompt-tokens 20 --max-tokens 3\n```\n")
    res = _load_test(project, "--url", flaky_openai.url, "--qps", "off", "--no-shared-prefix",
                     "--slo-ttft-ms", "off", "--sweep", "off")
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    assert s["mode"] == "users" and s["slo"] is None and s["level"] is None and s["max_concurrency"] == 2
    firsts = [b["prompt"].split()[0] for b in flaky_openai.bodies[1:]]
    assert len(firsts) >= 4 and len(set(firsts)) == len(firsts)  # salted again


def test_shared_prefix_sends_the_same_prompt_every_time(project, flaky_openai):
    res = _load_test(project, "--url", flaky_openai.url, "--users", "2", "--run-time", "2s",
                     "--prompt-tokens", "20", "--shared-prefix", "--chat")
    assert res.code == 0, res.text
    sent = flaky_openai.bodies[1:]
    assert len(sent) >= 4
    assert len({b["messages"][0]["content"] for b in sent}) == 1


# ---------------------------------------------------------------- pure helpers of the runner


@pytest.mark.parametrize(
    ("kinds", "lost"),
    [
        (["connect"] * 5, True),
        (["ok"] + ["connect"] * 5, True),
        (["connect"] * 4, False),
        (["connect"] * 4 + ["http"], False),
        (["connect", "connect", "ok", "connect", "connect", "connect"], False),
    ],
)
def test_server_lost_needs_a_run_of_refused_connections(kinds, lost):
    records = [{"error_kind": None if k == "ok" else k} for k in kinds]
    assert server_lost(records, 5) is lost


@pytest.mark.parametrize(
    ("samples", "silence"),
    [
        ({}, None),
        ({0: {"t": 100.0, "in_flight": 0, "quiet_s": 0.0}}, None),  # nothing asked: silence is not a stall
        ({0: {"t": 100.0, "in_flight": 2, "quiet_s": 12.0}}, 12.5),  # the sample is 0.5 s old
        ({0: {"t": 100.0, "in_flight": 2, "quiet_s": 12.0}, 1: {"t": 100.0, "in_flight": 1, "quiet_s": 0.1}}, 0.6),
        ({0: {"t": 90.0, "in_flight": 2, "quiet_s": 1.0}}, 3.0),  # a process that stopped sampling: at most +2 s
    ],
)
def test_silence_is_what_every_busy_load_process_heard_nothing_for(samples, silence):
    assert silence_s(samples, now=100.5) == (pytest.approx(silence) if silence is not None else None)


def test_a_sweep_chart_is_titled_by_its_levels_not_the_base_options():
    opts = options.build_options(options.merge({}, {"sweep": "1,4", "users": "4"}))
    title = sweep_title(opts, Target(url="http://h:1", model="m"))
    assert "sweep of 1, 4 users" in title and "| 4 users |" not in title


def test_a_signal_while_locust_is_being_started_is_taken_once_all_of_it_has_started():
    said: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    with runner.StopGuard(said.append) as guard:
        guard.phase = "starting"
        os.kill(os.getpid(), signal.SIGTERM)  # between two forks: noted, not raised there
        time.sleep(0.05)
        assert guard.deferred and not guard.engaged
        with pytest.raises(KeyboardInterrupt):
            guard.start_running()  # every Locust is in procs now: stopping reaps them all
        assert guard.engaged and not guard.deferred
    assert said == ["stopping as soon as Locust has started"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_server_that_accepts_but_never_answers_is_named_with_the_request_it_did_not_answer():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections queue in its backlog, unanswered
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        opts = options.build_options(options.merge({}, {"url": url}))
        with pytest.raises(ServerNotRunning, match=r"did not answer GET /v1/models within 1 s"):
            runner.preflight(Target(url=url), opts, timeout=1)


def test_record_tail_returns_only_whole_new_lines(tmp_path):
    part = tmp_path / "records-w0.jsonl"
    part.write_text('{"a": 1}\n{"a": ')
    tail = RecordTail(tmp_path)
    assert tail.read() == [{"a": 1}]
    with open(part, "a") as f:
        f.write('2}\n')
    (tmp_path / "records-w1.jsonl").write_text('{"b": 1}\n')
    assert tail.read() == [{"a": 2}, {"b": 1}]
    assert tail.read() == []


# ---------------------------------------------------------------- AGENTS.local.md


def _agents_with_load_test(project, demo_port: int, flags: str) -> None:
    project.demo_agents(demo_port)
    path = project.root / "AGENTS.local.md"
    path.write_text(path.read_text() + f"\n## Load test\n\n```bash\n{flags}\n```\n")


def test_agents_file_load_test_block_gives_defaults_that_flags_override(project, demo):
    server = demo()
    _agents_with_load_test(project, server.port, "--users 3 --run-time 2s --max-tokens 6 --prompt-tokens 10")
    res = _load_test(project, "--url", server.url, "--max-tokens", "4")
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    assert s["max_concurrency"] == 3 and s["options"]["run_time_s"] == 2  # from the block
    assert s["total_output_tokens"] == 4 * s["completed"]  # the command line wins
    assert s["total_input_tokens"] == 10 * s["completed"]


def test_a_bad_flag_in_the_agents_file_names_the_file(project, demo):
    server = demo()
    _agents_with_load_test(project, server.port, "--users 3 --userz 4")
    res = _load_test(project, "--url", server.url)
    assert res.code == 2, res.text
    assert "AGENTS.local.md" in res.err and "'--userz'" in res.err and "Traceback" not in res.text


# ---------------------------------------------------------------- --json, settings from config, the extra


def test_json_is_one_document_with_the_summary_and_the_human_text_on_stderr(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--slo-ttft-ms", "5000",
                     "--json", env={"INVOKE_GPUOPS_LOAD_MAX_TOKENS": "6"})  # a setting from the environment
    assert res.code == 0, res.text
    doc = json.loads(res.out)  # stdout holds the document and nothing else
    assert (doc["schema"], doc["task"], doc["ok"], doc["status"], doc["exit_code"]) == (1, "load-test", True,
                                                                                       "finished", 0)
    folder = _report_dir(project)
    assert doc["report_dir"] == str(folder.resolve()) and doc["mode"] == "foreground"
    assert Path(doc["log"]).is_absolute() and Path(doc["log"]).name.startswith("locust-")
    s = doc["summary"]
    assert s == _summary(folder)
    assert s["completed"] > 0 and s["total_output_tokens"] == 6 * s["completed"]
    for key in ("median_ttft_ms", "p99_tpot_ms", "mean_itl_ms", "median_e2el_ms", "request_throughput",
                "output_throughput", "total_token_throughput", "request_goodput"):
        assert s[key] is not None, key
    assert "client_bound" in s["client"] and isinstance(doc["warnings"], list)
    assert doc["target"]["url"] == server.url and doc["options"]["max_tokens"] == 6 and doc["sweep"] is None
    assert "TTFT" in res.err and "report:" in res.err  # the table and progress, for people, on stderr


def test_json_of_a_run_where_no_request_succeeds_has_the_error_and_what_was_measured(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--request-timeout", "0.001",
                     "--json")
    assert res.code == 7, res.text
    doc = json.loads(res.out)
    assert (doc["ok"], doc["exit_code"], doc["error"]["exit_code"]) == (False, 7, 7)
    assert doc["error"]["type"] == "RequestFailed" and "no request succeeded" in doc["error"]["message"]
    assert doc["summary"]["completed"] == 0 and doc["summary"]["failed"] > 0
    assert "no request succeeded" in doc["warnings"]
    assert "error: no request succeeded" in res.err and "Traceback" not in res.text


def test_json_with_detach_returns_at_once_with_the_background_runs_folder_and_log(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--max-tokens", "8",
                     "--detach", "--json")
    assert res.code == 0, res.text
    assert res.out.startswith("{"), res.text
    doc = json.loads(res.out)
    try:
        assert (doc["ok"], doc["status"], doc["mode"], doc["summary"]) == (True, "detached", "detached", None)
        folder = Path(doc["report_dir"])
        assert folder == _report_dir(project).resolve() and Path(doc["log"]).is_file()
        assert wait_for(lambda: (folder / "summary.json").exists(), timeout=40)
        assert _summary(folder)["completed"] > 0
    finally:
        if psutil.pid_exists(doc["pid"]):
            wait_for(lambda: not psutil.pid_exists(doc["pid"]) or psutil.Process(doc["pid"]).status() == "zombie",
                     timeout=20)


def test_json_with_web_is_a_usage_error_before_anything_runs(project):
    res = _load_test(project, "--url", "http://127.0.0.1:9", "--web", "--json")
    assert res.code == 2, res.text
    doc = json.loads(res.out)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 2 and "--web and --json" in doc["error"]["message"]
    assert not (project.run_dir / "load_tests").exists()


def _without(project, tmp_path, *modules: str) -> dict:
    """An environment in which `import MODULE` fails (as when the loadtest extra is not installed)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), project.env.get("PYTHONPATH")) if p)}


def test_without_locust_load_test_says_which_extra_to_install(project, tmp_path):
    res = _load_test(project, "--url", "http://127.0.0.1:9", env=_without(project, tmp_path, "locust"))
    assert res.code == 2, res.text
    assert "load-test needs the loadtest extra: pip install 'gpuops[loadtest]'" in res.err
    assert "Traceback" not in res.text and not (project.run_dir / "load_tests").exists()


def test_without_matplotlib_the_numbers_are_kept_and_the_chart_skipped_with_a_warning(project, demo, tmp_path):
    server = demo()
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "1s", "--max-tokens", "4",
                     env=_without(project, tmp_path, "matplotlib"))
    assert res.code == 0, res.text
    assert "warning: no latency chart: matplotlib is not installed (pip install 'gpuops[loadtest]')" in res.out
    folder = _report_dir(project)
    assert _summary(folder)["completed"] > 0 and not (folder / "latency.png").exists()


def test_settings_from_invoke_yaml_sit_above_the_agents_file_block(project, demo):
    server = demo()
    _agents_with_load_test(project, server.port, "--users 3 --run-time 2s --max-tokens 6")
    (project.root / "invoke.yaml").write_text("gpuops:\n  load_max_tokens: 5\n  load_users: 2\n")
    (project.root / "tasks.py").write_text("from gpuops.cli import project_tasks\n\nns = project_tasks(__file__)\n")
    inv_bin = Path(sys.executable).parent / "inv"
    proc = subprocess.run([str(inv_bin), "load-test", "--url", server.url, "--users", "1"], cwd=project.root,
                          capture_output=True, text=True, timeout=90, env=project.env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = _summary(_report_dir(project))
    assert s["max_concurrency"] == 1  # the flag over invoke.yaml
    assert s["total_output_tokens"] == 5 * s["completed"]  # invoke.yaml over the block
    assert s["options"]["run_time_s"] == 2  # the block over the built-in default
