"""`load-test --workers-on gpu2,gpu3`: Locust workers on other hosts over a real sshd, the master here,
their records in the same report as local workers'; a host that cannot be used is one clear line."""

import json
import time
from pathlib import Path

import psutil
import pytest

from support.fixtures import free_port

pytestmark = pytest.mark.ssh


def _has_locust(remote) -> bool:
    return any((remote.venv / "lib").glob("python3*/site-packages/locust"))


def _remote_worker_pids() -> list[int]:
    """Locust workers started by gpuops.hosts.workers (their plan lies in ~/.gpuops/tmp/lt-*)."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "--worker" in (p.info["cmdline"] or []) and "/.gpuops/tmp/lt-" in p.environ().get(
                    "GPUOPS_LOADTEST_PLAN", ""):
                pids.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return pids


def _remote_folders() -> list[Path]:
    return sorted((Path.home() / ".gpuops" / "tmp").glob("lt-*"))


@pytest.fixture(scope="module")
def url(remote):
    """A demo server started on gpu1 for this module (this machine, on loopback), stopped after it."""
    port = free_port()
    remote.demo_agents(port)
    r = remote.gpuops("-H", "gpu1", "start-server", "--no-follow", "--no-smoke")
    assert r.code == 0, r.text
    yield f"http://127.0.0.1:{port}"
    remote.gpuops("-H", "gpu1", "stop-server", "--all")


@pytest.fixture(scope="module")
def with_locust(remote):
    """The hosts' gpuops with the [loadtest] extra (gpu1..gpu8 share one venv here)."""
    if not _has_locust(remote):
        r = remote.gpuops("-H", "gpu2", "install", "--loadtest", timeout=900)
        assert r.code == 0, r.text
    return remote


def test_a_host_without_the_loadtest_extra_says_what_to_install(remote, url):
    if _has_locust(remote):
        pytest.skip("the hosts' venv already has the [loadtest] extra (another test installed it)")
    r = remote.gpuops("load-test", "--url", url, "--workers-on", "gpu2", "--run-time", "2s")
    assert r.code == 8, r.text
    assert "Traceback" not in r.text
    assert "worker host gpu2: gpuops in" in r.err and "has no Locust" in r.err
    assert "gpuops -H gpu2 install --loadtest" in r.err


def test_workers_on_two_hosts_write_one_report(with_locust, url):
    remote = with_locust
    r = remote.gpuops("load-test", "--url", url, "--workers-on", "gpu2,gpu3", "--users", "4", "--run-time", "4s",
                      "--json", timeout=240)
    assert r.code == 0, r.text
    assert "Locust workers: gpu2 (1), gpu3 (1)" in r.err
    doc = json.loads(r.out)
    report = Path(doc["report_dir"])
    records = [json.loads(line) for line in (report / "records.jsonl").read_text().splitlines()]
    assert {rec["worker"] for rec in records} == {0, 1}  # requests from both hosts' workers
    assert all(rec["ok"] for rec in records if not rec.get("cancelled")), records[:3]
    assert doc["summary"]["completed"] == sum(1 for rec in records if rec["ok"] and not rec.get("cancelled"))
    assert doc["summary"]["completed"] > 0
    hosts = json.loads((report / "workers-on.json").read_text())
    assert [(h["host"], h["workers"], h["error"]) for h in hosts] == [("gpu2", [0], None), ("gpu3", [1], None)]
    assert all(h["records"] > 0 for h in hosts)
    assert (report / "summary.json").is_file() and (report / "report.html").is_file()
    assert not list(report.glob("records-w*.jsonl"))  # merged as with local workers
    assert doc["summary"]["client"]  # the hosts' client samples came back too
    log = Path(doc["log"]).read_text()
    assert "==> gpu2: Locust worker 0 <==" in log and "==> gpu3: Locust worker 1 <==" in log
    # nothing left behind on the hosts
    assert not _remote_worker_pids()
    assert not _remote_folders()


