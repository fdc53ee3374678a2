"""Trust on a shared box: ready means *this* server answers, on the port it really listens on; a stranger
on a port, a reused PID or a shell carrying a server's tag is never taken for the server, never signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from gpuops.rundir import RunDir
from gpuops.server import procs, state, stop
from support.fixtures import free_port, repo_pythonpath, save_record, wait_for

START = ("start-server", "--no-follow", "--no-smoke")


def healthy_stranger(port: int, *, env: dict | None = None) -> subprocess.Popen:
    """A process that is not ours, answering 200 on every path of `port` (a /health included)."""
    code = textwrap.dedent(f"""
        import http.server
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{{"status": "ok"}}'
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
            do_POST = do_GET
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    if not wait_for(lambda: any(o.pid == p.pid for o in procs.port_owners(port)), timeout=15):
        p.kill()
        raise RuntimeError("the stranger did not listen")
    return p


@pytest.fixture
def strangers():
    started: list[subprocess.Popen] = []

    def start(port: int, **kw) -> subprocess.Popen:
        p = healthy_stranger(port, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture
def sleeper():
    """A live process that is not the server: what a reused PID points at."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def _out_until(proc: subprocess.Popen, marker: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            break
    return "".join(seen)


# ---------------------------------------------------------------- ready means this server answers


def test_a_stranger_answering_on_the_port_while_the_server_loads_is_named_never_ready(project, port, strangers):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=hang")  # ours never binds: only the stranger answers
    starting = project.spawn(*START, "--hang-timeout", "3")
    head = _out_until(starting, "started 'server'")
    other = strangers(port)
    out, _ = starting.communicate(timeout=60)
    assert starting.returncode == 3, head + out
    assert f"port {port} answered, but by pid {other.pid}" in out and "not by this server" in out
    assert "is ready" not in out
    assert other.poll() is None  # named, never signalled


def test_a_port_missing_from_the_command_is_learned_from_the_ready_line_and_recorded(project):
    port = free_port()
    # the port sits inside a bash -c string: gpuops cannot read it from the command's words
    project.write_agents(f"## Server\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.2 bash -c "
                         f"'exec {sys.executable} -m gpuops.demo --port {port}'\n```\n")
    r = project.gpuops(*START, "--json", "--hang-timeout", "3")
    assert r.code == 0, r.text
    assert "learned the port from the ready line" in r.err
    doc = json.loads(r.out)
    assert doc["port"] == port and doc["url"] == f"http://127.0.0.1:{port}"
    assert project.record()["port"] == port  # stop, status and smoke find it there
    assert project.gpuops("smoke").code == 0


def test_a_port_neither_in_the_command_nor_in_a_ready_line_is_learned_from_the_socket(project):
    port = free_port()
    wrapper = project.root / "serve.sh"
    # a wrapper script that filters out uvicorn's "running on" line: only the socket tells the port
    wrapper.write_text(f"#!/bin/bash\nGPUOPS_DEMO_LOAD_SECONDS=0.2 {sys.executable} -m gpuops.demo --port {port} 2>&1 "
                       "| grep --line-buffered -v 'Uvicorn running'\n")
    wrapper.chmod(0o755)
    project.write_agents("## Server\n\n```bash\n./serve.sh\n```\n")
    r = project.gpuops(*START, "--engine", "demo", "--hang-timeout", "5")
    assert r.code == 0, r.text
    assert "learned the port from the listening socket" in r.out
    assert project.record()["port"] == port


def test_a_server_that_prints_its_ready_line_but_never_listens_is_reported_as_such(project, port):
    fake = project.root / "fake_server.py"
    fake.write_text(textwrap.dedent(f"""
        import time
        print("INFO:     Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)", flush=True)
        time.sleep(120)
    """))
    project.write_agents(f"## Server\n\n```bash\n{sys.executable} fake_server.py --port {port}\n```\n")
    r = project.gpuops(*START, "--engine", "uvicorn", "--hang-timeout", "2")
    assert r.code == 3, r.text
    assert "printed its ready line but is not listening on any port" in r.err
    assert "looks hung" not in r.err


# ---------------------------------------------------------------- identity: a reused PID is not the server


def _stale_record(project, sleeper, url: str) -> None:
    """A record whose PID is alive again, as another process (another start time), pointing at a live URL."""
    rec = save_record(project, sleeper, url, None)
    rec.create_time -= 100
    state.save(RunDir(project.run_dir), rec)


def test_status_does_not_take_a_reused_pid_for_the_server(project, demo, sleeper):
    _stale_record(project, sleeper, demo().url)
    [s] = json.loads(project.gpuops("status", "--json").out)["servers"]
    assert s["state"] == "exited" and s["uptime"] is None


def test_smoke_does_not_take_a_reused_pid_for_the_server(project, demo, sleeper):
    project.demo_agents(free_port())
    _stale_record(project, sleeper, demo().url)
    r = project.gpuops("smoke")
    assert r.code == 6, r.text
    assert "has exited" in r.err
    assert sleeper.poll() is None


def test_a_probe_target_by_url_does_not_take_a_reused_pid_for_the_server(project, demo, sleeper):
    from gpuops.probes.target import find_target

    server = demo()
    _stale_record(project, sleeper, server.url)
    t = find_target(RunDir(project.run_dir), url=server.url)
    assert t.record is None and "has exited" in t.note  # profile's folder, load-test's log: not the sleeper's


def test_start_does_not_reuse_a_reused_pid_as_the_running_server(project, port, demo, sleeper):
    project.demo_agents(port)
    _stale_record(project, sleeper, demo().url)  # healthy URL, live PID: only the start time tells
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    assert "already running" not in r.out and "started 'server'" in r.out
    assert project.record()["pid"] != sleeper.pid and project.record()["port"] == port
    assert sleeper.poll() is None


# ---------------------------------------------------------------- stop-server --port


def test_stop_port_stops_a_tagged_orphan_of_an_earlier_run_at_once(project, port, strangers):
    orphan = strangers(port, env={"GPUOPS_SERVER": "server:earlier-run"})
    r = project.gpuops("stop-server", "--port", str(port))
    assert r.code == 0, r.text
    assert f"stopped pid {orphan.pid}: " in r.out and f"port {port} is free" in r.out
    assert wait_for(lambda: orphan.poll() is not None, timeout=5)


def test_stop_port_names_a_process_gpuops_did_not_start_and_leaves_it_without_yes(project, port, strangers):
    other = strangers(port)
    r = project.gpuops("stop-server", "--port", str(port))  # no terminal to confirm on, no --yes
    assert r.code == 4, r.text
    assert f"pid {other.pid} ({psutil.Process(other.pid).username()}): " in r.err and "http.server" in r.err
    assert "--yes" in r.err
    assert other.poll() is None
    assert json.loads(project.gpuops("stop-server", "--port", str(port), "--json").out)["servers"][0][
        "left_alone"][0]["pid"] == other.pid


def test_stop_port_refuses_another_users_process_when_not_root_even_with_yes(port, strangers):
    other = strangers(port)
    someone_else = psutil.Process(other.pid).uids().real + 4242  # we act as another, non-root user
    result = stop.stop_port(port, yes=True, uid=someone_else, timeout=2)
    [s] = result.servers
    assert not s.running and other.poll() is None
    assert "gpuops stops only your own processes" in s.left_alone[0].reason
    assert result.error().exit_code == 4


def test_stop_port_never_signals_gpuops_itself_or_its_ancestors(project, port):
    # the process that runs `gpuops stop-server --port` (a shell, a tool) listens on that very port
    parent = textwrap.dedent(f"""
        import socket, subprocess, sys
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        r = subprocess.run([sys.executable, "-m", "gpuops", "stop-server", "--port", "{port}", "--yes"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        print(r.returncode); print(r.stdout + r.stderr)
        print("parent survived")
    """)
    p = subprocess.run([sys.executable, "-c", parent], cwd=project.root, capture_output=True, text=True, timeout=60,
                       env={**project.env, "PYTHONPATH": repo_pythonpath()}, start_new_session=True)
    assert "parent survived" in p.stdout, p.stdout + p.stderr
    assert "gpuops itself or one of its parent processes: never stopped" in p.stdout


def test_stop_never_signals_its_own_ancestor_that_inherited_the_servers_tag(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    rec = project.record()
    # a shell started from the server's environment carries its tag, and runs stop-server
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -m gpuops stop-server; echo shell-survived"],
                           cwd=project.root, capture_output=True, text=True, timeout=60,
                           env={**project.env, "GPUOPS_SERVER": rec["tag"]})
    assert shell.returncode == 0 and shell.stdout.splitlines()[-1] == "shell-survived", shell.stdout + shell.stderr
    assert "stopped 'server'" in shell.stdout
    assert not procs.matches(rec["pid"], rec["create_time"])


def test_stop_after_a_stranger_took_the_dead_servers_port_names_it_and_leaves_it(project, port, strangers):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    rec = project.record()
    os.killpg(rec["pgid"], signal.SIGKILL)  # the server dies (OOM killer) ...
    assert wait_for(lambda: not procs.matches(rec["pid"], rec["create_time"]), timeout=10)
    other = strangers(port)  # ... and someone else's server takes its port
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert f"port {port} is now held by pid {other.pid}" in r.out and "not this server: left alone" in r.out
    assert "--port" not in r.text  # no hint to kill it
    assert other.poll() is None


# ---------------------------------------------------------------- restarts, re-attaching, following


def test_a_restart_from_another_terminal_tells_the_first_watcher_who_replaced_it(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=60")
    first = project.spawn(*START)
    head = _out_until(first, "started 'server'")
    old = project.record()["pid"]
    project.demo_agents(port)  # AGENTS.local.md is read fresh: the new one loads quickly
    again = project.gpuops(*START, "--restart")
    assert again.code == 0, again.text
    new = project.record()["pid"]
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 3, head + out
    assert f"(pid {old}) was replaced before it was ready" in out and f"started pid {new}" in out
    assert "exit code" not in out


def test_ready_in_after_reattaching_counts_from_the_servers_start(project, port):
    load = 4.0  # the demo cannot answer before this many seconds after its start
    project.demo_agents(port, env=f"GPUOPS_DEMO_LOAD_SECONDS={load}")
    starting = project.spawn(*START)
    _out_until(starting, "started 'server'")
    starting.send_signal(signal.SIGINT)
    starting.communicate(timeout=20)
    rec = project.record()
    assert wait_for(lambda: time.time() - rec["started_at"] >= load / 2, timeout=load)  # half of it is over
    r = project.gpuops(*START, "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["already_running"] is False and doc["pid"] == rec["pid"]  # watched again, not reused
    assert doc["ready_in"] >= load - 0.1  # not only the half this watch saw


def test_logs_follow_moves_to_the_new_log_after_a_restart(project, port):
    import threading

    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    follower = project.spawn("logs", "--follow", "--lines", "0")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True).start()
    try:
        assert wait_for(lambda: lines, timeout=20) and "==>" in lines[0]
        assert project.gpuops(*START, "--restart").code == 0
        new_log = os.path.basename(project.record()["log_path"])
        moved = wait_for(lambda: [i for i, line in enumerate(lines) if "following it now" in line], timeout=20)
        assert moved and new_log in lines[moved[0]], lines
        assert wait_for(lambda: len(lines) > moved[0] + 1, timeout=20)  # and it goes on with the new log's lines
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)


def test_a_stranger_on_the_default_port_does_not_block_a_wrapped_command_that_names_another(project, stranger):
    """`bash -c '... --port P'`: the engine's default port is only a guess; a stranger holding it is
    noted, not a reason to refuse the start, and is left alone."""
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is in use on this machine: the test needs to hold it itself")
    held = stranger(8000)
    port = free_port()
    project.write_agents(f"## Server\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.2 bash -c "
                         f"'exec {sys.executable} -m gpuops.demo --port {port}'\n```\n")
    r = project.gpuops(*START, "--hang-timeout", "5")
    assert r.code == 0, r.text
    assert "port 8000 (the engine's default) is in use, but the command does not name its port" in r.out
    assert project.record()["port"] == port and held.poll() is None
