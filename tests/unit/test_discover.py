"""Model discovery over folders of fake model files (sparse files of real sizes): what counts as a model,
split shards once with their total size, names that parse back, ports, the template, appending safely."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import textwrap
from pathlib import Path

import pytest

from gpuops.errors import GpuopsError, RecipeError, UsageError
from gpuops.server.discover import (
    append_recipes,
    discover,
    human_size,
    model_name,
    plan_recipes,
    scan_models,
)
from gpuops.server.recipes import parse_recipes
from gpuops.settings import check
from support.fixtures import free_port

MIB = 1024 * 1024
TEMPLATE = textwrap.dedent("""\
    # my box

    ## Server: chat

    ```bash
    llama-server -m /data/chat.gguf --port {chat_port}
    ```

    ## Server: template

    disabled: yes

    ```bash
    # one llama-server per model
    CUDA_VISIBLE_DEVICES=0 llama-server -m {{model}} --port {{port}} --alias {{name}} -ngl 99
    ```
""")


def model_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: sizes of real models without the disk
    return path


def hf_folder(path: Path, *sizes: int) -> Path:
    model_file(path / "config.json", 10)
    for i, size in enumerate(sizes, 1):
        model_file(path / f"model-{i:05d}-of-{len(sizes):05d}.safetensors", size)
    return path


def agents(folder: Path, chat_port: int = 8005, body: str = TEMPLATE) -> Path:
    path = folder / "AGENTS.local.md"
    path.write_text(body.format(chat_port=chat_port))
    return path


def never_in_use(port: int) -> bool:
    return False


# ---------------------------------------------------------------- scanning


def test_scan_counts_gguf_files_split_shards_once_with_their_total_size_and_hf_folders(tmp_path):
    model_file(tmp_path / "Qwen3-8B-Q4_K_M.gguf", 5 * MIB)
    for i in (1, 2, 3):
        model_file(tmp_path / "big" / f"Llama-70B-Q4_K_M-{i:05d}-of-00003.gguf", (i + 1) * MIB)
    hf_folder(tmp_path / "hf" / "Qwen3-0.6B", 3 * MIB, 4 * MIB)
    model_file(tmp_path / "notes.txt", 100)
    models, skipped = scan_models(tmp_path)
    got = {(m.label, m.kind, m.path.relative_to(tmp_path).as_posix(), m.size, m.files) for m in models}
    assert got == {
        ("Qwen3-8B-Q4_K_M", "gguf", "Qwen3-8B-Q4_K_M.gguf", 5 * MIB, 1),
        ("Llama-70B-Q4_K_M", "gguf", "big/Llama-70B-Q4_K_M-00001-of-00003.gguf", 9 * MIB, 3),  # the first shard
        ("Qwen3-0.6B", "hf", "hf/Qwen3-0.6B", 7 * MIB, 2),
    }
    assert skipped == []


def test_a_split_gguf_with_a_shard_missing_is_skipped_naming_the_missing_shards(tmp_path):
    model_file(tmp_path / "m-00002-of-00003.gguf", MIB)
    model_file(tmp_path / "m-00003-of-00003.gguf", MIB)
    models, skipped = scan_models(tmp_path)
    assert models == []
    [s] = skipped
    assert "2 of 3 shards" in s.reason and "00001" in s.reason


def test_projectors_and_vocabulary_files_are_not_models(tmp_path):
    model_file(tmp_path / "mmproj-qwen2-vl-f16.gguf", MIB)
    model_file(tmp_path / "ggml-vocab-llama.gguf", MIB)
    models, skipped = scan_models(tmp_path)
    assert models == [] and len(skipped) == 2 and all("not a model" in s.reason for s in skipped)


def test_a_folder_is_a_hf_model_only_with_config_json_and_safetensors(tmp_path):
    model_file(tmp_path / "only-config" / "config.json", 10)
    model_file(tmp_path / "only-weights" / "model.safetensors", MIB)
    model_file(tmp_path / ".hidden" / "config.json", 10)
    model_file(tmp_path / ".hidden" / "model.safetensors", MIB)
    assert scan_models(tmp_path) == ([], [])


def test_a_hugging_face_cache_snapshot_is_named_after_its_repository(tmp_path):
    snap = hf_folder(tmp_path / "models--Qwen--Qwen3-8B" / "snapshots" / "0123abcd", MIB)
    [m], _ = scan_models(tmp_path)
    assert (m.label, m.path) == ("Qwen3-8B", snap)


def test_a_missing_folder_or_a_file_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match="no such folder") as err:
        scan_models(tmp_path / "nope")
    assert err.value.exit_code == 2 and "--discover" in err.value.message and err.value.hint
    with pytest.raises(UsageError, match="a file, not a folder"):
        scan_models(model_file(tmp_path / "x.gguf", 1))


def _as_unprivileged(fn):
    """fn() in a forked child that has become `nobody` (root reads everything), its result sent back as JSON."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(fn()).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    assert os.waitpid(pid, 0)[1] == 0
    return json.loads(out)


