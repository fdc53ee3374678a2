"""Tests that kill surviving mutants (docs/development.md, "Mutation testing"): identity.

A PID is the same server only with the same start time; which record a task acts on (`find_running`,
`choose_server`) rests on that check. Real processes, real state records in tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import psutil
import pytest

from gpuops.errors import ServerNotRunning, UsageError
from gpuops.rundir import RunDir
from gpuops.server import procs, state
from gpuops.server.state import StateRecord
from support.fixtures import wait_for


def spawn(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], **kw)


@pytest.fixture
def sleeper():
    started = []

    def start() -> tuple[subprocess.Popen, float]:
        p = spawn("import time; time.sleep(60)")
        started.append(p)
        return p, psutil.Process(p.pid).create_time()

    yield start
    for p in started:
        p.kill()
        p.wait()


# ---------------------------------------------------------------- procs.matches


def test_a_start_time_off_either_way_is_another_process(sleeper):
    p, ct = sleeper()
    assert procs.matches(p.pid, ct + 0.01) and procs.matches(p.pid, ct - 0.01)  # clock-tick rounding
    assert not procs.matches(p.pid, ct + 5)  # later: the difference is negative, never "close"
    assert not procs.matches(p.pid, ct - 5)
    assert not procs.matches(p.pid, ct + 0.2) and not procs.matches(p.pid, ct - 0.2)


def test_a_pid_that_is_no_pid_is_no_match():
    assert procs.matches(-1, 0.0) is False  # psutil: ValueError, not a crash


# ---------------------------------------------------------------- procs.server_tree


def test_server_tree_of_a_matching_leader_has_its_descendants_and_nothing_of_a_stranger(sleeper):
    leader = spawn("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(60)
    """, start_new_session=True)
    stranger, _ = sleeper()
    try:
        [kid] = wait_for(lambda: c if len(c := psutil.Process(leader.pid).children()) == 1 else None)
        ct = psutil.Process(leader.pid).create_time()
        assert {p.pid for p in procs.server_tree(leader.pid, ct, leader.pid, None)} == {leader.pid, kid.pid}
        assert {p.pid for p in procs.server_tree(leader.pid, ct, None, None)} == {leader.pid, kid.pid}
        # not the same process: neither it, nor its children, nor (its leader living) its group
        assert procs.server_tree(leader.pid, ct - 5, leader.pid, None) == []
        assert stranger.pid not in {p.pid for p in procs.server_tree(leader.pid, ct, leader.pid, None)}
    finally:
        for p in psutil.Process(leader.pid).children(recursive=True):
            p.kill()
        leader.kill()
        leader.wait()


