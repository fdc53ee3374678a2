"""Several real llama.cpp servers on one box, as people run them (a llama-server per GGUF model):
discovered from the model folder by `inv servers --discover`, started together with an app that needs
one of them, each answering on its own port, their memory in `inv status`, stopped together."""

from __future__ import annotations

import json

import pytest
from tier import engine_paths, kill_leftovers, port_free

from support.fixtures import Project, free_port

pytestmark = [pytest.mark.engine, pytest.mark.timeout(240)]

TEMPLATE = """\
## Server: llama
disabled: yes

```bash
{llama_server} -m {{model}} --host 127.0.0.1 --port {{port}} -c 1024 -np 1
```

## Server: app
needs: {model_name}

```bash
GPUOPS_DEMO_LOAD_SECONDS=0.3 python -m gpuops.demo --host 127.0.0.1 --port {app_port}
```
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    paths = engine_paths("LLAMA_SERVER", "GGUF_MODEL")
    root = tmp_path_factory.mktemp("several-llamas")
    models = root / "models"
    models.mkdir()
    gguf = models / "gemma3-270m-q4_k_m.gguf"
    gguf.symlink_to(paths["GGUF_MODEL"])
    (models / "gemma3-270m-copy.gguf").symlink_to(paths["GGUF_MODEL"])  # a second model: same weights
    project = Project(root)
    project.write_agents(TEMPLATE.format(llama_server=paths["LLAMA_SERVER"], model_name="gemma3-270m-q4km",
                                         app_port=free_port()))
    yield project, models
    project.gpuops("stop-server", "--all", timeout=60)
    kill_leftovers(project)


def test_discovered_llama_servers_start_together_with_what_needs_them_and_stop_together(box):
    project, models = box
    lo = min(free_port(), 65000)  # discovery skips the ports of the range that are taken
    found = project.gpuops("servers", "--discover", str(models), "--template", "llama", f"--ports={lo}-{lo + 50}",
                           "--write", "--json")
    assert found.code == 0, found.text
    names = sorted(m["name"] for m in json.loads(found.out)["models"])
    assert names == ["gemma3-270m-copy", "gemma3-270m-q4km"], found.out

    started = project.gpuops("start-server", "--all", "--no-follow", "--no-smoke", "--json", timeout=200)
    assert started.code == 0, started.text
    doc = json.loads(started.out)
    states = {s["server"]: s["state"] for s in doc["servers"]}
    assert states == {"gemma3-270m-q4km": "ready", "gemma3-270m-copy": "ready", "app": "ready"}  # not the template
    order = [s["server"] for s in doc["servers"]]
    assert order.index("gemma3-270m-q4km") < order.index("app")
    ports_used = {s["server"]: s["port"] for s in doc["servers"]}
    assert len(set(ports_used.values())) == 3

    for name in ("gemma3-270m-q4km", "gemma3-270m-copy"):
        smoke = project.gpuops("smoke", "--server", name, "--json", timeout=120)
        assert smoke.code == 0, smoke.text
        assert json.loads(smoke.out)["url"].endswith(f":{ports_used[name]}")

    status = json.loads(project.gpuops("status", "--json").out)
    rows = {s["name"]: s for s in status["servers"]}
    assert rows["gemma3-270m-copy"]["rss_bytes"] > 50 * 2**20  # a loaded model, not a shell
    assert status["totals"]["ready"] == 3

    stopped = project.gpuops("stop-server", "--all", "--json", timeout=60)
    assert stopped.code == 0, stopped.text
    stop_order = [s["name"] for s in json.loads(stopped.out)["servers"] if s.get("was_running")]
    assert stop_order.index("app") < stop_order.index("gemma3-270m-q4km")
    assert all(port_free(p) for p in ports_used.values())
