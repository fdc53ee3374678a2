"""start-server / stop-server / status / logs against the real demo server, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from support.fixtures import wait_for

START = ("start-server", "--no-follow", "--no-smoke")


def tagged_pids(tag: str) -> set[int]:
    found = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("GPUOPS_SERVER") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.add(p.pid)
        except (psutil.Error, OSError):
            continue
    return found


def spawn_until(project, marker: str, *args: str):
    """Start gpuops in the background and read its output until a line contains `marker`."""
    proc = project.spawn(*args)
    for line in proc.stdout:
        if marker in line:
            break
    return proc


def test_start_reports_ready_with_pid_url_and_log(project, port):
    project.demo_agents(port)
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    rec = project.record()
    assert "'server' is ready" in r.out
    assert f"pid        {rec['pid']}" in r.out
    assert f"http://127.0.0.1:{port}" in r.out
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    # the recorded pid is the server itself (python -m gpuops.demo), not a shell or tail
    assert "gpuops.demo" in " ".join(psutil.Process(rec["pid"]).cmdline())
    assert os.path.basename(rec["log_path"]).startswith("server-")
    # the log streamed to the terminal while starting, and the header is in the file
    assert "Uvicorn running on" in r.out
    log = open(project.root / rec["log_path"]).read()
    assert log.startswith("# gpuops server 'server' started")
    assert "export GPUOPS_DEMO_LOAD_SECONDS=" in log


def test_server_outlives_gpuops_and_sits_in_its_own_session(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    pid = project.record()["pid"]
    assert psutil.pid_exists(pid)
    assert os.getsid(pid) == pid  # its own session: a closed terminal's SIGHUP does not reach it
    assert os.getsid(pid) != os.getsid(0)
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_ctrl_c_while_following_stops_following_not_the_server(project, port):
    project.demo_agents(port)
    proc = project.spawn("start-server", "--no-smoke")  # follows the log after ready
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "following" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, "".join(lines) + out
    assert "still running" in out
    pid = project.record()["pid"]
    assert psutil.pid_exists(pid)
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_crash_during_loading_is_classified_with_root_cause(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=crash_oom")
    r = project.gpuops(*START)
    assert r.code == 3, r.text
    assert "exited during start-up (exit code 1)" in r.err
    assert "CUDA out of memory" in r.err
    assert "root cause: torch.OutOfMemoryError: CUDA out of memory" in r.err
    assert "inv gpus" in r.err  # the hint says what to do
    assert "Traceback (most recent call last)" not in r.err.split("last log lines:")[0]


def test_hang_is_detected_and_the_hung_server_is_stopped(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=hang")
    r = project.gpuops(*START, "--hang-timeout", "1.5")
    assert r.code == 3, r.text
    assert "looks hung" in r.err and "raise --hang-timeout" in r.err
    tag = project.record()["tag"]
    assert tagged_pids(tag) == set()
    assert json.loads(project.gpuops("status", "--json").out)["servers"][0]["state"] == "stopped"  # by gpuops, not a crash


def test_keep_on_failure_leaves_a_hung_server_running(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=hang")
    r = project.gpuops(*START, "--hang-timeout", "1", "--keep-on-failure")
    assert r.code == 3
    assert "still running" in r.err
    assert psutil.pid_exists(project.record()["pid"])


def test_start_times_out_with_overall_limit(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=30")
    r = project.gpuops(*START, "--start-timeout", "1.5")
    assert r.code == 3, r.text
    assert "not ready within the start-up limit" in r.err
    assert "raise --start-timeout" in r.err and "--hang-timeout" not in r.err  # the limit that was hit


def test_second_start_reuses_the_running_server(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    first = project.record()
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    assert "already running" in r.out and str(first["pid"]) in r.out
    assert project.record()["pid"] == first["pid"]
    assert tagged_pids(first["tag"]) == {first["pid"]}


def test_restart_stops_the_old_server_and_starts_a_new_one(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    old = project.record()
    r = project.gpuops(*START, "--restart")
    assert r.code == 0, r.text
    new = project.record()
    assert new["pid"] != old["pid"]
    assert not psutil.pid_exists(old["pid"]) or psutil.Process(old["pid"]).status() == psutil.STATUS_ZOMBIE


def test_stranger_on_the_port_is_refused_and_left_alone(project, port, stranger):
    project.demo_agents(port)
    other = stranger(port)
    r = project.gpuops(*START)
    assert r.code == 4, r.text
    assert f"port {port} is already in use" in r.err
    assert f"pid {other.pid}" in r.err and "http.server" in r.err
    assert other.poll() is None
    assert not (project.run_dir / "state" / "server.json").exists()


def test_concurrent_starts_give_exactly_one_server(project, port):
    project.demo_agents(port)
    procs = [project.spawn(*START) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert sum("started 'server'" in o for o in outs) == 1
    tag = project.record()["tag"]
    assert len(tagged_pids(tag)) == 1
    servers = [p for p in psutil.process_iter(["cmdline"])
               if p.info["cmdline"] and f"--port {port}" in " ".join(p.info["cmdline"])
               and "gpuops.demo" in " ".join(p.info["cmdline"])]
    assert len(servers) == 1


def test_stop_kills_the_whole_tree_including_workers_that_left_the_group(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_WORKERS=2 GPUOPS_DEMO_ORPHAN_WORKER=1")
    assert project.gpuops(*START).code == 0
    rec = project.record()
    tree = wait_for(lambda: t if len(t := tagged_pids(rec["tag"])) >= 4 else None, timeout=10)
    assert tree and len(tree) >= 4  # server + 2 workers + the orphan worker
    pgids = {os.getpgid(p) for p in tree}
    assert len(pgids) == 2  # the orphan really left the server's group
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert "stopped 'server'" in r.out and f"port {port} is free" in r.out
    assert tagged_pids(rec["tag"]) == set()
    assert os.path.exists(project.root / rec["log_path"])  # the log is kept


def test_stop_kills_a_server_that_ignores_sigterm_after_the_timeout(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=ignore_sigterm GPUOPS_DEMO_WORKERS=1")
    assert project.gpuops(*START).code == 0
    rec = project.record()
    t0 = time.monotonic()
    r = project.gpuops("stop-server", "--timeout", "1")
    assert r.code == 0, r.text
    assert "ignored SIGTERM and were killed" in r.out
    assert time.monotonic() - t0 >= 1.0
    assert tagged_pids(rec["tag"]) == set()


def test_stop_is_idempotent(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    assert project.gpuops("stop-server").code == 0
    again = project.gpuops("stop-server")
    assert again.code == 0
    assert "not running" in again.out


def test_stop_never_signals_a_process_whose_identity_does_not_match(project, port):
    project.demo_agents(port)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state = project.run_dir / "state"
        state.mkdir(parents=True)
        record = {"name": "server", "pid": victim.pid, "create_time": psutil.Process(victim.pid).create_time() - 100,
                  "pgid": victim.pid, "tag": "server:stale", "host": "127.0.0.1", "port": port,
                  "url": f"http://127.0.0.1:{port}", "log_path": "x.log", "command": "old", "cwd": str(project.root),
                  "engine": "demo"}
        (state / "server.json").write_text(json.dumps(record))
        r = project.gpuops("stop-server")
        assert r.code == 0, r.text
        assert "not running" in r.out
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_stop_port_with_yes_stops_a_process_gpuops_did_not_start_and_names_it(project, port, stranger):
    project.demo_agents(port)
    orphan = stranger(port)
    r = project.gpuops("stop-server", "--port", str(port), "--yes")
    assert r.code == 0, r.text
    assert "stopped 1 process(es)" in r.out and "is free" in r.out
    assert f"stopped pid {orphan.pid}: " in r.out and "http.server" in r.out  # which one, not only a count
    assert wait_for(lambda: orphan.poll() is not None, timeout=5)


def test_status_shows_ready_then_stopped(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    r = project.gpuops("status", "--json")
    assert r.code == 0, r.text
    [s] = json.loads(r.out)["servers"]
    assert (s["name"], s["state"], s["port"]) == ("server", "ready", port)
    assert s["uptime"] >= 0
    table = project.gpuops("status", env={"COLUMNS": "80"})
    assert "ready" in table.out and str(port) in table.out
    assert "\u2026" not in table.out  # a narrow terminal folds the URL and log path, never cuts them short
    project.gpuops("stop-server")
    [s] = json.loads(project.gpuops("status", "--json").out)["servers"]
    assert s["state"] == "stopped" and s["uptime"] is None  # asked for, unlike a crash ("exited")


def test_logs_are_never_overwritten_and_listed_newest_last(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    first = project.record()["log_path"]
    project.gpuops("stop-server")
    first_text = open(project.root / first).read()
    assert project.gpuops(*START).code == 0
    second = project.record()["log_path"]
    assert second != first
    assert open(project.root / first).read() == first_text
    listing = project.gpuops("logs", "--list").out.strip().splitlines()
    assert listing[-1].endswith(os.path.basename(second))
    tail = project.gpuops("logs", "--lines", "3")
    assert tail.code == 0 and os.path.basename(second) in tail.out
    assert len(tail.out.strip().splitlines()) == 4  # the ==> name <== line and 3 lines


def test_logs_follow_prints_new_lines_until_ctrl_c(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    follower = project.spawn("logs", "--follow", "--lines", "0")
    assert "==>" in follower.stdout.readline()
    requests.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
    line = follower.stdout.readline()  # uvicorn's access line for the request just made
    assert "/v1/completions" in line, line
    follower.send_signal(signal.SIGINT)
    out, _ = follower.communicate(timeout=10)
    assert follower.returncode == 0 and "stopped following" in out


def test_missing_agents_file_is_a_usage_error_and_starts_nothing(project):
    r = project.gpuops(*START)
    assert r.code == 2, r.text
    assert "AGENTS.local.md" in r.err and "Traceback" not in r.text
    assert not (project.run_dir / "state").exists()


def test_malformed_command_names_the_line(project):
    project.write_agents("## Server\n\n```bash\npython -m gpuops.demo --model 'unbalanced\n```\n")
    r = project.gpuops(*START)
    assert r.code == 2, r.text
    assert "AGENTS.local.md:4" in r.err
    assert "Traceback" not in r.text


def test_missing_program_is_named_before_anything_starts(project, port):
    project.write_agents(f"```bash\n./bin/llama-server -m model.gguf --port {port}\n```\n")
    r = project.gpuops(*START)
    assert r.code == 3, r.text
    assert "./bin/llama-server not found" in r.err
    assert not list((project.run_dir / "server_logs").glob("*.log")) if (project.run_dir / "server_logs").exists() else True


def test_missing_virtualenv_is_named_with_what_to_do(project, port):
    project.write_agents(f"```bash\ncd {project.root} && source .venv/bin/activate && python -m gpuops.demo --port {port}\n```\n")
    r = project.gpuops(*START)
    assert r.code == 3, r.text
    assert ".venv/bin/activate" in r.err and "does not exist" in r.err
    assert "virtual environment" in r.err


def test_shell_recipe_keeps_the_server_as_the_recorded_pid(project, port):
    project.write_agents(
        f"## Server\n\n```bash\ncd {project.root}\nexport GPUOPS_DEMO_LOAD_SECONDS=0.2\n"
        f"{sys.executable} -m gpuops.demo --port {port}\n```\n")
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    pid = project.record()["pid"]
    assert "gpuops.demo" in " ".join(psutil.Process(pid).cmdline())  # exec replaced bash


def test_secrets_are_masked_in_the_terminal_and_the_log(project, port):
    project.demo_agents(port, env="HF_TOKEN=hf_supersecretvalue")
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    log = open(project.root / project.record()["log_path"]).read()
    assert "hf_supersecretvalue" not in r.text and "hf_supersecretvalue" not in log
    assert "HF_TOKEN=" in log


def test_start_shows_when_where_and_the_command_with_env_as_exports_before_it_runs(project, port):
    project.demo_agents(port, env="HF_TOKEN=hf_supersecretvalue")
    r = project.gpuops(*START)
    assert r.code == 0, r.text
    before = r.out.split("started 'server'")[0]  # printed before launch: a crash still shows it
    assert f"listening on 127.0.0.1:{port}, http://127.0.0.1:{port}" in before
    assert "export GPUOPS_DEMO_LOAD_SECONDS=0.3" in before and "-m gpuops.demo --port" in before
    assert "export HF_TOKEN=" in before and "hf_supersecretvalue" not in r.text


def test_crash_that_leaves_its_workers_behind_stops_them_too(project, port):
    # like a vLLM API server dying while its engine core keeps the port and the GPUs
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=crash_oom GPUOPS_DEMO_WORKERS=1 GPUOPS_DEMO_ORPHAN_WORKER=1 "
                                  "GPUOPS_DEMO_ABANDON_WORKERS=1")
    r = project.gpuops(*START, "--stop-timeout", "2")
    assert r.code == 3, r.text
    assert "stopped 2 leftover process(es)" in r.err
    assert tagged_pids(project.record()["tag"]) == set()


def test_stop_goes_through_while_a_start_is_being_watched(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=hang")
    starting = spawn_until(project, "started 'server'", *START, "--hang-timeout", "120")
    stop = project.gpuops("stop-server", "--timeout", "2", timeout=30)
    assert stop.code == 0, stop.text
    assert "stopped 'server'" in stop.out
    out, _ = starting.communicate(timeout=30)
    assert starting.returncode == 3
    assert "was stopped (stop-server) before it was ready" in out
    assert json.loads(project.gpuops("status", "--json").out)["servers"][0]["state"] == "stopped"


def test_ctrl_c_while_starting_says_it_is_still_starting_and_a_new_start_picks_it_up(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=2")
    starting = spawn_until(project, "started 'server'", *START)
    starting.send_signal(signal.SIGINT)
    out, _ = starting.communicate(timeout=20)
    assert starting.returncode == 130, out
    assert "still starting" in out and "`inv start-server` watches it again" in out
    pid = project.record()["pid"]
    again = project.gpuops(*START)
    assert again.code == 0, again.text
    assert project.record()["pid"] == pid  # the same server, watched to ready, not a second one
    assert "# gpuops server" not in again.out  # the log header is not replayed
    assert json.loads(project.gpuops("status", "--json").out)["servers"][0]["state"] == "ready"


def test_status_asks_a_server_whose_start_was_not_watched_to_the_end(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=0.5")
    starting = spawn_until(project, "started 'server'", *START)
    starting.send_signal(signal.SIGINT)
    starting.communicate(timeout=20)
    assert wait_for(lambda: _answers(port))
    assert "ready_at" not in project.record() or not project.record()["ready_at"]  # nobody watched it to ready
    assert json.loads(project.gpuops("status", "--json").out)["servers"][0]["state"] == "ready"


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


def test_following_ends_quietly_when_the_server_is_stopped(project, port):
    project.demo_agents(port)
    follower = spawn_until(project, "following", "start-server", "--no-smoke")
    assert project.gpuops("stop-server").code == 0
    out, _ = follower.communicate(timeout=20)
    assert follower.returncode == 0, out
    assert "was stopped (stop-server); stopped following" in out


def test_a_host_that_is_not_this_machine_is_named_not_called_a_busy_port(project, port):
    project.demo_agents(port, args="--host 192.0.2.1")  # TEST-NET-1: never an address of this machine
    r = project.gpuops(*START)
    assert r.code == 2, r.text
    assert "192.0.2.1 is not an address of this machine" in r.err
    assert "already in use" not in r.err


def test_stop_reports_each_process_it_stopped(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_WORKERS=1")
    assert project.gpuops(*START).code == 0
    rec = project.record()
    wait_for(lambda: len(tagged_pids(rec["tag"])) >= 2)
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert f"pid {rec['pid']}: " in r.out and "gpuops.demo.worker" in r.out


def test_inline_env_reaches_the_server_environment(project, port):
    project.demo_agents(port, env='GPUOPS_DEMO_MODEL="model with spaces"')
    assert project.gpuops(*START).code == 0
    models = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "model with spaces"


@pytest.mark.parametrize("flag", ["--help"])
def test_every_lifecycle_flag_has_help(project, flag):
    for name in ("start-server", "stop-server", "status", "logs"):
        r = project.gpuops(name, flag)
        assert r.code == 0
        for line in r.out.splitlines():
            if line.strip().startswith("-") and "--" in line:
                assert len(line.split(None, 1)) == 2 and line.split("  ")[-1].strip(), f"{name}: {line}"


def test_stop_still_works_when_agents_file_is_broken(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    pid = project.record()["pid"]
    project.write_agents("## Server\n\n```bash\npython -m x --port 1 \\\n```\n")  # a dangling \
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert "stopping the running server 'server'" in r.out and "stopped 'server'" in r.out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_inv_from_a_subfolder_finds_the_project_files(project, port):
    project.demo_agents(port)
    (project.root / "tasks.py").write_text("from gpuops.cli import project_tasks\n\nns = project_tasks(__file__)\n")
    sub = project.root / "docs"
    sub.mkdir()

    def inv(*args):
        p = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=sub, capture_output=True, text=True,
                           timeout=60, env=project.env, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout + p.stderr

    code, out = inv(*START)
    assert code == 0, out
    assert (project.run_dir / "state" / "server.json").exists()  # the project's run folder, not docs/'s
    assert not (sub / "do_not_commit").exists()
    code, out = inv("status", "--json")
    assert json.loads(out)["servers"][0]["state"] == "ready"
    code, out = inv("stop-server")
    assert code == 0 and "stopped 'server'" in out


@pytest.mark.parametrize("args, flag", [
    (("logs", "--lines", "abc"), "--lines"),
    (("stop-server", "--port", "abc"), "--port"),
    (("stop-server", "--port", "70000"), "--port"),
    (("start-server", "--no-follow", "--hang-timeout", "abc"), "--hang-timeout"),
    (("start-server", "--no-follow", "--stop-timeout", "-1"), "--stop-timeout"),
    (("gpus", "--busy-mib", "abc"), "--busy-mib"),
])
def test_bad_numbers_are_usage_errors_naming_the_flag(project, port, args, flag):
    project.demo_agents(port)
    r = project.gpuops(*args)
    assert r.code == 2, r.text
    assert f"error: {flag} must be" in r.err
    assert "Traceback" not in r.text and "internal error" not in r.text
    assert not (project.run_dir / "state" / "server.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_server_outlives_gpuops_killed_while_following(project, port, sig):
    # a closed terminal (SIGHUP) or a killed inv must not take the server with it
    project.demo_agents(port)
    follower = spawn_until(project, "following", "start-server", "--no-smoke")
    follower.send_signal(sig)
    follower.wait(timeout=10)
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert psutil.Process(project.record()["pid"]).status() != psutil.STATUS_ZOMBIE


def test_hints_name_the_server_they_are_about(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=2", title="## Server: slow")
    starting = spawn_until(project, "started 'slow'", *START)
    starting.send_signal(signal.SIGINT)
    out, _ = starting.communicate(timeout=20)
    assert starting.returncode == 130, out
    assert "`inv start-server --server slow` watches it again" in out
    assert "`inv stop-server --server slow` stops it" in out
    assert project.gpuops("stop-server", "--server", "slow").code == 0


def test_gpuops_command_keeps_its_run_folder_beside_the_agents_file_it_was_given(project, port):
    alt = project.root / "alt"
    alt.mkdir()
    (alt / "AGENTS.local.md").write_text(project.demo_agents(port).read_text())
    (project.root / "AGENTS.local.md").unlink()
    assert project.gpuops(*START, "--agents-file", "alt/AGENTS.local.md").code == 0
    assert (alt / "do_not_commit" / "state" / "server.json").exists()
    stop = subprocess.run([sys.executable, "-m", "gpuops", "stop-server"], cwd=alt, capture_output=True, text=True,
                          timeout=60, env=project.env, stdin=subprocess.DEVNULL)
    assert stop.returncode == 0 and "stopped 'server'" in stop.stdout, stop.stdout + stop.stderr


@pytest.mark.parametrize("task", [("stop-server",), ("smoke",), ("load-test", "--run-time", "2s"),
                                  ("start-server", "--no-follow")])
def test_a_mistyped_agents_file_is_an_error_not_a_fall_back(project, port, task):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    r = project.gpuops(*task, "--agents-file", "AGENTS.lcoal.md")
    assert r.code == 2, r.text
    assert "AGENTS.lcoal.md: file not found" in r.err
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200  # nothing stopped


def test_stop_of_a_server_gpuops_never_heard_of_says_so(project, port):
    project.demo_agents(port)
    r = project.gpuops("stop-server", "--server", "nosuch")
    assert r.code == 2, r.text
    assert "no server named 'nosuch'" in r.err and "known servers: server" in r.err


def test_logs_of_a_kind_there_is_none_of_says_which_kinds_there_are(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    r = project.gpuops("logs", "--prefix", "locust")
    assert r.code == 2 and "no locust logs in" in r.err and "logs there are of: server" in r.err
