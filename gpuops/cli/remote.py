"""How `-H` reaches the hosts: each task runs there as `gpuops TASK <the same flags> --json`; here we
stream its progress, read its document and render it like the local task would.

    gpuops -H gpu1 install [--loadtest]       # a wheel of this gpuops into the host's venv
    gpuops -H gpu1 start-server               # the host's log streamed here until ready, then followed
    gpuops -H gpu1,gpu2,gpu3 status           # one table: a row per host (or per server), errors in one line
    gpuops -H fleet stop-server --all         # a group from gpuops.groups
    gpuops -H gpu1 logs --follow              # reconnects when the connection drops

One host: the same output and exit code as locally. Several: one table and exit 0 only when all
succeeded; a dead host never hides the others. `--json` here prints the host's document (one host)
or `{"schema": 1, "task": ..., "ok": ..., "hosts": [{"host", "ok", "document", "error"}]}`.

This module imports only Invoke and the standard library at start; Fabric comes with the first host.
"""

from __future__ import annotations

import json as _json
import os
import sys
import threading
import time
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from gpuops.settings import help_for

STREAMED = ("start-server", "restart-server", "stop-server", "smoke", "profile", "load-test")  # their human text is on stderr
SENT_AGENTS = ".gpuops-sent-AGENTS.local.md"  # a local --agents-file, in the host's project folder


@task(auto_shortflags=False, help=help_for("install", json="Print one JSON document on stdout."))
def install(c, loadtest=False, extras=None, venv=None, python=None, json=False):
    """Install (or update) this gpuops on the hosts given with -H: a wheel built here, a venv there.

    gpuops -H gpu1 install
    gpuops -H gpu1,gpu2 install --loadtest
    """
    print("error: install puts gpuops on remote hosts; name them with -H\nhint: gpuops -H gpu1 install",
          file=sys.stderr)
    raise Exit(code=2)


# --- configuration ---


def settings_of(config) -> dict:
    """The `gpuops` settings as plain values: what the config sets, else the settings table's defaults."""
    from gpuops.settings import SETTINGS

    given = _plain(config.gpuops)
    return {**{key: s.default for key, s in SETTINGS.items()},
            **{key: value for key, value in given.items() if value is not None and value != {}}}


def _plain(value):
    """Invoke's DataProxy (and nested ones) as plain dicts."""
    if hasattr(value, "keys") and not isinstance(value, str):
        return {k: _plain(value[k]) for k in value.keys()}
    return value


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def ssh_options(cfg: dict):
    from gpuops.hosts.ssh import SshOptions

    return SshOptions(ssh_config=cfg.get("ssh_config") or None,
                      connect_timeout=float(cfg.get("connect_timeout") or 10.0),
                      agent=_flag(cfg.get("ssh_agent", True)), key_search=_flag(cfg.get("ssh_key_search", True)))


def default_remote_dir(cfg: dict) -> str:
    """This project's folder as the host would have it: ~/work/llm here is ~/work/llm there."""
    here = os.path.abspath(cfg.get("project_dir") or os.getcwd())
    rel = os.path.relpath(here, os.path.expanduser("~"))
    if rel == ".":
        return "~"
    return here if rel.startswith("..") else "~/" + rel


def site_for(cfg: dict, host: str):
    from gpuops.hosts.hosts import host_setting
    from gpuops.hosts.ssh import RemoteSite

    env = {**(cfg.get("remote_env") or {}),
           **(((cfg.get("host_settings") or {}).get(host) or {}).get("remote_env") or {})}
    return RemoteSite(venv=host_setting(cfg, host, "remote_venv", "~/.gpuops/venv"),
                      dir=host_setting(cfg, host, "remote_dir") or default_remote_dir(cfg),
                      env={str(k): str(v) for k, v in env.items()})


WORKER_SETTINGS = ("ssh_config", "ssh_agent", "ssh_key_search", "connect_timeout", "remote_venv", "host_settings")


