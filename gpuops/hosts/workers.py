"""Locust workers on other hosts: `load-test --workers-on gpu2,gpu3` (Locust's own master/worker protocol).

    check(opts)                                    # before any folder is made: each host reachable, gpuops
                                                   # of this version there with the [loadtest] extra
    with RemoteWorkers(opts, plan, master_port, log_path, write) as remote:
        remote.start()                             # --workers N Locust workers on each host
        ...                                        # the master runs here; records arrive in the report folder
    # leaving: workers stopped, their last records copied back, their folder on the host removed

The master runs here (it writes the records' merge and the report as with local workers). Each host
reaches it through an SSH reverse tunnel (`Transport.request_port_forward` on the host's 127.0.0.1,
a port the host's sshd picks), which works where the hosts cannot connect back to this machine. A
server URL on loopback here is forwarded the same way; any other URL is used as it is (the hosts
must reach it). Each worker writes its `records-w<N>.jsonl`, `client-w<N>.jsonl` and
`schedule-w<N>.json` into ~/.gpuops/tmp/lt-<id>/ on its host; a thread per host copies what is new
over SFTP into the report folder once a second (so progress, stall and lost-server checks work as
with local workers) and once more after the workers have stopped. The workers' processes hang on
their SSH channel: closing it (the run's end, Ctrl-C, or a dropped connection) stops them.
"""

from __future__ import annotations

import atexit
import json
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gpuops.errors import RemoteError, UsageError
from gpuops.hosts.ssh import (
    MARK,
    NO_FOLDER,
    HostError,
    RemoteSite,
    SshOptions,
    connect,
    run_script,
    script_error,
    sh_path,
    version_check_lines,
)

NO_LOCUST = 92  # the remote check's exit code: gpuops is there, Locust (the [loadtest] extra) is not
SETTINGS_ENV = "GPUOPS_REMOTE_SETTINGS"  # JSON of the gpuops settings, for a load-test started by `-H`
SYNC_EVERY_S = 1.0
STOP_WAIT_S = 15.0
LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
PARTS = ("records-w", "client-w")  # appended to while the workers run: copied as they grow

_options = SshOptions()
_site_of = None  # host -> RemoteSite
_conns: dict[str, object] = {}
_conns_lock = threading.Lock()


def configure(options: SshOptions, site_of) -> None:
    """How to reach the worker hosts (gpuops.cli.remote.configure_workers calls this from the task)."""
    global _options, _site_of
    _options, _site_of = options, site_of


def site(host: str) -> RemoteSite:
    return _site_of(host) if _site_of is not None else RemoteSite()


def install_hint(host: str) -> str:
    return f"gpuops -H {host} install --loadtest"


# --- before the run ---


def check_script(site_: RemoteSite) -> str:
    """sh: gpuops of this version in the venv, and Locust importable there.

    >>> print(check_script(RemoteSite(venv="/v", version="0.1.0")).splitlines()[-1])
    "$V/bin/python" -c 'import locust' >/dev/null 2>&1 || { echo "gpuops-remote: no locust" >&2; exit 92; }
    """
    return "\n".join([f"V={sh_path(site_.venv)}", *version_check_lines(site_),
                      f'"$V/bin/python" -c \'import locust\' >/dev/null 2>&1 || '
                      f'{{ echo "{MARK} no locust" >&2; exit {NO_LOCUST}; }}'])


def _check_host(host: str):
    conn = connection(host)
    s = site(host)
    run = run_script(conn, host, check_script(s), timeout=60)
    if run.exit_code == NO_LOCUST:
        raise HostError(host, "no-locust", f"gpuops in {s.venv} has no Locust (the [loadtest] extra)",
                        hint=f"run `{install_hint(host)}`")
    problem = script_error(host, run, s)
    if problem is not None:
        if problem.kind in ("gpuops-missing", "version"):
            problem.hint = f"run `{install_hint(host)}`"
        raise problem
    if run.exit_code != 0:
        raise HostError(host, "check", f"checking gpuops there failed (exit {run.exit_code})",
                        details=run.stderr.strip().splitlines()[-5:])
    return conn


