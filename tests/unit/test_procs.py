"""Process identity, port owners and tree stopping, with real processes and real signals."""

import os
import subprocess
import sys
import textwrap
import time

import psutil

from gpuops.server import procs
from support.fixtures import free_port, wait_for


def spawn(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], **kw)


def test_identity_needs_the_same_start_time():
    p = spawn("import time; time.sleep(30)")
    try:
        ct = psutil.Process(p.pid).create_time()
        assert procs.matches(p.pid, ct)
        assert not procs.matches(p.pid, ct - 5)  # a reused PID has another start time
    finally:
        p.kill()
        p.wait()
    assert not procs.matches(p.pid, ct)


def test_zombie_does_not_count_as_running():
    p = spawn("pass")
    ct = psutil.Process(p.pid).create_time()
    wait_for(lambda: psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE, timeout=5)
    assert not procs.matches(p.pid, ct)
    p.wait()


def test_port_owners_name_every_listener(stranger):
    port = free_port()
    srv = stranger(port)
    [owner] = procs.port_owners(port)
    assert owner.pid == srv.pid and "http.server" in owner.command
    assert procs.port_in_use(port)
    srv.kill()
    srv.wait()
    assert wait_for(lambda: not procs.port_in_use(port), timeout=5)


def test_stop_processes_takes_the_whole_group_and_reaps():
    leader = spawn("""
        import subprocess, sys, time
        for _ in range(2):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(60)
    """, start_new_session=True)
    try:
        kids = wait_for(lambda: c if len(c := psutil.Process(leader.pid).children()) == 2 else None)
        tree = procs.server_tree(leader.pid, psutil.Process(leader.pid).create_time(), leader.pid, None)
        assert {p.pid for p in tree} == {leader.pid, *(k.pid for k in kids)}
        report = procs.stop_processes(tree, pgids=[leader.pid], timeout=5)
        assert len(report.stopped) == 3 and not report.killed and not report.survivors
        assert leader.poll() is not None  # reaped by the stop (it was our child)
        assert all(not psutil.pid_exists(k.pid) or k.status() == psutil.STATUS_ZOMBIE for k in kids)
    finally:
        try:
            os.killpg(leader.pid, 9)
        except ProcessLookupError:
            pass
        leader.wait()


def test_sigterm_ignorer_is_killed_after_timeout():
    p = spawn("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """, start_new_session=True, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t0 = time.monotonic()
    report = procs.stop_processes([psutil.Process(p.pid)], pgids=[p.pid], timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert [v.pid for v in report.killed] == [p.pid]
    assert not psutil.pid_exists(p.pid)  # killed and reaped


def test_tagged_finds_processes_that_left_the_group():
    tag = f"test:{os.getpid()}:{time.time()}"
    p = spawn("import os, time; os.setsid(); time.sleep(60)", env={**os.environ, "GPUOPS_SERVER": tag})
    try:
        assert wait_for(lambda: os.getpgid(p.pid) != os.getpgid(0))  # it left our group
        assert [x.pid for x in procs.tagged(tag)] == [p.pid]
    finally:
        p.kill()
        p.wait()


def test_server_tree_ignores_a_stale_record_of_a_reused_pid():
    stranger = spawn("import time; time.sleep(60)", start_new_session=True)
    try:
        ct = psutil.Process(stranger.pid).create_time()
        assert procs.server_tree(stranger.pid, ct - 10, stranger.pid, "server:gone") == []
    finally:
        stranger.kill()
        stranger.wait()


def test_stopped_and_port_holding_commands_are_shown_with_secret_flags_masked():
    port = free_port()
    code = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen(); time.sleep(30)
    """)
    # the secret sits on the command line, as with `vllm serve ... --api-key sk-...`
    proc = subprocess.Popen([sys.executable, "-c", code, "--api-key", "sk-secret123"], start_new_session=True)
    try:
        assert wait_for(lambda: procs.port_owners(port))
        (owner,) = procs.port_owners(port)
        assert "sk-secret123" not in owner.describe() and "--api-key ****" in owner.describe()
        report = procs.stop_processes([psutil.Process(proc.pid)], pgids=[proc.pid], timeout=5)
        assert [v.pid for v in report.stopped] == [proc.pid]
        assert "sk-secret123" not in report.stopped[0].command and "--api-key ****" in report.stopped[0].command
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_processes_spawned_during_the_stop_are_killed_by_the_final_sweep():
    # a server that ignores SIGTERM and, as it dies, has respawned a worker in a session of its own
    p = spawn("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """, start_new_session=True, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    late: list[subprocess.Popen] = []

    def recollect():
        if p.poll() is not None and not late:  # after the SIGKILL: a worker appears at the last moment
            late.append(spawn("import time; time.sleep(60)", start_new_session=True))
        return [psutil.Process(x.pid) for x in late if x.poll() is None]

    try:
        report = procs.stop_processes([psutil.Process(p.pid)], pgids=[p.pid], timeout=0.3, recollect=recollect)
        assert late, "the stop never looked again after its SIGKILL"
        assert wait_for(lambda: late[0].poll() is not None, timeout=5)  # killed by the sweep, and reaped
        assert late[0].pid in {v.pid for v in report.stopped} and not report.survivors
    finally:
        for x in late:
            if x.poll() is None:
                x.kill()
            x.wait()


def test_tagged_never_lists_gpuops_or_its_ancestors():
    tag = f"test:{os.getpid()}:{time.time()}"
    # a parent that carries the tag (a shell started from the server's environment) asks for the tagged
    code = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.run([sys.executable, "-c", "from gpuops.server import procs; "
                                "print(sorted(p.pid for p in procs.tagged({tag!r})))"],
                               capture_output=True, text=True)
        import os; print(os.getpid()); print(child.stdout.strip())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GPUOPS_SERVER": tag}).stdout.split()
    parent, found = int(out[0]), out[1]
    assert str(parent) not in found and found == "[]"


def test_stop_processes_never_signals_its_own_process_group_as_a_group():
    # a tagged process sharing gpuops' own group: stopped one by one, never by killpg of our group
    p = spawn("import time; time.sleep(60)")
    try:
        report = procs.stop_processes([psutil.Process(p.pid)], pgids=[os.getpgid(0)], timeout=5)
        assert [v.pid for v in report.stopped] == [p.pid] and p.poll() is not None
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
