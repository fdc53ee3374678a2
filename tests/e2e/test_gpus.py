"""GPU awareness: inventory through the NVML seam, preflight decisions, kill-then-wait with real processes.

Only NVML is faked (tests/support/fake_nvml.py, in pynvml's own types and errors). The GPU holders are real
processes holding a real file open where the driver's device file would be, so the visibility
check, the signals, the process groups and the waiting all run for real.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from gpuops.errors import GpusBusy
from gpuops.gpu import inventory as gpus
from gpuops.gpu import nvml as seam
from gpuops.gpu.inventory import Gpu, GpuProcess, Inventory
from gpuops.gpu.nvml import Nvml
from gpuops.server import procs
from support.fake_nvml import FakeGpu, FakeProcess, FakePynvml
from support.fixtures import REPO, free_port, kill_groups

FAST = {"timeout": 5.0, "release_timeout": 5.0, "poll": 0.02}


# --- fixtures: a device file and real processes holding it ---


@dataclass
class Device:
    prefix: str  # what the seam treats as the driver's device files
    path: Path  # one of them, for holders to open


@pytest.fixture
def device():
    # World-readable, so a holder started as another user can open it too.
    folder = tempfile.mkdtemp(prefix="gpuops-dev-")
    os.chmod(folder, 0o755)
    path = Path(folder) / "nvidia0"
    path.write_bytes(b"")
    path.chmod(0o644)
    yield Device(prefix=str(Path(folder) / "nvidia"), path=path)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Holder:
    proc: subprocess.Popen
    child: int | None

    @property
    def pid(self) -> int:
        return self.proc.pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until_exec(pid: int, name: str, limit: float = 5.0) -> None:
    """`echo ready; exec sleep` prints before the exec: wait until the process has become `name`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).name() == name:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.005)


@pytest.fixture
def holders(device):
    """start(...) -> a real process in its own process group, holding the fake device file open."""
    started: list[subprocess.Popen] = []

    def start(*, hold: bool = True, ignore_term: bool = False, child: bool = False, user: int | None = None) -> Holder:
        script = f'exec 3<"{device.path}"; ' if hold else ""
        if ignore_term:
            script += "trap '' TERM; "
        if child:
            script += "sleep 60 & echo child $!; "
        script += "echo ready; exec sleep 60"
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, text=True, cwd="/",
                                start_new_session=True, user=user)
        started.append(proc)
        child_pid = None
        for line in proc.stdout:
            if line.startswith("child "):
                child_pid = int(line.split()[1])
            if line.strip() == "ready":
                break
        _wait_until_exec(proc.pid, "sleep")
        return Holder(proc, child_pid)

    yield start
    kill_groups(started)


def nvml_for(fake: FakePynvml, device: Device) -> Nvml:
    return Nvml(fake, device_prefixes=(device.prefix,))


def unused_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


# --- inventory ---


def test_inventory_lists_compute_and_graphics_processes_with_user_and_command(holders, device):
    a, b = holders(), holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(a.pid, 4000), FakeProcess(b.pid, 12, kind="graphics")])])

    inv = gpus.inventory(nvml_for(fake, device))

    assert inv.unavailable is None and inv.driver == "550.54.15"
    (gpu,) = inv.gpus
    assert (gpu.name, gpu.memory_total_mib, gpu.memory_used_mib) == ("NVIDIA H100 80GB HBM3", 81559, 3 + 4000 + 12)
    by_pid = {p.pid: p for p in gpu.processes}
    assert by_pid[a.pid].kind == "compute" and by_pid[a.pid].used_mib == 4000
    assert by_pid[b.pid].kind == "graphics" and by_pid[b.pid].used_mib == 12
    me = psutil.Process().username()
    assert all(p.visible and p.accessible and p.user == me for p in gpu.processes)
    assert by_pid[a.pid].name == "sleep" and "sleep 60" in by_pid[a.pid].cmdline


def test_inventory_opens_one_nvml_session_for_all_gpus(device):
    fake = FakePynvml([FakeGpu(), FakeGpu(), FakeGpu()])  # the fake refuses queries outside a session

    inv = gpus.inventory(nvml_for(fake, device))

    assert len(inv.gpus) == 3
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_pid_this_machine_cannot_see_is_kept_and_marked(device):
    ghost = unused_pid()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(ghost, 2000)])])

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    (p,) = gpu.processes
    assert (p.pid, p.used_mib, p.visible, p.user) == (ghost, 2000, False, "?")


def test_local_pid_not_holding_the_gpu_device_is_not_taken_for_the_gpu_process(holders, device):
    # Another container's PID can be a different process here: only a device holder is the one NVML means.
    bystander = holders(hold=False)
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(bystander.pid, 2000)])])

    (p,) = gpus.inventory(nvml_for(fake, device)).gpus[0].processes

    assert p.visible is False and p.cmdline == ""


def test_process_in_both_lists_is_one_entry_with_its_memory_counted_once(holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 500, kind="compute+graphics")])])

    (p,) = gpus.inventory(nvml_for(fake, device)).gpus[0].processes

    assert (p.kind, p.used_mib) == ("compute+graphics", 500)


def test_process_listing_without_permission_is_reported_not_dropped(device):
    fake = FakePynvml([FakeGpu(base_mib=5000, process_error=pynvml.NVMLError_NoPermission)])

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.processes == [] and gpu.processes_error == "no permission"
    assert gpu.memory_used_mib == 5000


@pytest.mark.parametrize("raw_na", [False, True], ids=["none-from-pynvml", "raw-sentinel"])
def test_na_memory_becomes_none_not_zero(holders, device, raw_na):
    h = holders()
    fake = FakePynvml([FakeGpu(memory_na=True, processes=[FakeProcess(h.pid, None, raw_na=raw_na)])])

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.memory_used_mib is None and gpu.memory_total_mib is None
    assert gpu.processes[0].used_mib is None


def test_memory_used_reported_not_available_becomes_none(device):
    fake = FakePynvml([FakeGpu(memory_used_raw_na=True)])

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.memory_used_mib is None and gpu.memory_total_mib == 81559


