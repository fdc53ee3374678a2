"""wait_until_ready against real processes writing real logs (no GPU, no demo server needed)."""

import subprocess
import sys
import textwrap

from gpuops.server.engines import ENGINES
from gpuops.server.watch import wait_until_ready


def run_script(tmp_path, body: str):
    log = tmp_path / "server.log"
    f = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-u", "-c", textwrap.dedent(body)], stdout=f, stderr=subprocess.STDOUT)
    f.close()
    return proc, log


def test_ready_line_without_health_endpoint_is_ready(tmp_path):
    proc, log = run_script(tmp_path, """
        import time
        print("Loading model"); time.sleep(0.2)
        print("Starting httpd at 127.0.0.1 on port 8080...")
        time.sleep(30)
    """)
    try:
        lines = []
        out = wait_until_ready(log, ENGINES["mlx_lm"], None, exit_code=proc.poll, write=lines.append)
        assert out.state == "ready" and "Starting httpd" in out.ready_line
        assert lines == ["Loading model", "Starting httpd at 127.0.0.1 on port 8080..."]
    finally:
        proc.kill()
        proc.wait()


def test_exit_reports_code_and_diagnosis(tmp_path):
    proc, log = run_script(tmp_path, """
        import sys
        print("Traceback (most recent call last):")
        print("RuntimeError: CUDA error: out of memory", flush=True)
        sys.exit(3)
    """)
    out = wait_until_ready(log, ENGINES["vllm"], "http://127.0.0.1:9", exit_code=proc.poll)
    assert (out.state, out.exit_code) == ("exited", 3)
    assert out.diagnosis.kind == "CUDA out of memory"


def test_last_partial_line_of_a_crashed_server_is_kept(tmp_path):
    proc, log = run_script(tmp_path, """
        import sys
        sys.stdout.write("fatal: no newline at the end"); sys.stdout.flush(); sys.exit(1)
    """)
    out = wait_until_ready(log, ENGINES["generic"], None, exit_code=proc.poll)
    assert out.state == "exited" and out.tail[-1] == "fatal: no newline at the end"


def test_silence_while_not_ready_is_a_hang(tmp_path):
    proc, log = run_script(tmp_path, """
        import time
        print("Loading model"); time.sleep(60)
    """)
    try:
        out = wait_until_ready(log, ENGINES["generic"], None, exit_code=proc.poll, hang_timeout=0.5)
        assert out.state == "hung" and out.elapsed >= 0.5 and out.quiet >= 0.5  # never before the silence
    finally:
        proc.kill()
        proc.wait()


def test_steady_output_that_never_gets_ready_times_out(tmp_path):
    proc, log = run_script(tmp_path, """
        import time
        while True:
            print("still loading"); time.sleep(0.05)
    """)
    try:
        out = wait_until_ready(log, ENGINES["generic"], None, exit_code=proc.poll, hang_timeout=5, start_timeout=0.6)
        assert out.state == "timeout"
    finally:
        proc.kill()
        proc.wait()


def test_ready_line_is_confirmed_by_health_before_ready(tmp_path):
    # the line appears, but nothing answers health for 0.5 s: not ready until it does
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, log = run_script(tmp_path, f"""
        import http.server, threading, time
        print("INFO:     Uvicorn running on http://127.0.0.1:{port}")
        time.sleep(0.5)
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers()
            def log_message(self, *a): pass
        s = http.server.HTTPServer(("127.0.0.1", {port}), H)
        print("bound", flush=True)
        s.serve_forever()
    """)
    try:
        lines = []
        out = wait_until_ready(log, ENGINES["demo"], f"http://127.0.0.1:{port}", exit_code=proc.poll,
                               write=lines.append)
        assert out.state == "ready"
        assert out.elapsed >= 0.45
    finally:
        proc.kill()
        proc.wait()


def test_a_progress_bar_redrawn_with_carriage_returns_is_output_not_a_hang(tmp_path):
    # a model download: tqdm redraws one line with \r for minutes and ends it with \n only when done
    proc, log = run_script(tmp_path, """
        import sys, time
        for i in range(30):
            sys.stdout.write(f"\\rDownloading model.safetensors: {i * 100 // 29}%"); sys.stdout.flush()
            time.sleep(0.1)
        print(); print("Starting httpd at 127.0.0.1 on port 8080...")
        time.sleep(30)
    """)
    try:
        lines = []
        out = wait_until_ready(log, ENGINES["mlx_lm"], None, exit_code=proc.poll, write=lines.append,
                               hang_timeout=1.0)
        assert out.state == "ready"
        assert lines[0].startswith("Downloading model.safetensors:")  # the bar is shown while it runs
        assert "Downloading model.safetensors: 100%" in lines  # and its final state as one line
        assert len(lines) < 10  # redraws are throttled, not one line per \r
    finally:
        proc.kill()
        proc.wait()


