"""Several servers: markers in AGENTS.local.md, which servers a start means and in what order, clashes
refused before anything starts, the registry's reservations, and the stop order."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from gpuops.errors import GpusBusy, PortInUse, RecipeError
from gpuops.rundir import RunDir
from gpuops.server import group, registry, state
from gpuops.server.recipes import parse_recipes


def recipes_of(*sections: str):
    return parse_recipes("\n".join(sections), "AGENTS.local.md")


def server(name: str, command: str, *markers: str) -> str:
    return "\n".join([f"## Server: {name}", *markers, "```bash", command, "```", ""])


# ---------------------------------------------------------------- markers


def test_marker_lines_under_a_heading_set_needs_disabled_and_share_gpus():
    r = recipes_of(server("model", "vllm serve m --port 8001", "share-gpus: yes"),
                   server("app", "uvicorn app:api --port 8002", "needs: model, cache", "- disabled: yes"),
                   server("cache", "redis-server --port 8003"))
    assert r.servers["app"].needs == ("model", "cache")
    assert r.servers["app"].disabled and not r.servers["model"].disabled
    assert r.servers["model"].share_gpus and not r.servers["app"].share_gpus


def test_a_marker_inside_the_code_block_is_part_of_the_command_not_a_marker():
    r = recipes_of(server("app", "serve --port 8002\n# needs: model"))
    assert r.servers["app"].needs == ()


def test_a_marker_that_is_neither_yes_nor_no_names_its_line():
    with pytest.raises(RecipeError) as err:
        recipes_of(server("app", "serve --port 8002", "disabled: maybe"))
    assert "AGENTS.local.md:2" in str(err.value.render()) and "yes or no" in err.value.message


# ---------------------------------------------------------------- which servers, in what order


def test_a_server_starts_after_what_it_needs_transitively_and_those_are_said_to_be_added():
    r = recipes_of(server("app", "a --port 1", "needs: model"), server("model", "m --port 2", "needs: store"),
                   server("store", "s --port 3"))
    plan = group.plan_start(r, ["app"])
    assert plan.order == ["store", "model", "app"]
    assert plan.added == ["store", "model"]
    assert plan.dependents("store") == ["model"]


def test_all_leaves_out_disabled_recipes_but_a_name_still_starts_them():
    r = recipes_of(server("model", "m --port 1"), server("template", "t {model}", "disabled: yes"))
    assert group.requested_names(r, None, all=True) == ["model"]
    assert group.requested_names(r, "template,model") == ["template", "model"]
    assert group.requested_names(r, None) == ["model"]  # neither: the first recipe


def test_a_server_list_with_no_names_is_a_usage_error_naming_the_known_ones():
    from gpuops.errors import UsageError

    r = recipes_of(server("model", "m --port 1"))
    with pytest.raises(UsageError, match="names no server") as err:
        group.requested_names(r, " , ")
    assert "model" in err.value.hint


def test_an_unknown_name_or_need_is_refused_naming_the_known_ones():
    r = recipes_of(server("app", "a --port 1", "needs: modle"), server("model", "m --port 2"))
    with pytest.raises(RecipeError, match="no server recipe named 'nope'"):
        group.requested_names(r, "nope")
    with pytest.raises(RecipeError, match="'app' needs 'modle'") as err:
        group.plan_start(r, ["app"])
    assert "model" in err.value.hint


def test_a_cycle_is_refused_naming_it():
    r = recipes_of(server("app", "a --port 1", "needs: model"), server("model", "m --port 2", "needs: app"))
    with pytest.raises(RecipeError, match=r"cycle: app -> model -> app"):
        group.plan_start(r, ["app"])


def test_two_recipes_naming_one_port_are_refused_with_both_names():
    r = recipes_of(server("one", "serve --port 8001"), server("two", "serve -p 8001"))
    with pytest.raises(RecipeError, match="'one' and 'two' both use port 8001"):
        group.plan_start(r, ["one", "two"])
    group.plan_start(r, ["one"])  # alone, no clash


def test_two_commands_on_their_engines_default_port_clash_but_a_wrapper_that_names_none_does_not():
    r = recipes_of(server("one", "vllm serve m1"), server("two", "vllm serve m2"),
                   server("three", "bash ./serve.sh"), server("four", "bash ./serve.sh"))
    with pytest.raises(RecipeError, match="'one' and 'two' both use port 8000"):
        group.plan_start(r, ["one", "two"])
    group.plan_start(r, ["three", "four"])  # where a wrapper listens is learned as it starts


def test_with_the_gpus_nvml_sees_a_command_without_cuda_visible_devices_needs_all_of_them():
    from gpuops.gpu.inventory import Gpu, Inventory

    inv = Inventory([Gpu(i, "NVIDIA H100", None, 0.0, 81559.0, 0, False) for i in range(2)], None, "550.54")
    r = recipes_of(server("one", "vllm serve m1 --port 1"), server("two", "CUDA_VISIBLE_DEVICES=1 vllm serve m2 --port 2"))
    group.plan_start(r, ["one", "two"], environ={})  # without NVML only the named GPUs are known
    with pytest.raises(RecipeError, match="'one' and 'two' both use GPU 1"):
        group.plan_start(r, ["one", "two"], environ={}, inventory=inv)


def test_two_recipes_naming_one_gpu_are_refused_unless_both_share():
    both = [server("one", "CUDA_VISIBLE_DEVICES=0,1 serve --port 1"), server("two", "CUDA_VISIBLE_DEVICES=1 serve --port 2")]
    with pytest.raises(RecipeError, match="both use GPU 1"):
        group.plan_start(recipes_of(*both), ["one", "two"], environ={})
    group.plan_start(recipes_of(*both), ["one", "two"], share_gpus=True, environ={})
    shared = [s.replace("```bash", "share-gpus: yes\n```bash") for s in both]
    group.plan_start(recipes_of(*shared), ["one", "two"], environ={})
    one_shares = [shared[0], both[1]]
    with pytest.raises(RecipeError):
        group.plan_start(recipes_of(*one_shares), ["one", "two"], environ={})


def test_stop_order_puts_a_server_before_what_it_needs_and_keeps_the_given_order_otherwise():
    r = recipes_of(server("model", "m --port 1"), server("app", "a --port 2", "needs: model"),
                   server("ui", "u --port 3", "needs: app"), server("other", "o --port 4"))
    assert group.stop_order(["model", "ui", "app", "old"], r) == ["ui", "app", "model", "old"]
    assert group.stop_order(["other", "model", "old"], r) == ["other", "model", "old"]
    assert group.stop_order(["model", "app"], None) == ["model", "app"]


def test_stopping_what_a_running_server_needs_is_said():
    r = recipes_of(server("model", "m --port 1"), server("app", "a --port 2", "needs: model"))
    notes = group.still_needed(["model"], ["model", "app"], r)
    assert len(notes) == 1 and "'app' needs 'model'" in notes[0]
    assert group.still_needed(["model", "app"], ["model", "app"], r) == []


# ---------------------------------------------------------------- the registry: live records reserve


def live_record(run_dir: RunDir, name: str, *, port=None, gpus=(), share=False, ready=False):
    me = psutil.Process(os.getpid())
    rec = state.StateRecord(name=name, pid=me.pid, create_time=me.create_time(), pgid=os.getpgid(0), tag="t",
                            host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}" if port else None,
                            log_path="x.log", command="serve", cwd=".", engine="demo", gpus=list(gpus),
                            share_gpus=share, ready_at=time.time() if ready else None)
    state.save(run_dir, rec)
    return rec


def test_a_starting_server_reserves_its_port_and_gpus_from_its_record(tmp_path):
    rd = RunDir(tmp_path)
    live_record(rd, "model", port=8001, gpus=[0, 1])
    with pytest.raises(PortInUse, match="port 8001 is taken by server 'model'.*starting"):
        registry.check_reservations(rd, "app", port=8001, gpus=[])
    with pytest.raises(GpusBusy, match="GPU 1 is reserved by server 'model'"):
        registry.check_reservations(rd, "app", port=8002, gpus=[1, 2])
    registry.check_reservations(rd, "app", port=8002, gpus=[2])
    registry.check_reservations(rd, "model", port=8001, gpus=[0])  # its own record is no clash


def test_a_ready_server_leaves_its_gpus_to_the_nvml_preflight_but_keeps_its_port(tmp_path):
    rd = RunDir(tmp_path)
    live_record(rd, "model", port=8001, gpus=[0], ready=True)
    registry.check_reservations(rd, "app", port=8002, gpus=[0])
    with pytest.raises(PortInUse, match="'model' .*ready"):
        registry.check_reservations(rd, "app", port=8001, gpus=[])


def test_gpus_are_shared_only_when_both_servers_share(tmp_path):
    rd = RunDir(tmp_path)
    live_record(rd, "model", port=8001, gpus=[0], share=True)
    registry.check_reservations(rd, "app", port=8002, gpus=[0], share_gpus=True)
    with pytest.raises(GpusBusy):
        registry.check_reservations(rd, "app", port=8002, gpus=[0], share_gpus=False)


def test_a_record_of_a_process_that_is_gone_reserves_nothing(tmp_path):
    rd = RunDir(tmp_path)
    rec = live_record(rd, "model", port=8001, gpus=[0])
    rec.create_time -= 1000  # the PID is someone else's now
    state.save(rd, rec)
    registry.check_reservations(rd, "app", port=8001, gpus=[0])


def test_a_record_saved_by_an_older_gpuops_without_share_gpus_still_loads(tmp_path):
    rd = RunDir(tmp_path)
    rec = live_record(rd, "model", port=8001)
    text = (rd.state / "model.json").read_text().replace('"share_gpus": false', '"x": 1')
    (rd.state / "model.json").write_text(text)
    assert state.load(rd, "model").share_gpus is False and rec.name == "model"


# ---------------------------------------------------------------- starting: the schedule


class Starts:
    """A start_one that records when each server's start began and ended; `fail` ones raise."""

    def __init__(self, *, fail=(), hold=None):
        import threading

        self.fail, self.events, self.hold = set(fail), [], hold or {}
        self.lock = threading.Lock()

    def __call__(self, recipe, say, stream):
        from gpuops.errors import StartupFailed

        with self.lock:
            self.events.append(("begin", recipe.name))
        say("launching")
        if recipe.name in self.hold:
            self.hold[recipe.name].wait(5)
        with self.lock:
            self.events.append(("end", recipe.name))
        if recipe.name in self.fail:
            raise StartupFailed(f"server '{recipe.name}' exited during start-up")
        return _ready(recipe.name)


