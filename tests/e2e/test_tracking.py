"""A launched server is never left untracked, and an unusable run folder or state record is one clear error.

Every test drives the real CLI in a throwaway project against the demo server. The interrupts land at
exact points of a start: gpuops pauses there when GPUOPS_TEST_PAUSE names the point (it creates
SYNC/paused-POINT and waits for SYNC/resume-POINT, see gpuops/server/launch.py), so nothing depends on
how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gpuops.server import procs
from gpuops.server.launch import OUTPUT_MARK
from support.fixtures import live_tagged, wait_for

START = ("start-server", "--no-follow", "--no-smoke")




def start_paused(project, point: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`start-server` running in the background, paused at `point` (returns once it is there)."""
    sync = project.root / "sync"
    sync.mkdir(exist_ok=True)
    proc = project.spawn(*START, *args, env={"GPUOPS_TEST_PAUSE": point, "GPUOPS_TEST_SYNC": str(sync)})
    if not wait_for(lambda: (sync / f"paused-{point}").exists() or proc.poll() is not None, timeout=60):
        proc.kill()
        pytest.fail(f"start-server never reached {point}")
    assert proc.poll() is None, proc.communicate()[0]
    return proc, sync


def resume(sync: Path, point: str) -> None:
    (sync / f"resume-{point}").touch()


def server_output(project) -> str:
    """What the server itself wrote into the newest log (after gpuops' header)."""
    logs = sorted((project.run_dir / "server_logs").glob("server-*.log"))
    text = logs[-1].read_text()
    assert OUTPUT_MARK in text
    return text.split(OUTPUT_MARK, 1)[1]


def tracked_pid(project) -> int | None:
    """The PID of the live server the state record names, None when it names none that lives."""
    path = project.run_dir / "state" / "server.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return rec["pid"] if procs.matches(rec["pid"], rec["create_time"]) else None


# ---------------------------------------------------------------- Ctrl-C at every point of a start


@pytest.mark.parametrize(("point", "left"), [
    ("launch", "none"),  # the log exists, nothing launched yet
    ("record", "none"),  # launched at its gate, no record yet
    ("release", "none"),  # record saved, the command not yet let through
    ("released", "tracked"),  # running and recorded
    ("watching", "tracked"),  # loading (the demo takes long to load), watched by this start
])
def test_ctrl_c_at_any_point_of_a_start_leaves_a_tracked_server_or_none(project, port, point, left):
    project.demo_agents(port, env="GPUOPS_DEMO_LOAD_SECONDS=60")
    if point == "watching":
        proc = project.spawn(*START)
        assert wait_for(lambda: tracked_pid(project) and "Loading" in server_output(project), timeout=60)
    else:
        proc, _ = start_paused(project, point)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: the server sits in its own session, out of reach
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "internal error" not in out and "Traceback" not in out
    if left == "none":
        assert wait_for(lambda: not live_tagged(project.root)), [p.cmdline() for p in live_tagged(project.root)]
        assert tracked_pid(project) is None
        assert not (project.run_dir / "state" / "server.json").exists()  # no record of a server that never ran
        assert server_output(project) == ""  # the command never ran
    else:
        pid = tracked_pid(project)
        assert pid is not None, out
        assert "still starting" in out and "stop-server" in out
        assert {p.pid for p in live_tagged(project.root)} == {pid}  # nothing else of it runs untracked
        stop = project.gpuops("stop-server", "--timeout", "2", timeout=60)
        assert stop.code == 0 and f"pid {pid}" in stop.out, stop.text
        assert wait_for(lambda: not live_tagged(project.root))


def test_gpuops_killed_before_the_record_is_saved_never_lets_the_server_run(project, port):
    """Even kill -9 of gpuops, which no handler sees, leaves no untracked server: the gate reads end of input."""
    project.demo_agents(port)
    proc, _ = start_paused(project, "record")
    gates = live_tagged(project.root)
    assert len(gates) == 1  # held at its gate
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not live_tagged(project.root))
    assert server_output(project) == ""
    assert tracked_pid(project) is None


