"""The tasks on a host over a real sshd: the same output and exit codes as locally, the server detached
for real, logs followed across dropped connections, several hosts in one table."""

import json

import psutil
import pytest

from support.fixtures import free_port

pytestmark = pytest.mark.ssh


@pytest.fixture
def served(remote):
    """A demo server recipe in the remote project folder; whatever it started is stopped afterwards."""
    port = free_port()
    remote.demo_agents(port)
    yield port
    remote.gpuops("-H", "gpu1", "stop-server", "--all")


def test_status_on_one_host_with_no_server_says_so(remote, tmp_path):
    remote.write_config(remote_dir=str(tmp_path))  # a project folder where nothing ever ran
    try:
        r = remote.gpuops("-H", "gpu1", "status")
    finally:
        remote.write_config()
    assert r.code == 0, r.text
    assert "no servers known" in r.text


def test_start_status_smoke_stop_on_one_host(remote, served):
    r = remote.gpuops("-H", "gpu1", "start-server", "--no-follow")
    assert r.code == 0, r.text
    assert "Application startup complete" in r.err  # the host's log, streamed here
    assert f"http://127.0.0.1:{served}" in r.text  # the ready banner

    st = remote.gpuops("-H", "gpu1", "status")
    assert st.code == 0, st.text
    assert "ready" in st.out and str(served) in st.out

    sm = remote.gpuops("-H", "gpu1", "smoke", "--json")
    assert sm.code == 0, sm.text
    doc = json.loads(sm.out)
    assert doc["ok"] is True and doc["task"] == "smoke" and doc["ssh_host"] == "gpu1"

    stop = remote.gpuops("-H", "gpu1", "stop-server")
    assert stop.code == 0, stop.text
    assert "stopped" in stop.text
    st = remote.gpuops("-H", "gpu1", "status", "--json")
    assert json.loads(st.out)["servers"][0]["state"] == "stopped"


def test_server_survives_the_ssh_connection_being_killed(remote, sshd, served):
    follower = remote.spawn("-H", "gpu1", "start-server")  # follows the log once ready
    try:
        assert follower.wait_for("following ", timeout=90), follower.text
        record = json.loads((remote.project / "do_not_commit" / "state" / "server.json").read_text())
        assert sshd.wait_for_command("tail -n")  # the follow is connected
        assert sshd.drop_connections()
        assert follower.wait_for("reconnecting", timeout=20), follower.text
    finally:
        follower.interrupt()
    assert psutil.pid_exists(record["pid"])
    st = remote.gpuops("-H", "gpu1", "status", "--json")
    assert json.loads(st.out)["servers"][0]["state"] == "ready", st.text


def test_logs_follow_reconnects_after_a_dropped_connection(remote, sshd):
    logs = remote.project / "do_not_commit" / "server_logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "server-20990101-000000.log"
    log.write_text("".join(f"old {i}\n" for i in range(5)))
    follower = remote.spawn("-H", "gpu1", "logs", "--follow", "--name", log.name, "--lines", "2")
    try:
        assert follower.wait_for("old 4"), follower.text
        with open(log, "a") as f:
            f.write("before drop\n")
        assert follower.wait_for("before drop"), follower.text
        assert sshd.drop_connections()
        with open(log, "a") as f:
            f.write("during drop\n")
        assert follower.wait_for("reconnecting"), follower.text
        with open(log, "a") as f:
            f.write("after drop\n")
        assert follower.wait_for("after drop"), follower.text
    finally:
        follower.interrupt()
    text = follower.text
    assert "old 2" not in text and "old 3" in text  # --lines 2
    assert text.count("before drop") == 1 and text.count("during drop") == 1  # nothing lost, nothing twice


def test_three_aliases_in_parallel_end_in_one_table(remote):
    r = remote.gpuops("-H", "gpu1,gpu2,gpu3", "status")
    assert r.code == 0, r.text
    for host in ("gpu1", "gpu2", "gpu3"):
        assert host in r.out
    assert "3 of 3 hosts succeeded" in r.out


def test_one_dead_host_does_not_hide_the_others(remote):
    r = remote.gpuops("-H", "gpu1,refused,gpu2", "status", "--json")
    assert r.code == 8, r.text
    doc = json.loads(r.out)
    by_host = {h["host"]: h for h in doc["hosts"]}
    assert by_host["gpu1"]["ok"] and by_host["gpu2"]["ok"]
    assert by_host["refused"]["error"]["type"] == "refused"
    human = remote.gpuops("-H", "gpu1,refused,gpu2", "status")
    assert human.code == 8
    assert "error: refused: connection refused" in human.err
    assert "2 of 3 hosts succeeded" in human.out


def test_agents_file_given_here_is_sent_along(remote, tmp_path):
    port = free_port()
    local = remote.demo_agents(port, folder=tmp_path)
    try:
        r = remote.gpuops("-H", "gpu1", "start-server", "--no-follow", "--no-smoke", "--agents-file", str(local),
                          "--json")
        assert r.code == 0, r.text
        doc = json.loads(r.out)
        assert doc["port"] == port and doc["ssh_host"] == "gpu1"
        assert (remote.project / ".gpuops-sent-AGENTS.local.md").read_text() == local.read_text()
    finally:
        remote.gpuops("-H", "gpu1", "stop-server", "--agents-file", str(local))


def test_following_several_hosts_prefixes_each_line_with_its_host(remote):
    logs = remote.project / "do_not_commit" / "server_logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "server-20990101-000002.log"
    log.write_text("first\n")
    follower = remote.spawn("-H", "gpu1,gpu2", "logs", "--follow", "--name", log.name, "--lines", "1")
    try:
        assert follower.wait_for("[gpu1] first") and follower.wait_for("[gpu2] first"), follower.text
        with open(log, "a") as f:
            f.write("second\n")
        assert follower.wait_for("[gpu1] second") and follower.wait_for("[gpu2] second"), follower.text
    finally:
        code = follower.interrupt()
    assert code == 0, follower.text
    assert "stopped following" in follower.text