def test_mig_gpu_is_flagged_and_its_utilization_is_none(device):
    fake = FakePynvml([FakeGpu(mig=True, utilization=None), FakeGpu(mig=None, utilization=37)])

    mig, plain = gpus.inventory(nvml_for(fake, device)).gpus

    assert (mig.mig, mig.utilization_pct) == (True, None)
    assert (plain.mig, plain.utilization_pct) == (False, 37)


def test_old_driver_without_memory_v2_falls_back_to_v1(device):
    fake = FakePynvml([FakeGpu(base_mib=700)], memory_v2=False)

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.memory_used_mib == 700


def test_driver_without_v3_process_queries_is_read_through_v2(holders, device):
    # 470 LTS and other pre-R510 drivers: pynvml's default call raises NVMLLibraryMismatchError
    a, b = holders(), holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(a.pid, 4000), FakeProcess(b.pid, 12, kind="graphics")])],
                      process_api="v2", driver="470.256.02")

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.processes_error is None
    assert {(p.pid, p.kind, p.used_mib) for p in gpu.processes} == {(a.pid, "compute", 4000), (b.pid, "graphics", 12)}


def test_driver_without_any_process_query_pynvml_knows_says_too_old_per_gpu(device):
    fake = FakePynvml([FakeGpu(base_mib=5000), FakeGpu()], process_api="v1")

    inv = gpus.inventory(nvml_for(fake, device))

    assert inv.unavailable is None
    assert all(g.processes == [] and "driver is too old" in g.processes_error for g in inv.gpus)
    assert inv.gpus[0].memory_used_mib == 5000  # the rest of the GPU still reads


def test_inventory_lists_the_mig_devices_of_a_mig_gpu(device):
    fake = FakePynvml([FakeGpu(), FakeGpu(mig=True, mig_devices=["MIG-11111111-aaaa", "MIG-22222222-bbbb"])])

    plain, mig = gpus.inventory(nvml_for(fake, device)).gpus

    assert plain.mig_devices == []
    assert mig.mig_devices == ["MIG-11111111-aaaa", "MIG-22222222-bbbb"]  # the 5 empty slots skipped


def test_mig_devices_nvml_will_not_list_are_marked_unknown(device):
    fake = FakePynvml([FakeGpu(mig=True, mig_devices=["MIG-1"], mig_list_error=pynvml.NVMLError_NoPermission)])

    (gpu,) = gpus.inventory(nvml_for(fake, device)).gpus

    assert gpu.mig_devices is None and gpu.problem is None and gpu.mig is True


def test_a_lost_gpu_is_reported_and_the_others_still_read(device):
    fake = FakePynvml([FakeGpu(lost=True), FakeGpu(name="NVIDIA L4", total_mib=23034)])

    lost, ok = gpus.inventory(nvml_for(fake, device)).gpus

    assert lost.problem.startswith("GPU is lost") and lost.memory_total_mib is None
    assert (ok.name, ok.problem) == ("NVIDIA L4", None)


@pytest.mark.parametrize(
    "error, reason",
    [
        (pynvml.NVMLError_LibraryNotFound, "libnvidia-ml.so.1) not found"),
        (pynvml.NVMLError_DriverNotLoaded, "driver is not loaded"),
        (pynvml.NVMLError_NoPermission, "no permission"),
        (pynvml.NVMLError_LibRmVersionMismatch, "versions differ"),
        (pynvml.NVMLError_Unknown, "NVML failed to start: Unknown Error"),
    ],
)
def test_inventory_without_usable_nvml_says_why_and_does_not_raise(device, error, reason):
    inv = gpus.inventory(nvml_for(FakePynvml([FakeGpu()], init_error=error), device))

    assert inv.gpus == [] and reason in inv.unavailable


def test_inventory_with_driver_but_no_gpu_says_so(device):
    inv = gpus.inventory(nvml_for(FakePynvml([]), device))

    assert inv.unavailable == "the NVIDIA driver sees no GPU" and inv.driver == "550.54.15"


def test_inventory_without_nvidia_ml_py_installed_says_so():
    inv = gpus.inventory(Nvml(None, missing="nvidia-ml-py is not installed"))

    assert inv.unavailable == "nvidia-ml-py is not installed"


# --- rendering ---


def render(inv: Inventory, **kw) -> str:
    buf = io.StringIO()
    gpus.render_table(inv, Console(file=buf, width=200, color_system=None), **kw)
    return buf.getvalue()


def test_table_shows_na_mig_and_visibility_markers(holders, device):
    h = holders()
    fake = FakePynvml([
        FakeGpu(mig=True, utilization=None, memory_na=True,
                processes=[FakeProcess(h.pid, None), FakeProcess(unused_pid(), 800)]),
        FakeGpu(process_error=pynvml.NVMLError_NoPermission),
    ])

    out = render(gpus.inventory(nvml_for(fake, device)))

    gpu0 = next(line for line in out.splitlines() if "[MIG]" in line)
    assert "n/a / n/a" in gpu0 and gpu0.split()[0] == "0"
    holder = next(line for line in out.splitlines() if f" {h.pid} " in line)
    assert "n/a" in holder and "sleep 60" in holder and " 0 " not in holder
    assert "(not visible: other container)" in out
    assert "(processes: no permission)" in out
    assert out.startswith("NVIDIA driver 550.54.15, 2 GPUs")


def test_table_marks_busy_gpus_against_the_threshold(holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)]), FakeGpu(name="NVIDIA L4")])

    out = render(gpus.inventory(nvml_for(fake, device)), busy_mib=300)

    h100 = next(line for line in out.splitlines() if "H100" in line)
    l4 = next(line for line in out.splitlines() if "L4" in line)
    assert h100.rstrip().endswith("busy") and "busy" not in l4


def test_table_without_gpu_is_the_one_line_warning():
    out = render(Inventory([], "the NVIDIA kernel driver is not loaded", None))

    assert out == "no NVIDIA GPU visible: the NVIDIA kernel driver is not loaded\n"


