"""What goes wrong on the way to a host, each said in one line naming the host, the cause and the fix."""

import json
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.ssh


@pytest.mark.parametrize("alias, says, hint", [
    ("wrongkey", "wrongkey: authentication failed as 'root'", "authorized_keys"),
    ("changedkey", "changedkey: host key of 127.0.0.1", "ssh-keygen -R"),
    ("refused", "refused: connection refused at 127.0.0.1", "is sshd running there"),
    ("blackhole", "blackhole: timed out connecting to 127.0.0.1", "ConnectTimeout"),
    ("no-such-host.invalid", "no-such-host.invalid: unknown host", "add a `Host` entry"),
])
def test_connection_problems_are_one_clear_line(remote, alias, says, hint):
    r = remote.gpuops("-H", alias, "status", timeout=60)
    assert r.code == 8, r.text
    assert "Traceback" not in r.text
    first = r.err.splitlines()[0]
    assert first.startswith(f"error: {says}"), r.err
    assert hint in r.err


def test_changed_host_key_is_refused_even_for_status(sshd):
    from gpuops.hosts.ssh import HostError, SshOptions, connect

    with pytest.raises(HostError) as err:
        connect("changedkey", SshOptions(ssh_config=str(sshd.ssh_config), agent=False, key_search=False))
    assert err.value.kind == "host-key" and "CHANGED" in err.value.message


def test_gpuops_missing_on_the_host_says_to_install(remote, tmp_path):
    config = remote.write_config(remote_venv=str(tmp_path / "nothing-here"))
    try:
        r = remote.gpuops("-H", "gpu1", "status")
    finally:
        remote.write_config()
    assert r.code == 8, r.text
    assert f"error: gpu1: gpuops is not installed in {tmp_path / 'nothing-here'}" in r.err
    assert "gpuops -H gpu1 install" in r.err
    assert config


def test_other_version_on_the_host_says_to_install(remote, tmp_path):
    venv = tmp_path / "oldvenv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "gpuops").write_text("#!/bin/sh\necho gpuops 0.0.1\n")
    (venv / "bin" / "gpuops").chmod(0o755)
    (venv / "lib" / "python3.11" / "site-packages" / "gpuops-0.0.1.dist-info").mkdir(parents=True)
    remote.write_config(remote_venv=str(venv))
    try:
        r = remote.gpuops("-H", "gpu1", "status")
    finally:
        remote.write_config()
    assert r.code == 8, r.text
    assert "error: gpu1: gpuops 0.0.1 is installed there, this is" in r.err
    assert "gpuops -H gpu1 install" in r.err


def test_missing_project_folder_is_named(remote, tmp_path):
    remote.write_config(remote_dir=str(tmp_path / "no-project"))
    try:
        r = remote.gpuops("-H", "gpu1", "status")
    finally:
        remote.write_config()
    assert r.code == 8, r.text
    assert f"error: gpu1: the project folder {tmp_path / 'no-project'} does not exist there" in r.err
    assert "gpuops.remote_dir" in r.err


def test_remote_python_too_old_is_refused_by_install(remote, tmp_path):
    old = tmp_path / "python3.8"
    old.write_text('#!/bin/sh\nif [ "$1" = -V ]; then echo "Python 3.8.10"; exit 0; fi\nexit 1\n')
    old.chmod(0o755)
    r = remote.gpuops("-H", "gpu1", "install", "--python", str(old), "--venv", str(tmp_path / "v"))
    assert r.code == 8, r.text
    assert "error: gpu1: remote Python 3.8.10 is too old: gpuops needs Python 3.11+" in r.err
    assert "gpuops.remote_python" in r.err
    assert not (tmp_path / "v").exists()


def test_remote_task_error_keeps_its_exit_code_and_message(remote):
    r = remote.gpuops("-H", "gpu1", "smoke", "--server", "nope")
    assert r.code not in (0, 8), r.text  # the host's own verdict (no such server), not an SSH failure
    assert "error:" in r.err and "Traceback" not in r.text


def test_env_values_arrive_intact_and_never_on_a_command_line(sshd):
    from gpuops.hosts.ssh import RemoteSite, SshOptions, connect, gpuops_script, run_script, send_env

    secret = "s3cr3t-token-$HOME-'quoted'-\"double\" spaced out"
    env = {"GPUOPS_T_SPACES": "a b  c", "GPUOPS_T_QUOTES": "it's \"x\"", "GPUOPS_T_DOLLAR": "$HOME and ${PATH} `id`",
           "GPUOPS_T_SECRET": secret}
    conn = connect("gpu1", SshOptions(ssh_config=str(sshd.ssh_config), agent=False, key_search=False))
    seen_in_ps = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                if "s3cr3t-token" in " ".join(p.info["cmdline"] or []):
                    seen_in_ps.append(p.info["cmdline"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        path = send_env(conn, env)
        script = gpuops_script(["x"], RemoteSite(venv="/nonexistent"), env_file=path).split("\n")[0]
        script += "\nsleep 0.5; python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'"
        run = run_script(conn, "gpu1", script)
    finally:
        stop.set()
        watcher.join()
        conn.close()
    got = json.loads(run.stdout)
    for key, value in env.items():
        assert got[key] == value
    assert not seen_in_ps
    assert path.startswith("~/.gpuops/tmp/env.")
    assert not (Path.home() / path[2:]).exists()  # the 0600 file is gone once read