def configure_workers(config) -> None:
    """How `load-test --workers-on` reaches its hosts: this config's ssh settings and venvs (a load test
    started by `gpuops -H host load-test` gets them through GPUOPS_REMOTE_SETTINGS)."""
    from gpuops.hosts import workers

    cfg = settings_of(config)
    passed = os.environ.get(workers.SETTINGS_ENV)
    if passed:
        try:
            cfg.update(_json.loads(passed))
        except ValueError:
            pass
    workers.configure(ssh_options(cfg), lambda host: site_for(cfg, host))


# --- the command line of the remote task ---


def task_argv(ctx) -> tuple[list[str], dict]:
    """The flags given to a parsed task, spelled for the remote gpuops; and their values by name."""
    argv, given = [ctx.name], {}
    for key, arg in ctx.args.items():
        if not arg.got_value:
            continue
        given[key] = arg.value
        if key == "json":
            continue
        if arg.kind is bool:
            argv.append(f"--{key}" if arg.value else f"--no-{key}")
        elif arg.kind is list:
            for item in arg.value:
                argv.append(f"--{key}={item}")
        else:
            argv.append(f"--{key}={arg.value}")
    return argv, given


def _remote_path(folder: str, name: str) -> str:
    """A path under the host's project folder, for SFTP (which starts in the home folder)."""
    import posixpath

    if folder == "~":
        return name
    if folder.startswith("~/"):
        return posixpath.join(folder[2:], name)
    return posixpath.join(folder, name)


def send_agents_file(conn, host: str, site, local_path: str) -> str:
    """Put a local AGENTS.local.md into the host's project folder; the name the remote gpuops reads."""
    from gpuops.hosts.ssh import HostError

    try:
        conn.sftp().put(local_path, _remote_path(site.dir, SENT_AGENTS))
    except FileNotFoundError:
        raise HostError(host, "no-folder", f"the project folder {site.dir} does not exist there",
                        hint=f"set gpuops.remote_dir (or gpuops.host_settings.{host}.remote_dir)") from None
    return SENT_AGENTS


# --- output ---

_print_lock = threading.Lock()


def _err(line: str) -> None:
    with _print_lock:
        print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def _fields(cls, data: dict) -> dict:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def render_one(name: str, doc: dict) -> None:
    """A host's document the way the local task shows it (tasks whose text went to stderr already spoke)."""
    from rich.console import Console

    if not doc.get("ok", True):
        return
    if name == "status":
        from gpuops.cli.render_server import status_table
        from gpuops.server.status import StatusResult

        status_table(StatusResult.from_dict(doc), Console())
    elif name == "gpus":
        from gpuops.gpu import render
        from gpuops.gpu.inventory import Gpu, GpuProcess, Inventory

        gpus = []
        for g in doc.get("gpus", []):
            procs = [GpuProcess(**_fields(GpuProcess, p)) for p in g.get("processes", [])]
            gpus.append(Gpu(**{**_fields(Gpu, g), "processes": procs}))
        render.render_table(Inventory(gpus, doc.get("unavailable"), doc.get("driver")), Console(),
                            busy_mib=doc.get("busy_mib"))
    elif name == "logs":
        if "logs" in doc:
            if not doc["logs"]:
                _out(f"no logs in {doc.get('folder')}")
            for f in doc["logs"]:
                _out(f"{f.get('size', 0):>10}  {f.get('path')}")
        else:
            _out(f"==> {doc.get('path')} <==")
            for line in doc.get("lines", []):
                _out(line)
    elif name == "servers":
        from gpuops.cli.catalog import show

        show(doc, out=sys.stdout, err=sys.stderr)


def _gpu_cell(doc: dict | None) -> str:
    if not doc:
        return "-"
    if not doc.get("available", True):
        return "none"
    gpus = doc.get("gpus", [])
    return f"{sum(1 for g in gpus if g.get('busy'))}/{len(gpus)}"


def _server_note(s: dict) -> str:
    """A fleet row's last cell for one server: 'big: 11.8 GiB RSS (3 procs), 70.2 GiB GPU' (the memory
    only while it runs, and only from hosts whose gpuops reports it)."""
    from gpuops.server.status import format_bytes, format_mib

    note = s.get("name", "")
    if s.get("state") in ("ready", "starting", "unresponsive") and s.get("rss_bytes") is not None:
        note += f": {format_bytes(s['rss_bytes'])} RSS ({s.get('processes', 0)} procs)"
        if s.get("gpu_memory_mib") is not None:
            note += f", {format_mib(s['gpu_memory_mib'])} GPU"
    return note


