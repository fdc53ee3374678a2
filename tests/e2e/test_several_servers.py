"""Several named servers on one box (issue #13): start-server --all / --server a,b, needs, clashes, the
registry, stop and restart of a group; real demo servers through the real CLI.

    ## Server: web
    needs: model                 <- marker lines under the heading, outside the code block

Only NVML is faked, and only where GPUs matter: a sitecustomize on the gpuops process's PYTHONPATH puts
tests/support/fake_nvml.py behind the seam (`gpuops.gpu.nvml.open_nvml`), as test_gpus.py does in-process.
Tests check behaviour, never speed: that three servers load at once is read from their records (each
was launched before the first was ready), not from a stopwatch (see bench/bench_group.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import psutil
import pytest

from gpuops.server import procs
from support.fixtures import free_port, live_tagged, port_free, repo_pythonpath, wait_for

START = ("start-server", "--no-follow", "--no-smoke")
TESTS = Path(__file__).resolve().parents[1]


def recipe(name: str, port: int, *, load: float = 0.3, env: str = "", marks: str = "") -> str:
    """One `## Server: NAME` section running the demo server on `port` (marker lines under its heading)."""
    return (f"## Server: {name}\n\n{marks}\n\n```bash\nGPUOPS_DEMO_LOAD_SECONDS={load} GPUOPS_DEMO_TTFT_MS=10 {env} "
            f"{sys.executable} -m gpuops.demo --host 127.0.0.1 --port {port}\n```\n\n")


def write_servers(project, *sections: str) -> None:
    project.write_agents("# Servers of this box\n\n" + "".join(sections))


def ports(n: int) -> list[int]:
    found: list[int] = []
    while len(found) < n:
        p = free_port()
        if p not in found:
            found.append(p)
    return found


def run_json(project, *args: str, env: dict | None = None):
    r = project.gpuops(*args, "--json", env=env)
    try:
        return r, json.loads(r.out)
    except json.JSONDecodeError:
        pytest.fail(f"not one JSON document (exit {r.code}):\n{r.text}")


def by_name(doc: dict) -> dict[str, dict]:
    return {s["server"]: s for s in doc["servers"]}


def alive(pid: int, port: int) -> bool:
    """`pid` is a live demo server serving `port`."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and "gpuops.demo" in " ".join(p.cmdline()) \
            and f"--port {port}" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def logs_of(project, name: str) -> list[Path]:
    folder = project.run_dir / "server_logs"
    return sorted(folder.glob(f"{name}-*.log")) if folder.exists() else []


def record_exists(project, name: str) -> bool:
    return (project.run_dir / "state" / f"{name}.json").exists()


def pids(project, *names: str) -> dict[str, int]:
    return {n: project.record(n)["pid"] for n in names}


def table_row(text: str, name: str) -> str:
    """The row of the final table for `name` (first column)."""
    rows = [line for line in text.splitlines() if re.match(rf"^{re.escape(name)}\s+(ready|running|failed|skipped|"
                                                           rf"stopped)\s", line)]
    assert len(rows) == 1, text
    return rows[0]


# --- the NVML fake behind the seam, in the gpuops process ---

_SHIM = '''\
import os

if os.environ.pop("GPUOPS_TEST_FAKE_GPUS", None):  # popped: the servers gpuops launches run real Python
    import sys

    sys.path.insert(0, {tests!r})
    from gpuops.gpu import nvml as _seam
    from support.fake_nvml import FakeGpu, FakePynvml

    _fake = FakePynvml([FakeGpu(uuid=f"GPU-00000000-0000-0000-0000-00000000000{{i}}") for i in range(2)])
    _seam.open_nvml = lambda **kw: _seam.Nvml(_fake, device_prefixes=({prefix!r},))
'''


@pytest.fixture
def fake_gpus(tmp_path):
    """The environment for a gpuops process that sees two idle GPUs (0 and 1) through the fake NVML."""
    shim = tmp_path / "nvml-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_SHIM.format(tests=str(TESTS), prefix=str(shim / "nvidia")))
    return {"PYTHONPATH": os.pathsep.join([str(shim), repo_pythonpath()]), "GPUOPS_TEST_FAKE_GPUS": "1"}