def test_json_keeps_na_as_null_and_lists_processes(holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(utilization=None, processes=[FakeProcess(h.pid, None)])])

    data = json.loads(json.dumps(gpus.to_json(gpus.inventory(nvml_for(fake, device)))))

    assert data["available"] is True and data["unavailable"] is None
    (gpu,) = data["gpus"]
    assert gpu["utilization_pct"] is None
    assert gpu["processes"][0]["pid"] == h.pid and gpu["processes"][0]["used_mib"] is None


# --- needed GPUs (pure) ---


def four_gpus() -> Inventory:
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-bbbb3333", "GPU-cccc4444"]
    return Inventory([Gpu(i, "NVIDIA A100", u, 0, 40960, 0, False) for i, u in enumerate(uuids)], None, "550")


@pytest.mark.parametrize(
    "env, argv, expected",
    [
        ({}, ["vllm", "serve", "m"], [0, 1, 2, 3]),
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["vllm", "serve", "m"], [2, 3]),
        ({"CUDA_VISIBLE_DEVICES": "3,1"}, ["x"], [3, 1]),  # CUDA's order, not sorted
        ({"CUDA_VISIBLE_DEVICES": ""}, ["x"], []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, ["x"], []),
        ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, ["x"], [1]),  # CUDA stops at the first invalid entry
        ({"CUDA_VISIBLE_DEVICES": "1,9"}, ["x"], [1]),  # no GPU 9 here
        ({"CUDA_VISIBLE_DEVICES": "GPU-cccc"}, ["x"], [3]),  # UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "GPU-bbbb,0"}, ["x"], []),  # ambiguous prefix: invalid
        ({"CUDA_VISIBLE_DEVICES": "MIG-0f1e2d"}, ["x"], []),  # MIG instance: parent not known
        ({}, ["vllm", "serve", "m", "--tensor-parallel-size", "2"], [0, 1]),
        ({}, ["vllm", "serve", "m", "-tp", "2", "-pp", "2"], [0, 1, 2, 3]),
        ({}, ["python", "-m", "sglang.launch_server", "--tp", "2", "--dp", "2"], [0, 1, 2, 3]),
        ({}, ["python", "-m", "sglang.launch_server", "--tp-size=2", "--dp-size", "2", "--enable-dp-attention"], [0, 1]),
        ({}, ["srv", "--num-gpus", "3"], [0, 1, 2]),
        ({}, ["vllm", "serve", "m", "--tensor-parallel-size", "8"], [0, 1, 2, 3]),  # more than exist
        ({"CUDA_VISIBLE_DEVICES": "1,2,3"}, ["vllm", "serve", "m", "-tp", "2"], [1, 2]),  # first N visible
        ({}, ["env", "CUDA_VISIBLE_DEVICES=2", "vllm", "serve", "m"], [2]),
        ({"CUDA_VISIBLE_DEVICES": "0"}, ["CUDA_VISIBLE_DEVICES=3", "llama-server", "-m", "m.gguf"], [3]),
        ({}, ["python", "main.py", "--cuda-device", "2"], [2]),  # ComfyUI
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["llama-server", "--device", "CUDA1"], [3]),  # llama.cpp: position
        ({}, ["vllm", "serve", "m", "--device", "cuda"], [0, 1, 2, 3]),  # not a device list
        ({}, ["llama-server", "-m", "m.gguf", "--tensor-parallel-size", "x"], [0, 1, 2, 3]),  # junk ignored
    ],
)
def test_needed_gpus(env, argv, expected):
    assert gpus.needed_gpus(env, argv, four_gpus()) == expected


@settings(max_examples=200, deadline=None)
@given(
    visible=st.one_of(st.none(), st.lists(st.sampled_from(["0", "1", "2", "3", "7", "-1", "GPU-b", "GPU-cccc", "x", ""]),
                                          max_size=5).map(",".join)),
    argv=st.lists(st.sampled_from(["vllm", "serve", "m", "-tp", "--tp", "-pp", "--dp-size", "--num-gpus", "0", "2",
                                   "3", "9", "--device", "CUDA1,CUDA0", "CUDA2,CUDA2", "--cuda-device", "1"]),
                  max_size=8),
)
def test_needed_gpus_are_always_distinct_gpus_of_this_machine(visible, argv):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}

    needed = gpus.needed_gpus(env, argv, four_gpus())

    assert len(set(needed)) == len(needed) and set(needed) <= {0, 1, 2, 3}


def mig_gpus(unlisted: bool = False) -> Inventory:
    """GPU 0 plain; GPUs 1 and 2 split into MIG devices (GPU 2's not listable when `unlisted`)."""
    return Inventory([
        Gpu(0, "NVIDIA A100", "GPU-aaaa1111", 0, 40960, 0, False),
        Gpu(1, "NVIDIA A100", "GPU-bbbb2222", 0, 40960, None, True, mig_devices=["MIG-1a1a", "MIG-1b1b"]),
        Gpu(2, "NVIDIA A100", "GPU-cccc3333", 0, 40960, None, True,
            mig_devices=None if unlisted else ["MIG-2a2a"]),
    ], None, "550")


@pytest.mark.parametrize(
    "visible, argv, unlisted, expected",
    [
        ("MIG-1b1b", ["x"], False, [1]),  # a MIG device is on its parent GPU
        ("mig-2A", ["x"], False, [2]),  # a unique prefix, any case
        ("MIG-2a2a,0", ["x"], False, [2, 0]),
        ("MIG-1a1a,MIG-1b1b,MIG-2a2a", ["vllm", "serve", "m", "-tp", "2"], False, [1]),  # first 2 devices: GPU 1
        ("MIG-1a1a,MIG-1b1b,MIG-2a2a", ["llama-server", "--device", "CUDA2"], False, [2]),
        ("MIG-1,0", ["x"], False, []),  # ambiguous prefix: CUDA stops there
        ("MIG-1a1a,MIG-1a1a", ["x"], False, [1]),  # a repeat: CUDA stops there
        ("MIG-9999", ["x"], False, []),  # no such MIG device
        ("MIG-GPU-bbbb2222/1/0", ["x"], False, [1]),  # R450/R460 form: the parent's UUID inside
        ("MIG-9999", ["x"], True, [2]),  # unknown, but GPU 2's devices could not be listed: count it
        ("MIG-1b1b", ["x"], True, [1]),
    ],
)
def test_needed_gpus_maps_mig_devices_to_their_parent_gpu(visible, argv, unlisted, expected):
    assert gpus.needed_gpus({"CUDA_VISIBLE_DEVICES": visible}, argv, mig_gpus(unlisted)) == expected