def _orphaned_group(env: dict | None) -> tuple[int, float, psutil.Process]:
    """A group whose leader has exited, leaving one member (started with `env`) behind."""
    leader = spawn(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={env!r})
        time.sleep(60)
    """, start_new_session=True)
    [member] = wait_for(lambda: c if len(c := psutil.Process(leader.pid).children()) == 1 else None)
    ct = psutil.Process(leader.pid).create_time()
    leader.kill()
    leader.wait()
    return leader.pid, ct, member


def test_an_orphaned_group_counts_its_members_with_a_blank_environment():
    pgid, ct, member = _orphaned_group({})  # vLLM's renamed workers: /proc/PID/environ reads empty
    try:
        assert not psutil.pid_exists(pgid)
        assert [p.pid for p in procs.server_tree(pgid, ct, pgid, "server:t")] == [member.pid]
        assert [p.pid for p in procs.server_tree(pgid, ct, pgid, None)] == [member.pid]
        # a member older than the server (by more than a second) is no member of it
        assert procs.server_tree(pgid, ct + 30, pgid, "server:t") == []
        assert procs.server_tree(pgid, ct, None, None) == []  # no group recorded: nothing to look at
    finally:
        member.kill()
        wait_for(lambda: not procs._alive(member), timeout=5)


def test_an_orphaned_group_counts_members_with_our_tag_not_a_foreign_one():
    pgid, ct, member = _orphaned_group({"GPUOPS_SERVER": "server:other", "PATH": "/usr/bin"})
    try:
        assert procs.server_tree(pgid, ct, pgid, "server:t") == []
        assert procs.server_tree(pgid, ct, pgid, None) == []
        assert procs._orphan_of(member, ct, "server:other")
        assert not procs._orphan_of(member, ct, "server:t")
        assert not procs._orphan_of(member, ct + 30, "server:other")
    finally:
        member.kill()
        wait_for(lambda: not procs._alive(member), timeout=5)


# ---------------------------------------------------------------- state: which record is the live server


def _record(name: str, pid: int, ct: float, started_at: float, **kw) -> StateRecord:
    return StateRecord(name=name, pid=pid, create_time=ct, pgid=pid, tag=f"{name}:x", host="127.0.0.1", port=8000,
                       url="http://127.0.0.1:8000", log_path="/nonexistent/server.log", command="vllm serve m",
                       cwd="/p", engine="vllm", started_at=started_at, **kw)


def test_find_running_takes_the_newest_live_record_and_never_a_reused_pid(tmp_path, sleeper):
    rd = RunDir(tmp_path)
    (a, ct_a), (b, ct_b) = sleeper(), sleeper()
    state.save(rd, _record("old", a.pid, ct_a, 100.0))
    state.save(rd, _record("new", b.pid, ct_b, 200.0))
    state.save(rd, _record("reused", b.pid, ct_b - 5, 300.0))  # newest, but its PID is someone else now
    assert state.find_running(rd).name == "new"
    assert state.find_running(rd, "old").name == "old"
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd, "reused")
    assert "server 'reused' (pid" in str(err.value) and "has exited" in str(err.value)


def test_find_running_without_records_says_where_it_looked(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd)
    assert str(err.value) == f"no running server found in {rd.state}"
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd, "vision")
    assert str(err.value) == f"no running server 'vision' found in {rd.state}"
    assert "--url" in err.value.hint and "inv start-server" in err.value.hint


def test_a_server_that_is_gone_is_named_as_stopped_or_exited(tmp_path):
    rd = RunDir(tmp_path)
    stopped = _record("server", 2**22 + 7, 1.0, 100.0, stopped_at=time.time())
    state.save(rd, stopped)
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd)
    assert "server 'server' is not running: it was stopped at" in str(err.value)
    assert "`inv start-server`" in err.value.hint
    state.save(rd, replace(stopped, stopped_at=None, started_at=50.0))
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd, "server")
    assert f"(pid {2**22 + 7}) has exited: gpuops started it at http://127.0.0.1:8000 at " in str(err.value)
    # of several gone servers, the newest is the one named
    state.save(rd, _record("later", 2**22 + 9, 1.0, 500.0))
    with pytest.raises(ServerNotRunning) as err:
        state.find_running(rd)
    assert "server 'later'" in str(err.value)


def test_choose_server_rule(tmp_path, sleeper):
    rd = RunDir(tmp_path)
    (a, ct_a), (b, ct_b) = sleeper(), sleeper()
    state.save(rd, _record("alpha", a.pid, ct_a, 300.0))
    state.save(rd, _record("gone", a.pid, ct_a - 5, 400.0))  # a reused PID never counts as running
    assert state.choose_server(rd).name == "alpha"  # the only running one
    state.save(rd, _record("beta", b.pid, ct_b, 100.0))
    assert state.choose_server(rd, "beta").name == "beta"
    assert state.choose_server(rd, default_name="beta").name == "beta"  # the first recipe's, not the newest
    assert state.choose_server(rd, default_name="alpha").name == "alpha"
    with pytest.raises(UsageError) as err:
        state.choose_server(rd, default_name="gone")
    assert str(err.value) == "2 servers are running (alpha, beta): which one?"
    assert err.value.hint == "pass --server NAME, e.g. --server alpha"
    with pytest.raises(ServerNotRunning):
        state.choose_server(rd, "gone")


def test_choose_server_with_nothing_running_names_the_default_servers_record(tmp_path):
    rd = RunDir(tmp_path)
    state.save(rd, _record("server", 2**22 + 7, 1.0, 100.0))
    state.save(rd, _record("newer", 2**22 + 9, 1.0, 900.0))
    with pytest.raises(ServerNotRunning) as err:
        state.choose_server(rd, default_name="server")
    assert "server 'server' (pid" in str(err.value)
    with pytest.raises(ServerNotRunning) as err:
        state.choose_server(rd, default_name="absent")
    assert "server 'newer' (pid" in str(err.value)  # no record of the default: the newest is named


def test_server_tree_has_grandchildren_group_members_that_left_the_tree_and_tagged_strangers():
    tag = f"server:{time.time()}"
    leader = spawn("""
        import subprocess, sys, time
        sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
        # a grandchild in a session of its own (only a descendant), and a group member whose parent exits
        subprocess.Popen([sys.executable, "-c", f"import subprocess, time; subprocess.Popen({sleep!r}, "
                          "start_new_session=True); time.sleep(60)"])
        subprocess.Popen([sys.executable, "-c", f"import subprocess; subprocess.Popen({sleep!r})"]).wait()
        print("ready", flush=True)
        time.sleep(60)
    """, start_new_session=True, stdout=subprocess.PIPE, text=True)
    tagged = spawn("import time; time.sleep(60)", start_new_session=True,
                   env={"GPUOPS_SERVER": tag, "PATH": "/usr/bin:/bin"})
    everyone = []
    try:
        leader.stdout.readline()
        ct = psutil.Process(leader.pid).create_time()
        child = [c for c in psutil.Process(leader.pid).children() if c.children()][0]
        grandchild = wait_for(lambda: (child.children() or [None])[0])
        left = wait_for(lambda: [p for p in procs.group_members(leader.pid)
                                 if p.pid not in {leader.pid, child.pid} and p.ppid() != leader.pid] or None)
        everyone = [child, grandchild, *left]
        tree = {p.pid for p in procs.server_tree(leader.pid, ct, leader.pid, tag)}
        assert tree == {leader.pid, child.pid, grandchild.pid, *(p.pid for p in left), tagged.pid}
        assert all(isinstance(p, psutil.Process) for p in procs.server_tree(leader.pid, ct, leader.pid, tag))
        assert tagged.pid not in {p.pid for p in procs.server_tree(leader.pid, ct, leader.pid, None)}
    finally:
        for p in everyone:
            p.kill()
        for p in (leader, tagged):
            p.kill()
            p.wait()


def test_orphan_rule_needs_a_start_with_or_after_the_server_and_a_live_process():
    p = spawn("import time; time.sleep(60)", env={})
    try:
        me = psutil.Process(p.pid)
        ct = me.create_time()
        assert procs._orphan_of(me, ct + 0.5, None)  # started within the second before: rounding
        assert not procs._orphan_of(me, ct + 1.5, None)  # started well before the server: not its own
    finally:
        p.kill()
        p.wait()
    assert procs._orphan_of(me, ct, None) is False  # gone


def test_ports_of_are_the_ports_these_processes_listen_on(sleeper):
    from support.fixtures import free_port

    port = free_port()
    code = f"""
        import socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen(); print("ready", flush=True); time.sleep(60)
    """
    p = spawn(code, stdout=subprocess.PIPE, text=True)
    other, _ = sleeper()
    try:
        p.stdout.readline()
        assert procs.ports_of([p.pid]) == [port]
        assert procs.ports_of(iter([other.pid, p.pid])) == [port]
        assert procs.ports_of([other.pid]) == []
    finally:
        p.kill()
        p.wait()


def test_port_in_use_binds_the_address_asked_about():
    import socket

    from support.fixtures import free_port

    port = free_port()
    assert procs.port_in_use(port, "0.0.0.0") is False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        assert procs.port_in_use(port) and procs.port_in_use(port, "0.0.0.0")
        assert procs.port_in_use(port, "127.0.0.2") is False  # another address of lo: free there
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", 0))
        except OSError:
            pass
        else:
            assert procs.port_in_use(free_port(), "::1") is False
    with pytest.raises(procs.AddressNotHere) as err:
        procs.port_in_use(port, "192.0.2.77")  # TEST-NET-1: no interface has it
    assert "192.0.2.77" in str(err.value)


def test_a_listener_gpuops_may_not_inspect_is_described_as_such():
    owner = procs.PortOwner(None, "?", "?")
    assert owner.describe() == "a process of another user (run as root, or `sudo ss -ltnp`, to see it)"
    assert procs.PortOwner(7, "ann", "vllm serve m").describe() == "pid 7 (ann): vllm serve m"


# ---------------------------------------------------------------- procs.stop_processes: what the report says


def test_a_group_member_that_is_no_target_is_stopped_through_its_group():
    leader = spawn("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("ready", flush=True)
        time.sleep(60)
    """, start_new_session=True, stdout=subprocess.PIPE, text=True)
    leader.stdout.readline()
    [member] = psutil.Process(leader.pid).children()
    try:
        report = procs.stop_processes([psutil.Process(leader.pid)], pgids=[leader.pid], timeout=5)
        assert wait_for(lambda: not procs._alive(member), timeout=5)  # only the group's SIGTERM reached it
        assert report.survivors == [] and report.killed == []
        assert 0 <= report.elapsed < 60 and report.last_exit_at is not None
    finally:
        if procs._alive(member):
            member.kill()
        leader.kill()
        leader.wait()