def fleet_rows(name: str, results) -> list[list[str]]:
    """host, state, pid, url, GPUs busy/total, note: a row per host (status: per server)."""
    rows = []
    for r in results:
        docs = {d.get("task"): d for d in r.documents}
        doc = docs.get(name)
        gpus = _gpu_cell(docs.get("gpus"))
        if doc is None or not doc.get("ok", True):
            rows.append([r.host, "error", "-", "-", gpus, r.error_line() or "failed"])
            continue
        if name == "status":
            servers = doc.get("servers", [])
            if not servers:
                rows.append([r.host, "-", "-", "-", gpus, "no servers known"])
            for s in servers:
                # from here the host's own URL (127.0.0.1 there) is of no use: the outside one when known
                rows.append([r.host, s.get("state", "?"), str(s.get("pid") or "-"),
                             s.get("outside_url") or s.get("url") or "-", gpus, _server_note(s)])
        elif name in ("start-server", "restart-server"):
            for s in doc.get("servers", [doc]):  # several servers (--all, a,b): a row each
                note = ("already running" if s.get("already_running") else
                        f"ready in {s.get('ready_in')} s" if s.get("ok", True) else
                        (s.get("skipped") or s.get("stopped") or (s.get("error") or {}).get("message") or "failed"))
                rows.append([r.host, s.get("state", "ready"), str(s.get("pid") or "-"), s.get("url") or "-",
                             str(len(s.get("gpus") or [])) + " used", f"{s.get('server')}: {note}"])
        elif name == "stop-server":
            servers = doc.get("servers", [])
            stopped = [s for s in servers if s.get("was_running")]
            note = ", ".join(f"{s.get('name') or 'port ' + str(s.get('port'))}: {len(s.get('processes', []))} "
                             "process(es)" for s in stopped) or "nothing was running"
            rows.append([r.host, "stopped" if stopped else "-", "-", "-", gpus, note])
        elif name == "gpus":
            rows.append([r.host, "-", "-", "-", _gpu_cell(doc), doc.get("unavailable") or doc.get("driver") or ""])
        else:
            note = ", ".join(f"{k} {doc[k]}" for k in ("server", "ttft_s", "total_s", "folder", "out_dir") if k in doc)
            rows.append([r.host, "ok", "-", doc.get("url") or "-", gpus, note])
    return rows


def render_fleet(name: str, results) -> None:
    from rich.console import Console
    from rich.table import Table

    ok = sum(1 for r in results if r.ok)
    table = Table(caption=f"{name}: {ok} of {len(results)} hosts succeeded")
    for column in ("host", "state", "pid", "url", "GPUs busy/total", "server / note"):
        table.add_column(column, overflow="fold")
    for row in fleet_rows(name, results):
        table.add_row(*row)
    Console().print(table)


def _error_dict(err) -> dict:
    return {"type": getattr(err, "kind", type(err).__name__), "message": err.message, "hint": err.hint,
            "details": list(err.details), "exit_code": err.exit_code}


# --- running a task on the hosts ---


def run_remote(tasks, config, spec, *, on_host: bool = False) -> None:
    """Run the parsed tasks on the hosts `spec` names; raise Exit with the combined exit code.
    `on_host`: load-test runs Locust on the host itself (else here, through an SSH tunnel)."""
    from gpuops.errors import GpuopsError

    try:
        cfg = settings_of(config)
        from gpuops.hosts.hosts import resolve_hosts

        hosts = resolve_hosts(spec, cfg)
        for ctx in tasks:
            code = run_task(ctx, hosts, cfg, on_host=on_host)
            if code:
                raise Exit(code=code)
    except GpuopsError as err:
        _err(f"error: {err.render()}")
        raise Exit(code=err.exit_code) from None
    except KeyboardInterrupt:
        _err("\ninterrupted (what runs on the hosts keeps running; `gpuops -H HOST status` shows it)")
        raise Exit(code=130) from None


