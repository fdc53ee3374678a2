"""Which hosts, which flags, how many at once: the planning side of -H, mostly without a network."""

import json
import threading
import time

import pytest

from gpuops.errors import UsageError
from gpuops.hosts.fleet import HostResult, exit_code, fan_out
from gpuops.hosts.hosts import host_setting, resolve_hosts
from gpuops.hosts.ssh import HostError, RemoteSite, gpuops_script, parse_documents, sh_path

pytestmark = pytest.mark.ssh


def test_groups_expand_in_order_without_repeats():
    cfg = {"groups": {"fleet": ["gpu1", "gpu2"], "big": "fleet, gpu9"}, "hosts": ["gpu5"]}
    assert resolve_hosts("big,gpu1,all", cfg) == ["gpu1", "gpu2", "gpu9", "gpu5"]


def test_a_group_that_contains_itself_is_a_usage_error():
    with pytest.raises(UsageError, match="contains itself"):
        resolve_hosts("a", {"groups": {"a": ["b"], "b": ["a"]}})


def test_per_host_settings_override_the_global_ones():
    cfg = {"remote_dir": "~/llm", "host_settings": {"gpu2": {"remote_dir": "/data/llm"}}}
    assert host_setting(cfg, "gpu2", "remote_dir") == "/data/llm"
    assert host_setting(cfg, "gpu1", "remote_dir") == "~/llm"


def test_remote_script_quotes_paths_and_flags():
    script = gpuops_script(["smoke", "--prompt=it's $HOME"], RemoteSite(venv="~/my venv", dir="/srv/a b", version="1"))
    assert "V=\"$HOME\"/'my venv'; D='/srv/a b'" in script
    assert "smoke '--prompt=it'\"'\"'s $HOME'" in script
    assert sh_path("~") == '"$HOME"'


def test_documents_are_found_among_login_noise():
    docs = parse_documents('Welcome!\n{"schema": 1, "task": "status", "ok": true}\n{not json}\n')
    assert docs == [{"schema": 1, "task": "status", "ok": True}]


def test_fan_out_runs_hosts_at_the_same_time_and_keeps_their_order():
    running, peak, lock = [0], [0], threading.Lock()

    def job(host):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        if host == "dead":
            raise HostError(host, "refused", "connection refused")
        return host.upper()

    start = time.monotonic()
    results = fan_out(["a", "dead", "b", "c"], job)
    assert time.monotonic() - start < 1.0  # not 4 x 0.3 s
    assert peak[0] == 4
    assert [r.host for r in results] == ["a", "dead", "b", "c"]
    assert [r.value for r in results if r.ok] == ["A", "B", "C"]
    assert exit_code(results) == 8


def test_exit_code_is_the_shared_code_of_failed_hosts():
    err = HostError("a", "x", "y", exit_code=6)
    assert exit_code([HostResult("a", error=err), HostResult("b", error=HostError("b", "x", "y", exit_code=6))]) == 6
    assert exit_code([HostResult("a")]) == 0


def test_flags_reach_the_host_as_given(remote):
    """`--lines 3` and `--prefix` travel; the remote logs task answers with its document."""
    logs = remote.project / "do_not_commit" / "server_logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "locust-20990101-000001.log").write_text("".join(f"l{i}\n" for i in range(10)))
    r = remote.gpuops("-H", "gpu1", "logs", "--prefix", "locust", "--lines", "3", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert doc["lines"] == ["l7", "l8", "l9"]
    human = remote.gpuops("-H", "gpu1", "logs", "--prefix", "locust", "--lines", "2")
    assert human.out.splitlines()[-2:] == ["l8", "l9"]


def test_groups_and_default_hosts_come_from_the_config(remote):
    remote.write_config(groups={"fleet": ["gpu2", "gpu3"]}, hosts=["gpu4"])
    try:
        by_group = remote.gpuops("-H", "fleet", "gpus", "--json")
        by_default = remote.gpuops("status", "--json")  # gpuops.hosts: no -H needed
        here = remote.gpuops("-H", "local", "status", "--json")
    finally:
        remote.write_config()
    assert [h["host"] for h in json.loads(by_group.out)["hosts"]] == ["gpu2", "gpu3"], by_group.text
    assert json.loads(by_default.out)["ssh_host"] == "gpu4", by_default.text
    assert "ssh_host" not in json.loads(here.out)


def test_install_without_hosts_is_a_usage_error(remote):
    r = remote.gpuops("install")
    assert r.code == 2 and "name them with -H" in r.err