def test_a_sigterm_ignorer_is_reported_killed_with_its_command():
    p = spawn("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    try:
        report = procs.stop_processes([psutil.Process(p.pid)], timeout=0.3)
        assert [v.pid for v in report.killed] == [p.pid] and "SIG_IGN" in report.killed[0].command
        assert [v.pid for v in report.stopped] == [p.pid] and "SIG_IGN" in report.stopped[0].command
        assert report.survivors == []
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---------------------------------------------------------------- state: records whose identity can be trusted


def _fields(**changes) -> dict:
    from dataclasses import asdict

    return {**asdict(_record("server", 4242, 1700000000.5, 100.0)), **changes}


@pytest.mark.parametrize("changes", [{"pid": 1}, {"pgid": 0}, {"port": 1}, {"port": 65535}, {"port": None}])
def test_the_edges_of_pid_pgid_and_port_are_valid(changes):
    import json

    rec = state.record_from(json.dumps(_fields(**changes)), "server")
    assert all(getattr(rec, k) == v for k, v in changes.items())


@pytest.mark.parametrize(("changes", "reason"), [
    ({"pid": 0}, '"pid" 0 / "pgid" 4242: not a process ID'),
    ({"pgid": -1}, '"pid" 4242 / "pgid" -1: not a process ID'),
    ({"port": 0}, '"port" 0 is not a port number'),
    ({"port": 65536}, '"port" 65536 is not a port number'),
])
def test_just_past_the_edges_is_refused(changes, reason):
    import json

    with pytest.raises(ValueError) as err:
        state.record_from(json.dumps(_fields(**changes)), "server")
    assert str(err.value) == reason


def test_an_empty_record_says_so():
    for raw in ("", "  \n", b"", b" \n"):
        with pytest.raises(ValueError, match=r"^it is empty$"):
            state.record_from(raw, "server")


def test_a_corrupt_record_carries_its_reason_and_the_next_records_still_count(tmp_path):
    rd = RunDir(tmp_path)
    rd.state.mkdir(parents=True)
    (rd.state / "a.json").write_text("[]")
    (rd.state / "b.json").mkdir()
    state.save(rd, _record("c", 4242, 1.0, 100.0))
    with pytest.raises(state.CorruptRecord) as err:
        state.load(rd, "a")
    assert err.value.reason == "it holds an array, not a JSON object"
    with pytest.raises(state.CorruptRecord) as err:
        state.load(rd, "b")
    assert err.value.reason == "it is a folder, not a file"
    seen = []
    assert [r.name for r in state.all_records(rd, on_corrupt=seen.append)] == ["c"]
    assert [e.path.name for e in seen] == ["a.json", "b.json"]