def check(opts) -> None:
    """Every --workers-on host answers and has this gpuops with Locust; else one line per bad host
    (RemoteError, exit 8). Also refuses what does not go with remote workers (UsageError, exit 2)."""
    hosts = list(opts.workers_on)
    for flag, on in (("--detach", opts.detach), ("--web", opts.web), ("--locustfile", bool(opts.locustfile))):
        if on:
            raise UsageError(f"--workers-on and {flag} do not go together (yet)",
                             hint="run the load test in the foreground with gpuops' own user")
    if len(set(hosts)) != len(hosts):
        raise UsageError(f"--workers-on names a host twice: {','.join(hosts)}",
                         hint="give each host once; --workers N starts N workers on each")
    errors: list[HostError] = []

    def one(host: str):
        try:
            _check_host(host)
        except HostError as err:
            errors.append(err)
        except Exception as err:  # noqa: BLE001 - one line per host, never a traceback
            errors.append(HostError(host, "ssh", f"{type(err).__name__}: {err}"))

    with ThreadPoolExecutor(max_workers=min(len(hosts), 32)) as pool:
        list(pool.map(one, hosts))
    if not errors:
        return
    errors.sort(key=lambda e: hosts.index(e.host))
    if len(errors) == 1:
        e = errors[0]
        raise RemoteError(f"load-test worker host {e.message}", hint=e.hint, details=e.details)
    raise RemoteError(f"{len(errors)} of {len(hosts)} load-test worker hosts cannot be used: "
                      + ", ".join(e.host for e in errors),
                      details=[e.one_line() for e in errors], hint="fix them, or leave them out of --workers-on")


def connection(host: str):
    """The open connection to a worker host, one per host for the whole command (closed at exit)."""
    with _conns_lock:
        conn = _conns.get(host)
        if conn is not None and conn.is_connected and conn.client.get_transport().is_active():
            return conn
    conn = connect(host, _options)
    with _conns_lock:
        _conns[host] = conn
    return conn


@atexit.register
def close_all() -> None:
    with _conns_lock:
        conns = list(_conns.values())
        _conns.clear()
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing at exit: nothing left to tell
            pass


# --- reverse tunnels: a port on the host's loopback -> an address here ---


class ReverseTunnels:
    """Ports on a host's 127.0.0.1 (picked by its sshd) that lead to addresses here, over one connection.
    (paramiko keeps one handler per transport: it dispatches on the port the host accepted on.)"""

    def __init__(self, host: str, conn):
        self.host = host
        self.transport = conn.client.get_transport()
        self.targets: dict[int, tuple[str, int]] = {}
        self.threads: list[threading.Thread] = []
        self.closed = threading.Event()

    def open(self, target_host: str, target_port: int) -> int:
        try:
            port = self.transport.request_port_forward("127.0.0.1", 0, handler=self._incoming)
        except Exception as err:  # noqa: BLE001 - AllowTcpForwarding no, or the connection dropped
            raise HostError(self.host, "forward", f"its sshd refused a reverse tunnel ({type(err).__name__}: {err})",
                            hint="the worker hosts' sshd must allow TCP forwarding (AllowTcpForwarding yes)") from None
        self.targets[port] = (target_host, target_port)
        return port

    def _incoming(self, channel, origin, server) -> None:
        target = self.targets.get(server[1])
        if target is None or self.closed.is_set():
            channel.close()
            return
        t = threading.Thread(target=self._pump, args=(channel, target), daemon=True, name=f"gpuops-fwd-{self.host}")
        t.start()
        self.threads.append(t)

    def _pump(self, channel, target: tuple[str, int]) -> None:
        try:
            sock = socket.create_connection(target, timeout=5)
        except OSError:
            _close_quietly(channel)  # e.g. the master not listening yet: the worker connects again
            return
        sock.settimeout(None)
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select([sock, channel], [], [], 0.5)
                if sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    sock.sendall(data)
        except Exception:  # noqa: BLE001 - a dropped SSH connection ends the pump: paramiko raises EOFError or
            pass           # SSHException there, not only OSError, and a thread must not print a traceback
        finally:
            sock.close()
            _close_quietly(channel)

    def close(self) -> None:
        self.closed.set()
        for port in list(self.targets):
            try:
                self.transport.cancel_port_forward("127.0.0.1", port)
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
        self.targets.clear()