def test_needed_gpus_without_inventory_trusts_cuda_visible_devices():
    assert gpus.needed_gpus({"CUDA_VISIBLE_DEVICES": "0,5"}, ["x"], Inventory([], "no driver", None)) == [0, 5]


# --- busy decision (pure) ---


def proc(pid, mib, kind="compute", uid=1000, user="alice", visible=True) -> GpuProcess:
    return GpuProcess(pid, mib, kind, user, "python", f"python serve.py #{pid}", visible, True, uid=uid)


def gpu(index=0, used=3.0, processes=(), error=None) -> Gpu:
    return Gpu(index, "NVIDIA A100", f"GPU-{index}", used, 40960.0, 0, False, list(processes), processes_error=error)


@pytest.mark.parametrize(
    "g, ignore, busy",
    [
        (gpu(used=250, processes=[proc(10, 247)]), (), False),
        (gpu(used=4003, processes=[proc(10, 4000)]), (), True),
        (gpu(used=4003, processes=[proc(10, 4000)]), (10,), False),  # our own server
        (gpu(used=8003, processes=[proc(10, 4000), proc(11, 4000)]), (10,), True),
        (gpu(used=None, processes=[proc(10, 1000)]), (), True),  # device figure n/a: sum the processes
        (gpu(used=None, processes=[proc(10, 100)]), (), False),
        (gpu(used=None, processes=[proc(10, None)]), (), True),  # MIG: a process of unknown size counts
        (gpu(used=None, processes=[]), (), False),
        (gpu(used=4000, processes=[]), (), True),  # held by something NVML does not list
        (gpu(used=4000, processes=[proc(10, None)]), (10,), False),  # only ours listed: the memory is ours
        (gpu(used=4000, processes=[proc(10, None), proc(11, 2000)]), (10,), True),  # ours n/a: count the others
    ],
)
def test_is_busy(g, ignore, busy):
    assert gpus.is_busy(g, 300, ignore) is busy


def test_busy_gpus_only_counts_needed_ones():
    inv = Inventory([gpu(0, 9000, [proc(1, 9000)]), gpu(1, 9000, [proc(2, 9000)]), gpu(2)], None, "550")

    assert [g.index for g in gpus.busy_gpus(inv, [1, 2], 300)] == [1]


def test_busy_refusal_names_gpus_pids_memory_commands_and_the_way_out():
    inv = Inventory([gpu(0), gpu(1, 30003, [proc(4242, 30000), proc(unused_pid(), 10, visible=False)])], None, "550")

    with pytest.raises(GpusBusy) as err:
        gpus.check_gpus_free(inv, [0, 1], 300)

    e = err.value
    assert e.exit_code == 5
    assert e.message.startswith("1 of 2 needed GPUs busy (GPU 1)")
    text = e.render()
    assert "GPU 1 (NVIDIA A100): 30003 / 40960 MiB used" in text
    assert "pid 4242 (alice, 30000 MiB, compute): python serve.py #4242" in text
    assert "not visible: other container" in text
    assert "`inv gpus`" in e.hint and "--kill-gpu-procs" in e.hint and "CUDA_VISIBLE_DEVICES" in e.hint


def test_free_gpus_pass_check():
    inv = Inventory([gpu(0, 250, [proc(1, 247)])], None, "550")

    assert gpus.check_gpus_free(inv, [0], 300) is None


# --- kill plan (pure) ---


@pytest.mark.parametrize(
    "processes, uid, own, holders, refusal",
    [
        ([proc(10, 4000)], 1000, {1}, [10], None),
        ([proc(10, 4000, uid=1001, user="bob")], 1000, {1}, [], "belongs to user bob"),
        ([proc(10, 4000, uid=1001, user="bob")], 0, {1}, [10], None),  # root may
        ([proc(10, 4000), proc(11, 10, visible=False)], 1000, {1}, [], "not a process of this machine"),
        ([proc(10, 4000)], 1000, {10}, [], "gpuops itself"),
        ([proc(10, 4000, uid=None)], 1000, {1}, [], "may not inspect"),
        ([proc(10, 4000), proc(11, 5, kind="graphics")], 1000, {1}, [10], None),  # Xorg is left alone
        ([proc(11, 4000, kind="graphics")], 1000, {1}, [], "graphics processes"),
        ([], 1000, {1}, [], "cannot tell by whom"),
    ],
)
def test_kill_plan(processes, uid, own, holders, refusal):
    g = gpu(0, 3 + sum(p.used_mib or 0 for p in processes), processes)

    plan = gpus.kill_plan([g], (), own_pids=own, uid=uid, busy_mib=300)

    if refusal:
        assert any(refusal in r for r in plan.refusals), plan.refusals
    else:
        assert plan.refusals == [] and [p.pid for p in plan.holders] == holders


# --- kill, then wait for NVML, with real processes ---


def tracked(*hs: Holder, mib: float = 4000) -> list[FakeProcess]:
    return [FakeProcess(h.pid, mib, track=True) for h in hs]


