"""`inv servers` through the real CLI: the recipes with whether each runs (a real demo server), and
`--discover` over a folder of fake model files: printed, pasted back, written once, errors as messages."""

from __future__ import annotations

import json
import sys
import textwrap

from gpuops.server.recipes import parse_recipes

TEMPLATE = """\
## Server: template

disabled: yes

```bash
llama-server -m {model} --port {port} --alias {name}
```
"""


def document(r) -> dict:
    doc = json.loads(r.out)  # stdout holds the one document and nothing else
    assert (doc["schema"], doc["task"]) == (1, "servers")
    return doc


def model_file(path, size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def test_servers_lists_each_recipe_with_port_engine_needs_disabled_and_whether_it_runs(project, port):
    project.write_agents(f"""\
        ## Server: model

        share-gpus: yes

        ```bash
        GPUOPS_DEMO_LOAD_SECONDS=0.2 {sys.executable} -m gpuops.demo --port {port}
        ```

        ## Server: app

        needs: model

        ```bash
        llama-server -m /data/app.gguf
        ```

        {textwrap.indent(TEMPLATE, "        ").lstrip()}
    """)
    started = project.gpuops("start-server", "--server", "model", "--no-follow", "--no-smoke")
    assert started.code == 0, started.text
    r = project.gpuops("servers", "--json")
    assert r.code == 0, r.text
    doc = document(r)
    rows = {s["name"]: s for s in doc["servers"]}
    assert list(rows) == ["model", "app", "template"] and doc["mode"] == "list"
    pid = project.record("model")["pid"]
    assert {k: rows["model"][k] for k in ("port", "engine", "running", "pid", "share_gpus", "disabled")} == \
        {"port": port, "engine": "demo", "running": True, "pid": pid, "share_gpus": True, "disabled": False}
    assert rows["model"]["url"] == f"http://127.0.0.1:{port}"
    assert {k: rows["app"][k] for k in ("port", "port_named", "engine", "needs", "running", "pid")} == \
        {"port": 8080, "port_named": False, "engine": "llama.cpp", "needs": ["model"], "running": False, "pid": None}
    assert rows["template"]["disabled"] is True and rows["template"]["template"] is True
    text = project.gpuops("servers")
    assert text.code == 0, text.text
    assert f"yes (pid {pid})" in text.out and "8080 (default)" in text.out and "template" in text.out
    assert "3 server recipes in AGENTS.local.md, 1 running" in text.out


def test_discover_prints_recipes_that_paste_back_and_write_appends_them_once(project):
    models = project.root / "models"
    model_file(models / "Qwen3-8B-Q4_K_M.gguf", 5 * 1024**2)
    for i in (1, 2):
        model_file(models / "big" / f"Big-Model-{i:05d}-of-00002.gguf", 3 * 1024**3)
    path = project.write_agents(TEMPLATE)
    before = path.read_text()
    r = project.gpuops("servers", "--discover", "models", "--ports", "18001-18099")
    assert r.code == 0, r.text
    assert r.out.startswith("## Server: big-model\n") and "<!-- " + str(models / "big" / "Big-Model-00001-of-00002.gguf") \
        + ": GGUF, 2 shards, 6.0 GiB -->" in r.out
    pasted = parse_recipes(before + "\n" + r.out)  # ready to paste: stdout holds only the recipes
    assert pasted.servers["qwen3-8b-q4km"].argv == ["llama-server", "-m", str(models / "Qwen3-8B-Q4_K_M.gguf"),
                                                    "--port", pasted.servers["qwen3-8b-q4km"].option("--port"),
                                                    "--alias", "qwen3-8b-q4km"]
    assert "2 new recipes from template 'template'" in r.err and "--write" in r.err
    assert path.read_text() == before  # printing writes nothing

    written = project.gpuops("servers", "--discover", "models", "--ports", "18001-18099", "--write", "--json")
    assert written.code == 0, written.text
    doc = document(written)
    assert doc["mode"] == "discover" and doc["written_to"] == "AGENTS.local.md"
    assert [(m["name"], m["kind"], m["files"], m["size"]) for m in doc["models"]] == \
        [("big-model", "gguf", 2, "6.0 GiB"), ("qwen3-8b-q4km", "gguf", 1, "5.0 MiB")]
    after = path.read_text()
    assert after.startswith(before) and after.count("## Server: big-model") == 1
    listed = document(project.gpuops("servers", "--json"))
    assert [s["name"] for s in listed["servers"]] == ["template", "big-model", "qwen3-8b-q4km"]
    assert [s["port"] for s in listed["servers"][1:]] == [m["port"] for m in doc["models"]]

    again = project.gpuops("servers", "--discover", "models", "--write")
    assert again.code == 0, again.text
    assert path.read_text() == after and "loads it already" in again.err and "no new models" in again.err


def test_discover_skips_a_port_in_use_now_and_an_exhausted_range_is_exit_2(project, port, stranger):
    model_file(project.root / "models" / "qwen.gguf", 1024)
    project.write_agents(TEMPLATE)
    stranger(port)
    r = project.gpuops("servers", "--discover", "models", "--ports", f"{port}-{port}", "--json")
    assert r.code == 2, r.text
    doc = document(r)
    assert doc["ok"] is False and doc["error"]["type"] == "UsageError"
    assert f"the ports {port}-{port} have 0 free for 1" in doc["error"]["message"]
    assert "Traceback" not in r.err


def test_discover_errors_are_one_message_and_exit_2(project):
    project.write_agents(TEMPLATE)
    cases = [
        (("servers", "--discover", "nowhere"), "--discover nowhere: no such folder"),
        (("servers", "--write"), "--write only goes with --discover DIR"),
        (("servers", "--discover", ".", "--ports", "9000-8000"), "--ports must be a range of ports"),
        (("servers", "--discover", ".", "--template", "nope"), "no server recipe named 'nope'"),
    ]
    for args, message in cases:
        r = project.gpuops(*args)
        assert r.code == 2, (args, r.text)
        assert message in r.err and "hint:" in r.err and "Traceback" not in r.err, (args, r.err)
    project.write_agents("## Server: chat\n\n```bash\nllama-server -m /data/chat.gguf\n```\n")
    r = project.gpuops("servers", "--discover", ".")
    assert r.code == 2 and "holds {model}" in r.err and "disabled: yes" in r.err, r.text


def test_a_remote_hosts_servers_document_reads_like_the_local_task(project, capsys):
    """`gpuops -H host servers` renders the host's --json document (cli/remote.py render_one) like the local text."""
    from gpuops.cli.remote import render_one

    model_file(project.root / "models" / "qwen.gguf", 1024)
    project.write_agents(TEMPLATE)
    for args in (("servers",), ("servers", "--discover", "models", "--ports", "18001-18099")):
        local = project.gpuops(*args)
        doc = document(project.gpuops(*args, "--json"))
        capsys.readouterr()
        render_one("servers", doc)
        shown = capsys.readouterr()
        assert local.code == 0 and shown.out == local.out and shown.err == local.err, args