def _ready(name):
    from gpuops.server.start import StartResult

    rec = state.StateRecord(name=name, pid=1, create_time=0.0, pgid=1, tag="t", host="h", port=None, url=None,
                            log_path=f"{name}.log", command="c", cwd=".", engine="demo")
    return StartResult(rec, None, already_running=False)


def test_independent_servers_start_together_and_a_dependent_only_after_its_need_is_up():
    import threading

    r = recipes_of(server("one", "o --port 1"), server("two", "t --port 2"), server("app", "a --port 3", "needs: one"))
    release = threading.Event()
    starts = Starts(hold={"one": release, "two": release})
    lines = []
    threading.Timer(0.3, release.set).start()
    result = group.start_group(group.plan_start(r, ["one", "two", "app"]), r, starts, write=lines.append)
    ev = starts.events
    assert ev.index(("begin", "two")) < ev.index(("end", "one"))  # both held at once: they ran together
    assert ev.index(("begin", "app")) > ev.index(("end", "one"))
    assert [s.state for s in result.servers] == ["ready", "ready", "ready"] and result.error() is None
    assert "one | launching" in lines  # prefixed with the server's name


def test_a_failure_skips_its_dependents_but_not_the_others_and_the_exit_code_is_the_failures():
    r = recipes_of(server("one", "o --port 1"), server("two", "t --port 2"), server("app", "a --port 3", "needs: one"))
    result = group.start_group(group.plan_start(r, ["one", "two", "app"]), r, Starts(fail={"one"}), write=print)
    assert {s.name: s.state for s in result.servers} == {"one": "failed", "two": "ready", "app": "skipped"}
    err = result.error()
    assert err.exit_code == 3 and "2 of 3 servers did not start" in err.message
    assert "it needs 'one'" in " ".join(err.details)