def test_a_health_answer_other_than_200_is_not_ready(tmp_path, scripted):
    # llama-server answers /health 503 "Loading model" while it loads, after its listening line
    import threading

    from support.fixtures import wait_for
    from support.scripted import send

    answers = {"code": 503, "hits": 0}

    def respond(h):
        answers["hits"] += 1
        send(h, answers["code"], b'{"error": {"code": 503, "message": "Loading model"}}')

    url = scripted(respond)
    log = tmp_path / "llama.log"
    log.write_text(f"main: server is listening on {url}\n")
    outcome = {}
    watcher = threading.Thread(target=lambda: outcome.update(out=wait_until_ready(
        log, ENGINES["llama.cpp"], url, exit_code=lambda: None, hang_timeout=60)), daemon=True)
    watcher.start()
    assert wait_for(lambda: answers["hits"] >= 3, timeout=20)  # asked, answered 503, asked again
    assert watcher.is_alive() and not outcome
    answers["code"] = 200
    watcher.join(timeout=20)
    assert outcome["out"].state == "ready"


def test_a_5xx_is_not_ready_even_for_servers_whose_any_answer_counts(scripted):
    from gpuops.server.health import HealthProbe
    from support.scripted import send

    url = scripted(lambda h: send(h, 503, b"Loading model"))
    assert not HealthProbe(url, ENGINES["generic"])()
    assert not HealthProbe(url, ENGINES["vllm"])()


def test_a_stuck_terminal_never_delays_the_readiness_decision(tmp_path):
    import threading

    log = tmp_path / "burst.log"
    log.write_text("".join(f"weights shard line {i}\n" for i in range(20_000))
                   + "Starting httpd at 127.0.0.1 on port 8080...\n")
    stuck = threading.Event()
    shown = []

    def terminal(line):  # a terminal that takes the first line and then blocks, as a stalled ssh pipe does
        shown.append(line)
        stuck.wait(60)

    try:
        done = {}
        watcher = threading.Thread(target=lambda: done.update(out=wait_until_ready(
            log, ENGINES["mlx_lm"], None, exit_code=lambda: None, write=terminal, say=lambda line: None)), daemon=True)
        watcher.start()
        watcher.join(timeout=30)  # returns while the terminal is still stuck
        out = done["out"]
        assert out.state == "ready" and "Starting httpd" in out.ready_line
        assert out.dropped > 0 and len(shown) < 20_000  # dropped and counted, not waited for
    finally:
        stuck.set()


def test_dropped_lines_are_said_with_where_to_read_them(tmp_path):
    import threading

    log = tmp_path / "burst.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)) + "Starting httpd at 127.0.0.1 on port 1...\n")
    release = threading.Event()
    notes = []
    try:
        out = wait_until_ready(log, ENGINES["mlx_lm"], None, exit_code=lambda: None,
                               write=lambda line: release.wait(60), say=notes.append)
        assert out.state == "ready"
        assert any(f"{out.dropped} log line(s) not shown" in n and str(log) in n for n in notes)
    finally:
        release.set()


def test_the_port_a_ready_line_names_is_learned_when_the_command_gave_none(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, log = run_script(tmp_path, f"""
        import http.server
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
            def log_message(self, *a): pass
        s = http.server.HTTPServer(("127.0.0.1", {port}), H)
        print("INFO:     Uvicorn running on http://0.0.0.0:{port} (Press CTRL+C to quit)", flush=True)
        s.serve_forever()
    """)
    try:
        notes = []
        out = wait_until_ready(log, ENGINES["demo"], "http://127.0.0.1:1", exit_code=proc.poll, port_given=False,
                               tree=lambda: [proc.pid], say=notes.append, hang_timeout=30)
        assert (out.state, out.port, out.port_learned) == ("ready", port, "ready line")
        assert out.url == f"http://127.0.0.1:{port}"
        assert any("learned the port from the ready line" in n for n in notes)
    finally:
        proc.kill()
        proc.wait()


def test_a_port_held_by_another_process_tree_is_not_ready(tmp_path, stranger):
    from support.fixtures import free_port

    port = free_port()
    other = stranger(port)  # answers every path, /health with 404: the generic engine calls that up
    proc, log = run_script(tmp_path, f"""
        import time
        print("INFO:     Uvicorn running on http://127.0.0.1:{port}", flush=True)
        time.sleep(60)
    """)
    try:
        notes = []
        out = wait_until_ready(log, ENGINES["generic"], f"http://127.0.0.1:{port}", exit_code=proc.poll,
                               tree=lambda: [proc.pid], say=notes.append, hang_timeout=1.5)
        assert out.state == "not_listening"  # printed its ready line, never listened; the stranger answered
        assert out.stranger == notes[0]
        assert f"port {port} answered, but by pid {other.pid}" in out.stranger and "not by this server" in out.stranger
    finally:
        proc.kill()
        proc.wait()