# --- the run ---


def worker_script(site_: RemoteSite, folder: str, workers: list[int], master_port: int) -> str:
    """sh: start the Locust workers in `folder`, then wait for our side to close stdin (end of run,
    Ctrl-C, or the connection dropping) and stop them: SIGINT, then SIGKILL after 10 s."""
    starts = [
        f'GPUOPS_LOADTEST_PLAN="$D/plan-locust.json" GPUOPS_LOADTEST_WORKER={k} PYTHONUNBUFFERED=1 '
        f'"$V/bin/python" -m locust -f "$L" --worker --master-host 127.0.0.1 --master-port {int(master_port)} '
        f'>"$D/worker-{k}.log" 2>&1 </dev/null &\npids="$pids $!"' for k in workers]
    return "\n".join([
        f"V={sh_path(site_.venv)}; D={shlex.quote(folder)}", *version_check_lines(site_),
        f'cd "$D" 2>/dev/null || {{ echo "{MARK} no folder $D" >&2; exit {NO_FOLDER}; }}',
        'set -- "$V"/lib/python3*/site-packages/gpuops/probes/loadtest/locustfile.py; L=$1',
        "pids=",
        *starts,
        f'echo "{MARK} started$pids" >&2',
        "cat >/dev/null",
        "alive() { for p in $pids; do kill -0 $p 2>/dev/null && return 0; done; return 1; }",
        "kill -INT $pids 2>/dev/null",
        "i=0; while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
        "kill -KILL $pids 2>/dev/null; wait",
        f'echo "{MARK} stopped" >&2',
    ])


def worker_url(url: str, tunnels: ReverseTunnels) -> str:
    """The server URL a host's workers use: a loopback one here becomes a reverse tunnel on the host."""
    parts = urlsplit(url)
    if (parts.hostname or "") not in LOOPBACK:
        return url
    port = parts.port or (443 if parts.scheme == "https" else 80)
    remote = tunnels.open(parts.hostname if parts.hostname != "0.0.0.0" else "127.0.0.1", port)
    return urlunsplit((parts.scheme, f"127.0.0.1:{remote}", parts.path, parts.query, parts.fragment))


class _Host:
    """One worker host during a run: its tunnels, folder, channel and copy thread."""

    def __init__(self, name: str, workers: list[int]):
        self.name = name
        self.workers = workers
        self.conn = None
        self.tunnels: ReverseTunnels | None = None
        self.folder = ""
        self.channel = None
        self.sftp = None
        self.offsets: dict[str, int] = {}
        self.thread: threading.Thread | None = None
        self.stderr = b""
        self.records = 0
        self.error: str | None = None


