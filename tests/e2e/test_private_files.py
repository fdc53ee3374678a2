"""Trust on a shared GPU box: what gpuops writes is its owner's alone, and no secret is in clear.

Files that can hold a command, an environment or a URL (logs, state records, reports, traces) are
0600 in 0700 folders whatever the umask, and the server still writes its own lines into its log.
A recipe in any supported form with a generated secret never shows it: not on the terminal, not in
the log, not in the state record, not in `status --json`, not in `stop-server`'s report.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpuops.rundir import RunDir, open_private, private_dir, write_private
from gpuops.server.logs import create_log, create_run_folder
from support.fixtures import Project, free_port, repo_pythonpath

START = ("start-server", "--no-follow", "--no-smoke")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_gpuops(project: Project, *args: str, umask: int = 0o022, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in the project, under a given umask (0: everything created would be world-writable)."""
    return subprocess.run([sys.executable, "-m", "gpuops", *args], cwd=project.root, capture_output=True, text=True,
                          timeout=timeout, env={**project.env, "PYTHONPATH": repo_pythonpath()},
                          stdin=subprocess.DEVNULL, umask=umask)


def demo_command(port: int) -> str:
    return f"GPUOPS_DEMO_LOAD_SECONDS=0.2 {shlex.quote(sys.executable)} -m gpuops.demo --port {port}"


# ---------------------------------------------------------------- file modes


def test_start_under_umask_0_leaves_only_owner_only_files_and_the_server_still_logs(project, port):
    project.demo_agents(port, env="HF_TOKEN=hf_umask_secret")
    r = run_gpuops(project, *START, umask=0)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = project.run_dir
    for folder in (run_dir, run_dir / "state", run_dir / "server_logs"):
        assert mode(folder) == 0o700, folder
    record = run_dir / "state" / "server.json"
    log = Path(project.record()["log_path"])
    assert mode(record) == 0o600 and mode(log) == 0o600
    for path in run_dir.rglob("*"):  # whatever else is there (lock files): nobody else can reach it
        assert mode(path) & 0o077 == 0 or mode(path.parent) == 0o700, path
    # the server writes into its 0600 log through the descriptor it inherited
    assert "Application startup complete." in log.read_text()
    assert run_gpuops(project, "stop-server").returncode == 0


def test_a_run_folder_left_open_by_an_earlier_version_is_closed_at_the_next_start(project, port):
    logs = project.run_dir / "server_logs"
    logs.mkdir(parents=True)
    old = logs / "server-20240101-000000.log"
    old.write_text("# gpuops server 'server'\n#   export HF_TOKEN=hf_old_clear_text\n")
    for path, m in ((project.run_dir, 0o755), (logs, 0o755), (old, 0o644)):
        path.chmod(m)
    project.demo_agents(port)
    assert run_gpuops(project, *START).returncode == 0
    assert mode(project.run_dir) == 0o700 and mode(logs) == 0o700  # the old 0644 log is out of reach now
    assert run_gpuops(project, "stop-server").returncode == 0


def test_logs_run_folders_and_records_are_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        log = create_log(tmp_path / "a" / "server_logs", "server")
        report = create_run_folder(tmp_path / "a" / "load_tests")
        state = RunDir(tmp_path / "b").ensure(RunDir(tmp_path / "b").state)
        record = write_private(state / "server.json", "{}")
        with open_private(report / "summary.json", "x") as f:
            f.write("{}")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "a", log.parent, report.parent, report, tmp_path / "b", state):
        assert mode(folder) == 0o700, folder
    for path in (log, record, report / "summary.json"):
        assert mode(path) == 0o600, path


