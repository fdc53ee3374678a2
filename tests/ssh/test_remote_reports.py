"""Reports and traces come back: profile's traces, load tests through an SSH tunnel and on the host."""

import json
from pathlib import Path

import pytest

from support.fixtures import free_port

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def running(remote):
    """A demo server started on the host for this module, stopped after it."""
    port = free_port()
    remote.demo_agents(port)
    r = remote.gpuops("-H", "gpu1", "start-server", "--no-follow", "--no-smoke")
    assert r.code == 0, r.text
    yield port
    remote.gpuops("-H", "gpu1", "stop-server", "--all")


def test_profile_traces_are_copied_back(remote, running):
    r = remote.gpuops("-H", "gpu1", "profile", "--load", "--num-steps", "5", "--json", timeout=180)
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    local = remote.root / doc["copied_to"]
    assert local.parent == remote.root / "do_not_commit" / "profiles" / "gpu1"
    names = sorted(f["name"] for f in doc["files"])
    assert names and sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == names


def test_load_test_through_an_ssh_tunnel(remote, running):
    r = remote.gpuops("-H", "gpu1", "load-test", "--users", "2", "--run-time", "3s", "--json", timeout=180)
    assert r.code == 0, r.text
    assert "through an SSH tunnel" in r.err
    doc = json.loads(r.out)
    report = Path(doc["report_dir"])
    assert report.parent == (remote.root / "do_not_commit" / "load_tests" / "gpu1").resolve()
    assert doc["summary"]["completed"] > 0
    assert list(report.glob("**/summary.json"))


def test_load_test_on_the_host_brings_the_report_back(remote, running):
    extra = remote.gpuops("-H", "gpu1", "install", "--loadtest", timeout=900)
    assert extra.code == 0, extra.text
    r = remote.gpuops("-H", "gpu1", "--on-host", "load-test", "--users", "2", "--run-time", "3s", "--json",
                      timeout=240)
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["report_dir"].startswith(str(remote.project))  # it ran there
    local = remote.root / doc["copied_to"]
    assert local.parent == remote.root / "do_not_commit" / "load_tests" / "gpu1"
    assert list(local.glob("**/summary.json"))