def test_through_the_tunnel_to_a_host_with_two_workers_on_each_of_two_others(with_locust, url):
    """`gpuops -H gpu1 load-test --workers-on ...`: the master here, the server on gpu1 through the tunnel,
    the workers reaching both through their own reverse tunnels (with this command's ssh settings)."""
    remote = with_locust
    r = remote.gpuops("-H", "gpu1", "load-test", "--workers-on", "gpu2,gpu3", "--workers", "2", "--users", "4",
                      "--run-time", "3s", "--json", timeout=240)
    assert r.code == 0, r.text
    assert "through an SSH tunnel" in r.err and "Locust workers: gpu2 (2), gpu3 (2)" in r.err
    doc = json.loads(r.out)
    report = Path(doc["report_dir"])
    assert report.parent == (remote.root / "do_not_commit" / "load_tests" / "gpu1").resolve()
    records = [json.loads(line) for line in (report / "records.jsonl").read_text().splitlines()]
    assert {rec["worker"] for rec in records} == {0, 1, 2, 3}
    assert doc["summary"]["completed"] > 0
    assert not _remote_worker_pids()


def test_a_sweep_starts_the_remote_workers_for_every_level(with_locust, url):
    remote = with_locust
    r = remote.gpuops("load-test", "--url", url, "--workers-on", "gpu2,gpu3", "--sweep", "2,4", "--run-time", "2s",
                      "--json", timeout=300)
    assert r.code == 0, r.text
    report = Path(json.loads(r.out)["report_dir"])
    levels = sorted(p for p in report.iterdir() if p.is_dir())
    assert [p.name for p in levels] == ["01-users-2", "02-users-4"]
    for level in levels:
        records = [json.loads(line) for line in (level / "records.jsonl").read_text().splitlines()]
        assert {rec["worker"] for rec in records} == {0, 1}, level
    assert (report / "sweep.json").is_file()
    assert not _remote_worker_pids() and not _remote_folders()


def test_a_dead_host_among_the_workers_is_one_clear_line(with_locust, url):
    remote = with_locust
    reports = remote.root / "do_not_commit" / "load_tests"
    before = sorted(reports.iterdir()) if reports.is_dir() else []
    r = remote.gpuops("load-test", "--url", url, "--workers-on", "gpu2,refused", "--run-time", "2s")
    assert r.code == 8, r.text
    assert "Traceback" not in r.text
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "worker host refused: connection refused" in errors[0], r.err
    assert (sorted(reports.iterdir()) if reports.is_dir() else []) == before  # no report folder started
    assert not _remote_worker_pids()


def test_ctrl_c_stops_the_remote_workers_and_keeps_the_report(with_locust, url):
    remote = with_locust
    run = remote.spawn("load-test", "--url", url, "--workers-on", "gpu2,gpu3", "--users", "2", "--run-time", "60s")
    try:
        assert run.wait_for("ok,", timeout=90), run.text  # a progress line: the workers send load
        assert len(_remote_worker_pids()) == 2
    finally:
        code = run.interrupt(timeout=60)
    assert code == 130, run.text
    assert "Traceback" not in run.text
    assert "report:" in run.text
    deadline = time.monotonic() + 10
    while _remote_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _remote_worker_pids()
    assert not _remote_folders()


def test_a_dropped_connection_stops_the_workers_and_their_records_come_back(with_locust, sshd, url):
    remote = with_locust
    run = remote.spawn("load-test", "--url", url, "--workers-on", "gpu2,gpu3", "--users", "2", "--run-time", "8s",
                       "--json")
    assert run.wait_for("ok,", timeout=90), run.text
    assert sshd.drop_connections()
    assert run.proc.wait(timeout=120) == 0, run.text
    assert "copying its records failed" in run.text and "reconnected to copy back its last records" in run.text
    assert "Traceback" not in run.text
    deadline = time.monotonic() + 10
    while _remote_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _remote_worker_pids()  # their channel closed: the hosts stopped them
    assert not _remote_folders()  # removed through the new connection