def test_open_private_closes_an_existing_file_of_ours_and_never_overwrites_with_x(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("old")
    path.chmod(0o644)
    with open_private(path, "a") as f:
        f.write("+new")
    assert mode(path) == 0o600 and path.read_text() == "old+new"
    with pytest.raises(FileExistsError):
        open_private(path, "x")


def test_private_dir_leaves_an_existing_folder_it_was_given_as_it_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private_dir(shared / "new" / "deeper")
    assert mode(shared) == 0o755  # a folder the user named (--out, --dir) is theirs
    assert mode(shared / "new") == 0o700 and mode(shared / "new" / "deeper") == 0o700


def test_load_test_report_files_and_charts_are_0600(tmp_path):
    pytest.importorskip("matplotlib")
    from gpuops.probes.loadtest import report

    previous = os.umask(0)
    try:
        folder = create_run_folder(tmp_path / "load_tests")
        plan = report.write_json(folder / "plan.json", {"target": {"url": "https://u:p@h"}})
        rows = [{"level": 1.0, "median_ttft_ms": 1.0, "p90_ttft_ms": 2.0, "p99_ttft_ms": 3.0,
                 "median_tpot_ms": 1.0, "p90_tpot_ms": 2.0, "p99_tpot_ms": 3.0, "output_throughput": 10.0}]
        chart = report.sweep_chart(rows, "users", folder / "sweep.png")
    finally:
        os.umask(previous)
    assert mode(folder) == 0o700 and mode(plan) == 0o600 and mode(chart) == 0o600
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_profile_copies_traces_as_0600_into_a_0700_folder(tmp_path):
    from gpuops.probes.profile import copy_new

    source = tmp_path / "vllm_traces"
    (source / "rank0").mkdir(parents=True)
    trace = source / "rank0" / "a.pt.trace.json.gz"
    trace.write_bytes(b"trace")
    trace.chmod(0o644)
    dest = tmp_path / "profiles" / "20260101-000000"
    previous = os.umask(0)
    try:
        copied = copy_new(source, ["rank0/a.pt.trace.json.gz", "rank0/a.pt.trace.json.gz"], dest)
    finally:
        os.umask(previous)
    assert [p.name for p in copied] == ["a.pt.trace.json.gz", "a.pt.trace.json.gz.2"]  # never overwritten
    assert all(mode(p) == 0o600 and p.read_bytes() == b"trace" for p in copied)
    assert mode(dest) == 0o700 and mode(dest / "rank0") == 0o700
    assert copied[0].stat().st_mtime == trace.stat().st_mtime


# ---------------------------------------------------------------- no secret in clear, end to end

ENV_NAMES = st.sampled_from(["HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"])
FLAGS = st.sampled_from(["--api-key", "--api-keys", "--token", "--hf-token", "--password", "--client-secret"])
SECRETS = st.text(alphabet=string.ascii_letters + string.digits + " -_.~+/=!%@:,^#$;&|'\"()*?", min_size=10,
                  max_size=24).filter(lambda s: s.strip() == s and not s.startswith("-"))
TOKENS = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=10, max_size=24)
# {D} the demo server's command; `:` carries a flag or header as a real recipe's other commands would
FORMS = [
    "{N}={S} {D}",
    "cd sub && {N}={S} {D}",
    "source venv/bin/activate && {N}={S} {D}",
    "export {N}={S}; {D}",
    "export {N}={S} && {D}",
    "env {N}={S} {D}",
    "declare -x {N}={S}; {D}",
    "{N}={S} {D} 2>&1 | tee server.out",
    ": {F} {S} && {D}",
    ": {F}={S}; {D}",
    ": --header 'Authorization: Bearer {T}' && {D}",
    ": https://user:{T}@upstream.example/v1 && {D}",
    "bash -c {SCRIPT}",
]


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """A new project folder per example (hypothesis runs many in one test); every server is gone after."""
    made: list[Project] = []

    def make() -> Project:
        root = tmp_path_factory.mktemp("secret-project")
        (root / "sub").mkdir()
        (root / "venv" / "bin").mkdir(parents=True)
        (root / "venv" / "bin" / "activate").write_text("export VIRTUAL_ENV_PROMPT=venv\n")
        made.append(Project(root))
        return made[-1]

    yield make
    from support.fixtures import _kill_tagged_under

    for project in made:
        _kill_tagged_under(project.root)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(form=st.sampled_from(FORMS), name=ENV_NAMES, flag=FLAGS, secret=SECRETS, token=TOKENS)
def test_no_secret_in_clear_in_terminal_log_record_status_or_stop(projects, form, name, flag, secret, token):
    project = projects()
    port = free_port()
    hidden = token if "{T}" in form else secret
    assume(hidden not in demo_command(port) and hidden not in str(project.root))
    quoted = shlex.quote(secret)
    command = form.format(N=name, F=flag, S=quoted, T=token, D=demo_command(port),
                          SCRIPT=shlex.quote(f"export {name}={quoted}; exec {demo_command(port)}"))
    project.write_agents(f"## Server\n\n```bash\n{command}\n```\n")
    start = run_gpuops(project, *START)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        record_text = (project.run_dir / "state" / "server.json").read_text()
        log_text = Path(json.loads(record_text)["log_path"]).read_text()
        status = run_gpuops(project, "status", "--json")
        shown = {"terminal": start.stdout + start.stderr, "log": log_text, "state record": record_text,
                 "status --json": status.stdout + status.stderr}
        assert json.loads(status.stdout)["servers"][0]["command"]
    finally:
        stop = run_gpuops(project, "stop-server")
    shown["stop-server"] = stop.stdout + stop.stderr
    assert stop.returncode == 0, shown["stop-server"]
    for where, text in shown.items():
        assert hidden not in text, f"{where} shows the secret of `{command}`:\n{text}"
