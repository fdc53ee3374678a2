"""The server tasks' --json documents, the which-server rule of stop-server, and settings from config,
through the real CLI against the demo server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from support.fixtures import free_port

START = ("start-server", "--no-follow", "--no-smoke")


def document(r, task: str) -> dict:
    doc = json.loads(r.out)  # stdout holds the one document and nothing else
    assert (doc["schema"], doc["task"]) == (1, task)
    return doc


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_start_server_json_is_one_document_once_ready_with_the_log_on_stderr(project, port):
    project.demo_agents(port)
    r = project.gpuops("start-server", "--json", timeout=60)  # --json implies --no-follow: it returns
    assert r.code == 0, r.text
    doc = document(r, "start-server")
    rec = project.record()
    assert doc["ok"] is True and doc["already_running"] is False and doc["state"] == "ready"
    assert (doc["server"], doc["pid"], doc["port"], doc["url"]) == ("server", rec["pid"], port, f"http://127.0.0.1:{port}")
    assert doc["log_path"] == rec["log_path"] and doc["engine"] == "demo" and doc["ready_in"] > 0
    assert isinstance(doc["gpus"], list) and isinstance(doc["gpu_lines"], list) and "model_files" in doc
    assert doc["smoke"]["ok"] is True and "tokens" in doc["smoke"]["line"]
    assert "Uvicorn running on" in r.err and "started 'server'" in r.err  # people's text went to stderr
    again = project.gpuops("start-server", "--json", "--no-smoke")
    assert again.code == 0, again.text
    assert document(again, "start-server")["already_running"] is True


def test_start_server_json_failure_is_a_document_with_the_same_exit_code(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=crash_oom")
    r = project.gpuops(*START, "--json")
    assert r.code == 3, r.text
    doc = document(r, "start-server")
    assert doc["ok"] is False
    assert doc["error"]["type"] == "StartupFailed" and doc["error"]["exit_code"] == 3
    assert "CUDA out of memory" in doc["error"]["message"]


def test_stop_server_json_names_each_process_and_its_signal(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    pid = project.record()["pid"]
    r = project.gpuops("stop-server", "--json")
    assert r.code == 0, r.text
    doc = document(r, "stop-server")
    [s] = doc["servers"]
    assert doc["ok"] is True and doc["by_port"] is None
    assert s["name"] == "server" and s["was_running"] is True and s["port"] == port and s["port_free"] is True
    assert {"pid": pid, "signal": "SIGTERM"}.items() <= s["processes"][0].items()
    assert s["elapsed"] >= 0 and s["problem"] is None and s["log_path"]
    assert "stopped 'server'" in r.err
    again = document(project.gpuops("stop-server", "--json"), "stop-server")
    assert again["servers"][0]["was_running"] is False and again["ok"] is True  # nothing to stop: still exit 0


def test_stop_server_port_json(project, port, stranger):
    orphan = stranger(port)  # not gpuops': listed, and stopped only because --yes says so
    refused = project.gpuops("stop-server", "--port", str(port), "--json")
    assert refused.code == 4, refused.text
    assert [p["pid"] for p in document(refused, "stop-server")["servers"][0]["left_alone"]] == [orphan.pid]
    r = project.gpuops("stop-server", "--port", str(port), "--yes", "--json")
    assert r.code == 0, r.text
    doc = document(r, "stop-server")
    assert doc["by_port"] == port and doc["servers"][0]["port_free"] is True
    assert [p["pid"] for p in doc["servers"][0]["processes"]] == [orphan.pid]


def test_status_json_is_a_document_with_every_field_of_each_server(project, port):
    project.demo_agents(port)
    assert document(project.gpuops("status", "--json"), "status")["servers"] == []
    assert project.gpuops(*START).code == 0
    doc = document(project.gpuops("status", "--json"), "status")
    [s] = doc["servers"]
    assert doc["ok"] is True
    assert set(s) == {"name", "state", "pid", "port", "url", "uptime", "log_path", "engine", "command", "gpus",
                      "processes", "rss_bytes", "gpu_memory_mib", "outside_url", "binding_note"}
    assert (s["name"], s["state"], s["port"]) == ("server", "ready", port)


def test_logs_json_gives_the_file_and_its_last_lines_and_the_list(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    log = project.record()["log_path"]
    doc = document(project.gpuops("logs", "--json", "--lines", "3"), "logs")
    assert doc["path"].endswith(log.rsplit("/", 1)[-1]) and len(doc["lines"]) == 3
    listing = document(project.gpuops("logs", "--list", "--json"), "logs")
    [entry] = listing["logs"]
    assert entry["kind"] == "server" and entry["size"] > 0 and entry["mtime"] > 0 and entry["path"].endswith(
        entry["name"])
    r = project.gpuops("logs", "--follow", "--json")
    assert r.code == 2 and "--follow cannot be combined with --json" in r.err
    assert document(r, "logs")["error"]["exit_code"] == 2


def three_recipes(project) -> dict[str, int]:
    """AGENTS.local.md with servers gamma (first), alpha and beta, each on its own port."""
    ports = {name: free_port() for name in ("gamma", "alpha", "beta")}
    project.write_agents("\n".join(
        f"## Server: {name}\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS=0.2 {sys.executable} -m gpuops.demo --port {p}\n```\n"
        for name, p in ports.items()))
    return ports


def test_stop_without_a_name_refuses_to_guess_among_several_when_the_first_recipe_is_not_running(project):
    three_recipes(project)
    for name in ("alpha", "beta"):
        assert project.gpuops(*START, "--server", name).code == 0
    r = project.gpuops("stop-server")
    assert r.code == 2, r.text
    assert "2 servers are running (alpha, beta)" in r.err and "--server NAME" in r.err and "--all" in r.err
    assert running(project.record("alpha")["pid"]) and running(project.record("beta")["pid"])


def test_stop_without_a_name_stops_the_only_running_server_even_if_not_the_first_recipe(project):
    three_recipes(project)
    assert project.gpuops(*START, "--server", "beta").code == 0
    pid = project.record("beta")["pid"]
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert "stopped 'beta'" in r.out
    assert not running(pid)


def test_stop_without_a_name_prefers_the_first_recipe_among_several(project):
    three_recipes(project)
    for name in ("gamma", "beta"):
        assert project.gpuops(*START, "--server", name).code == 0
    r = project.gpuops("stop-server")
    assert r.code == 0, r.text
    assert "stopped 'gamma'" in r.out and not running(project.record("gamma")["pid"])
    assert running(project.record("beta")["pid"])


def test_log_lines_and_stop_timeout_come_from_the_environment(project, port):
    project.demo_agents(port, env="GPUOPS_DEMO_FAULT=ignore_sigterm")
    assert project.gpuops(*START).code == 0
    tail = project.gpuops("logs", env={"INVOKE_GPUOPS_LOG_LINES": "2"})
    assert tail.code == 0 and len(tail.out.strip().splitlines()) == 3  # the ==> name <== line and 2 lines
    t0 = time.monotonic()
    r = project.gpuops("stop-server", "--json", env={"INVOKE_GPUOPS_STOP_TIMEOUT": "1"})
    assert r.code == 0, r.text
    assert time.monotonic() - t0 < 9  # not the default 10 s
    [s] = document(r, "stop-server")["servers"]
    assert s["processes"][0]["signal"] == "SIGKILL" and s["elapsed"] >= 1.0


@pytest.mark.parametrize("task, env, words", [
    (("logs",), {"INVOKE_GPUOPS_LOG_LINES": "-3"}, "gpuops.log_lines must be a whole number at least 0"),
    (("stop-server",), {"INVOKE_GPUOPS_STOP_TIMEOUT": "-1"}, "gpuops.stop_timeout must be a number above 0"),
    (START, {"INVOKE_GPUOPS_HANG_TIMEOUT": "0"}, "gpuops.hang_timeout must be a number above 0"),
])
def test_a_bad_setting_from_the_environment_names_its_config_key(project, port, task, env, words):
    project.demo_agents(port)
    r = project.gpuops(*task, env=env)
    assert r.code == 2, r.text
    assert f"error: {words}" in r.err and "Traceback" not in r.text
    assert not (project.run_dir / "state" / "server.json").exists()


def test_status_imports_no_http_library_and_no_launch_machinery(project, port):
    project.demo_agents(port)
    assert project.gpuops(*START).code == 0
    code = ("import sys, json\nfrom gpuops.cli.program import program\nprogram.run(['gpuops', 'status', '--json'], "
            "exit=False)\nheavy = ('requests', 'http.client', 'filelock', 'rich', 'gpuops.server.watch', "
            "'gpuops.server.launch', 'gpuops.server.start', 'gpuops.server.stop')\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, timeout=60,
                       env=project.env)
    assert json.loads(p.stdout)["servers"][0]["state"] == "ready"  # it did ask the server
    assert json.loads(p.stderr.strip().splitlines()[-1]) == []