# --- 1. several at once ---


def test_all_start_together_each_with_its_own_log_record_and_row(project):
    pa, pb, pg = ports(3)
    write_servers(project, recipe("alpha", pa, load=1), recipe("beta", pb, load=2), recipe("gamma", pg, load=3))

    r, doc = run_json(project, *START, "--all")

    assert r.code == 0, r.text
    assert doc["ok"] is True and doc["task"] == "start-server"
    assert [s["server"] for s in doc["servers"]] == ["alpha", "beta", "gamma"]
    assert (doc["started"], doc["reused"], doc["failed"]) == (3, 0, 0)
    servers = by_name(doc)
    for name, port in (("alpha", pa), ("beta", pb), ("gamma", pg)):
        s = servers[name]
        assert (s["state"], s["ok"], s["port"], s["url"]) == ("ready", True, port, f"http://127.0.0.1:{port}")
        assert alive(s["pid"], port)
        assert project.record(name)["pid"] == s["pid"] and project.record(name)["ready_at"]
        row = table_row(r.err, name)  # under --json the table goes to stderr
        assert re.match(rf"^{name}\s+ready\s+{s['pid']}\s+{port}\s+http://127\.0\.0\.1:{port}\s+[\d.]+ s\s+\S*"
                        rf"{re.escape(Path(s['log_path']).name)}$", row.rstrip()), row
    assert "3 of 3 servers up" in r.err
    # each server its own log, holding only its own lines
    paths = [servers[n]["log_path"] for n in ("alpha", "beta", "gamma")]
    assert len(set(paths)) == 3
    for name, port in (("alpha", pa), ("beta", pb), ("gamma", pg)):
        text = Path(servers[name]["log_path"]).read_text()
        assert text.startswith(f"# gpuops server '{name}' started")
        assert f"Uvicorn running on http://127.0.0.1:{port}" in text
        others = [p for p in (pa, pb, pg) if p != port]
        assert not any(str(p) in text for p in others), text
        assert not any(f"server '{n}'" in text for n in ("alpha", "beta", "gamma") if n != name)
    # together, not one after another: every one was launched before the first (1 s) one was ready
    assert max(s["started_at"] for s in doc["servers"]) < min(s["ready_at"] for s in doc["servers"])


# --- 2, 3. one crashing ---


def test_a_crash_while_loading_fails_it_skips_its_dependents_and_keeps_the_others(project):
    pa, pb, pg = ports(3)
    write_servers(project, recipe("alpha", pa), recipe("beta", pb, load=2, env="GPUOPS_DEMO_FAULT=crash_oom"),
                  recipe("gamma", pg, marks="needs: beta"))

    r, doc = run_json(project, *START, "--all")

    assert r.code == 3, r.text
    assert doc["ok"] is False and doc["error"]["exit_code"] == 3
    s = by_name(doc)
    assert s["alpha"]["state"] == "ready" and alive(s["alpha"]["pid"], pa)
    assert s["beta"]["state"] == "failed" and s["beta"]["error"]["exit_code"] == 3
    assert "CUDA out of memory" in s["beta"]["error"]["message"]
    assert "CUDA out of memory" in Path(s["beta"]["log_path"]).read_text()  # its own log, named in the document
    assert s["gamma"]["state"] == "skipped" and "needs 'beta'" in s["gamma"]["skipped"]
    assert not record_exists(project, "gamma") and not logs_of(project, "gamma")
    assert "2 of 3 servers did not start (beta: failed, gamma: skipped); 1 running" in r.err
    assert re.search(r"^beta\s+failed\s", table_row(r.err, "beta")) and "skipped" in table_row(r.err, "gamma")
    assert "Traceback" not in r.text