def test_fail_fast_starts_no_more_and_stops_what_this_run_started():
    r = recipes_of(server("one", "o --port 1"), server("two", "t --port 2", "needs: three"),
                   server("three", "x --port 3"))
    stopped, events = [], []
    result = group.start_group(group.plan_start(r, ["one", "three", "two"]), r,
                               Starts(fail={"one"}), write=print, fail_fast=True, stop_one=stopped.append,
                               on_event=lambda name, st: events.append((name, st)))
    states = {s.name: s.state for s in result.servers}
    assert states["one"] == "failed" and states["two"] == "skipped"
    assert states["three"] in ("stopped", "skipped")
    assert "one" not in stopped and set(stopped) <= {"three"}
    assert (states["three"] == "stopped") == ("three" in stopped)
    if "three" in stopped:
        assert ("three", "stopped") in events  # said as the table says it, not "failed"
    assert ("two", "skipped") in events and ("one", "failed") in events


def test_after_server_colon_a_long_model_name_still_names_a_recipe_and_filler_words_still_drop():
    r = recipes_of(server("run the vLLM", "serve --port 1"), server("Qwen2.5-0.5B-Instruct Q4_K_M", "serve --port 2"))
    assert list(r.servers) == ["vllm", "qwen2-5-0-5b-instruct-q4-k-m"]


def test_prose_that_looks_like_a_marker_is_not_one():
    r = recipes_of("## Notes\n\ndisabled: the old recipe was removed\n",
                   server("app", "serve --port 1", "Needs: a GPU with 24 GB", "Disabled: not any more"))
    assert r.servers["app"].needs == () and not r.servers["app"].disabled


def test_needs_names_follow_the_heading_rules():
    r = recipes_of(server("Vision Model", "v --port 1"), server("app", "a --port 2", "needs: Vision Model"))
    assert r.servers["app"].needs == ("vision-model",)
    assert group.plan_start(r, ["app"]).order == ["vision-model", "app"]
