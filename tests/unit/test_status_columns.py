"""`inv status`'s new columns as data and as text: totals, memory in human units, GPU memory per tree,
the outside URL and the container warning, documents of older hosts, and a fleet's rows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gpuops.cli.remote import fleet_rows, render_one
from gpuops.cli.render_server import status_row, status_table, totals_line
from gpuops.hosts.fleet import HostResult
from gpuops.server.status import GpuMemory, ServerStatus, StatusResult, format_bytes, format_mib

GIB = 2**30
OLD_FIELDS = {"name", "state", "pid", "port", "url", "uptime", "log_path", "engine", "command"}


def server(name: str, state: str = "ready", *, rss: int | None = None, gpu: float | None = None, procs: int = 1,
           **more) -> ServerStatus:
    running = state in ("ready", "starting", "unresponsive")
    return ServerStatus(name, state, 4100 + len(name), 8000 + len(name), f"http://127.0.0.1:{8000 + len(name)}",
                        65.0 if running else None, f"/p/do_not_commit/server_logs/{name}-20261122-101500.log",
                        "vllm", "vllm serve m", processes=procs if running else 0,
                        rss_bytes=(rss if rss is not None else GIB) if running else None,
                        gpu_memory_mib=gpu if running else None, **more)


def fleet() -> StatusResult:
    return StatusResult([
        server("big", rss=12 * GIB, gpu=70_000.0, procs=3, gpus=[0, 1]),
        server("dup", rss=12 * GIB, gpu=70_000.0, procs=3, gpus=[2, 3]),  # the forgotten duplicate
        server("small", "starting", rss=GIB // 2, gpu=0.0),
        server("crashed", "exited"),
        server("old", "stopped"),
    ], "/p/do_not_commit/server_logs")


def test_totals_count_each_state_and_add_up_what_the_running_servers_hold():
    assert fleet().totals() == {
        "known": 5, "running": 3, "ready": 2, "starting": 1, "unresponsive": 0, "failed": 1, "stopped": 1,
        "rss_bytes": 24 * GIB + GIB // 2, "gpu_memory_mib": 140_000.0,
    }


def test_totals_gpu_memory_is_unknown_when_one_running_server_has_no_figure():
    result = StatusResult([server("a", gpu=4000.0), server("b", gpu=None), server("c", "exited")], "logs")
    assert result.totals()["gpu_memory_mib"] is None
    assert StatusResult([], "logs").totals() == {"known": 0, "running": 0, "ready": 0, "starting": 0,
                                                 "unresponsive": 0, "failed": 0, "stopped": 0, "rss_bytes": 0,
                                                 "gpu_memory_mib": 0}


def test_the_document_keeps_every_old_field_and_adds_the_new_ones():
    doc = fleet().as_dict()
    assert set(doc) == {"totals", "servers", "logs", "gpu_memory_unavailable", "container"}
    assert set(doc["servers"][0]) == OLD_FIELDS | {"gpus", "processes", "rss_bytes", "gpu_memory_mib",
                                                   "outside_url", "binding_note"}
    assert doc["servers"][0]["gpus"] == [0, 1] and doc["servers"][3]["rss_bytes"] is None


def test_a_document_reads_back_into_the_same_result():
    result = fleet()
    result.gpu_memory_unavailable, result.container = "no driver", "/.dockerenv"
    assert StatusResult.from_dict(result.as_dict()) == result


def test_a_document_of_an_older_gpuops_reads_back_with_defaults():
    old = {"servers": [{k: v for k, v in server("a").as_dict().items() if k in OLD_FIELDS} | {"future": 1}],
           "logs": "logs"}
    (s,) = StatusResult.from_dict(old).servers
    assert (s.name, s.processes, s.rss_bytes, s.gpu_memory_mib, s.gpus, s.outside_url) == ("a", 0, None, None, [], None)


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (1024**2 - 1, "1.0 MiB"),
    (int(1.2 * GIB), "1.2 GiB"), (40 * GIB, "40.0 GiB"), (3 * 1024 * GIB, "3.0 TiB"), (2048 * 1024 * GIB, "2048.0 TiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_mib_speaks_the_same_units():
    assert (format_mib(None), format_mib(512.0), format_mib(81559.0)) == ("-", "512.0 MiB", "79.6 GiB")


@pytest.mark.parametrize(("mem", "pids", "mib"), [
    (GpuMemory({10: 4000.0, 11: 2000.0, 99: 9000.0}), [10, 11, 12], 6000.0),  # a stranger's 9000 is not ours
    (GpuMemory({99: 9000.0}), [10], 0.0),
    (GpuMemory({10: 4000.0, 11: None}), [10, 11], None),  # MIG: NVML has no figure for one of them
    (GpuMemory({}, hidden=True), [10], None),  # NVML's PIDs are another namespace's: ours may be among them
    (GpuMemory({10: 4000.0}, hidden=True), [10], 4000.0),  # ours are numbered as we see them: all found
    (GpuMemory(unavailable="no driver"), [10], None),
])
def test_gpu_memory_of_a_tree(mem, pids, mib):
    assert mem.of(pids) == mib


def test_totals_line_says_how_many_in_which_state_and_what_they_hold():
    assert totals_line(fleet().totals()) == ("5 known: 2 ready, 1 starting; 1 failed, 1 stopped; "
                                             "running together: 24.5 GiB RSS, 136.7 GiB GPU memory")
    quiet = StatusResult([server("a", "exited"), server("b", "unresponsive", gpu=None)], "logs")
    assert totals_line(quiet.totals()) == "2 known: 0 ready, 0 starting, 1 unresponsive; 1 failed; " \
                                          "running together: 1.0 GiB RSS"


def test_a_row_shows_gpus_memory_in_human_units_and_the_outside_url():
    row = status_row(server("big", rss=12 * GIB, gpu=70_000.0, procs=3, gpus=[0, 1],
                            outside_url="http://gpu7.lab:8003"))
    assert row == ["big", "ready", "4103", "8003", "http://127.0.0.1:8003\noutside: http://gpu7.lab:8003", "1m05s",
                   "0,1", "12.0 GiB (3)", "68.4 GiB"]
    assert status_row(server("a", gpu=None))[-2:] == ["1.0 GiB (1)", "n/a"]
    assert status_row(server("gone", "exited"))[-3:] == ["-", "-", "-"]


def render(result: StatusResult, width: int = 200) -> str:
    buf = io.StringIO()
    status_table(result, Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def test_table_has_the_totals_line_first_and_a_row_per_server():
    text = render(fleet())
    assert text.splitlines()[0] == ("5 known: 2 ready, 1 starting; 1 failed, 1 stopped; running together: "
                                    "24.5 GiB RSS, 136.7 GiB GPU memory")
    header = next(line for line in text.splitlines() if "server" in line and "state" in line)
    for column in ("pid", "port", "url", "uptime", "GPUs", "RSS (procs)", "GPU mem", "log"):
        assert column in header
    assert text.count("12.0 GiB (3)") == 2 and "68.4 GiB" in text  # two servers holding the same
    assert "big-20261122-101500.log" in text


def test_table_says_why_gpu_memory_is_missing_and_who_cannot_reach_a_server():
    note = "inside a container (/.dockerenv), 127.0.0.1:8001 is reachable only from inside the container: ..."
    result = StatusResult([server("a", gpu=None, binding_note=note), server("b", "exited", binding_note="stale")],
                          "logs", gpu_memory_unavailable="NVML library (libnvidia-ml.so.1) not found")
    text = render(result)
    assert "GPU mem n/a: NVML library (libnvidia-ml.so.1) not found" in text
    assert f"warning: 'a': {note}" in text and "stale" not in text  # only running servers are warned about


def test_table_on_a_narrow_terminal_folds_instead_of_cutting():
    text = render(StatusResult([server("a-long-server-name", outside_url="http://gpu7.lab:8018")], "logs"), width=80)
    assert "\u2026" not in text and "outside:" in text
    assert "8018" in text  # the port column never folds


def test_no_servers_is_one_line():
    assert render(StatusResult([], "logs")) == "no servers known (start one with `inv start-server`)\n"


def test_a_fleet_row_per_server_with_its_memory_and_the_url_to_use_from_here():
    gpus_doc = {"task": "gpus", "ok": True, "available": True, "gpus": [{"busy": True}, {"busy": False}]}
    status_doc = {"task": "status", "ok": True, **StatusResult([
        server("big", rss=12 * GIB, gpu=70_000.0, procs=3, outside_url="http://gpu7.lab:8003"),
        server("old", "stopped"),
    ], "logs").as_dict()}
    older_host = {"task": "status", "ok": True, "servers": [
        {k: v for k, v in server("x").as_dict().items() if k in OLD_FIELDS}]}
    rows = fleet_rows("status", [HostResult("gpu7", documents=[status_doc, gpus_doc]),
                                 HostResult("gpu8", documents=[older_host])])
    assert rows == [
        ["gpu7", "ready", "4103", "http://gpu7.lab:8003", "1/2", "big: 12.0 GiB RSS (3 procs), 68.4 GiB GPU"],
        ["gpu7", "stopped", "4103", "http://127.0.0.1:8003", "1/2", "old"],
        ["gpu8", "ready", "4101", "http://127.0.0.1:8001", "-", "x"],
    ]


def test_one_host_status_renders_like_the_local_table(capsys):
    doc = {"task": "status", "ok": True, **fleet().as_dict()}
    render_one("status", doc)
    out = capsys.readouterr().out
    assert out.startswith("5 known: 2 ready, 1 starting; 1 failed, 1 stopped")
    assert "68.4 GiB" in out  # the new columns, from the host's document
