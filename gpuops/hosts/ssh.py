"""One host over SSH: a Fabric Connection, `gpuops TASK ... --json` run there, its document read back.

    opts = SshOptions(ssh_config="~/.ssh/config")
    with connect("gpu1", opts) as conn:                      # HostError (exit 8) names host, cause, fix
        run = run_gpuops(conn, "gpu1", ["status"], RemoteSite(venv="~/.gpuops/venv", dir="~/llm"))
        run.documents[0]["servers"]                           # the same document `gpuops status --json` prints

What runs on the host is one POSIX sh script: check that this gpuops version is installed in the venv
(read from its dist-info, without starting Python), `cd` into the project folder, then `exec` the
venv's gpuops with the task's flags and `--json`. The script's own failures use exit codes 94-99 so
they read as one clear line per host. Environment values travel in a 0600 file sent over SFTP and
removed by the script, never on a command line (the host's process list shows command lines).
"""

from __future__ import annotations

import json
import posixpath
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gpuops.errors import RemoteError

# exit codes of the remote script itself (gpuops' own codes are 0-8, 70, 130)
NO_FOLDER = 99
VERSION_DIFFERS = 98
GPUOPS_MISSING = 97
NO_PYTHON = 96
PYTHON_TOO_OLD = 95
VENV_FAILED = 94
MARK = "gpuops-remote:"  # the prefix of the remote script's own messages on stderr
ABORT = threading.Event()  # set on Ctrl-C: every running remote command lets go of its channel
MIN_PYTHON = (3, 11)


