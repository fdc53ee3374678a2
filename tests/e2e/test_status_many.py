"""`inv status` with several servers: totals, each tree's memory and GPU memory, and the container warning.

Real demo servers started by `python -m gpuops start-server` in a throwaway project; real workers, real
SIGKILL for a crash. GPU memory goes through the real NVML seam with the fake pynvml standing in for the
driver (tests/support/fake_nvml.py), the GPU processes holding a stand-in device file, as in test_gpus.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from gpuops.gpu.nvml import Nvml
from gpuops.rundir import RunDir
from gpuops.server import procs, state
from gpuops.server.status import DRIVER_PATHS, server_trees, status
from support.fake_nvml import FakeGpu, FakeProcess, FakePynvml
from support.fixtures import free_port, kill_groups, wait_for

DEMO = "GPUOPS_DEMO_LOAD_SECONDS=0.2 GPUOPS_DEMO_TTFT_MS=5 GPUOPS_DEMO_ITL_MS=1"


def start(project, name: str, **env: str):
    r = project.gpuops("start-server", "--server", name, "--no-follow", "--no-smoke", env=env or None)
    assert r.code == 0, r.text
    return r


def status_doc(project, **env: str) -> dict:
    r = project.gpuops("status", "--json", env=env or None)
    assert r.code == 0, r.text
    return json.loads(r.out)


def tree_of(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def test_status_totals_and_memory(project):
    ports = {name: free_port() for name in ("big", "dup", "crashy", "old")}
    project.write_agents("\n".join(
        f"## Server: {name}\n\n```bash\n{DEMO} {workers} {sys.executable} -m gpuops.demo --port {port}\n```\n"
        for name, port in ports.items()
        for workers in ["GPUOPS_DEMO_WORKERS=2" if name in ("big", "dup") else ""]))
    for name in ports:
        start(project, name)
    crashy = project.record("crashy")
    os.killpg(crashy["pgid"], signal.SIGKILL)  # dies by itself, as far as gpuops knows: exited
    wait_for(lambda: not psutil.pid_exists(crashy["pid"]) or psutil.Process(crashy["pid"]).status() == "zombie")
    assert project.gpuops("stop-server", "--server", "old").code == 0

    big = project.record("big")
    wait_for(lambda: len(tree_of(big["pid"])) == 3)  # the server and its two workers
    leader_rss = psutil.Process(big["pid"]).memory_info().rss
    before = sum(p.memory_info().rss for p in tree_of(big["pid"]))
    doc = status_doc(project)
    after = sum(p.memory_info().rss for p in tree_of(big["pid"]))

    totals = doc["totals"]
    assert {k: totals[k] for k in ("known", "running", "ready", "starting", "unresponsive", "failed", "stopped")} == {
        "known": 4, "running": 2, "ready": 2, "starting": 0, "unresponsive": 0, "failed": 1, "stopped": 1}
    by_name = {s["name"]: s for s in doc["servers"]}
    assert [s["name"] for s in doc["servers"]] == ["big", "crashy", "dup", "old"]
    s = by_name["big"]
    assert s["state"] == "ready" and s["processes"] == 3 and s["gpus"] == big["gpus"]
    # the whole tree: more than the server alone, about what psutil sums for it around the call
    assert s["rss_bytes"] > leader_rss
    assert 0.8 * min(before, after) <= s["rss_bytes"] <= 1.2 * max(before, after)
    assert totals["rss_bytes"] == s["rss_bytes"] + by_name["dup"]["rss_bytes"]
    for gone in ("crashy", "old"):
        g = by_name[gone]
        assert (g["processes"], g["rss_bytes"], g["gpu_memory_mib"], g["uptime"]) == (0, None, None, None)
    assert (by_name["crashy"]["state"], by_name["old"]["state"]) == ("exited", "stopped")
    # NVML was asked (two servers run): figures where it answered, else the reason
    assert (s["gpu_memory_mib"] is None) == (doc["gpu_memory_unavailable"] is not None)
    if not any(os.path.exists(p) for p in DRIVER_PATHS):  # no driver: said without even importing pynvml
        assert doc["gpu_memory_unavailable"] == "no NVIDIA driver here (no /dev/nvidiactl)"
    assert s["outside_url"] is None  # nobody said how this machine is reached from outside

    table = project.gpuops("status", env={"COLUMNS": "200"})
    assert table.code == 0, table.text
    assert table.out.splitlines()[0].startswith("4 known: 2 ready, 0 starting; 1 failed, 1 stopped; running together: ")
    assert " GiB (3)" in table.out or " MiB (3)" in table.out  # RSS of the tree of 3, in human units
    assert "Traceback" not in table.text


def test_the_tree_is_procs_server_tree_even_for_a_process_that_left_it(project):
    port = free_port()
    # the sleep leaves the tree (its parent exits, it starts a session of its own): only its tag says whose it is
    project.write_agents(f"## Server\n\n```bash\n(setsid sleep 300 &)\n"
                         f"{DEMO} GPUOPS_DEMO_WORKERS=1 {sys.executable} -m gpuops.demo --port {port}\necho gone\n```\n")
    start(project, "server")
    rec = state.load(RunDir(project.run_dir), "server")
    tree = wait_for(lambda: (t := procs.server_tree(rec.pid, rec.create_time, rec.pgid, rec.tag)) and len(t) == 4
                    and t)  # bash, the server, its worker, and the sleep
    assert any(p.name() == "sleep" and p.ppid() != rec.pid for p in tree)

    assert {p.pid for p in server_trees([rec])["server"]} == {p.pid for p in tree}
    (s,) = status_doc(project)["servers"]
    assert s["processes"] == 4 and s["rss_bytes"] >= sum(p.memory_info().rss for p in tree) * 0.8


# --- GPU memory through the NVML seam ---


@pytest.fixture
def device(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dev")
    path = folder / "nvidia0"
    path.write_bytes(b"")
    return path


@pytest.fixture
def stranger_on_gpu(device):
    """Someone else's GPU process: a real process holding the device file, not started by gpuops."""
    proc = subprocess.Popen(["/bin/sh", "-c", f'exec 3<"{device}"; exec sleep 60'], start_new_session=True)
    wait_for(lambda: psutil.Process(proc.pid).name() == "sleep")
    yield proc
    kill_groups([proc])