def test_an_unreadable_folder_is_a_usage_error_and_an_unreadable_subfolder_a_note():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # not under pytest's 0700 folder: `nobody` must reach it
    closed, open_ = base / "closed", base / "open"
    try:
        os.chmod(base, 0o755)
        closed.mkdir(mode=0o700)
        model_file(open_ / "a.gguf", MIB)
        (open_ / "private").mkdir(mode=0o700)
        os.chmod(open_, 0o755)
        os.chmod(open_ / "a.gguf", 0o644)
        if os.geteuid() != 0:
            os.chmod(closed, 0)
            os.chmod(open_ / "private", 0)

        def scan():
            try:
                scan_models(closed)
                top = None
            except UsageError as err:
                top = err.message
            models, skipped = scan_models(open_)
            return {"top": top, "models": [m.label for m in models], "skipped": [[s.path, s.reason] for s in skipped]}

        got = _as_unprivileged(scan)
        assert "cannot read it" in got["top"]
        assert got["models"] == ["a"]
        assert [p for p, _ in got["skipped"]] == [str(open_ / "private")]
    finally:
        for p in (closed, open_ / "private"):
            os.chmod(p, 0o700)
        shutil.rmtree(base)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(("label", "name"), [
    ("Qwen3-8B", "qwen3-8b"),
    ("Qwen3-8B-Q4_K_M", "qwen3-8b-q4km"),
    ("qwen2.5-7b-instruct-q4_k_m", "qwen25-7b-instruct-q4km"),
    ("Llama-3.2-1B-Instruct-Q4_K_M", "llama32-1b-instruct-q4km"),
    ("Meta-Llama-3.1-8B-Instruct-Q4_K_M", "meta-llama31-8b-instruct-q4km"),
    ("mistral-7b-instruct-v0.2.Q4_K_M", "mistral-7b-instruct-v02-q4km"),
    ("Qwen2.5-0.5B-Instruct", "qwen25-05b-instruct"),
    ("Run-Qwen3-8B", "qwen3-8b"),  # the parser drops filler words: the name is what it parses to
    ("a", "model"),  # a heading of filler words alone names the default `server`: not a name for a model
])
def test_a_model_name_is_what_its_heading_parses_back_to(label, name):
    assert model_name(label) == name
    text = f"## Server: {name}\n\n```bash\nllama-server -m x.gguf\n```\n"
    assert list(parse_recipes(text).servers) == [name]


# ---------------------------------------------------------------- the plan


def plan(tmp_path, models_dir, **kw):
    path = kw.pop("agents_file", None) or agents(tmp_path)
    text = path.read_text()
    from gpuops.server.recipes import load_recipes

    models, skipped = scan_models(models_dir)
    kw.setdefault("template", None)
    kw.setdefault("ports", (8001, 8099))
    kw.setdefault("in_use", never_in_use)
    return plan_recipes(models, load_recipes(path), text, skipped=skipped, **kw)