def test_fail_fast_stops_what_this_run_started_after_the_first_crash(project):
    pa, pb, pg = ports(3)
    write_servers(project, recipe("alpha", pa), recipe("beta", pb, load=2, env="GPUOPS_DEMO_FAULT=crash_oom"),
                  recipe("gamma", pg, load=20))  # still loading when beta crashes

    r, doc = run_json(project, *START, "--all", "--fail-fast")

    assert r.code == 3, r.text
    s = by_name(doc)
    assert s["beta"]["state"] == "failed"
    assert s["alpha"]["state"] == "stopped" and s["gamma"]["state"] == "stopped", doc
    assert "--fail-fast after 'beta' failed" in s["gamma"]["stopped"]
    assert live_tagged(project.root) == []
    assert port_free(pa) and port_free(pg)


# --- 4, 5. clashes refused before anything starts ---


def test_two_recipes_on_one_port_are_refused_before_launch(project):
    (p,) = ports(1)
    write_servers(project, recipe("alpha", p), recipe("beta", p))

    r = project.gpuops(*START, "--all")

    assert r.code == 2, r.text
    assert "'alpha' and 'beta' both use port" in r.err and str(p) in r.err
    assert not logs_of(project, "alpha") and not logs_of(project, "beta")
    assert not record_exists(project, "alpha") and not record_exists(project, "beta")
    assert live_tagged(project.root) == []


def test_two_recipes_on_one_gpu_are_refused_unless_both_share(project, fake_gpus):
    pa, pb = ports(2)
    write_servers(project, recipe("alpha", pa, env="CUDA_VISIBLE_DEVICES=0"),
                  recipe("beta", pb, env="CUDA_VISIBLE_DEVICES=0"))

    r = project.gpuops(*START, "--all", env=fake_gpus)

    assert r.code == 2, r.text
    assert "'alpha' and 'beta' both use GPU 0" in r.err and "share-gpus: yes" in r.err
    assert not record_exists(project, "alpha") and not record_exists(project, "beta")
    assert not logs_of(project, "alpha") and not logs_of(project, "beta")

    write_servers(project, recipe("alpha", pa, env="CUDA_VISIBLE_DEVICES=0", marks="share-gpus: yes"),
                  recipe("beta", pb, env="CUDA_VISIBLE_DEVICES=0", marks="share-gpus: yes"))
    r, doc = run_json(project, *START, "--all", env=fake_gpus)

    assert r.code == 0, r.text
    assert [s["state"] for s in doc["servers"]] == ["ready", "ready"]
    for name in ("alpha", "beta"):
        rec = project.record(name)
        assert rec["gpus"] == [0] and rec["share_gpus"] is True  # the fake answered: the GPU check ran


def test_a_gpu_reserved_by_a_server_still_loading_is_refused_to_another_command(project, fake_gpus):
    pa, pb = ports(2)
    write_servers(project, recipe("alpha", pa, load=30, env="CUDA_VISIBLE_DEVICES=0"),
                  recipe("beta", pb, env="CUDA_VISIBLE_DEVICES=0"))
    first = project.spawn(*START, "--server", "alpha", env=fake_gpus)
    try:
        assert wait_for(lambda: record_exists(project, "alpha") or first.poll() is not None, timeout=30)
        assert first.poll() is None, first.communicate()[0]
        assert project.record("alpha")["gpus"] == [0]

        # NVML shows no process on GPU 0 (alpha is still loading): only the registry knows it is taken
        r = project.gpuops(*START, "--server", "beta", env=fake_gpus)

        assert r.code == 5, r.text
        assert "GPU 0 is reserved by server 'alpha'" in r.err and "loading its model" in r.err
        assert not record_exists(project, "beta") and not logs_of(project, "beta")
        assert first.poll() is None  # alpha goes on loading
    finally:
        project.gpuops("stop-server", "--server", "alpha")
        first.kill()
        first.communicate()


# --- 6. two commands racing for one port ---


