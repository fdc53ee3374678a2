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
        assert out.state == "hung" and 0.5 <= out.elapsed < 5
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