def run_task(ctx, hosts: list[str], cfg: dict, *, on_host: bool = False) -> int:
    from gpuops.hosts import fleet
    from gpuops.hosts.ssh import document_error, run_gpuops

    name = ctx.name
    if name == "install":
        return run_install(ctx, hosts, cfg)
    argv, given = task_argv(ctx)
    want_json = bool(given.get("json")) or _flag(cfg.get("json") or False)
    if name == "logs" and given.get("follow"):
        return follow_logs(hosts, cfg, given)
    if name == "load-test" and not on_host:
        return load_test_tunnel(argv, given, hosts, cfg, want_json=want_json)
    options = ssh_options(cfg)
    one = len(hosts) == 1
    agents = given.get("agents-file")
    send_agents = bool(agents) and os.path.isfile(os.path.expanduser(agents))

    def job(host: str):
        site = site_for(cfg, host)

        def work(conn):
            args = list(argv)
            if send_agents:
                sent = send_agents_file(conn, host, site, os.path.expanduser(agents))
                args = [f"--agents-file={sent}" if a.startswith("--agents-file=") else a for a in args]
            stream = None
            if name in STREAMED:
                prefix = "" if one else f"[{host}] "

                def stream(line):
                    _err(prefix + line)
            # a fleet's status table shows GPUs busy/total: `gpus` as a second task of the same gpuops
            # run (Invoke runs several tasks in one process: one interpreter start, two documents)
            more = ["gpus", "--json"] if name == "status" and not one else []
            run = run_gpuops(conn, host, [*args, "--json", *more], site, stream=stream)
            doc = run.document
            if name in ("profile", "load-test") and doc is not None and doc.get("task") == name:
                copy_back(conn, host, name, doc, cfg, write=stream or _err)
            return run

        return fleet.on_host(host, options, work)

    results = fleet.fan_out(hosts, job, parallel=_flag(cfg.get("remote_parallel", True)))
    for r in results:
        doc = next((d for d in r.documents if d.get("task") == name), None)
        if r.ok and doc is not None:
            r.error = document_error(r.host, doc)
        elif r.ok and doc is None:
            from gpuops.hosts.ssh import HostError

            r.error = HostError(r.host, "no-document", f"gpuops {name} printed no {name} document")
    code = fleet.exit_code(results)
    if want_json:
        if one:
            r = results[0]
            doc = next((d for d in r.documents if d.get("task") == name), None)
            if doc is None:
                from gpuops.cli.output import document

                doc = document(name, {"error": _error_dict(r.error)}, ok=False)
            _out(_json.dumps({**doc, "ssh_host": r.host}, indent=2, default=str))
        else:
            from gpuops.cli.output import document

            _out(_json.dumps(document(name, {"hosts": [
                {"host": r.host, "ok": r.ok, "seconds": round(r.seconds, 3),
                 "document": next((d for d in r.documents if d.get("task") == name), None),
                 "error": None if r.ok else _error_dict(r.error)} for r in results]}, ok=code == 0),
                indent=2, default=str))
        return code
    if one:
        r = results[0]
        doc = next((d for d in r.documents if d.get("task") == name), None)
        if doc is not None:
            render_one(name, doc)
        if not r.ok and (name not in STREAMED or doc is None):
            _err(f"error: {r.error.render()}")
        if (r.ok and name in ("start-server", "restart-server") and doc and not doc.get("already_running")
                and "servers" not in doc  # several: `gpuops -H HOST logs --follow` follows them
                and given.get("follow", True) and _flag(cfg.get("follow", True))):
            site = site_for(cfg, r.host)
            _err(f"following {r.host}:{doc.get('log_path')} (Ctrl-C stops following; the server keeps running)")
            follow_one(r.host, options, site, doc["log_path"], lines=0, write=_out)
        return code
    render_fleet(name, results)
    for r in results:
        if not r.ok:
            _err(f"error: {r.error_line()}")
    return code


# --- reports and traces come back; load tests through a tunnel ---