def test_free_gpus_terminates_holders_and_waits_until_nvml_releases_the_memory(holders, device):
    a, b = holders(), holders()
    fake = FakePynvml([FakeGpu(processes=tracked(a)), FakeGpu(processes=tracked(b))], lag=0.4)
    nv = nvml_for(fake, device)
    lines: list[str] = []

    t0 = time.monotonic()
    killed = gpus.free_gpus(gpus.inventory(nv), [0, 1], 300, yes=True, confirm=None, write=lines.append, nvml=nv,
                            **FAST)
    elapsed = time.monotonic() - t0

    assert sorted(killed) == sorted([a.pid, b.pid])
    assert a.proc.wait(timeout=2) is not None and b.proc.wait(timeout=2) is not None
    assert elapsed >= 0.4  # it waited for NVML's lag, not just for the exit
    assert any(line.startswith("GPU memory released after") for line in lines)
    assert "2 of 2 needed GPUs busy (GPU 0, 1)" in lines[0]
    after = gpus.inventory(nv)
    assert all(g.processes == [] for g in after.gpus)


def test_free_gpus_terminates_the_holders_whole_process_group(holders, device):
    h = holders(child=True)
    assert h.child is not None and not gone(h.child)
    fake = FakePynvml([FakeGpu(processes=tracked(h))], lag=0.05)
    nv = nvml_for(fake, device)

    killed = gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv,
                            **FAST)

    assert h.pid in killed and h.child in killed
    assert gone(h.child)


def test_free_gpus_sigkills_a_holder_that_ignores_sigterm(holders, device):
    h = holders(ignore_term=True)
    fake = FakePynvml([FakeGpu(processes=tracked(h))], lag=0.05)
    nv = nvml_for(fake, device)
    lines: list[str] = []

    gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lines.append, nvml=nv,
                   timeout=0.3, release_timeout=5, poll=0.02)

    assert gone(h.pid)  # (gpuops reaps it, so Popen cannot see the signal)
    assert any("1 needed SIGKILL" in line for line in lines)


def test_free_gpus_refuses_other_users_processes_when_not_root(holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=tracked(h))])
    nv = nvml_for(fake, device)
    owner = psutil.Process(h.pid).username()

    with pytest.raises(GpusBusy) as err:
        gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv,
                       uid=4242, **FAST)  # we are user 4242, the holder is not ours

    assert f"belongs to user {owner}" in err.value.render() and "unless run as root" in err.value.render()
    assert "nothing was terminated" in err.value.message
    assert h.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_free_gpus_as_root_terminates_another_users_holder(holders, device):
    h = holders(user=65534)
    assert psutil.Process(h.pid).uids().real == 65534
    fake = FakePynvml([FakeGpu(processes=tracked(h))], lag=0.05)
    nv = nvml_for(fake, device)

    killed = gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv,
                            **FAST)

    assert killed == [h.pid] and h.proc.wait(timeout=2) is not None


def test_free_gpus_without_terminal_and_without_yes_refuses_with_hint(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h))]), device)

    with pytest.raises(GpusBusy) as err:
        gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=False, confirm=None, write=lambda s: None, nvml=nv, **FAST)

    assert "--yes" in err.value.hint
    assert h.proc.poll() is None


def test_free_gpus_asks_and_a_no_terminates_nothing(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h))]), device)
    asked: list[str] = []

    def say_no(question: str) -> bool:
        asked.append(question)
        return False

    with pytest.raises(GpusBusy, match="not confirmed"):
        gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=False, confirm=say_no, write=lambda s: None, nvml=nv, **FAST)

    assert asked == ["Terminate these 1 process(es) and their process groups?"]
    assert h.proc.poll() is None


def test_free_gpus_asks_and_a_yes_terminates(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h))], lag=0.05), device)

    killed = gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=False, confirm=lambda q: True, write=lambda s: None,
                            nvml=nv, **FAST)

    assert killed == [h.pid]


def test_free_gpus_never_terminates_gpuops_itself(device):
    with open(device.path, "rb"):  # this test process now "holds the GPU"
        nv = nvml_for(FakePynvml([FakeGpu(processes=[FakeProcess(os.getpid(), 4000)])]), device)
        with pytest.raises(GpusBusy) as err:
            gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv,
                           **FAST)

    assert "gpuops itself" in err.value.render()


def test_free_gpus_touches_nothing_when_one_holder_is_in_another_container(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h) + [FakeProcess(unused_pid(), 3000)])]), device)

    with pytest.raises(GpusBusy) as err:
        gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv, **FAST)

    assert "another container or the host" in err.value.render()
    assert h.proc.poll() is None  # all or nothing: stopping it alone would not free the GPU


def test_free_gpus_with_nothing_busy_asks_nothing_and_returns_empty(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h, mib=100))]), device)

    def never(question: str) -> bool:
        raise AssertionError("asked although nothing is busy")

    assert gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=False, confirm=never, write=lambda s: None, nvml=nv,
                          **FAST) == []
    assert h.proc.poll() is None


def test_free_gpus_release_timeout_names_what_still_holds_the_memory(holders, device):
    h = holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(h))], lag=60), device)  # the driver never lets go

    with pytest.raises(GpusBusy) as err:
        gpus.free_gpus(gpus.inventory(nv), [0], 300, yes=True, confirm=None, write=lambda s: None, nvml=nv,
                       timeout=5, release_timeout=0.4, poll=0.02)

    text = err.value.render()
    assert "GPU memory still held 0.4 s after stopping" in text
    assert f"pid {h.pid} (4000 MiB) exited, but the driver still lists it" in text
    assert h.proc.wait(timeout=2) is not None


# --- wait_released (what stop-server uses) ---


def test_wait_released_returns_once_nvml_drops_the_pids(holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=tracked(h))], lag=0.3)
    nv = nvml_for(fake, device)
    os.killpg(h.pid, signal.SIGKILL)
    h.proc.wait()

    t0 = time.monotonic()
    inv = gpus.wait_released([h.pid], timeout=5, nvml=nv, poll=0.02)

    assert time.monotonic() - t0 >= 0.3
    assert inv.gpus[0].processes == [] and inv.gpus[0].memory_used_mib == 3
    assert fake.inits == fake.shutdowns  # every session closed