class RemoteWorkers:
    """Locust workers on `opts.workers_on` (--workers of them on each) for one Locust run whose master
    listens on 127.0.0.1:`master_port` here and whose plan is `out_dir`/plan-locust.json."""

    def __init__(self, opts, out_dir: Path, master_port: int, log_path: Path, write):
        self.hosts = [_Host(h, [i * opts.workers + j for j in range(opts.workers)])
                      for i, h in enumerate(opts.workers_on)]
        self.out_dir = out_dir
        self.master_port = master_port
        self.log_path = log_path
        self.write = write
        self.run_id = uuid.uuid4().hex[:8]
        self.stop_sync = threading.Event()

    @property
    def count(self) -> int:
        return sum(len(h.workers) for h in self.hosts)

    def __enter__(self) -> RemoteWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the workers on every host (in parallel); a host that fails stops the whole start."""
        plan = json.loads((self.out_dir / "plan-locust.json").read_text())
        with ThreadPoolExecutor(max_workers=min(len(self.hosts), 32)) as pool:
            futures = [pool.submit(self._start_one, h, plan) for h in self.hosts]
            errors = []
            for f in futures:
                try:
                    f.result()
                except HostError as err:
                    errors.append(err)
                except Exception as err:  # noqa: BLE001
                    errors.append(RemoteError(f"{type(err).__name__}: {err}"))
        if errors:
            raise RemoteError(f"could not start the load-test workers: {errors[0].message}", hint=errors[0].hint,
                              details=[e.message for e in errors[1:]])
        self.write("Locust workers: " + ", ".join(f"{h.name} ({len(h.workers)})" for h in self.hosts)
                   + f"; master here on 127.0.0.1:{self.master_port}, reached through SSH reverse tunnels")

    def _start_one(self, h: _Host, plan: dict) -> None:
        h.conn = connection(h.name)
        s = site(h.name)
        sftp = h.conn.client.open_sftp()
        h.sftp = sftp
        home = sftp.normalize(".")
        h.folder = posixpath.join(home, ".gpuops", "tmp", f"lt-{self.run_id}-{h.name}")
        path = ""
        for part in posixpath.relpath(h.folder, home).split("/"):
            path = posixpath.join(path, part)
            try:
                sftp.mkdir(posixpath.join(home, path), mode=0o700)
            except OSError:
                pass  # exists
        h.tunnels = ReverseTunnels(h.name, h.conn)
        theirs = dict(plan, out_dir=h.folder, url=worker_url(plan["url"], h.tunnels))
        dataset = ((theirs.get("workload") or {}).get("dataset") or {}).get("file")
        if dataset:
            remote_file = posixpath.join(h.folder, "prompts.jsonl")
            sftp.put(dataset, remote_file)
            theirs["workload"] = {**theirs["workload"], "dataset": {**theirs["workload"]["dataset"],
                                                                    "file": remote_file}}
        with sftp.open(posixpath.join(h.folder, "plan-locust.json"), "w") as f:
            f.write(json.dumps(theirs, indent=2))
        master = h.tunnels.open("127.0.0.1", self.master_port)
        transport = h.conn.client.get_transport()
        chan = transport.open_session(timeout=30)
        chan.exec_command(worker_script(s, h.folder, h.workers, master))
        h.channel = chan
        # the script says "started" once the workers run (or fails first: gpuops gone, folder gone)
        deadline = time.monotonic() + 30
        while b"started" not in h.stderr:
            if chan.recv_stderr_ready():
                h.stderr += chan.recv_stderr(65536)
                continue
            if chan.exit_status_ready() or time.monotonic() > deadline:
                code = chan.recv_exit_status() if chan.exit_status_ready() else -1
                from gpuops.hosts.ssh import RemoteRun

                problem = script_error(h.name, RemoteRun(h.name, code, "", h.stderr.decode(errors="replace"), 0.0), s)
                raise problem or HostError(h.name, "worker", f"the Locust workers did not start (exit {code})",
                                           details=h.stderr.decode(errors="replace").splitlines()[-5:])
            time.sleep(0.02)
        h.thread = threading.Thread(target=self._sync_loop, args=(h,), daemon=True, name=f"gpuops-sync-{h.name}")
        h.thread.start()

    # --- records back ---

    def _sync_loop(self, h: _Host) -> None:
        while not self.stop_sync.wait(SYNC_EVERY_S):
            try:
                self._sync(h)
            except Exception as err:  # noqa: BLE001 - a dropped host: say it once, keep the others
                if h.error is None:
                    h.error = f"{type(err).__name__}: {err}"
                    self.write(f"warning: worker host {h.name}: copying its records failed ({h.error})")
                return

    def _sync(self, h: _Host, *, final: bool = False) -> None:
        """Append what is new in the host's records/client files to the same files here (the final
        copy also takes the schedule files, written once)."""
        for entry in h.sftp.listdir_attr(h.folder):
            name = entry.filename
            remote = posixpath.join(h.folder, name)
            if name.startswith(PARTS) and name.endswith(".jsonl"):
                offset = h.offsets.get(name, 0)
                size = entry.st_size or 0
                if size <= offset:
                    continue
                with h.sftp.open(remote, "rb") as f:
                    f.seek(offset)
                    data = f.read(size - offset)
                with open(self.out_dir / name, "ab") as out:
                    out.write(data)
                h.offsets[name] = offset + len(data)
                if name.startswith("records-w"):
                    h.records += data.count(b"\n")
            elif final and name.startswith("schedule-w") and name.endswith(".json"):
                h.sftp.get(remote, str(self.out_dir / name))

    # --- the end ---

    def stop(self) -> None:
        """Stop the workers (closing their channel), copy the last records, append their logs to the
        Locust log here, remove their folders, close the tunnels. Safe to call more than once."""
        hosts = [h for h in self.hosts if h.conn is not None]
        if not hosts:
            return
        for h in hosts:
            if h.channel is not None:
                try:
                    h.channel.shutdown_write()  # the script's `cat` ends: it stops the workers
                except Exception:  # noqa: BLE001 - the connection is gone: so are the workers' stdin
                    pass
        deadline = time.monotonic() + STOP_WAIT_S
        for h in hosts:
            while h.channel is not None and not h.channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.stop_sync.set()
        for h in hosts:
            if h.thread is not None:
                h.thread.join(timeout=5)
        with ThreadPoolExecutor(max_workers=min(len(hosts), 32)) as pool:
            list(pool.map(self._finish_one, hosts))
        self._write_summary()
        for h in self.hosts:
            h.conn = None

    def _finish_one(self, h: _Host) -> None:
        try:
            if h.sftp is not None and h.folder:
                transport = h.conn.client.get_transport()
                if transport is None or not transport.is_active():  # the connection dropped during the run:
                    old = h.sftp  # its channel closed, so the host stopped the workers; a new connection
                    h.conn = connection(h.name)  # takes their last records and removes their folder
                    h.sftp = h.conn.client.open_sftp()
                    try:
                        old.close()
                    except Exception:  # noqa: BLE001
                        pass
                    self.write(f"(worker host {h.name}: reconnected to copy back its last records)")
                self._sync(h, final=True)
                self._append_logs(h)
                run_script(h.conn, h.name, f"rm -rf {shlex.quote(h.folder)}", timeout=30)
        except Exception as err:  # noqa: BLE001 - a host gone at the end: its records so far are kept
            if h.error is None:
                h.error = f"{type(err).__name__}: {err}"
            self.write(f"warning: worker host {h.name}: could not copy back or clean up ({h.error}); "
                       f"its folder {h.folder} may be left there")
        finally:
            if h.channel is not None:
                h.channel.close()
            if h.tunnels is not None:
                h.tunnels.close()
            if h.sftp is not None:
                try:
                    h.sftp.close()
                except Exception:  # noqa: BLE001
                    pass

    def _append_logs(self, h: _Host) -> None:
        with open(self.log_path, "ab") as log:
            for k in h.workers:
                log.write(f"==> {h.name}: Locust worker {k} <==\n".encode())
                try:
                    with h.sftp.open(posixpath.join(h.folder, f"worker-{k}.log"), "rb") as f:
                        log.write(f.read())
                except OSError:
                    log.write(b"(no log)\n")

    def _write_summary(self) -> None:
        """workers-on.json in the report folder: which host ran which workers, how many records came back."""
        rows = [{"host": h.name, "workers": h.workers, "records": h.records, "error": h.error} for h in self.hosts]
        (self.out_dir / "workers-on.json").write_text(json.dumps(rows, indent=2) + "\n")


def _close_quietly(channel) -> None:
    """Close a forwarded channel; on a dropped connection paramiko raises from close() too."""
    try:
        channel.close()
    except Exception:  # noqa: BLE001 - the transport is gone: nothing left to close
        pass