class HostError(RemoteError):
    """One host failed: `kind` says how (refused, auth, host-key, timeout, gpuops-missing, ...)."""

    def __init__(self, host: str, kind: str, message: str, *, hint: str | None = None, details=None,
                 exit_code: int | None = None):
        super().__init__(f"{host}: {message}", hint=hint, details=details)
        self.host = host
        self.kind = kind
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        """The error as one line (a fleet table's cell): message; hint."""
        return self.message + (f"; {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class SshOptions:
    """How to reach hosts: which ssh_config, the agent and key search (off in tests), timeouts."""

    ssh_config: str | None = None  # None: ~/.ssh/config (and /etc/ssh/ssh_config), as Fabric reads them
    connect_timeout: float = 10.0  # when the host's ssh_config has no ConnectTimeout
    agent: bool = True
    key_search: bool = True


@dataclass(frozen=True)
class RemoteSite:
    """Where gpuops lives on a host: its venv, the project folder, the version this side expects."""

    venv: str = "~/.gpuops/venv"
    dir: str = "~"
    version: str | None = None  # None: take the local gpuops version
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the remote gpuops (secrets ok)

    @property
    def expected_version(self) -> str:
        if self.version is not None:
            return self.version
        from gpuops import __version__

        return __version__


@dataclass
class RemoteRun:
    """What one remote command gave back."""

    host: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def document(self) -> dict[str, Any] | None:
        return self.documents[-1] if self.documents else None


# --- paths and quoting for a POSIX shell on the host ---


def sh_path(path: str) -> str:
    """A path for sh, quoted, with a leading ~ meaning $HOME there (not here).

    >>> sh_path("~/.gpuops/venv"), sh_path("/srv/my dir"), sh_path("~")
    ('"$HOME"/.gpuops/venv', "'/srv/my dir'", '"$HOME"')
    """
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def env_file_text(env: dict[str, str]) -> str:
    """Lines for `set -a; . FILE`: every value single-quoted, so spaces, quotes and $ arrive as typed.

    >>> print(env_file_text({"A": "x y", "B": "it's $HOME"}), end="")
    A='x y'
    B='it'"'"'s $HOME'
    """
    for key in env:
        if not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise RemoteError(f"environment name {key!r} is not a valid shell variable name")
    return "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in env.items())


def gpuops_script(argv: list[str], site: RemoteSite, *, env_file: str | None = None, check_folder: bool = True) -> str:
    """The sh script that runs `gpuops ARGV` in the host's project folder, after the version check.

    >>> print(gpuops_script(["status", "--json"], RemoteSite(venv="/v", dir="/p", version="0.1.0")))
    V=/v; D=/p
    set -- "$V"/lib/python3*/site-packages/gpuops-*.dist-info
    if [ ! -x "$V/bin/gpuops" ] || [ ! -d "$1" ]; then echo "gpuops-remote: missing $V" >&2; exit 97; fi
    v=${1##*/gpuops-}; v=${v%.dist-info}
    if [ "$v" != 0.1.0 ]; then echo "gpuops-remote: version $v" >&2; exit 98; fi
    cd "$D" 2>/dev/null || { echo "gpuops-remote: no folder $D" >&2; exit 99; }
    GPUOPS_LOCAL=1 exec "$V/bin/gpuops" status --json
    """
    lines = []
    if env_file is not None:
        f = sh_path(env_file)
        lines.append(f"set -a; . {f}; rc=$?; set +a; rm -f {f}; [ $rc = 0 ] || exit {GPUOPS_MISSING}")
    lines += [f"V={sh_path(site.venv)}; D={sh_path(site.dir)}", *version_check_lines(site)]
    if check_folder:
        lines.append(f'cd "$D" 2>/dev/null || {{ echo "{MARK} no folder $D" >&2; exit {NO_FOLDER}; }}')
    lines.append('GPUOPS_LOCAL=1 exec "$V/bin/gpuops" ' + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines)


def version_check_lines(site: RemoteSite) -> list[str]:
    """sh lines (with $V set to the venv) that exit 97 when gpuops is missing there, 98 when its version differs."""
    return [
        'set -- "$V"/lib/python3*/site-packages/gpuops-*.dist-info',
        f'if [ ! -x "$V/bin/gpuops" ] || [ ! -d "$1" ]; then echo "{MARK} missing $V" >&2; exit {GPUOPS_MISSING}; fi',
        'v=${1##*/gpuops-}; v=${v%.dist-info}',
        f'if [ "$v" != {shlex.quote(site.expected_version)} ]; then echo "{MARK} version $v" >&2; '
        f"exit {VERSION_DIFFERS}; fi",
    ]


def parse_documents(stdout: str) -> list[dict[str, Any]]:
    """Every JSON document (`{"schema": ...}`) in a remote stdout, skipping anything else a login
    shell may have printed.

    >>> [d["task"] for d in parse_documents('motd\\n{"schema": 1, "task": "status"}\\n{"schema": 1, "task": "gpus"}')]
    ['status', 'gpus']
    """
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        i = stdout.find("{", i)
        if i < 0:
            return docs
        try:
            obj, end = decoder.raw_decode(stdout, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and "schema" in obj:
            docs.append(obj)
        i = end


# --- connecting ---

_configs: dict[str | None, Any] = {}
_configs_lock = threading.Lock()


def fabric_config(ssh_config: str | None):
    """A Fabric Config reading `ssh_config` (None: the user's and the system's), made once per path."""
    import os

    from fabric import Config

    with _configs_lock:
        if ssh_config not in _configs:
            if ssh_config is None:
                _configs[None] = Config()
            else:
                path = os.path.expanduser(ssh_config)
                if not os.path.isfile(path):
                    raise RemoteError(f"ssh_config file not found: {path}", hint="fix gpuops.ssh_config")
                _configs[ssh_config] = Config(runtime_ssh_path=path)
        return _configs[ssh_config]


def connection(host: str, options: SshOptions):
    """A Fabric Connection to `host` (not opened), known_hosts loaded from the host's UserKnownHostsFile."""
    import logging
    import os

    import paramiko
    from fabric import Connection

    # paramiko's transport thread logs its own tracebacks (e.g. a banner timeout); we say it in one line
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    config = fabric_config(options.ssh_config)
    seen = config.base_ssh_config.lookup(host)
    timeout = float(seen.get("connecttimeout", options.connect_timeout))
    kwargs = {"allow_agent": options.agent, "look_for_keys": options.key_search,
              "banner_timeout": timeout, "auth_timeout": timeout}
    with _configs_lock:  # one Config shared by the threads of a fan-out: build Connections one at a time
        conn = Connection(host, config=config, connect_kwargs=kwargs,
                          connect_timeout=None if "connecttimeout" in seen else int(max(1, timeout)))
    # Fabric accepts any host key; a key that differs from known_hosts must stop us, as OpenSSH does
    files = seen.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2")
    for path in (files if isinstance(files, list) else str(files).split()):
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            conn.client.load_system_host_keys(path)  # not load_host_keys: that would also write new keys there
    if str(seen.get("stricthostkeychecking", "")).lower() == "yes":
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def connect(host: str, options: SshOptions):
    """An open Connection, or a HostError saying what failed and what to do."""
    conn = connection(host, options)
    try:
        conn.open()
    except Exception as err:  # paramiko and socket raise many kinds; each becomes one line
        if "No existing session" in str(err):  # paramiko's echo of a transport that died early
            transport = conn.client.get_transport()
            cause = getattr(transport, "saved_exception", None)
            if cause is not None:
                err = cause
            elif not getattr(transport, "remote_version", None):  # no SSH banner ever came
                err = TimeoutError("no SSH protocol banner")
        problem = connect_error(host, conn, err)
        conn.close()
        raise problem from None
    return conn


def connect_error(host: str, conn, err: BaseException) -> HostError:
    """The HostError for an exception raised while connecting."""
    import paramiko

    where = f"{conn.host}:{conn.port}" + (f" (ssh_config alias {host!r})" if conn.host != host else "")
    user = conn.user
    if isinstance(err, socket.gaierror):
        return HostError(host, "unknown-host", f"unknown host: {conn.host!r} does not resolve"
                         + ("" if conn.host != host else " and no ssh_config Host entry names it"),
                         hint="check the name, or add a `Host` entry with a HostName to ~/.ssh/config")
    if isinstance(err, paramiko.BadHostKeyException):
        return HostError(host, "host-key", f"host key of {where} CHANGED (it differs from known_hosts): refusing "
                         "to connect, it may be an impostor",
                         hint=f"if the host was reinstalled, check the new key and remove the old one: "
                              f"ssh-keygen -R '[{conn.host}]:{conn.port}'")
    if isinstance(err, paramiko.AuthenticationException):
        return HostError(host, "auth", f"authentication failed as {user!r} at {where}",
                         hint=f"check that your key is in {user}'s ~/.ssh/authorized_keys there, the IdentityFile "
                              "in ~/.ssh/config, or ssh-add; try `ssh " + host + "`")
    if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(err, ConnectionRefusedError):
        return HostError(host, "refused", f"connection refused at {where}",
                         hint="is sshd running there, and is the Port right?")
    if isinstance(err, (TimeoutError, socket.timeout)) or "banner" in str(err).lower() or "timed out" in str(err):
        return HostError(host, "timeout", f"timed out connecting to {where} (no SSH answer)",
                         hint="is the host up and reachable (VPN, ProxyJump)? ConnectTimeout in ~/.ssh/config "
                              "sets the patience")
    if isinstance(err, paramiko.SSHException) and "known_hosts" in str(err):
        return HostError(host, "host-key", f"{where} is not in known_hosts and StrictHostKeyChecking is yes",
                         hint=f"run `ssh {host}` once, check and accept its key")
    if isinstance(err, OSError):
        return HostError(host, "unreachable", f"cannot reach {where}: {err.strerror or err}",
                         hint="check the network path to the host")
    return HostError(host, "ssh", f"SSH to {where} failed: {type(err).__name__}: {err}",
                     hint=f"try `ssh {host}` to see the problem")


# --- running ---


class LineWriter:
    """A file-like sink for streamed remote output: whole lines, each with a prefix, to `write`.

    >>> got = []; w = LineWriter(got.append, "[gpu1] "); w.write("a\\nb"); w.write("c\\n"); got
    ['[gpu1] a', '[gpu1] bc']
    """

    def __init__(self, write, prefix: str = ""):
        self._write = write
        self._prefix = prefix
        self._partial = ""
        self.lines = 0

    def write(self, data: str) -> None:
        self._partial += data
        *whole, self._partial = self._partial.split("\n")
        for line in whole:
            self.lines += 1
            self._write(self._prefix + line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._partial:
            self._write(self._prefix + self._partial)
            self._partial = ""


def send_env(conn, env: dict[str, str]) -> str | None:
    """Send env as a 0600 file under ~/.gpuops/tmp on the host; its path (relative to home), or None."""
    if not env:
        return None
    text = env_file_text(env)
    sftp = conn.sftp()
    for folder in (".gpuops", ".gpuops/tmp"):
        try:
            sftp.mkdir(folder, mode=0o700)
        except OSError:
            pass  # exists
    path = posixpath.join(".gpuops/tmp", f"env.{uuid.uuid4().hex}")
    with sftp.open(path, "w") as f:
        f.chmod(0o600)  # before a byte is written
        f.write(text)
    return "~/" + path


def run_script(conn, host: str, script: str, *, stream=None, stream_out=None, timeout: float | None = None,
               stop=None) -> RemoteRun:
    """Run an sh script on the host over a plain channel: no pty (a pty would SIGHUP detached children),
    stdin closed at once. `stream` / `stream_out` get stderr / stdout lines as they arrive; setting the
    threading.Event `stop` closes the channel (the remote command then ends on its next write).

    Read here, not through Invoke's runner: Ctrl-C must end the wait (Invoke forwards it to the remote
    process, which without a pty ignores it), and a dropped connection must say so.
    """
    import codecs

    start = time.monotonic()
    err_w = LineWriter(stream) if stream else None
    out_w = LineWriter(stream_out) if stream_out else None
    out_dec = codecs.getincrementaldecoder("utf-8")("replace")
    err_dec = codecs.getincrementaldecoder("utf-8")("replace")
    out_parts: list[str] = []
    err_parts: list[str] = []
    try:
        transport = conn.client.get_transport()
        chan = transport.open_session(timeout=30)
        chan.exec_command(script)
        chan.shutdown_write()
    except Exception as exc:
        raise HostError(host, "dropped", f"the SSH connection failed: {type(exc).__name__}: {exc}",
                        hint="run the command again") from None
    try:
        while True:
            busy = False
            if chan.recv_ready():
                text = out_dec.decode(chan.recv(65536))
                out_parts.append(text)
                if out_w:
                    out_w.write(text)
                busy = True
            if chan.recv_stderr_ready():
                text = err_dec.decode(chan.recv_stderr(65536))
                err_parts.append(text)
                if err_w:
                    err_w.write(text)
                busy = True
            if busy:
                continue
            if chan.exit_status_ready() or chan.closed or chan.eof_received and not transport.is_active():
                # drain what arrived together with the exit status
                if chan.recv_ready() or chan.recv_stderr_ready():
                    continue
                break
            if not transport.is_active():
                break
            if stop is not None and stop.is_set():
                chan.close()
                break
            if ABORT.is_set():
                chan.close()
                raise HostError(host, "interrupted", "interrupted here; what runs on the host keeps running",
                                exit_code=130)
            if timeout is not None and time.monotonic() - start > timeout:
                chan.close()
                raise HostError(host, "timeout", f"the remote command ran past {timeout:g} s and was stopped")
            chan.status_event.wait(0.01)
    finally:
        for w in (err_w, out_w):
            if w is not None:
                w.close()
    code = chan.recv_exit_status() if chan.exit_status_ready() else -1
    chan.close()
    return RemoteRun(host, code, "".join(out_parts), "".join(err_parts), time.monotonic() - start)


def script_error(host: str, run: RemoteRun, site: RemoteSite) -> HostError | None:
    """The HostError for the remote script's own exit codes (not gpuops'), or None."""
    code = run.exit_code
    said = [line[len(MARK):].strip() for line in run.stderr.splitlines() if line.startswith(MARK)]
    said = said[-1] if said else ""
    install = f"gpuops -H {host} install"
    if code == GPUOPS_MISSING:
        return HostError(host, "gpuops-missing", f"gpuops is not installed in {site.venv}",
                         hint=f"run `{install}` (or set gpuops.remote_venv to where it is)")
    if code == VERSION_DIFFERS:
        theirs = said.removeprefix("version ").strip()
        return HostError(host, "version", f"gpuops {theirs} is installed there, this is {site.expected_version}",
                         hint=f"run `{install}` to bring it to {site.expected_version}")
    if code == NO_FOLDER:
        return HostError(host, "no-folder", f"the project folder {site.dir} does not exist there",
                         hint="set gpuops.remote_dir (or gpuops.host_settings." + host + ".remote_dir) to the "
                              "folder holding AGENTS.local.md on that host")
    if code == -1:
        return HostError(host, "dropped", "the SSH connection dropped before the command finished",
                         hint="run it again; a server that was starting keeps running (`gpuops -H "
                              f"{host} status`)")
    return None


def run_gpuops(conn, host: str, argv: list[str], site: RemoteSite, *, stream=None, timeout: float | None = None,
               check_folder: bool = True) -> RemoteRun:
    """`gpuops ARGV` in the host's project folder; its JSON documents parsed (ARGV should include --json)."""
    env_file = send_env(conn, site.env)
    run = run_script(conn, host, gpuops_script(argv, site, env_file=env_file, check_folder=check_folder),
                     stream=stream, timeout=timeout)
    problem = script_error(host, run, site)
    if problem is not None:
        raise problem
    run.documents = parse_documents(run.stdout)
    if not run.documents:
        tail = [line for line in run.stderr.splitlines() if line.strip()][-5:]
        raise HostError(host, "no-document", f"gpuops {argv[0] if argv else ''} exited {run.exit_code} without a "
                        "JSON document", details=tail, hint="run it there by hand to see why",
                        exit_code=run.exit_code if run.exit_code not in (0, -1) else None)
    return run


def document_error(host: str, doc: dict[str, Any]) -> HostError | None:
    """A document with ok: false as a HostError keeping the remote exit code, message and hint."""
    if doc.get("ok", True):
        return None
    e = doc.get("error") or {}
    return HostError(host, e.get("type", "error"), e.get("message", "failed"), hint=e.get("hint"),
                     details=e.get("details") or [], exit_code=int(e.get("exit_code") or 1))