def test_wait_released_names_a_surviving_worker(holders, device):
    server, worker = holders(), holders()
    nv = nvml_for(FakePynvml([FakeGpu(processes=tracked(server) + tracked(worker))]), device)
    os.killpg(server.pid, signal.SIGKILL)
    server.proc.wait()

    with pytest.raises(GpusBusy) as err:
        gpus.wait_released([server.pid, worker.pid], timeout=0.2, nvml=nv, poll=0.02)

    text = err.value.render()
    assert f"pid {worker.pid} (4000 MiB) still running: sleep 60" in text
    assert "surviving engine worker" in err.value.hint
    assert err.value.exit_code == 5


def test_wait_released_without_gpu_returns_at_once(device):
    nv = nvml_for(FakePynvml([], init_error=pynvml.NVMLError_DriverNotLoaded), device)

    inv = gpus.wait_released([1234], timeout=5, nvml=nv)

    assert inv.unavailable == "the NVIDIA kernel driver is not loaded"


# --- banner ---


def test_banner_lists_the_servers_gpus_with_name_and_vram():
    inv = Inventory([gpu(0, 72100.0), Gpu(1, "NVIDIA H100 80GB HBM3", "GPU-1", 3.0, 81559.0, 0, True)], None, "550")

    assert gpus.banner_lines(inv, [1]) == ["GPU 1: NVIDIA H100 80GB HBM3 [MIG], 81559 MiB (3 MiB in use)",
                                          "uses GPU 1 of 2"]
    assert gpus.banner_lines(inv, [0, 1])[0] == "GPU 0: NVIDIA A100, 40960 MiB (72100 MiB in use)"
    assert len(gpus.banner_lines(inv, [])) == 2  # nothing known: every GPU


def test_banner_without_gpu_is_the_warning():
    assert gpus.banner_lines(Inventory([], "the NVIDIA kernel driver is not loaded", None), []) == [
        "no NVIDIA GPU visible: the NVIDIA kernel driver is not loaded"]


# --- model files ---


@pytest.fixture
def models(tmp_path):
    qwen = tmp_path / "models" / "qwen3-8b"
    (qwen / "sub").mkdir(parents=True)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "sub/extra.bin"):
        (qwen / name).write_bytes(b"")
    (qwen / "config.json").write_text("{}")
    (qwen / ".cache").mkdir()
    (qwen / ".cache" / "stale.safetensors").write_bytes(b"")
    (tmp_path / "llama.Q4_K_M.gguf").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "vllm").mkdir()  # a source checkout named like the module
    return tmp_path


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["vllm", "serve", "models/qwen3-8b", "--port", "8000"], [("models/qwen3-8b", 3)]),
        (["python", "-m", "sglang.launch_server", "--model-path", "models/qwen3-8b"], [("models/qwen3-8b", 3)]),
        (["mlx_lm.server", "--model=models/qwen3-8b"], [("models/qwen3-8b", 3)]),
        (["llama-server", "-m", "llama.Q4_K_M.gguf", "--port", "8080"], [("llama.Q4_K_M.gguf", 1)]),
        (["vllm", "serve", "empty"], [("empty", 0)]),  # a wrong path shows up as 0
        (["vllm", "serve", "Qwen/Qwen3-8B"], []),  # a hub id, not a local path
        (["python", "-m", "vllm", "serve", "Qwen/Qwen3-8B"], []),  # `-m vllm` is a module
        (["python3.11", "-m", "vllm.entrypoints.openai.api_server", "--model", "empty"], [("empty", 0)]),
    ],
)
def test_count_model_files(models, argv, expected):
    assert gpus.count_model_files(argv, models) == expected


def test_count_model_files_takes_absolute_paths(models):
    path = str(models / "llama.Q4_K_M.gguf")
    assert gpus.count_model_files(["llama-server", "-m", path], "/") == [(path, 1)]


# --- the `inv gpus` task ---


def run_task(monkeypatch, capsys, fake: FakePynvml | None, device: Device | None, *args: str):
    from invoke import Program

    from gpuops.cli import ns

    if fake is not None:
        monkeypatch.setattr(seam, "open_nvml", lambda: nvml_for(fake, device))  # the one seam
    monkeypatch.setenv("COLUMNS", "200")
    Program(namespace=ns).run(["inv", "gpus", *args], exit=False)
    return capsys.readouterr()


def test_inv_gpus_prints_the_table_with_processes(monkeypatch, capsys, holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)])])

    out = run_task(monkeypatch, capsys, fake, device).out

    assert "NVIDIA H100 80GB HBM3" in out and "4003 / 81559" in out
    assert str(h.pid) in out and "sleep 60" in out and "busy" in out


def test_inv_gpus_json_is_machine_readable(monkeypatch, capsys, holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)]), FakeGpu()])

    data = json.loads(run_task(monkeypatch, capsys, fake, device, "--json").out)

    assert data["gpus"][0]["processes"][0]["pid"] == h.pid


def test_inv_gpus_json_is_one_document_with_schema_task_ok_and_busy_by_the_threshold(monkeypatch, capsys, holders,
                                                                                      device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)]), FakeGpu()])

    data = json.loads(run_task(monkeypatch, capsys, fake, device, "--json", "--busy-mib", "1000").out)

    assert (data["schema"], data["task"], data["ok"]) == (1, "gpus", True)
    assert (data["available"], data["unavailable"], data["busy_mib"]) == (True, None, 1000)
    assert [g["busy"] for g in data["gpus"]] == [True, False]
    assert {"index", "name", "uuid", "memory_used_mib", "memory_total_mib", "utilization_pct", "mig",
            "processes", "processes_error", "problem", "mig_devices"} <= set(data["gpus"][0])


def test_inv_gpus_json_and_busy_threshold_come_from_the_config(monkeypatch, capsys, holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)])])
    monkeypatch.setenv("INVOKE_GPUOPS_JSON", "true")
    monkeypatch.setenv("INVOKE_GPUOPS_GPU_BUSY_MIB", "5000")

    data = json.loads(run_task(monkeypatch, capsys, fake, device).out)

    assert data["task"] == "gpus" and data["busy_mib"] == 5000 and data["gpus"][0]["busy"] is False


