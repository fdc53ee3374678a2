"""Which server smoke, profile and load-test talk to (gpuops.probes.target): --url, else the one rule.

"Running" records here point at this test process itself (its pid and start time), so the rule is
tested without starting servers; tests/e2e/test_smoke.py runs it against real ones.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from gpuops.errors import ServerNotRunning, UsageError
from gpuops.probes.target import find_target, first_recipe_name
from gpuops.rundir import RunDir
from gpuops.server import state

ME = psutil.Process()


def record(run_dir: RunDir, name: str, *, live: bool = True, port: int = 8000, engine: str = "demo",
           started_at: float | None = None, stopped: bool = False, url: str | None = "default"):
    rec = state.StateRecord(
        name=name, pid=os.getpid(), create_time=ME.create_time() if live else ME.create_time() - 1000, pgid=0,
        tag=f"{name}:test", host="127.0.0.1", port=port,
        url=f"http://127.0.0.1:{port}" if url == "default" else url, log_path=f"/logs/{name}.log",
        command="(test)", cwd=".", engine=engine, started_at=started_at or time.time(),
        stopped_at=time.time() if stopped else None)
    state.save(run_dir, rec)
    return rec


@pytest.fixture
def rd(tmp_path):
    return RunDir(tmp_path / "do_not_commit")


# ---------------------------------------------------------------- the first recipe


def test_first_recipe_name_is_the_first_server_heading(tmp_path):
    agents = tmp_path / "AGENTS.local.md"
    agents.write_text("## Server: big\n\n```bash\nvllm serve a\n```\n\n## Server: small\n\n```bash\nvllm serve b\n```\n")
    assert first_recipe_name(agents) == "big"


def test_first_recipe_name_of_an_untitled_block_is_server(tmp_path):
    agents = tmp_path / "AGENTS.local.md"
    agents.write_text("```bash\npython -m gpuops.demo --port 8000\n```\n")
    assert first_recipe_name(str(agents)) == "server"


@pytest.mark.parametrize("body", [None, "", "no code here\n", "```bash\nA='unclosed\n```\n"])
def test_first_recipe_name_of_a_missing_or_broken_file_is_none(tmp_path, body):
    agents = tmp_path / "AGENTS.local.md"
    if body is not None:
        agents.write_text(body)
    assert first_recipe_name(agents) is None
    assert first_recipe_name(None) is None


def test_first_recipe_name_of_a_folder_is_none(tmp_path):
    assert first_recipe_name(tmp_path) is None


# ---------------------------------------------------------------- --url


def test_url_without_a_record_is_an_openai_server_at_its_base_url(rd):
    t = find_target(rd, url="http://gpu-box:8000/v1/")
    assert (t.url, t.engine, t.log_path, t.record, t.note, t.name) == ("http://gpu-box:8000", "openai", None, None,
                                                                       None, None)
    assert find_target(rd, url="http://gpu-box:8000", engine="vllm").engine == "vllm"


def test_url_of_a_running_server_gpuops_started_brings_its_record(rd):
    record(rd, "big", port=8001, engine="vllm")
    t = find_target(rd, url="http://127.0.0.1:8001/v1")
    assert (t.url, t.engine, t.name, t.log_path, t.note) == ("http://127.0.0.1:8001", "vllm", "big", "/logs/big.log",
                                                             None)


@pytest.mark.parametrize("stopped,word", [(False, "has exited"), (True, "was stopped")])
def test_url_of_a_server_that_is_gone_says_so_with_its_log(rd, stopped, word):
    record(rd, "big", port=8001, engine="sglang", live=False, stopped=stopped)
    t = find_target(rd, url="http://127.0.0.1:8001")
    assert t.record is None and t.engine == "sglang" and t.log_path == "/logs/big.log"
    assert t.note.startswith("server 'big' (pid ") and "which gpuops started at this URL" in t.note
    assert t.note.endswith(word)


def test_url_rejects_what_is_not_a_url(rd):
    with pytest.raises(UsageError, match="not a server URL"):
        find_target(rd, url="localhost:8000")


# ---------------------------------------------------------------- the one rule


def test_the_only_running_server_is_chosen_whatever_the_first_recipe(rd):
    record(rd, "small", port=8002)
    record(rd, "big", port=8001, live=False)
    assert find_target(rd, default_name="big").name == "small"


def test_of_two_running_servers_the_first_recipes_is_chosen_not_the_newest(rd):
    record(rd, "big", port=8001, started_at=time.time() - 60)
    record(rd, "small", port=8002, started_at=time.time())  # newer
    t = find_target(rd, default_name="big")
    assert (t.name, t.url) == ("big", "http://127.0.0.1:8001")


def test_two_running_servers_neither_the_first_recipe_is_a_usage_error_listing_both(rd):
    record(rd, "a", port=8001)
    record(rd, "b", port=8002)
    for default in ("server", None):
        with pytest.raises(UsageError) as info:
            find_target(rd, default_name=default)
        assert info.value.exit_code == 2
        assert "2 servers are running (a, b)" in info.value.message and "--server" in info.value.hint


def test_server_named_is_chosen_among_several(rd):
    record(rd, "a", port=8001)
    record(rd, "b", port=8002)
    assert find_target(rd, server="b", default_name="a").name == "b"


def test_nothing_running_is_exit_6(rd):
    with pytest.raises(ServerNotRunning) as info:
        find_target(rd, default_name="server")
    assert info.value.exit_code == 6 and "no running server" in info.value.message and "--url" in info.value.hint


def test_nothing_running_names_the_first_recipes_server_that_exited(rd):
    record(rd, "server", live=False)
    with pytest.raises(ServerNotRunning, match="server 'server' \\(pid \\d+\\) has exited"):
        find_target(rd, default_name="server")


def test_a_server_without_url_is_a_usage_error(rd):
    record(rd, "server", url=None)
    with pytest.raises(UsageError, match="has no URL"):
        find_target(rd)


def test_engine_flag_overrides_the_record(rd):
    record(rd, "server", engine="vllm")
    assert find_target(rd, engine="sglang").engine == "sglang"


# ---------------------------------------------------------------- load-test's use of it


def opts(**kw):
    from gpuops.probes.loadtest.options import LoadTestOptions

    return LoadTestOptions(**kw)


def test_load_test_follows_the_one_rule(rd):
    from gpuops.probes.loadtest.runner import resolve_target

    record(rd, "big", port=8001, started_at=time.time() - 60)
    record(rd, "small", port=8002)
    t = resolve_target(opts(), rd, default_name="big")
    assert (t.url, t.server_name, t.engine, t.server_pid) == ("http://127.0.0.1:8001", "big", "demo", os.getpid())
    with pytest.raises(UsageError, match="2 servers are running"):
        resolve_target(opts(), rd)


def test_load_test_refuses_comfyui(rd):
    from gpuops.probes.loadtest.runner import resolve_target

    record(rd, "server", engine="comfyui")
    with pytest.raises(UsageError, match="ComfyUI, which has no OpenAI-compatible text API"):
        resolve_target(opts(), rd)


def test_load_test_normalises_the_records_url(rd):
    from gpuops.probes.loadtest.runner import resolve_target

    record(rd, "server", url="http://127.0.0.1:8000/v1/")
    assert resolve_target(opts(), rd).url == "http://127.0.0.1:8000"


def test_load_test_url_keeps_the_url_as_given_and_brings_a_live_server_along(rd):
    from gpuops.probes.loadtest.runner import resolve_target

    assert resolve_target(opts(url="http://gpu-box:9000", model="m"), rd).engine == "openai"
    record(rd, "big", port=8001, engine="vllm")
    t = resolve_target(opts(url="http://127.0.0.1:8001"), rd)
    assert (t.url, t.engine, t.server_name) == ("http://127.0.0.1:8001", "vllm", "big")