def test_the_printed_recipes_parse_back_with_their_paths_ports_and_the_templates_environment(tmp_path):
    models = tmp_path / "my models"  # a space: the path is quoted in the command
    model_file(models / "Qwen3-8B-Q4_K_M.gguf", 5 * MIB)
    for i in (1, 2):
        model_file(models / f"big-{i:05d}-of-00002.gguf", MIB)
    path = agents(tmp_path)
    tmpl, made, skipped = plan(tmp_path, models, agents_file=path)
    assert tmpl.name == "template" and skipped == []
    assert [(r.name, r.port) for r in made] == [("big", 8001), ("qwen3-8b-q4km", 8002)]
    new = "\n".join(r.text for r in made)
    assert "'" + str(models / "big-00001-of-00002.gguf") + "'" in new
    assert "<!-- " + str(models / "Qwen3-8B-Q4_K_M.gguf") + ": GGUF, 5.0 MiB -->" in new
    assert "GGUF, 2 shards, 2.0 MiB" in new
    recipes = parse_recipes(path.read_text() + "\n" + new)
    big = recipes.servers["big"]
    assert big.argv == ["llama-server", "-m", str(models / "big-00001-of-00002.gguf"), "--port", "8001",
                        "--alias", "big", "-ngl", "99"]
    assert big.env == {"CUDA_VISIBLE_DEVICES": "0"} and big.disabled is False  # the template's marker stays its own
    assert recipes.servers["qwen3-8b-q4km"].option("--port") == "8002"


def test_ports_skip_those_other_recipes_name_and_those_in_use_now(tmp_path):
    for name in ("qa", "qb", "qc"):
        model_file(tmp_path / "models" / f"{name}.gguf", MIB)
    first = free_port()
    with socket.socket() as held:  # a real listener on the range's second port
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        path = agents(tmp_path, chat_port=first)  # the chat recipe names the first port
        from gpuops.server.procs import port_in_use

        _, made, _ = plan(tmp_path, tmp_path / "models", agents_file=path, ports=(first, first + 3),
                          in_use=lambda p: p == busy or port_in_use(p, "0.0.0.0"))
    ports = [r.port for r in made]
    assert len(ports) == 3 and first not in ports and busy not in ports and len(set(ports)) == 3


def test_an_engines_default_port_counts_as_named_by_a_recipe_that_names_none(tmp_path):
    model_file(tmp_path / "models" / "a.gguf", MIB)
    body = TEMPLATE.replace("llama-server -m /data/chat.gguf --port {chat_port}", "llama-server -m /data/chat.gguf")
    _, [made], _ = plan(tmp_path, tmp_path / "models", agents_file=agents(tmp_path, body=body), ports=(8080, 8081))
    assert made.port == 8081  # llama-server listens on 8080 without --port


def test_a_range_without_enough_free_ports_is_a_usage_error_and_nothing_is_made(tmp_path):
    for name in ("qa", "qb"):
        model_file(tmp_path / "models" / f"{name}.gguf", MIB)
    with pytest.raises(UsageError, match="8005-8006 have 1 free for 2") as err:
        plan(tmp_path, tmp_path / "models", ports=(8005, 8006))  # 8005 is the chat recipe's
    assert "--ports" in err.value.hint