def test_status_reads_the_gpu_memory_of_each_tree_through_nvml(project, device, stranger_on_gpu):
    gpu_port, cpu_port = free_port(), free_port()
    # bash holds the device open and stays the parent (a command follows): both it and the server hold it
    project.write_agents(
        f"## Server: gpu\n\n```bash\nexec 3<{device}\n{DEMO} {sys.executable} -m gpuops.demo --port {gpu_port}\n"
        f"echo server gone\n```\n\n"
        f"## Server: cpu\n\n```bash\n{DEMO} {sys.executable} -m gpuops.demo --port {cpu_port}\n```\n")
    start(project, "gpu")
    start(project, "cpu")
    shell = project.record("gpu")["pid"]
    (server,) = psutil.Process(shell).children()
    fake = FakePynvml([
        FakeGpu(processes=[FakeProcess(shell, 500, track=True), FakeProcess(stranger_on_gpu.pid, 9000, track=True)]),
        FakeGpu(processes=[FakeProcess(server.pid, 4000, kind="compute+graphics", track=True)]),  # listed twice
    ])
    nvml = Nvml(fake, device_prefixes=(str(device.parent / "nvidia"),))

    result = status(RunDir(project.run_dir), nvml=nvml)

    by_name = {s.name: s for s in result.servers}
    assert by_name["gpu"].gpu_memory_mib == 4500.0  # its tree on both GPUs, not the stranger's 9000
    assert by_name["cpu"].gpu_memory_mib == 0.0
    assert result.totals()["gpu_memory_mib"] == 4500.0 and result.gpu_memory_unavailable is None
    assert fake.inits == 1  # one NVML session for all servers

    assert project.gpuops("stop-server", "--all").code == 0
    result = status(RunDir(project.run_dir), nvml=nvml)
    assert fake.inits == 1  # nothing runs: NVML is not even opened
    assert [s.gpu_memory_mib for s in result.servers] == [None, None] and result.gpu_memory_unavailable is None


def unused_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def test_a_gpu_process_this_machine_cannot_see_makes_a_server_without_one_unknown(project, device):
    # NVML numbering PIDs as another PID namespace does (a container without the host's): that one may be ours
    port = free_port()
    project.write_agents(f"## Server\n\n```bash\n{DEMO} {sys.executable} -m gpuops.demo --port {port}\n```\n")
    start(project, "server")
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(unused_pid(), 30000)])])

    result = status(RunDir(project.run_dir), nvml=Nvml(fake, device_prefixes=(str(device.parent / "nvidia"),)))

    assert result.servers[0].gpu_memory_mib is None and result.totals()["gpu_memory_mib"] is None


def test_gpu_memory_is_unknown_when_nvml_will_not_list_processes(project, device):
    import pynvml

    port = free_port()
    project.write_agents(f"## Server\n\n```bash\n{DEMO} {sys.executable} -m gpuops.demo --port {port}\n```\n")
    start(project, "server")
    fake = FakePynvml([FakeGpu(process_error=pynvml.NVMLError_NoPermission)])

    result = status(RunDir(project.run_dir), nvml=Nvml(fake, device_prefixes=(str(device.parent / "nvidia"),)))

    assert result.servers[0].gpu_memory_mib is None  # not 0: it may hold memory NVML would not show
    assert result.gpu_memory_unavailable == "GPU 0: no permission"


# --- containers ---


def test_a_loopback_server_in_a_container_is_warned_about_and_the_outside_url_shown(project):
    inside, public = free_port(), free_port()
    project.write_agents(
        f"## Server: inside\n\n```bash\n{DEMO} {sys.executable} -m gpuops.demo --port {inside}\n```\n\n"
        f"## Server: public\n\n```bash\n{DEMO} {sys.executable} -m gpuops.demo --host 0.0.0.0 --port {public}\n```\n")
    container = {"container": "podman"}  # what podman sets; on a machine that is a container anyway, it says so too

    r = start(project, "inside", **container)
    assert "is reachable only from inside the container" in r.out, r.text
    assert f"127.0.0.1:{inside}" in r.out and "`--host 0.0.0.0`" in r.out
    r = start(project, "public", **container)
    assert "reachable only from inside" not in r.text

    env = {**container, "GPUOPS_PUBLIC_HOST": "gpu7.lab"}
    doc = status_doc(project, **env)
    by_name = {s["name"]: s for s in doc["servers"]}
    assert doc["container"] is not None
    assert by_name["inside"]["binding_note"].startswith("inside a container (")
    assert by_name["inside"]["outside_url"] is None  # nobody outside reaches it, whatever the name
    assert (by_name["public"]["binding_note"], by_name["public"]["outside_url"]) == (None, f"http://gpu7.lab:{public}")

    table = project.gpuops("status", env={**env, "COLUMNS": "200"})
    assert f"outside: http://gpu7.lab:{public}" in table.out
    assert "warning: 'inside': inside a container (" in table.out and "'public'" not in table.out.split("warning:")[-1]