def test_after_an_interrupted_launch_the_next_start_starts_cleanly(project, port):
    project.demo_agents(port)
    proc, _ = start_paused(project, "release")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    again = project.gpuops(*START, timeout=120)
    assert again.code == 0, again.text
    assert tracked_pid(project) is not None
    assert "stranger" not in again.text and "not this server" not in again.text


# ---------------------------------------------------------------- a record that cannot be saved


def test_a_record_that_cannot_be_saved_leaves_no_server_running(project, port):
    """The state path turns into a folder between the launch and the record: one clear error, exit 2,
    and the launched command never runs."""
    project.demo_agents(port)
    proc, sync = start_paused(project, "record")
    (project.run_dir / "state" / "server.json").mkdir()
    resume(sync, "record")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "error: cannot write do_not_commit/state/server.json: it is a folder" in out
    assert "hint: move do_not_commit/state/server.json away" in out
    assert "internal error" not in out and "Traceback" not in out
    assert wait_for(lambda: not live_tagged(project.root))
    assert server_output(project) == ""


@pytest.fixture
def small_disk(project):
    """do_not_commit/ on a 64 KiB tmpfs (needs root and mount; else skipped with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a tmpfs mount, which needs root")
    folder = project.run_dir
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")

    def fill() -> None:
        with open(folder / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:  # full
                pass

    yield fill
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_when_saving_the_record_stops_nothing_because_nothing_ran(project, port, small_disk):
    project.demo_agents(port)
    proc, sync = start_paused(project, "record")
    small_disk()
    resume(sync, "record")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "error: cannot write do_not_commit/state/server.json: no space left on its filesystem" in out
    assert "hint: free some space" in out
    assert "internal error" not in out and "Traceback" not in out
    assert wait_for(lambda: not live_tagged(project.root))
    assert not list((project.run_dir / "state").glob("server.tmp*"))  # no half-written record either


def test_disk_full_before_the_start_is_one_clear_line(project, port, small_disk):
    project.demo_agents(port)
    small_disk()
    r = project.gpuops(*START, timeout=60)
    assert r.code == 1, r.text
    assert "no space left on its filesystem" in r.err and "do_not_commit/" in r.err
    assert "internal error" not in r.text and "Traceback" not in r.text
    assert not live_tagged(project.root)


# ---------------------------------------------------------------- unusable run folders


@pytest.mark.parametrize(("make", "said"), [
    (lambda rd: rd.write_text(""), "do_not_commit is a file, not a folder"),
    (lambda rd: (rd.mkdir(), (rd / "server_logs").write_text("")), "do_not_commit/server_logs is a file, not a folder"),
    (lambda rd: (rd.mkdir(), (rd / "state").write_text("")), "do_not_commit/state is a file, not a folder"),
], ids=["do_not_commit", "server_logs", "state"])
def test_a_run_folder_that_is_a_file_is_one_clear_line_and_exit_2(project, port, make, said):
    project.demo_agents(port)
    make(project.run_dir)
    r = project.gpuops(*START, timeout=60)
    assert r.code == 2, r.text
    assert said in r.err and "move" in r.err and "away" in r.err
    assert "internal error" not in r.text and "Traceback" not in r.text
    assert not live_tagged(project.root)


def test_a_server_name_too_long_for_the_filesystem_is_one_clear_line_and_exit_2(project, port):
    name = "a" * 260
    project.write_agents(f"## Server: {name}\n\n```bash\n{sys.executable} -m gpuops.demo --port {port}\n```\n")
    r = project.gpuops(*START, timeout=60)
    assert r.code == 2, r.text
    assert "too long for the filesystem" in r.err and "shorter name" in r.err
    assert "internal error" not in r.text and "Traceback" not in r.text
    assert not live_tagged(project.root)


# ---------------------------------------------------------------- state records of the wrong shape

WRONG_SHAPES = {
    "array": "[]",
    "null": "null",
    "name only": '{"name": "x"}',
    "pid not a number": json.dumps({"name": "server", "pid": "abc", "create_time": 1.0, "pgid": 1, "tag": "t",
                                    "host": "127.0.0.1", "port": 8000, "url": "http://127.0.0.1:8000",
                                    "log_path": "x.log", "command": "x", "cwd": ".", "engine": "demo"}),
    "not JSON": "{bad",
    "empty": "",
}


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
@pytest.mark.parametrize("task", ["status", "stop-server", "smoke"])
def test_a_record_of_the_wrong_shape_is_one_clear_line_naming_it(project, port, task, body):
    project.demo_agents(port)
    (project.run_dir / "state").mkdir(parents=True)
    (project.run_dir / "state" / "server.json").write_text(body)
    r = project.gpuops(task, timeout=60)
    assert r.code in (1, 2), r.text
    assert "error: the state record do_not_commit/state/server.json is unusable: " in r.err, r.text
    assert "hint: " in r.err and "sets it aside" in r.err
    assert "internal error" not in r.text and "Traceback" not in r.text


def test_a_record_of_the_wrong_shape_is_an_error_document_under_json(project):
    (project.run_dir / "state").mkdir(parents=True)
    (project.run_dir / "state" / "server.json").write_text("[]")
    r = project.gpuops("status", "--json")
    assert r.code == 1, r.text
    doc = json.loads(r.out)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 1
    assert "server.json is unusable" in doc["error"]["message"]


@pytest.mark.parametrize("body", ["[]", "null", '{"name": "x"}', WRONG_SHAPES["pid not a number"], None],
                         ids=["array", "null", "name only", "pid not a number", "a folder"])
def test_a_corrupt_record_never_blocks_a_start_it_is_set_aside_and_said_so(project, port, body):
    project.demo_agents(port)
    state_dir = project.run_dir / "state"
    state_dir.mkdir(parents=True)
    if body is None:
        (state_dir / "server.json").mkdir()
    else:
        (state_dir / "server.json").write_text(body)
    r = project.gpuops(*START, timeout=120)
    assert r.code == 0, r.text
    moved = list(state_dir.glob("server.json.corrupt-*"))
    assert len(moved) == 1
    assert "set aside the unusable state record do_not_commit/state/server.json" in r.out
    assert f"as do_not_commit/state/{moved[0].name}" in r.out
    if body is not None:
        assert moved[0].read_text() == body  # kept as it was, for whoever wants to look
    assert tracked_pid(project) is not None
    status = json.loads(project.gpuops("status", "--json").out)
    assert [s["state"] for s in status["servers"]] == ["ready"]  # the set-aside file is not read as a record


# ---------------------------------------------------------------- ready goes onto the server's own record only


@pytest.mark.parametrize("replacement", ["another server", "the same pid started at another time"])
def test_ready_is_written_only_onto_the_servers_own_record(project, port, replacement):
    """Between the watch deciding "ready" and the record being updated, the record is replaced: the
    replacement's record is left as it is (never marked ready by a watcher of another server)."""
    project.demo_agents(port)
    proc, sync = start_paused(project, "ready")
    path = project.run_dir / "state" / "server.json"
    ours = json.loads(path.read_text())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        if replacement == "another server":
            theirs = {**ours, "pid": other.pid, "pgid": other.pid, "create_time": psutil.Process(other.pid).create_time(),
                      "tag": "server:replacement", "ready_at": None}
        else:  # as if the PID had been reused: the same number, another process
            theirs = {**ours, "create_time": ours["create_time"] + 100, "tag": "server:replacement", "ready_at": None}
        path.write_text(json.dumps(theirs))
        resume(sync, "ready")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert json.loads(path.read_text()) == theirs  # untouched: no ready_at written over it
    finally:
        other.kill()
        other.wait()


def test_ready_is_written_onto_the_servers_own_record(project, port):
    """The other side of the test above: the record still its own gets ready_at."""
    project.demo_agents(port)
    proc, sync = start_paused(project, "ready")
    resume(sync, "ready")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert project.record()["ready_at"]


def test_a_full_disk_never_keeps_a_server_from_being_stopped(project, port, small_disk):
    project.demo_agents(port)
    assert project.gpuops(*START, timeout=120).code == 0
    pid = tracked_pid(project)
    small_disk()
    stop = project.gpuops("stop-server", "--timeout", "2", timeout=60)
    assert stop.code == 0, stop.text
    assert f"pid {pid}" in stop.out
    assert tracked_pid(project) is None and not live_tagged(project.root)