def test_two_commands_racing_for_one_port_start_exactly_one(project):
    (p,) = ports(1)
    write_servers(project, recipe("alpha", p, load=1), recipe("beta", p, load=1))

    racers = {name: project.spawn(*START, "--server", name) for name in ("alpha", "beta")}
    outs = {name: proc.communicate(timeout=60)[0] for name, proc in racers.items()}
    codes = {name: proc.returncode for name, proc in racers.items()}

    assert sorted(codes.values()) == [0, 4], outs
    winner = next(n for n, c in codes.items() if c == 0)
    loser = next(n for n, c in codes.items() if c == 4)
    assert f"port {p} is taken by server '{winner}'" in outs[loser], outs[loser]
    # the loser never launched anything: no record, no log, one process on the port
    assert not record_exists(project, loser) and not logs_of(project, loser)
    assert [o.pid for o in procs.port_owners(p)] == [project.record(winner)["pid"]]
    assert len(live_tagged(project.root)) == 1


# --- 7, 8. needs ---


def test_a_dependency_starts_first_and_is_reused_when_already_running(project):
    pm, pa = ports(2)
    write_servers(project, recipe("model", pm, load=1), recipe("app", pa, marks="needs: model"))

    r, doc = run_json(project, *START, "--server", "app")

    assert r.code == 0, r.text
    assert "also starting what they need: model" in r.err
    s = by_name(doc)
    assert [x["server"] for x in doc["servers"]] == ["model", "app"]
    assert s["model"]["requested"] is False and s["app"]["requested"] is True
    model, app = project.record("model"), project.record("app")
    assert model["ready_at"] <= app["started_at"]  # model ready before app was launched
    model_pid = model["pid"]

    assert project.gpuops("stop-server", "--server", "app").code == 0
    assert alive(model_pid, pm)
    r, doc = run_json(project, *START, "--server", "app")

    assert r.code == 0, r.text
    s = by_name(doc)
    assert s["model"]["state"] == "running" and s["model"]["pid"] == model_pid  # reused, not restarted
    assert s["app"]["state"] == "ready" and s["app"]["pid"] != app["pid"]
    assert (doc["started"], doc["reused"]) == (1, 1)
    assert "reused" in table_row(r.err, "model") and re.match(r"^model\s+running\s", table_row(r.err, "model"))


def test_a_dependency_cycle_is_refused_and_nothing_starts(project):
    pa, pb, pc = ports(3)
    write_servers(project, recipe("alpha", pa, marks="needs: beta"), recipe("beta", pb, marks="needs: alpha"),
                  recipe("gamma", pc))

    r = project.gpuops(*START, "--all")

    assert r.code == 2, r.text
    assert "cycle: alpha -> beta -> alpha" in r.err
    assert not (project.run_dir / "server_logs").exists() or not list((project.run_dir / "server_logs").iterdir())
    assert live_tagged(project.root) == []


def test_an_unknown_need_is_refused_and_nothing_starts(project):
    pa, pb = ports(2)
    write_servers(project, recipe("alpha", pa), recipe("beta", pb, marks="needs: nosuch"))

    r = project.gpuops(*START, "--all")

    assert r.code == 2, r.text
    assert "'beta' needs 'nosuch', but no server recipe is named 'nosuch'" in r.err
    assert "alpha, beta" in r.err  # the known names
    assert not logs_of(project, "alpha") and live_tagged(project.root) == []


# --- 9. stopping a group ---


def test_stop_all_stops_dependents_first_and_leaves_nothing(project):
    pm, pw, po = ports(3)
    # model comes first by recipe order and by name: only the needs put web before it
    write_servers(project, recipe("model", pm), recipe("other", po), recipe("web", pw, marks="needs: model"))
    assert project.gpuops(*START, "--all").code == 0

    r = project.gpuops("stop-server", "--all")

    assert r.code == 0, r.text
    assert r.out.index("stopped 'web'") < r.out.index("stopped 'model'"), r.out
    assert "stopped 'other'" in r.out
    assert live_tagged(project.root) == []
    assert all(port_free(p) for p in (pm, pw, po))