def test_inv_gpus_busy_threshold_comes_from_the_flag(monkeypatch, capsys, holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)])])

    out = run_task(monkeypatch, capsys, fake, device, "--busy-mib", "5000").out

    assert "busy" not in out


def test_inv_gpus_on_a_470_driver_lists_the_processes(monkeypatch, capsys, holders, device):
    h = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(h.pid, 4000)])], process_api="v2", driver="470.256.02")

    text = run_task(monkeypatch, capsys, fake, device)

    assert "internal error" not in text.err and text.out.startswith("NVIDIA driver 470.256.02, 1 GPU")
    assert str(h.pid) in text.out and "sleep 60" in text.out


def test_inv_gpus_on_a_driver_too_old_to_list_processes_says_so_per_gpu(monkeypatch, capsys, device):
    fake = FakePynvml([FakeGpu(), FakeGpu()], process_api="v1", driver="418.226.00")

    text = run_task(monkeypatch, capsys, fake, device)

    assert "internal error" not in text.err
    assert text.out.count("(processes: the NVIDIA driver is too old for this query") == 2


NO_GPU = gpus.inventory().unavailable


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a working NVIDIA driver")
@pytest.mark.parametrize("args", [[], ["--json"]], ids=["table", "json"])
def test_real_inv_gpus_without_driver_warns_in_one_line_and_succeeds(args):
    inv_bin = Path(sys.executable).parent / "inv"
    proc = subprocess.run([str(inv_bin), "gpus", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "80"})

    assert proc.returncode == 0
    warning = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("no NVIDIA GPU visible: ")]
    assert warning == [f"no NVIDIA GPU visible: {NO_GPU}"]
    assert "Traceback" not in proc.stderr
    if args:
        assert json.loads(proc.stdout)["available"] is False


# --- start-server and stop-server through the tasks, with the fake driver behind the seam ---


def run_inv(monkeypatch, project, fake: FakePynvml, device: Device, *args: str) -> int:
    """Run `inv ARGS` in-process in the project folder with NVML faked; returns the exit code."""
    from invoke import Program

    from gpuops.cli import ns

    monkeypatch.chdir(project.root)
    monkeypatch.setattr(seam, "open_nvml", lambda: nvml_for(fake, device))  # the one seam
    monkeypatch.setenv("INVOKE_GPUOPS_GPU_RELEASE_TIMEOUT", "3")
    code = 0
    try:
        Program(namespace=ns).run(["inv", *args], exit=True)
    except SystemExit as stop:
        code = stop.code or 0
    return code


def test_start_refuses_busy_gpu_and_starts_nothing(monkeypatch, capsys, project, port, holders, device):
    project.demo_agents(port)
    stranger = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(stranger.pid, 30000)])])

    code = run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke")
    text = capsys.readouterr()

    assert code == 5, text
    assert str(stranger.pid) in text.err and "30000" in text.err and "--kill-gpu-procs" in text.err
    assert not (project.run_dir / "state" / "server.json").exists()
    assert not (project.run_dir / "server_logs").exists() or not list((project.run_dir / "server_logs").iterdir())
    assert not gone(stranger.pid)


def test_kill_gpu_procs_frees_the_gpu_waits_for_release_then_starts(monkeypatch, capsys, project, port, holders,
                                                                   device):
    project.demo_agents(port)
    stranger = holders()
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(stranger.pid, 30000, track=True)])], lag=0.5)

    code = run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke",
                      "--kill-gpu-procs", "--yes")
    text = capsys.readouterr()

    assert code == 0, text
    assert gone(stranger.pid)
    assert "NVIDIA H100 80GB HBM3" in text.out  # the ready banner names the GPU and its memory
    assert "81559" in text.out
    record = project.record()
    assert record["gpus"] == [0]
    run_inv(monkeypatch, project, fake, device, "stop-server")


def test_stop_waits_until_nvml_drops_the_server_and_reports_memory_freed(monkeypatch, capsys, project, port,
                                                                         device):
    project.demo_agents(port)
    fake = FakePynvml([FakeGpu()], lag=0.5)
    assert run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke") == 0
    pid = project.record()["pid"]
    fake.gpus[0].processes.append(FakeProcess(pid, 20000, track=True))  # the server "loaded weights"
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server")
    text = capsys.readouterr()

    assert code == 0, text
    assert "GPU memory released (20000 MiB)" in text.out


def test_stop_names_what_still_holds_gpu_memory_instead_of_reporting_success(monkeypatch, capsys, project, port,
                                                                             holders, device):
    project.demo_agents(port)
    fake = FakePynvml([FakeGpu()])
    assert run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke") == 0
    pid = project.record()["pid"]
    fake.gpus[0].processes.append(FakeProcess(pid, 20000))  # NVML keeps listing it: a context never torn down
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server")
    text = capsys.readouterr()

    assert code == 5, text
    assert str(pid) in text.err and "still" in text.err


def test_stop_reports_na_not_zero_when_nvml_cannot_say_how_much_memory_was_freed(monkeypatch, capsys, project,
                                                                                port, device):
    project.demo_agents(port)
    fake = FakePynvml([FakeGpu(mig=True)], lag=0.2)
    assert run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke") == 0
    fake.gpus[0].processes.append(FakeProcess(project.record()["pid"], None, track=True))  # MIG: n/a per process
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server")
    text = capsys.readouterr()

    assert code == 0, text
    assert "GPU memory released (n/a)" in text.out and "(0 MiB)" not in text.out


def test_stop_says_no_gpu_memory_was_held_when_nvml_never_listed_the_server(monkeypatch, capsys, project, port,
                                                                           device):
    project.demo_agents(port)
    fake = FakePynvml([FakeGpu()])  # the demo server touches no GPU
    assert run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke") == 0
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server")
    text = capsys.readouterr()

    assert code == 0, text
    assert "no GPU memory was held by 'server'" in text.out and "released" not in text.out


