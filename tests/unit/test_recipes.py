"""AGENTS.local.md -> recipes: realistic commands of each engine, the block rules, errors with lines, secrets."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuops.errors import RecipeError
from gpuops.server.recipes import load_recipes, mask_secrets, parse_recipes


def md(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def server_of(command: str, lang: str = "bash"):
    return parse_recipes(f"## Server\n\n```{lang}\n{command}\n```\n", "AGENTS.local.md").server()


# ---------------------------------------------------------------- commands, table-driven

SIMPLE = [
    pytest.param(
        "vllm serve Qwen/Qwen3-8B --tensor-parallel-size 2 --gpu-memory-utilization 0.9 --port 8000",
        {}, ["vllm", "serve", "Qwen/Qwen3-8B", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9",
             "--port", "8000"], id="vllm-serve"),
    pytest.param(
        "CUDA_VISIBLE_DEVICES=0,1 vllm serve meta-llama/Llama-3.1-70B-Instruct -tp 2 --max-model-len 8192",
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        ["vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct", "-tp", "2", "--max-model-len", "8192"],
        id="vllm-inline-cuda-devices"),
    pytest.param(
        "python -m vllm.entrypoints.openai.api_server \\\n  --model /models/llama \\\n  --port 8001",
        {}, ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/llama", "--port", "8001"],
        id="vllm-continuations"),
    pytest.param(
        "python -m sglang.launch_server --model-path Qwen/Qwen2.5-7B-Instruct --tp 2 --port 30000",
        {}, ["python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct", "--tp", "2",
             "--port", "30000"], id="sglang"),
    pytest.param(
        "./llama-server -m models/qwen2.5-7b-q4_k_m.gguf -ngl 99 --host 0.0.0.0 --port 8080 -c 8192",
        {}, ["./llama-server", "-m", "models/qwen2.5-7b-q4_k_m.gguf", "-ngl", "99", "--host", "0.0.0.0",
             "--port", "8080", "-c", "8192"], id="llama-server"),
    pytest.param(
        "mlx_lm.server --model mlx-community/Qwen2.5-7B-Instruct-4bit --port 8080",
        {}, ["mlx_lm.server", "--model", "mlx-community/Qwen2.5-7B-Instruct-4bit", "--port", "8080"], id="mlx_lm"),
    pytest.param(
        "HF_TOKEN=hf_abcdef123 PYTHONPATH=src uvicorn app.server:app --port 9000 --workers 1",
        {"HF_TOKEN": "hf_abcdef123", "PYTHONPATH": "src"},
        ["uvicorn", "app.server:app", "--port", "9000", "--workers", "1"], id="in-house-uvicorn"),
    pytest.param(
        'A=1 B="x y" C=\'$literal\' python -m app --name "my model" # trailing comment',
        {"A": "1", "B": "x y", "C": "$literal"}, ["python", "-m", "app", "--name", "my model"],
        id="quoted-env-and-args"),
    pytest.param(
        "env VLLM_USE_V1=1 NCCL_DEBUG=INFO vllm serve m --port 8000",
        {"VLLM_USE_V1": "1", "NCCL_DEBUG": "INFO"}, ["vllm", "serve", "m", "--port", "8000"], id="env-prefix"),
    pytest.param(
        "export HF_HOME=/data/hf\nexport VLLM_LOGGING_LEVEL=DEBUG\n\n# the server\nvllm serve m",
        {"HF_HOME": "/data/hf", "VLLM_LOGGING_LEVEL": "DEBUG"}, ["vllm", "serve", "m"], id="exports-then-command"),
    pytest.param(
        "export A=1\nexport A=2 B='two words'\nexec python server.py",
        {"A": "2", "B": "two words"}, ["python", "server.py"], id="later-export-wins-and-exec-dropped"),
    pytest.param(
        "python main.py --listen 0.0.0.0 --port 8188   \\   \n  --highvram",
        {}, ["python", "main.py", "--listen", "0.0.0.0", "--port", "8188", "--highvram"],
        id="backslash-with-trailing-spaces"),
    pytest.param(
        'python -m app --system-prompt "line one\nline two" --port 1',
        {}, ["python", "-m", "app", "--system-prompt", "line one\nline two", "--port", "1"],
        id="quoted-newline"),
]


@pytest.mark.parametrize(("command", "env", "argv"), SIMPLE)
def test_simple_commands_become_argv_and_env_without_a_shell(command, env, argv):
    recipe = server_of(command)
    assert (recipe.env, recipe.argv, recipe.shell) == (env, argv, False)
    assert "nohup" not in recipe.script and "=" not in recipe.script.split()[0]


SHELL = [
    pytest.param(
        "cd ~/ComfyUI && source venv/bin/activate && python main.py --listen 0.0.0.0 --port 8188",
        "cd ~/ComfyUI && source venv/bin/activate && exec python main.py --listen 0.0.0.0 --port 8188",
        ["python", "main.py", "--listen", "0.0.0.0", "--port", "8188"], {}, id="comfyui-cd-source"),
    pytest.param(
        "cd ~/vllm\nsource .venv/bin/activate\nCUDA_VISIBLE_DEVICES=0,1 vllm serve m --tp 2",
        "cd ~/vllm\nsource .venv/bin/activate\nexec vllm serve m --tp 2",
        ["vllm", "serve", "m", "--tp", "2"], {"CUDA_VISIBLE_DEVICES": "0,1"}, id="justfile-style-lines"),
    pytest.param(
        ". .venv/bin/activate; python -m sglang.launch_server --model-path m --port 30000",
        ". .venv/bin/activate; exec python -m sglang.launch_server --model-path m --port 30000",
        ["python", "-m", "sglang.launch_server", "--model-path", "m", "--port", "30000"], {}, id="dot-source"),
    pytest.param(
        "vllm serve $MODEL_DIR --port 8000",
        "exec vllm serve $MODEL_DIR --port 8000", ["vllm", "serve", "$MODEL_DIR", "--port", "8000"], {},
        id="variable-needs-expansion"),
    pytest.param(
        'python -m app --root "${HOME}/models"',
        'exec python -m app --root "${HOME}/models"', ["python", "-m", "app", "--root", "${HOME}/models"], {},
        id="braced-variable-in-double-quotes"),
    pytest.param(
        "python server.py 2>&1 | tee server.log",
        "python server.py 2>&1 | tee server.log", ["tee", "server.log"], {}, id="pipe-gets-no-exec"),
    pytest.param(
        "test -d venv || python -m venv venv\npython serve.py",
        "test -d venv || python -m venv venv\nexec python serve.py", ["python", "serve.py"], {},
        id="setup-line-then-server"),
    pytest.param(
        "env -i PATH=/usr/bin python serve.py",
        "exec env -i PATH=/usr/bin python serve.py", ["python", "serve.py"], {}, id="env-with-options-kept-for-bash"),
]


@pytest.mark.parametrize(("command", "script", "argv", "env"), SHELL)
def test_commands_that_need_a_shell_run_as_a_bash_script(command, script, argv, env):
    recipe = server_of(command)
    assert recipe.shell
    assert recipe.script == script
    assert recipe.argv == argv
    assert recipe.env == env


def test_console_blocks_keep_only_the_prompt_lines():
    recipe = server_of("$ vllm serve m \\\n    --port 8000\nINFO: Started server process", lang="console")
    assert recipe.argv == ["vllm", "serve", "m", "--port", "8000"]


@pytest.mark.parametrize(("argv_text", "names", "value"), [
    ("vllm serve m --port 8000", ("--port", "-p"), "8000"),
    ("vllm serve m --port=8001", ("--port", "-p"), "8001"),
    ("llama-server -m x.gguf -p 8080 --port 9090", ("--port", "-p"), "9090"),
    ("vllm serve m", ("--port",), None),
    ("vllm serve m --port", ("--port",), None),
])
def test_option_reads_the_last_value_in_either_spelling(argv_text, names, value):
    assert server_of(argv_text).option(*names) == value


def test_line_points_at_the_command_not_the_fence():
    text = md("""
        # notes
        ## Server
        ```bash
        # comment
        export A=1

        python serve.py
        ```
    """)
    assert parse_recipes(text, "f.md").server().line == 7


# ---------------------------------------------------------------- which block is what

def test_shipped_agents_file_has_server_load_test_and_smoke_blocks():
    recipes = load_recipes("AGENTS.local.md")
    server = recipes.server()
    assert server.argv[:3] == ["python", "-m", "gpuops.demo"]
    assert "GPUOPS_DEMO_LOAD_SECONDS" in server.env and not server.shell
    assert "--users" in recipes.load_test_args
    assert "haiku" in recipes.smoke_presets


def test_named_server_headings_give_named_recipes_in_file_order():
    text = md("""
        # How this box runs
        ## Setup
        ```bash
        pip install vllm
        ```
        ## Server (vLLM 8B)
        ```bash
        vllm serve Qwen/Qwen3-8B --port 8000
        ```
        ## Vision server
        ```bash
        vllm serve Qwen/Qwen2.5-VL-7B --port 8001
        ```
        ## Server: embed
        ```sh
        vllm serve BAAI/bge-m3 --port 8002
        ```
    """)
    recipes = parse_recipes(text)
    assert list(recipes.servers) == ["vllm-8b", "vision", "embed"]
    assert recipes.server(None).name == "vllm-8b"
    assert recipes.server("vision").option("--port") == "8001"
    assert recipes.server("vision").title == "Vision server"


def test_first_untitled_block_is_the_server_when_no_heading_names_one():
    text = md("""
        # My notes
        Some text.
        ```python
        print("not this")
        ```
        ```bash
        python -m app --port 1234
        ```
        ```bash
        echo second block ignored
        ```
    """)
    assert parse_recipes(text).server().argv == ["python", "-m", "app", "--port", "1234"]


def test_a_page_title_that_mentions_a_server_does_not_name_a_recipe():
    text = "# AGENTS.local.md - how this machine runs its inference server\n```bash\nvllm serve m\n```\n"
    assert list(parse_recipes(text).servers) == ["server"]


def test_load_test_block_gives_flags_and_accepts_a_pasted_command():
    text = md("""
        ## Load test
        ```bash
        inv load-test --users 8 \\
          --run-time 30s   # half a minute
        --max-tokens 128
        ```
    """)
    assert parse_recipes(text).load_test_args == ["--users", "8", "--run-time", "30s", "--max-tokens", "128"]


def test_smoke_block_gives_presets():
    text = '## Smoke presets\n```json\n{"long": {"prompt": "Tell a story", "max_tokens": 512}}\n```\n'
    assert parse_recipes(text).smoke_presets == {"long": {"prompt": "Tell a story", "max_tokens": 512}}


def test_unknown_server_name_lists_the_known_ones():
    with pytest.raises(RecipeError, match="no server recipe named 'nope'") as err:
        parse_recipes("## Server\n```bash\nvllm serve m\n```\n").server("nope")
    assert "known: server" in err.value.hint


# ---------------------------------------------------------------- errors name file and line

ERRORS = [
    pytest.param("# Notes\nno code here\n", "no ```bash block found", None, id="no-bash-block"),
    pytest.param("## Load test\n```bash\n--users 2\n```\n", "no server block found", None, id="no-server-block"),
    pytest.param("## Server\n```bash\n# just a comment\n\nexport A=1\n```\n", "holds no command", 2,
                 id="empty-command"),
    pytest.param("## Server\n```bash\n\npython -m app --name 'oops\n```\n", "unbalanced ' quote", 4,
                 id="unbalanced-single-quote"),
    pytest.param('## Server\n```bash\nA="x python app.py\n```\n', 'unbalanced " quote', 3,
                 id="unbalanced-double-quote"),
    pytest.param("## Server\n```bash\nvllm serve m \\\n  --port 8000 \\\n```\n", "dangling", 4,
                 id="dangling-backslash"),
    pytest.param("intro\n\n## Server\n```bash\nvllm serve m\n", "never closed", 4, id="unterminated-fence"),
    pytest.param("## Server\n```bash\nnohup vllm serve m > server.log 2>&1 &\n```\n", "ends with `&`", 3,
                 id="backgrounded-command"),
    pytest.param("## Server\n```bash\na\n```\n## Server\n```bash\nb\n```\n", "two server recipes", 5,
                 id="duplicate-names"),
    pytest.param("## Smoke\n```json\n{\"a\": {\"prompt\": \"x\",}}\n```\n", "not valid JSON", 3, id="bad-json"),
    pytest.param("## Smoke\n```json\n[1, 2]\n```\n", "JSON object of objects", 3, id="json-not-an-object"),
]


@pytest.mark.parametrize(("text", "message", "line"), ERRORS)
def test_bad_input_raises_recipe_error_with_file_and_line(text, message, line):
    with pytest.raises(RecipeError) as err:
        parse_recipes(text, "AGENTS.local.md").server()
    assert message in err.value.message
    assert err.value.line == line
    prefix = f"AGENTS.local.md:{line}: " if line else "AGENTS.local.md: "
    assert err.value.message.startswith(prefix)
    assert err.value.hint


def test_missing_file_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(RecipeError, match="AGENTS.local.md not found") as err:
        load_recipes(tmp_path / "AGENTS.local.md")
    assert str(tmp_path) in err.value.message
    assert "--agents-file" in err.value.hint


def test_a_directory_is_not_an_agents_file(tmp_path):
    with pytest.raises(RecipeError, match="is a directory"):
        load_recipes(tmp_path)


def test_recipes_are_read_fresh_on_every_load(tmp_path):
    path = tmp_path / "AGENTS.local.md"
    path.write_text("```bash\nvllm serve a\n```\n")
    assert load_recipes(path).server().argv[-1] == "a"
    path.write_text("```bash\nvllm serve b\n```\n")
    assert load_recipes(path).server().argv[-1] == "b"


# ---------------------------------------------------------------- secrets

def test_display_masks_secret_env_values_and_secret_flags():
    recipe = server_of("HF_TOKEN=hf_verysecret OPENAI_API_KEY=sk-live-123 MAX_TOKENS=64 "
                       "vllm serve m --api-key sk-flag-456 --hf-token=hf_flag --max-tokens 64")
    shown = recipe.display()
    for secret in ("hf_verysecret", "sk-live-123", "sk-flag-456", "hf_flag"):
        assert secret not in shown
    assert "export HF_TOKEN=****" in shown and "--api-key ****" in shown and "--hf-token=****" in shown
    assert "export MAX_TOKENS=64" in shown and "--max-tokens 64" in shown
    assert "hf_verysecret" in recipe.display(mask=False)


def test_mask_secrets_hides_values_wherever_they_appear():
    env = {"DB_PASSWORD": "pa55word!", "WANDB_API_KEY": "wandb-xyz", "PORT": "8000"}
    text = "connecting with pa55word! and wandb-xyz on 8000 --secret=s3cr3t"
    assert mask_secrets(text, env) == "connecting with **** and **** on 8000 --secret=****"


def test_shell_recipe_display_masks_secrets_in_the_script():
    recipe = server_of("cd app && HF_TOKEN=hf_inline_secret uvicorn main:app --api-key sk-zzz")
    shown = recipe.display()
    assert "sk-zzz" not in shown and "--api-key ****" in shown


# ---------------------------------------------------------------- fuzzing: RecipeError or a result, nothing else

BASHY = st.sampled_from([
    "vllm serve m", "--port 8000", "\\", "'", '"', "A=1", "export B=2", "&&", "|", "#", "cd ~/x", "$X", "${Y}",
    "`", "$(", ")", ";", "&", "env", "-i", "exec", "\t", " ", "```", "~~~", "## Server", "## Load test",
    "## Smoke", "```json", "{", "}", "\n", "=", "nohup", "source", ".", "2>&1", ">", "<",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_fuzz_arbitrary_text_never_raises_anything_but_recipe_error(text):
    try:
        recipes = parse_recipes(text)
        for name in recipes.servers:
            recipes.server(name).display()
    except RecipeError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(BASHY, max_size=12).map(" ".join), max_size=6),
       st.sampled_from(["## Server", "## Load test", "## Smoke", "", "## Server: x"]),
       st.sampled_from(["bash", "sh", "console", "json"]))
def test_fuzz_bash_like_blocks_never_raise_anything_but_recipe_error(lines, heading, lang):
    text = f"{heading}\n```{lang}\n" + "\n".join(lines) + "\n```\n"
    try:
        recipes = parse_recipes(text)
        for name in recipes.servers:
            recipe = recipes.server(name)
            recipe.display()
            assert recipe.script.strip()
            assert recipe.shell or recipe.argv
    except RecipeError as err:
        assert err.line is None or err.line >= 1
