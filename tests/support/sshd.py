"""A real OpenSSH sshd on 127.0.0.1 for the ssh tests: throwaway keys, its own sshd_config, and a
generated ssh_config whose aliases all lead to it (or, on purpose, nowhere).

    # registered as a plugin in pyproject (addopts: -p support.sshd)

    def test_runs_a_command(sshd):
        with sshd.connection("gpu1") as c:     # a Fabric Connection through the alias, agent and key search off
            assert c.run("echo hi", hide=True).stdout == "hi\\n"

Aliases in the generated ssh_config (`sshd.ssh_config`):
    gpu1 .. gpu8   this sshd, the right key, its host key in known_hosts
    wrongkey       this sshd with a key it does not know                      -> authentication failure
    changedkey     this sshd, but known_hosts holds another key for it        -> changed host key
    refused        a loopback port nobody listens on                          -> connection refused
    blackhole      a loopback port that accepts and never speaks, 2 s timeout -> timeout

Everything stays on loopback; the sshd, its keys and files live in a temporary folder and are gone
when the session ends. Skipped when /usr/sbin/sshd is missing (`apt-get install -y openssh-server`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin") or "/usr/sbin/sshd"
ALIASES = tuple(f"gpu{i}" for i in range(1, 9))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuops-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


class Blackhole:
    """A TCP port that accepts connections and never says a word (an SSH banner timeout)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@dataclass
class Sshd:
    """The running sshd and what a client needs to reach it."""

    root: Path
    port: int
    user: str
    ssh_config: Path
    client_key: Path
    proc: subprocess.Popen
    log: Path
    aliases: tuple[str, ...] = ALIASES
    extra: dict = field(default_factory=dict)

    def connection(self, alias: str = "gpu1", **kwargs):
        """A Fabric Connection through the generated ssh_config, the agent and key search off."""
        from fabric import Config, Connection

        config = Config(runtime_ssh_path=str(self.ssh_config))
        return Connection(alias, config=config,
                          connect_kwargs={"allow_agent": False, "look_for_keys": False}, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sessions(self) -> list[int]:
        """PIDs of this sshd's per-connection processes (monitor, network child, the commands they run)."""
        import psutil

        pids = []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        for p in children:
            try:
                if p.name().startswith("sshd"):
                    pids.append(p.pid)
            except psutil.Error:
                continue
        return pids

    def wait_for_command(self, word: str, timeout: float = 30.0) -> bool:
        """Wait until a command run through this sshd has `word` in its command line (e.g. a `tail -F`)."""
        import psutil

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            for p in children:
                try:
                    if word in " ".join(p.cmdline()):
                        return True
                except psutil.Error:
                    continue
            time.sleep(0.05)
        return False

    def drop_connections(self) -> int:
        """Kill every connection from the server side (SIGKILL), as a dropped network would; how many."""
        pids = self.sessions()
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        return len(pids)


def _wait_for_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on port {port}:\n{log.read_text(errors='replace')}")


def write_ssh_config(path: Path, *, port: int, user: str, key: Path, known_hosts: Path, wrong_key: Path,
                     changed_known_hosts: Path, refused_port: int, blackhole_port: int,
                     aliases=ALIASES) -> None:
    common = ("    HostName 127.0.0.1\n"
              f"    User {user}\n"
              "    StrictHostKeyChecking yes\n"
              "    ConnectTimeout 5\n")
    blocks = [f"Host {alias}\n{common}    Port {port}\n    IdentityFile {key}\n"
              f"    UserKnownHostsFile {known_hosts}\n" for alias in aliases]
    blocks.append(f"Host wrongkey\n{common}    Port {port}\n    IdentityFile {wrong_key}\n"
                  f"    UserKnownHostsFile {known_hosts}\n")
    blocks.append(f"Host changedkey\n{common}    Port {port}\n    IdentityFile {key}\n"
                  f"    UserKnownHostsFile {changed_known_hosts}\n")
    blocks.append(f"Host refused\n{common}    Port {refused_port}\n    IdentityFile {key}\n"
                  f"    UserKnownHostsFile {known_hosts}\n")
    blocks.append(f"Host blackhole\n    HostName 127.0.0.1\n    User {user}\n    Port {blackhole_port}\n"
                  f"    ConnectTimeout 2\n    IdentityFile {key}\n    UserKnownHostsFile {known_hosts}\n")
    path.write_text("\n".join(blocks))


@contextlib.contextmanager
def running_sshd(root: Path):
    """The system's sshd as a child on 127.0.0.1, its keys and configs in `root`; stopped on exit.
    (The `sshd` fixture; benchmarks use it directly.)"""
    root.chmod(0o755)
    host_key = _keygen(root / "host_key")
    client_key = _keygen(root / "client_key")
    wrong_key = _keygen(root / "wrong_key")
    _keygen(root / "other_host_key")
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_key.pub").read_text())
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder, needed as root
    port = _free_port()
    user = getpass.getuser()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
        f"PidFile {root / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "MaxStartups 200\nMaxSessions 100\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n"
    )
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    blackhole = Blackhole()
    try:
        _wait_for_banner(port, proc, log)
        host_pub = (root / "host_key.pub").read_text().split()
        other_pub = (root / "other_host_key.pub").read_text().split()
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        changed = root / "known_hosts_changed"
        changed.write_text(f"[127.0.0.1]:{port} {other_pub[0]} {other_pub[1]}\n")
        ssh_config = root / "ssh_config"
        write_ssh_config(ssh_config, port=port, user=user, key=client_key, known_hosts=known_hosts,
                         wrong_key=wrong_key, changed_known_hosts=changed, refused_port=_free_port(),
                         blackhole_port=blackhole.port)
        yield Sshd(root=root, port=port, user=user, ssh_config=ssh_config, client_key=client_key, proc=proc,
                   log=log)
    finally:
        blackhole.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """The system's sshd as a child on 127.0.0.1 (one per test session), stopped at the end."""
    if not os.path.exists(SSHD):
        pytest.skip(f"no OpenSSH server at {SSHD} (apt-get install -y openssh-server)")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


