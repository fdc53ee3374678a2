"""Exit codes no other test holds: 70 for a bug in gpuops, 1 when a process survives SIGKILL, and a reader
that leaves early (`inv status | head -1`) is no error at all. Real processes, real pipes, real signals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from support.fixtures import Project, repo_pythonpath, save_record, wait_for

START = ("start-server", "--no-follow", "--no-smoke")

# gpuops as a user runs it, with one use case broken the way a bug breaks it
BUGGY = """
import sys
import gpuops.server.status as status
def broken(*args, **kwargs):
    raise KeyError("a bug in gpuops")
status.status = broken
sys.argv = ["gpuops", *sys.argv[1:]]
from gpuops.cli import main
main()
"""


def buggy(project: Project, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BUGGY, *args], cwd=project.root, capture_output=True, text=True,
                          timeout=60, env={**project.env, "PYTHONPATH": repo_pythonpath(), **(env or {})})


def test_a_bug_in_gpuops_is_exit_70_with_one_line_and_no_traceback(project):
    r = buggy(project, "status")
    assert r.returncode == 70, r.stderr
    assert r.stderr.splitlines() == [
        "internal error in gpuops: KeyError: 'a bug in gpuops'",
        "hint: re-run with GPUOPS_DEBUG=1 for the traceback and report it",
    ]
    assert r.stdout == ""


def test_a_bug_in_gpuops_under_json_is_an_error_document_with_exit_code_70(project):
    r = buggy(project, "status", "--json")
    assert r.returncode == 70, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["task"] == "status"
    assert doc["error"]["exit_code"] == 70 and "KeyError" in doc["error"]["message"]
    assert "Traceback" not in r.stderr


def test_gpuops_debug_shows_the_traceback_of_a_bug(project):
    r = buggy(project, "status", env={"GPUOPS_DEBUG": "1"})
    assert r.returncode == 70
    assert "Traceback (most recent call last)" in r.stderr and "in broken" in r.stderr


def _without_cap_kill() -> None:
    """In the child before exec: drop CAP_KILL from the bounding set, so the program it runs as root may
    signal only its own user's processes, as an ordinary user would."""
    import ctypes

    pr_capbset_drop, cap_kill = 24, 5
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_kill, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_KILL)")


def test_a_process_that_survives_sigkill_is_exit_1_naming_it(project):
    """The recorded server belongs to another user (nobody) and gpuops may not signal it (no CAP_KILL):
    it outlives SIGTERM and SIGKILL, and stop-server says so with exit 1 (README: "a process survived
    SIGKILL"), never success."""
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user and dropping CAP_KILL needs root")
    server = subprocess.Popen(["sleep", "600"], start_new_session=True, user=65534, group=65534, extra_groups=[])
    try:
        save_record(project, server, "http://127.0.0.1:9", None)
        r = subprocess.run([sys.executable, "-m", "gpuops", "stop-server", "--timeout", "0.5", "--json"],
                           cwd=project.root, capture_output=True, text=True, timeout=120,
                           preexec_fn=_without_cap_kill, env={**project.env, "PYTHONPATH": repo_pythonpath()})
        assert r.returncode == 1, r.stdout + r.stderr
        assert "survived SIGKILL" in r.stderr and f"pid {server.pid}" in r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is False and doc["error"]["exit_code"] == 1
        assert server.poll() is None  # it really is still there
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------- a reader that leaves: `inv ... | head -1`


def into_closed_pipe(project: Project, *args: str) -> subprocess.CompletedProcess:
    """Run gpuops with its stdout a pipe nobody reads any more (the reader, like `head -1`, has exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "gpuops", *args], cwd=project.root, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**project.env, "PYTHONPATH": repo_pythonpath()})
    finally:
        os.close(write_end)


def two_servers(project: Project, port: int, port2: int) -> None:
    project.write_agents(f"## Server\n\n```bash\n{sys.executable} -m gpuops.demo --port {port}\n```\n\n"
                         f"## Server: two\n\n```bash\n{sys.executable} -m gpuops.demo --port {port2}\n```\n")
    for name in ("server", "two"):
        r = project.gpuops(*START, "--server", name, timeout=120)
        assert r.code == 0, r.text


def running(project: Project, name: str) -> bool:
    rec = project.record(name)
    try:
        return abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) < 0.05
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("task", ["stop-server", "status", "logs"])
def test_a_closed_stdout_is_no_internal_error(project, port, task):
    project.demo_agents(port)
    assert project.gpuops(*START, timeout=120).code == 0
    r = into_closed_pipe(project, task)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 1), r.stderr  # no complaint about the reader leaving (Rich exits 1)


def test_stop_all_into_a_closed_pipe_still_stops_every_server(project, port):
    from support.fixtures import free_port

    two_servers(project, port, free_port())
    r = into_closed_pipe(project, "stop-server", "--all")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: not running(project, "server") and not running(project, "two"), timeout=30)


def test_start_into_a_closed_pipe_still_starts_the_server(project, port):
    project.demo_agents(port)
    r = into_closed_pipe(project, *START)
    assert r.returncode == 0, r.stderr
    assert (project.run_dir / "state" / "server.json").exists() and running(project, "server")