def local_run_dir(cfg: dict) -> str:
    """This side's run folder (do_not_commit/ of the project, or beside where gpuops runs)."""
    folder = os.path.expanduser(cfg.get("run_dir") or "do_not_commit")
    if os.path.isabs(folder):
        return folder
    return os.path.join(cfg.get("project_dir") or os.getcwd(), folder)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def copy_back(conn, host: str, name: str, doc: dict, cfg: dict, *, write) -> None:
    """profile: the trace files into do_not_commit/profiles/<host>/<stamp>/; load-test --on-host: the
    report folder into do_not_commit/load_tests/<host>/<stamp>/. The local folder goes into the
    document as `copied_to`."""
    import posixpath

    from gpuops.hosts.transfer import fetch_files, fetch_tree

    if name == "profile" and doc.get("files"):
        local = os.path.join(local_run_dir(cfg), "profiles", host, posixpath.basename(doc["folder"]) or _stamp())
        fetch_files(conn, [(f["path"], f["name"]) for f in doc["files"]], Path(local))
    elif name == "load-test" and doc.get("report_dir") and doc.get("status") != "detached":
        local = os.path.join(local_run_dir(cfg), "load_tests", host, posixpath.basename(doc["report_dir"]) or _stamp())
        fetch_tree(conn, doc["report_dir"], Path(local))
    else:
        return
    doc["copied_to"] = os.path.relpath(local)
    write(f"copied to {os.path.relpath(local)}")


def pick_server(doc: dict, name: str | None, host: str) -> dict:
    """The server a load test means, from the host's status document: --server NAME, else the only
    running one; else an error listing the running ones (the same rule as on the host)."""
    from gpuops.errors import ServerNotRunning, UsageError

    running = [s for s in doc.get("servers", []) if s.get("state") in ("ready", "starting", "unresponsive")]
    if name:
        for s in running:
            if s.get("name") == name:
                return s
        raise ServerNotRunning(f"{host}: server {name!r} is not running there",
                               hint=f"gpuops -H {host} start-server --server {name}")
    if len(running) == 1:
        return running[0]
    if not running:
        raise ServerNotRunning(f"{host}: no running server there", hint=f"gpuops -H {host} start-server")
    raise UsageError(f"{host}: {len(running)} servers run there: " + ", ".join(s["name"] for s in running),
                     hint="say which with --server NAME")