def test_models_a_recipe_loads_already_and_names_a_recipe_has_are_skipped_with_a_note(tmp_path):
    model_file(tmp_path / "models" / "chat.gguf", MIB)  # named like the chat recipe, another file
    for i in (1, 2):
        model_file(tmp_path / "models" / f"big-{i:05d}-of-00002.gguf", MIB)
    model_file(tmp_path / "models" / "new.gguf", MIB)
    body = TEMPLATE.replace("/data/chat.gguf", str(tmp_path / "models" / "big-00002-of-00002.gguf"))
    _, made, skipped = plan(tmp_path, tmp_path / "models", agents_file=agents(tmp_path, body=body))
    assert [r.name for r in made] == ["new"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "recipe 'chat' loads it already" in reasons["big-00001-of-00002.gguf"]  # any shard counts
    assert "a recipe named 'chat' exists already" in reasons["chat.gguf"]


def test_one_file_name_in_two_folders_gets_two_names(tmp_path):
    model_file(tmp_path / "models" / "a" / "model.gguf", MIB)
    model_file(tmp_path / "models" / "b" / "model.gguf", MIB)
    _, made, _ = plan(tmp_path, tmp_path / "models")
    assert [r.name for r in made] == ["model", "model-2"]


def test_a_llama_cpp_template_leaves_hf_folders_out_with_a_note(tmp_path):
    hf_folder(tmp_path / "models" / "Qwen3-8B", MIB)
    _, made, [note] = plan(tmp_path, tmp_path / "models")
    assert made == [] and "does not load Hugging Face folders" in note.reason


# ---------------------------------------------------------------- the template


VLLM_TEMPLATE = "## Server: vllm-template\n\n```bash\nvllm serve {model} --port {port}\n```\n"


def test_the_template_is_the_only_recipe_holding_model_or_the_one_named(tmp_path):
    hf_folder(tmp_path / "models" / "Qwen3-8B", MIB)
    two = TEMPLATE + "\n" + VLLM_TEMPLATE.replace("{", "{{").replace("}", "}}")
    path = agents(tmp_path, body=two)
    with pytest.raises(UsageError, match="2 recipes hold {model}: template, vllm-template") as err:
        plan(tmp_path, tmp_path / "models", agents_file=path)
    assert "--template" in err.value.hint
    tmpl, [made], _ = plan(tmp_path, tmp_path / "models", agents_file=path, template="vllm-template")
    assert tmpl.name == "vllm-template" and made.name == "qwen3-8b"
    assert parse_recipes(path.read_text() + "\n" + made.text).servers["qwen3-8b"].argv[:3] == \
        ["vllm", "serve", str(tmp_path / "models" / "Qwen3-8B")]


def test_no_template_is_an_error_with_an_example_and_a_recipe_without_model_cannot_be_one(tmp_path):
    model_file(tmp_path / "models" / "a.gguf", MIB)
    path = agents(tmp_path, body="## Server: chat\n\n```bash\nllama-server -m /data/chat.gguf\n```\n")
    with pytest.raises(UsageError, match="no recipe .* holds {model}") as err:
        plan(tmp_path, tmp_path / "models", agents_file=path)
    assert "disabled: yes" in err.value.hint and "{port}" in err.value.hint
    with pytest.raises(UsageError, match="recipe 'chat' holds no {model}"):
        plan(tmp_path, tmp_path / "models", agents_file=path, template="chat")
    with pytest.raises(RecipeError, match="no server recipe named 'nope'"):
        plan(tmp_path, tmp_path / "models", agents_file=path, template="nope")


def test_a_template_without_port_is_an_error(tmp_path):
    model_file(tmp_path / "models" / "a.gguf", MIB)
    path = agents(tmp_path, body="## Server: t\n\n```bash\nllama-server -m {{model}}\n```\n")
    with pytest.raises(UsageError, match="holds no {port}"):
        plan(tmp_path, tmp_path / "models", agents_file=path)


# ---------------------------------------------------------------- writing


def test_write_appends_keeping_the_text_and_the_mode_and_a_second_run_finds_nothing_new(tmp_path):
    model_file(tmp_path / "models" / "qwen.gguf", MIB)
    path = agents(tmp_path)
    path.write_text(path.read_text().rstrip("\n"))  # no newline at the end: the new section still starts a line
    os.chmod(path, 0o640)
    before = path.read_text()
    result = discover(str(tmp_path / "models"), path, in_use=never_in_use)
    append_recipes(path, result.recipes)
    after = path.read_text()
    assert after.startswith(before) and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert list(parse_recipes(after).servers) == ["chat", "template", "qwen"]
    again = discover(str(tmp_path / "models"), path, in_use=never_in_use)
    assert again.recipes == [] and [s.reason for s in again.skipped] == ["recipe 'qwen' loads it already"]


def test_write_never_duplicates_a_heading_that_appeared_meanwhile(tmp_path):
    model_file(tmp_path / "models" / "qwen.gguf", MIB)
    path = agents(tmp_path)
    result = discover(str(tmp_path / "models"), path, in_use=never_in_use)
    path.write_text(path.read_text() + "\n## Server: qwen\n\n```bash\nllama-server -m /other.gguf\n```\n")
    before = path.read_text()
    with pytest.raises(GpuopsError, match="not written: .*two server recipes are named 'qwen'"):
        append_recipes(path, result.recipes)
    assert path.read_text() == before


# ---------------------------------------------------------------- small things


def test_sizes_read_as_people_write_them():
    assert [human_size(n) for n in (0, 1023, 1024, 5 * MIB, 15 * 1024**3 + 1)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.0 MiB", "15.0 GiB"]


@pytest.mark.parametrize("bad", ["abc", "8099-8001", "0-10", "8001-70000", "8001-"])
def test_a_bad_port_range_is_a_usage_error_naming_the_flag(bad):
    with pytest.raises(UsageError, match="--ports must be a range of ports"):
        check("discover_ports", bad, flag="--ports")
    assert check("discover_ports", "8001-8003") == (8001, 8003)