class Lines:
    """A child's output read by a thread into a list, so a test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text:
                return True
            time.sleep(0.05)
        return text in self.text

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C to the child's group; SIGKILL if it does not end."""
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        except ProcessLookupError:
            return self.proc.wait()


class Remote:
    """gpuops driven over SSH as a user would (`gpuops -f CONFIG -H ...`), against the sshd above:
    a "remote" venv and project folder in a temporary folder (the host is this machine)."""

    def __init__(self, sshd: Sshd, root: Path):
        self.sshd = sshd
        self.root = root
        self.venv = root / "venv"
        self.project = root / "project"
        self.project.mkdir(exist_ok=True)
        self.config = root / "gpuops.yaml"
        self.write_config()
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", XDG_CACHE_HOME=str(root / "cache"))
        self.env.pop("GPUOPS_SERVER", None)

    def write_config(self, **extra) -> Path:
        import json

        gpuops = {"ssh_config": str(self.sshd.ssh_config), "ssh_agent": False, "ssh_key_search": False,
                  "remote_venv": str(self.venv), "remote_dir": str(self.project), **extra}
        self.config.write_text(json.dumps({"gpuops": gpuops}))  # JSON is YAML
        return self.config

    def demo_agents(self, port: int, *, folder: Path | None = None, env: str = "") -> Path:
        path = (folder or self.project) / "AGENTS.local.md"
        path.write_text(f"## Server\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.3 GPUOPS_DEMO_TTFT_MS=10 GPUOPS_DEMO_ITL_MS=2 "
                        f"{env} \\\n  {self.venv}/bin/python -m gpuops.demo --port {port}\n```\n")
        return path

    def argv(self, *args: str, config: Path | None = None) -> list[str]:
        return [self.python, "-m", "gpuops", "-f", str(config or self.config), *args]

    def gpuops(self, *args: str, timeout: float = 120, config: Path | None = None):
        from support.fixtures import Result

        proc = subprocess.run(self.argv(*args, config=config), capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=subprocess.DEVNULL, cwd=self.root)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def spawn(self, *args: str) -> Lines:
        """gpuops in its own session, its output (stdout and stderr) read into `.lines` by a thread."""
        return Lines(subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=self.env, stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True))


def _kill_demo_servers_of(folder: Path) -> None:
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if "GPUOPS_SERVER" in p.environ() and str(p.cwd()).startswith(str(folder)):
                p.kill()
        except (psutil.Error, OSError):
            continue


@pytest.fixture(scope="session")
def remote(sshd, tmp_path_factory):
    """gpuops installed over SSH (`gpuops -H gpu1 install`) into a fresh venv: the session's one install."""
    root = tmp_path_factory.mktemp("remote")
    r = Remote(sshd, root)
    done = r.gpuops("-H", "gpu1", "install", timeout=600)
    if done.code != 0:
        raise RuntimeError(f"gpuops -H gpu1 install failed ({done.code}):\n{done.text}")
    r.install_output = done
    site = next((r.venv / "lib").glob("python3*/site-packages"))
    r.installed = sorted(p.name for p in site.iterdir())  # as the lean install left it (tests add extras later)
    yield r
    _kill_demo_servers_of(root)