def load_test_tunnel(argv: list[str], given: dict, hosts: list[str], cfg: dict, *, want_json: bool) -> int:
    """Locust here, the host's server reached through an SSH tunnel (inference servers listen on
    127.0.0.1 there); the report in do_not_commit/load_tests/<host>/<stamp>/."""
    import shlex
    import socket
    import subprocess
    import tempfile
    from urllib.parse import urlsplit

    from gpuops.errors import UsageError
    from gpuops.hosts.ssh import connect, document_error, run_gpuops
    from gpuops.hosts.transfer import fetch_file

    if len(hosts) != 1:
        raise UsageError("load-test through an SSH tunnel drives one host at a time",
                         hint="give one host, or add --on-host to run Locust on each host")
    host = hosts[0]
    site = site_for(cfg, host)
    conn = connect(host, ssh_options(cfg))
    try:
        if given.get("url"):
            target = urlsplit(given["url"])
        else:
            run = run_gpuops(conn, host, ["status", "--json"], site)
            problem = document_error(host, run.document)
            if problem is not None:
                raise problem
            target = urlsplit(pick_server(run.document, given.get("server"), host)["url"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local_port = s.getsockname()[1]
        out = os.path.join(local_run_dir(cfg), "load_tests", host, _stamp())
        args = [a for a in argv[1:] if not a.startswith(("--url=", "--server=", "--agents-file=", "--out="))]
        with tempfile.TemporaryDirectory(prefix="gpuops-agents-") as tmp:
            agents = given.get("agents-file")
            if not (agents and os.path.isfile(os.path.expanduser(agents))):  # the host's '## Load test' block
                agents = os.path.join(tmp, "AGENTS.local.md")
                if not fetch_file(conn, _remote_path(site.dir, "AGENTS.local.md"), Path(agents)):
                    agents = None
            cmd = [sys.executable, "-m", "gpuops", "load-test", *args,
                   f"--url=http://127.0.0.1:{local_port}{target.path.rstrip('/')}", f"--out={out}",
                   *([f"--agents-file={agents}"] if agents else []), *(["--json"] if want_json else [])]
            env = {**os.environ, "GPUOPS_LOCAL": "1", "INVOKE_GPUOPS_RUN_DIR": local_run_dir(cfg),
                   # --workers-on: the worker hosts are reached with this command's ssh settings
                   "GPUOPS_REMOTE_SETTINGS": _json.dumps({k: cfg.get(k) for k in WORKER_SETTINGS}, default=str)}
            _err(f"load test of {host}:{target.hostname}:{target.port} through an SSH tunnel "
                 f"(127.0.0.1:{local_port} here); report in {os.path.relpath(out)}")
            with conn.forward_local(local_port, remote_port=target.port or 80, remote_host=target.hostname,
                                    local_host="127.0.0.1"):
                if os.environ.get("GPUOPS_DEBUG"):
                    _err("$ " + shlex.join(cmd))
                return subprocess.call(cmd, env=env)
    finally:
        conn.close()


# --- following a log, across dropped connections ---


def follow_script(site, path: str, *, lines: int, from_line: int | None) -> str:
    """sh: cd to the project, say the first line number, then `tail -F` from it.

    >>> print(follow_script(__import__("gpuops.hosts.ssh", fromlist=["x"]).RemoteSite(dir="/p"), "a.log", lines=5, from_line=None))
    cd /p || exit 99
    P=a.log
    [ -f "$P" ] || { echo "gpuops-remote: no log $P" >&2; exit 93; }
    n=$(wc -l < "$P"); K=$((n - 5 + 1)); [ "$K" -ge 1 ] || K=1
    echo "gpuops-remote: from $K"
    exec tail -n +"$K" -F -- "$P" 2>/dev/null
    """
    import shlex

    from gpuops.hosts.ssh import MARK, sh_path

    start = (f"K={int(from_line)}" if from_line is not None
             else f'n=$(wc -l < "$P"); K=$((n - {int(lines)} + 1)); [ "$K" -ge 1 ] || K=1')
    return "\n".join([
        f"cd {sh_path(site.dir)} || exit 99",
        f"P={shlex.quote(path)}",
        f'[ -f "$P" ] || {{ echo "{MARK} no log $P" >&2; exit 93; }}',
        start,
        f'echo "{MARK} from $K"',
        'exec tail -n +"$K" -F -- "$P" 2>/dev/null',
    ])


def follow_one(host: str, options, site, path: str, *, lines: int, write, retry: float = 1.0,
               stop: threading.Event | None = None) -> None:
    """Print new lines of the host's log until Ctrl-C (or `stop`); reconnect when the connection drops,
    going on from the first line not yet shown."""
    from gpuops.hosts.ssh import HostError, connect, run_script

    next_line: int | None = None
    while stop is None or not stop.is_set():
        seen = _LineCounter(write)
        try:
            conn = connect(host, options)
        except HostError as err:
            _err(f"({err.one_line()}; retrying in {retry:g} s)")
            time.sleep(retry)
            continue
        try:
            run = run_script(conn, host, follow_script(site, path, lines=lines, from_line=next_line),
                             stream_out=seen, stop=stop)
            if run.exit_code == 93:
                raise HostError(host, "no-log", f"no log {path} in {site.dir}", hint=f"gpuops -H {host} logs --list")
            if run.exit_code == 99:
                raise HostError(host, "no-folder", f"the project folder {site.dir} does not exist there")
        except HostError as err:
            if err.kind != "dropped":
                raise
        finally:
            conn.close()
        if seen.first is not None:
            next_line = seen.first + seen.count
        if stop is not None and stop.is_set():
            return
        _err(f"(connection to {host} lost; reconnecting, going on from line {next_line})")
        time.sleep(retry)


class _LineCounter:
    """Lines of a followed log: the first (the remote script's "from K") gives the line number."""

    def __init__(self, write):
        self.write = write
        self.first: int | None = None
        self.count = 0

    def __call__(self, line: str) -> None:
        from gpuops.hosts.ssh import MARK

        if self.first is None and line.startswith(MARK):
            self.first = int(line.rsplit(" ", 1)[-1])
            return
        self.count += 1
        self.write(line)


def follow_logs(hosts: list[str], cfg: dict, given: dict) -> int:
    """`logs --follow` on each host: the log chosen there (`--name`, `--prefix`, else the newest), then
    followed here; several hosts' lines prefixed with the host name."""
    from gpuops.hosts.fleet import fan_out, on_host
    from gpuops.hosts.ssh import run_gpuops

    options = ssh_options(cfg)
    lines = int(given.get("lines") or cfg.get("log_lines") or 50)
    argv = ["logs", "--json", "--lines=0"]
    for key in ("name", "prefix"):
        if given.get(key):
            argv.append(f"--{key}={given[key]}")
    found = fan_out(hosts, lambda h: on_host(h, options, lambda conn: run_gpuops(conn, h, argv, site_for(cfg, h))))
    failed = 0
    targets = []
    for r in found:
        doc = r.documents[-1] if r.documents else None
        if not r.ok or doc is None or not doc.get("ok", True):
            from gpuops.hosts.ssh import document_error

            err = r.error or document_error(r.host, doc or {})
            _err(f"error: {err.render()}" if len(hosts) == 1 else f"error: {r.error_line() or err.one_line()}")
            failed = failed or (err.exit_code if err else 1)
            continue
        targets.append((r.host, doc["path"]))
    if not targets:
        return failed or 1
    if len(targets) == 1 and len(hosts) == 1:
        host, path = targets[0]
        _out(f"==> {host}:{path} <==")
        try:
            follow_one(host, options, site_for(cfg, host), path, lines=lines, write=_out)
        except KeyboardInterrupt:
            _err("(stopped following)")
        return 0
    stop = threading.Event()
    threads = []
    for host, path in targets:
        prefix = f"[{host}] "

        def write(line, prefix=prefix):
            _out(prefix + line)

        t = threading.Thread(target=_follow_quietly, args=(host, options, site_for(cfg, host), path, lines, write, stop),
                             daemon=True)
        t.start()
        threads.append(t)
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.set()
        _err("(stopped following)")
    return failed


def _follow_quietly(host, options, site, path, lines, write, stop) -> None:
    from gpuops.errors import GpuopsError

    try:
        follow_one(host, options, site, path, lines=lines, write=write, stop=stop)
    except GpuopsError as err:
        _err(f"error: {host}: {err.message}")


# --- install ---


def run_install(ctx, hosts: list[str], cfg: dict) -> int:
    from gpuops.hosts.fleet import exit_code, fan_out, on_host
    from gpuops.hosts.hosts import host_setting, split_names
    from gpuops.hosts.install import build_wheel, install

    _, given = task_argv(ctx)
    extras = tuple(dict.fromkeys([*split_names(given.get("extras")), *(["loadtest"] if given.get("loadtest") else [])]))
    wheel = build_wheel(write=_err)
    options = ssh_options(cfg)

    def job(host: str):
        venv = given.get("venv") or host_setting(cfg, host, "remote_venv", "~/.gpuops/venv")
        python = given.get("python") or host_setting(cfg, host, "remote_python", "python3")
        return on_host(host, options, lambda conn: install(conn, host, wheel, venv=venv, python=python, extras=extras,
                                                          write=_err))

    results = fan_out(hosts, job, parallel=_flag(cfg.get("remote_parallel", True)))
    code = exit_code(results)
    if given.get("json"):
        from gpuops.cli.output import document

        _out(_json.dumps(document("install", {"hosts": [
            {"host": r.host, "ok": r.ok, **(r.value.as_dict() if r.ok else {"error": _error_dict(r.error)})}
            for r in results]}, ok=code == 0), indent=2))
        return code
    for r in results:
        if r.ok:
            v = r.value
            _out(f"{r.host}: {v.version} in {v.venv} ({v.python}"
                 + (f", extras {','.join(v.extras)}" if v.extras else ", lean") + f") in {v.seconds:.1f} s")
        else:
            _err(f"error: {r.error.render()}" if len(results) == 1 else f"error: {r.error_line()}")
    return code
