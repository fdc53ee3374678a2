"""Several servers on one remote host: started together there, one row each here, restarted one at a
time, stopped together."""

import json

import pytest

from support.fixtures import free_port

pytestmark = pytest.mark.ssh


@pytest.fixture
def two_servers(remote, tmp_path):
    """Two demo recipes in a project folder of their own on the host, `app` needing `model`; everything
    is stopped afterwards (the shared project folder's records stay the other tests')."""
    ports = {"model": free_port(), "app": free_port()}
    python = f"{remote.venv}/bin/python"
    remote.write_config(remote_dir=str(tmp_path))
    (tmp_path / "AGENTS.local.md").write_text(
        f"## Server: model\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.5 {python} -m gpuops.demo --port {ports['model']}\n```\n\n"
        f"## Server: app\nneeds: model\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.3 {python} -m gpuops.demo "
        f"--port {ports['app']}\n```\n")
    yield ports
    remote.gpuops("-H", "gpu1", "stop-server", "--all")
    remote.write_config()


def test_all_servers_start_on_the_host_and_come_back_as_one_document(remote, two_servers):
    r = remote.gpuops("-H", "gpu1", "start-server", "--all", "--no-smoke", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert [(s["server"], s["state"]) for s in doc["servers"]] == [("model", "ready"), ("app", "ready")]
    assert doc["servers"][1]["port"] == two_servers["app"] and doc["ssh_host"] == "gpu1"

    again = remote.gpuops("-H", "gpu1", "restart-server", "--server", "app", "--no-smoke", "--no-follow")
    assert again.code == 0, again.text
    st = json.loads(remote.gpuops("-H", "gpu1", "status", "--json").out)
    pids = {s["name"]: s["pid"] for s in st["servers"] if s["state"] == "ready"}
    assert pids["model"] == doc["servers"][0]["pid"]  # untouched
    assert pids["app"] != doc["servers"][1]["pid"]  # restarted

    stop = remote.gpuops("-H", "gpu1", "stop-server", "--all", "--json")
    assert stop.code == 0, stop.text
    names = [s["name"] for s in json.loads(stop.out)["servers"] if s.get("was_running")]
    assert names == ["app", "model"]  # dependents first


def test_a_fleet_table_has_a_row_per_server(remote, two_servers):
    r = remote.gpuops("-H", "gpu1,gpu2", "start-server", "--all", "--no-smoke", "--no-follow")
    # one project folder behind both aliases (the same machine): the second host reuses what the first started
    assert r.code == 0, r.text
    rows = [line for line in r.out.splitlines() if line.strip("│ ").startswith(("gpu1", "gpu2"))]
    assert len(rows) == 4 and sum("model: ready" in line for line in rows) == 2, r.out
    assert len({line.split("│")[3].strip() for line in rows}) == 2  # two servers, whichever host started them