def test_stopping_a_dependency_says_which_running_server_needs_it(project):
    pm, pw = ports(2)
    write_servers(project, recipe("model", pm), recipe("web", pw, marks="needs: model"))
    assert project.gpuops(*START, "--all").code == 0
    web = project.record("web")["pid"]

    r = project.gpuops("stop-server", "--server", "model")

    assert r.code == 0, r.text
    assert "note: 'web' needs 'model' and keeps running" in r.out
    assert gone(project.record("model")["pid"]) and alive(web, pw)


# --- 10. restart ---


def test_restart_one_leaves_the_others_and_restart_all_renews_all(project):
    pa, pb, pg = ports(3)
    write_servers(project, recipe("alpha", pa), recipe("beta", pb), recipe("gamma", pg))
    assert project.gpuops(*START, "--all").code == 0
    before = pids(project, "alpha", "beta", "gamma")

    r = project.gpuops("restart-server", "--server", "beta", "--no-follow", "--no-smoke")

    assert r.code == 0, r.text
    after = pids(project, "alpha", "beta", "gamma")
    assert (after["alpha"], after["gamma"]) == (before["alpha"], before["gamma"])
    assert alive(after["alpha"], pa) and alive(after["gamma"], pg)
    assert after["beta"] != before["beta"] and gone(before["beta"]) and alive(after["beta"], pb)

    r = project.gpuops("restart-server", "--all", "--no-follow", "--no-smoke")

    assert r.code == 0, r.text
    renewed = pids(project, "alpha", "beta", "gamma")
    for name, port in (("alpha", pa), ("beta", pb), ("gamma", pg)):
        assert renewed[name] != after[name] and gone(after[name]) and alive(renewed[name], port)


# --- 11. disabled recipes ---


def test_a_disabled_recipe_is_left_out_of_all_but_starts_by_name(project):
    pa, pb = ports(2)
    write_servers(project, recipe("alpha", pa), recipe("beta", pb, marks="disabled: yes"))

    r, doc = run_json(project, *START, "--all")

    assert r.code == 0, r.text
    assert [s["server"] for s in doc["servers"]] == ["alpha"]
    assert not record_exists(project, "beta") and port_free(pb)

    r = project.gpuops(*START, "--server", "beta")

    assert r.code == 0, r.text
    assert alive(project.record("beta")["pid"], pb)


# --- Ctrl-C while several start ---


def test_ctrl_c_while_several_start_names_them_and_a_new_start_watches_the_same_ones(project):
    import signal

    p1, p2 = ports(2)
    write_servers(project, recipe("alpha", p1, load=2), recipe("beta", p2, load=2))
    starting = project.spawn(*START, "--all")
    seen = []
    for line in starting.stdout:
        seen.append(line)
        if sum("started '" in s for s in seen) == 2:
            break
    starting.send_signal(signal.SIGINT)
    out, _ = starting.communicate(timeout=20)
    assert starting.returncode == 130, "".join(seen) + out
    assert "still starting: alpha, beta (they keep running)" in out
    first = pids(project, "alpha", "beta")
    r, doc = run_json(project, *START, "--all")
    assert r.code == 0, r.text
    assert {s["server"]: s["pid"] for s in doc["servers"]} == first  # watched to ready, not started twice


# --- names given oddly ---


def test_odd_server_lists_are_clear_errors_and_stop_takes_a_list_too(project):
    p1, p2 = ports(2)
    write_servers(project, recipe("alpha", p1), recipe("beta", p2))
    none = project.gpuops("stop-server", "--all")
    assert none.code == 0 and "nothing to stop" in none.out, none.text
    for args in (("--server", ","), ("--all", "--server", "alpha")):
        r = project.gpuops(*START, *args)
        assert r.code == 2 and "Traceback" not in r.text and "internal error" not in r.text, r.text
        assert not logs_of(project, "alpha")  # nothing started
    assert project.gpuops(*START, "--all").code == 0
    r = project.gpuops("stop-server", "--server", "beta,alpha")
    assert r.code == 0, r.text
    assert "stopped 'beta'" in r.out and "stopped 'alpha'" in r.out
    assert not live_tagged(project.root)