def test_stop_without_gpu_says_nothing_about_gpu_memory(monkeypatch, capsys, project, port, device):
    project.demo_agents(port)
    fake = FakePynvml([], init_error=pynvml.NVMLError_DriverNotLoaded)
    assert run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke") == 0
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server")
    text = capsys.readouterr()

    assert code == 0, text
    assert "GPU memory" not in text.out


def two_demo_servers(project) -> None:
    """AGENTS.local.md with servers 'alpha' and 'beta' (stop --all takes them in that order)."""
    blocks = [f"## Server: {name}\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.3 {sys.executable} -m gpuops.demo "
              f"--port {free_port()}\n```\n" for name in ("alpha", "beta")]
    project.write_agents("\n".join(blocks))


def start_both(monkeypatch, project, fake, device) -> tuple[int, int]:
    for name in ("alpha", "beta"):
        assert run_inv(monkeypatch, project, fake, device, "start-server", "--server", name, "--no-follow",
                       "--no-smoke") == 0
    return project.record("alpha")["pid"], project.record("beta")["pid"]


def test_stop_all_stops_every_server_even_when_the_first_keeps_its_gpu_memory(monkeypatch, capsys, project,
                                                                              device):
    two_demo_servers(project)
    fake = FakePynvml([FakeGpu()], lag=0.2)
    alpha, beta = start_both(monkeypatch, project, fake, device)
    fake.gpus[0].processes += [FakeProcess(alpha, 20000),  # NVML keeps listing alpha: never torn down
                               FakeProcess(beta, 8000, track=True)]
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server", "--all")
    text = capsys.readouterr()

    assert code == 5, text
    assert gone(alpha) and gone(beta)
    assert "stopped 'beta'" in text.out and "GPU memory released (8000 MiB)" in text.out
    assert f"pid {alpha} (20000 MiB)" in text.err and "GPU memory still held" in text.err


def test_stop_all_names_every_problem_with_the_first_ones_exit_code(monkeypatch, capsys, project, device,
                                                                    stranger):
    two_demo_servers(project)
    fake = FakePynvml([FakeGpu()])
    alpha, beta = start_both(monkeypatch, project, fake, device)
    # alpha's port is taken over by a stranger: said and left alone, not a problem of the stop
    taken = free_port()
    held_by = stranger(taken)
    path = project.run_dir / "state" / "alpha.json"
    path.write_text(json.dumps({**project.record("alpha"), "port": taken}))
    fake.gpus[0].processes.append(FakeProcess(alpha, 4000))  # neither server's memory is ever released
    fake.gpus[0].processes.append(FakeProcess(beta, 8000))
    capsys.readouterr()

    code = run_inv(monkeypatch, project, fake, device, "stop-server", "--all")
    text = capsys.readouterr()

    assert code == 5, text  # both problems are GPU ones: exit 5
    assert gone(alpha) and gone(beta)
    assert held_by.poll() is None  # the stranger on alpha's old port was not touched
    assert f"port {taken} is now held by pid {held_by.pid}" in text.out + text.err
    assert "2 problems while stopping 'alpha', 'beta'" in text.err
    assert "'alpha': GPU memory still held" in text.err and f"pid {alpha} (4000 MiB)" in text.err
    assert "'beta': GPU memory still held" in text.err and f"pid {beta} (8000 MiB)" in text.err


def test_start_checks_the_parent_gpu_of_a_mig_device_in_cuda_visible_devices(monkeypatch, capsys, project, port,
                                                                              holders, device):
    stranger = holders()
    fake = FakePynvml([FakeGpu(), FakeGpu(mig=True, utilization=None, mig_devices=["MIG-5c9d0e1f-0000", "MIG-77"],
                                          processes=[FakeProcess(stranger.pid, 30000)])])
    project.demo_agents(port, env="CUDA_VISIBLE_DEVICES=MIG-5c9d0e1f-0000")

    code = run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke")
    text = capsys.readouterr()

    assert code == 5, text
    assert "needed GPUs busy (GPU 1)" in text.err and str(stranger.pid) in text.err
    assert not (project.run_dir / "state" / "server.json").exists()


def test_kill_gpu_procs_sigkills_after_the_stop_timeout_flag_not_the_config(monkeypatch, capsys, project, port,
                                                                           holders, device):
    project.demo_agents(port)
    stubborn = holders(ignore_term=True)
    fake = FakePynvml([FakeGpu(processes=[FakeProcess(stubborn.pid, 30000, track=True)])], lag=0.05)
    monkeypatch.setenv("INVOKE_GPUOPS_STOP_TIMEOUT", "60")
    # Record the grace period each stop was given and what it reported, so the test checks which
    # timeout applied, not how fast this machine is.
    stops: list[tuple[float, procs.StopReport]] = []
    real_stop = procs.stop_processes

    def recording_stop(targets, **kwargs):
        report = real_stop(targets, **kwargs)
        stops.append((kwargs["timeout"], report))
        return report

    monkeypatch.setattr(procs, "stop_processes", recording_stop)

    code = run_inv(monkeypatch, project, fake, device, "start-server", "--no-follow", "--no-smoke",
                   "--kill-gpu-procs", "--yes", "--stop-timeout", "0.5")
    text = capsys.readouterr()

    assert code == 0, text
    ((timeout, report),) = [(t, r) for t, r in stops if stubborn.pid in {v.pid for v in r.stopped}]
    assert timeout == 0.5  # the flag, not the config's 60
    assert [v.pid for v in report.killed] == [stubborn.pid] and not report.survivors
    assert report.elapsed >= 0.5  # SIGKILL came only after the grace period had run out
    assert gone(stubborn.pid)
    reported = re.search(r"stopped 1 process\(es\) in ([\d.]+) s, 1 needed SIGKILL", text.out)
    assert reported and float(reported[1]) >= 0.5, text.out
    run_inv(monkeypatch, project, fake, device, "stop-server")
