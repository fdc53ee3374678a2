"""Secrets never in clear: masking by meaning in shell text and argv, and in every view of a recipe.

Each family of the issue (assignments anywhere, secret flags in both forms, headers, URLs) has rows
here; the property tests build recipes in every supported form around a generated secret and look
for it in what the terminal, the log header and the state record get.
"""

from __future__ import annotations

import shlex
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpuops.server import engines
from gpuops.server.launch import endpoint_of, launch_banner, log_header
from gpuops.server.recipes import MASK, is_secret_key, is_secret_name, mask_argv, mask_secrets, parse_recipes


def server_of(command: str):
    return parse_recipes(f"## Server\n\n```bash\n{command}\n```\n", "AGENTS.local.md").server()


# ---------------------------------------------------------------- families, table-driven

HIDDEN = [
    # assignments at any position of any command of a shell script
    ("cd /srv && HF_TOKEN=hf_cd_secret vllm serve m", "hf_cd_secret", "cd /srv && HF_TOKEN=**** vllm serve m"),
    ("source .venv/bin/activate && OPENAI_API_KEY=sk-src-secret python -m app",
     "sk-src-secret", "source .venv/bin/activate && OPENAI_API_KEY=**** python -m app"),
    ("export HF_TOKEN=hf_semicolon; vllm serve m", "hf_semicolon", "export HF_TOKEN=****; vllm serve m"),
    ("export HF_TOKEN=hf_andand && vllm serve m", "hf_andand", "export HF_TOKEN=**** && vllm serve m"),
    ("HF_TOKEN=hf_piped vllm serve m 2>&1 | tee server.log", "hf_piped", "HF_TOKEN=**** vllm serve m 2>&1 | tee"),
    ("env -u X HF_TOKEN=hf_env_u vllm serve m", "hf_env_u", "env -u X HF_TOKEN=**** vllm"),
    ("declare -x HF_TOKEN=hf_declared; exec vllm serve m", "hf_declared", "declare -x HF_TOKEN=****;"),
    ("docker run -e HF_TOKEN=hf_docker_e img", "hf_docker_e", "-e HF_TOKEN=****"),
    ("docker run --env=HF_TOKEN=hf_docker_env img", "hf_docker_env", "--env=HF_TOKEN=****"),
    ("DB_PASSWORD='two words' ./serve", "two words", "DB_PASSWORD=**** ./serve"),
    ("env 'DB_PASSWORD=a;b c' ./serve", "a;b c", "env DB_PASSWORD=**** ./serve"),
    ("HF_TOKEN=ab'cd'\"ef\" vllm serve", "abcdef", "HF_TOKEN=****"),
    ("HF_TOKEN+=hf_appended vllm serve", "hf_appended", "HF_TOKEN+=****"),
    ("MYSQL_PWD=hunter22 ./serve", "hunter22", "MYSQL_PWD=****"),
    ("HF_TOKEN=$(cat /run/secrets/hf_subst) vllm", "/run/secrets/hf_subst", "HF_TOKEN=**** vllm"),
    ("bash -c 'HF_TOKEN=hf_nested vllm serve m'", "hf_nested", "bash -c 'HF_TOKEN=**** vllm serve m'"),
    ("sh -lc \"export HF_TOKEN=hf_nested2; exec vllm serve\"", "hf_nested2", "export HF_TOKEN=****; exec vllm"),
    ("vllm serve m  # HF_TOKEN=hf_in_comment", "hf_in_comment", "# HF_TOKEN=****"),
    # secret flags, both forms, a broader rule than a list
    ("vllm serve m --api-key sk-flag-1 --port 8000", "sk-flag-1", "--api-key **** --port 8000"),
    ("vllm serve m --api-key=sk-flag-2", "sk-flag-2", "--api-key=****"),
    ("server --api-keys key-one key-two --port 1", "key-two", "--api-keys **** **** --port 1"),
    ("server --hf-token hf_flag_3", "hf_flag_3", "--hf-token ****"),
    ("server --password 'p w d'", "p w d", "--password ****"),
    ("server --client-secret cs_value", "cs_value", "--client-secret ****"),
    ("server --db-pass dbpass99", "dbpass99", "--db-pass ****"),
    ("server --auth-token=at_value", "at_value", "--auth-token=****"),
    ("server --apiKey camel_value", "camel_value", "--apiKey ****"),
    ("curl -u admin:pa55word http://h", "pa55word", "-u admin:**** http://h"),
    # headers
    ("server --header 'Authorization: Bearer sk-hdr-1'", "sk-hdr-1", "'Authorization: Bearer ****'"),
    ("curl -H \"X-Api-Key: xkey-123\" http://h", "xkey-123", "X-Api-Key: ****"),
    ("curl -H 'Cookie: session=sess-abc' http://h", "sess-abc", "Cookie: ****"),
    ("server --headers '{\"Authorization\": \"Bearer sk-json-1\"}'", "sk-json-1", "Bearer ****"),
    ("server --hf-overrides '{\"token\": \"tok-json\"}'", "tok-json", '"token": "****"'),
    # credentials in URLs
    ("server --upstream https://alice:url-pass@host/v1", "url-pass", "https://alice:****@host/v1"),
    ("HF_ENDPOINT=https://bob:mirror-pass@mirror vllm serve m", "mirror-pass", "https://bob:****@mirror"),
    ("git clone https://ghp_abcdefghijklmnop1234@github.com/x", "ghp_abcdefghijklmnop1234", "https://****@github"),
    ("server --url 'http://h/v1?api_key=q-secret&x=1'", "q-secret", "?api_key=****&x=1"),
]


@pytest.mark.parametrize("text, secret, shown", HIDDEN, ids=[row[1] for row in HIDDEN])
def test_mask_secrets_hides_each_family(text, secret, shown):
    masked = mask_secrets(text)
    assert secret not in masked
    assert shown in masked


KEPT = [
    "vllm serve m --max-tokens 64 --tokenizer t --max-num-batched-tokens 8192 --port 8000",
    "MAX_TOKENS=64 TOKENIZERS_PARALLELISM=false vllm serve m",
    "uvicorn app:app --ssl-keyfile /etc/ssl/key.pem --ssl-certfile /etc/ssl/cert.pem",
    "server --token-file /run/token --enable-auth --port 9000",
    "cd \"$PWD\" && echo $HF_TOKEN",
    "ssh://git@github.com/x https://host:8443/v1?model=m",
    "curl -H 'Content-Type: application/json' http://127.0.0.1:8000/health",
]


@pytest.mark.parametrize("text", KEPT)
def test_mask_secrets_leaves_what_is_no_secret(text):
    assert mask_secrets(text) == text


def test_a_reference_in_a_secret_place_is_masked_too():
    """In a process's argv a `$` is no reference: `--api-key $abc` may be the key itself."""
    assert mask_secrets('vllm serve m --api-key "$OPENAI_API_KEY"') == "vllm serve m --api-key ****"
    assert mask_argv(["vllm", "--api-key", "$A0000000"]) == "vllm --api-key ****"


def test_secret_flag_without_a_value_masks_nothing_after_it():
    assert mask_secrets("server --auth --port 80 && next") == "server --auth --port 80 && next"
    assert mask_secrets("server --api-key; vllm") == "server --api-key; vllm"


def test_a_secret_found_once_is_masked_wherever_else_it_appears():
    masked = mask_secrets("export HF_TOKEN=hf_twice_seen; echo hf_twice_seen > /tmp/x")
    assert "hf_twice_seen" not in masked


def test_values_of_secret_env_are_masked_wherever_they_appear():
    env = {"DB_PASSWORD": "pa55word!", "WANDB_API_KEY": "wandb-xyz", "PORT": "8000"}
    assert mask_secrets("with pa55word! and wandb-xyz on 8000", env) == "with **** and **** on 8000"


def test_masking_is_idempotent():
    for text, _secret, _shown in HIDDEN:
        once = mask_secrets(text)
        assert mask_secrets(once) == once


@pytest.mark.parametrize("name, secret", [
    ("HF_TOKEN", True), ("OPENAI_API_KEY", True), ("AWS_SECRET_ACCESS_KEY", True), ("MYSQL_PWD", True),
    ("GH_PASSPHRASE", True), ("SESSION_COOKIE", True),
    ("MAX_TOKENS", False), ("TOKENIZERS_PARALLELISM", False), ("PWD", False), ("OLDPWD", False),
    ("CUDA_VISIBLE_DEVICES", False),
])
def test_is_secret_name(name, secret):
    assert is_secret_name(name) is secret


@pytest.mark.parametrize("name, secret", [
    ("--api-key", True), ("--api-keys", True), ("--token", True), ("--hf-token", True), ("--password", True),
    ("--secret", True), ("--auth", True), ("-api-key", True), ("access_token", True), ("Authorization", True),
    ("--max-tokens", False), ("--tokenizer", False), ("--ssl-keyfile", False), ("--token-file", False),
    ("--no-auth", False), ("--enable-auth", False), ("--port", False), ("--served-model-name", False),
])
def test_is_secret_key(name, secret):
    assert is_secret_key(name) is secret


# ---------------------------------------------------------------- a process's argv (inv gpus, port owners, stop)

@pytest.mark.parametrize("argv, secret", [
    (["vllm", "serve", "m", "--api-key", "sk-argv-1"], "sk-argv-1"),
    (["bash", "-c", "HF_TOKEN=hf_argv_c exec vllm serve m"], "hf_argv_c"),
    (["bash", "-c", "export HF_TOKEN='a b'; exec vllm serve m"], "a b"),
    (["curl", "-H", "Authorization: Bearer sk-argv-h", "http://h"], "sk-argv-h"),
    (["docker", "run", "-e", "DB_PASSWORD=with space", "img"], "with space"),
    (["python", "app.py", "--name", "it's", "--token", "tok-after-quote"], "tok-after-quote"),
])
def test_mask_argv_and_joined_argv_hide_the_secret(argv, secret):
    assert secret not in mask_argv(argv)
    assert secret not in mask_secrets(" ".join(argv))  # what procs.command_of and inventory show today


def test_mask_argv_keeps_words_as_they_are():
    argv = ["python", "-m", "app", "--served-model-name", "it's mine", "--port", "8000"]
    assert mask_argv(argv) == " ".join(argv)


# ---------------------------------------------------------------- every view of a recipe, property-based

ENV_NAMES = st.sampled_from(["HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                             "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MY_SERVICE_SECRET"])
FLAGS = st.sampled_from(["--api-key", "--api-keys", "--token", "--hf-token", "--password", "--secret",
                         "--auth-token", "--client-secret", "--access-token"])
# any printable text a secret may hold (quoted where it stands), and the narrower alphabet of tokens
# that stand unquoted in headers and URLs
ANY_SECRET = st.text(alphabet=string.ascii_letters + string.digits + " -_.~+/=!%@:,^#$;&|'\"()*?[]{}<>\\`",
                     min_size=8, max_size=32)
TOKEN_SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=8, max_size=32)

# every supported form: {N} a secret variable name, {F} a secret flag, {S} the secret, shell-quoted
FORMS = [
    "{N}={S} vllm serve m --port 8000",
    "{N}={S} CUDA_VISIBLE_DEVICES=0 python -m app --port 8000",
    "cd /srv && {N}={S} vllm serve m",
    "source .venv/bin/activate && {N}={S} python -m app",
    "export {N}={S}\nvllm serve m",
    "export {N}={S}; vllm serve m",
    "export {N}={S} && vllm serve m",
    "export A=1 {N}={S} && vllm serve m",
    "env {N}={S} vllm serve m",
    "env -i PATH=/bin {N}={S} vllm serve m",
    "declare -x {N}={S}; vllm serve m",
    "{N}={S} vllm serve m 2>&1 | tee server.log",
    "cd /srv && vllm serve m --port 8000 | tee x.log && {N}={S} true",
    "vllm serve m {F} {S} --port 8000",
    "vllm serve m {F}={S}",
    "cd /srv && vllm serve m {F} {S} | tee server.log",
    "docker run -e {N}={S} img",
    "bash -c {SCRIPT}",
    "python -m app --header {HEADER}",
    "python -m app --upstream https://user:{T}@upstream.example/v1",
    "python -m app --header 'Authorization: Bearer {T}'",
    "curl -fsS -H \"Authorization: Bearer {T}\" http://127.0.0.1:1/x; vllm serve m",
]


def _render(form: str, name: str, flag: str, secret: str, token: str) -> str:
    quoted = shlex.quote(secret)
    return form.format(N=name, F=flag, S=quoted, T=token,
                       SCRIPT=shlex.quote(f"export {name}={quoted}; exec vllm serve m"),
                       HEADER=shlex.quote(f"Authorization: Bearer {token}"))


def _views(recipe) -> dict[str, str]:
    """What the terminal, the log header and the state record get of a recipe, by the code that writes them."""
    ep = endpoint_of(recipe, engines.detect(recipe.argv))
    return {
        "terminal": "\n".join(launch_banner(recipe, ep)),
        "log header": log_header(recipe, Path("/srv"), ep),
        "state record": mask_secrets(recipe.script, recipe.env),  # launch.launch_recorded's `command`
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), name=ENV_NAMES, flag=FLAGS, secret=ANY_SECRET, token=TOKEN_SECRET)
@example(form=FORMS[0], name="HF_TOKEN", flag="--token", secret="a'b\"c d$e", token="tok12345")
def test_no_view_of_a_recipe_shows_its_secret(form, name, flag, secret, token):
    assume(not secret.startswith("-") and secret.strip() == secret and MASK not in secret)
    hidden = token if "{T}" in form or "{HEADER}" in form else secret
    # not a word that the command or the views hold anyway ("serve", the host name)
    plain = _views(server_of(_render(form, name, flag, "PLACEHOLDER", "PLACEHOLDER")))
    assume(all(hidden not in shown for shown in plain.values()))
    for view, shown in _views(server_of(_render(form, name, flag, secret, token))).items():
        assert hidden not in shown, f"{view} shows the secret:\n{shown}"


@settings(max_examples=200, deadline=None)
@given(flag=FLAGS, name=ENV_NAMES, secret=ANY_SECRET, token=TOKEN_SECRET)
def test_no_process_command_line_shows_its_secret(flag, name, secret, token):
    """inv gpus, port owners and stop reports show a process's argv; the same secrets are hidden there
    (by mask_argv; and by mask_secrets on the argv joined by spaces, as long as that is unambiguous)."""
    assume(not secret.startswith("-") and secret.strip() == secret and MASK not in secret)
    assume(secret not in f"vllm serve m --port 8000 bash -c exec {flag} {name} Authorization Bearer")
    assume(token not in f"vllm serve m --port 8000 bash -c exec {flag} {name} Authorization Bearer https user")
    for argv in (["vllm", "serve", "m", flag, secret, "--port", "8000"],
                 ["vllm", "serve", "m", f"{flag}={secret}"],
                 ["bash", "-c", f"export {name}={shlex.quote(secret)}; exec vllm serve m"],
                 ["bash", "-c", f"{name}={shlex.quote(secret)} vllm serve m | tee x.log"],
                 ["python", "-m", "app", "--header", f"Authorization: Bearer {token}"],
                 ["python", "-m", "app", "--upstream", f"https://user:{token}@host/v1"]):
        secret_in = token if token in " ".join(argv) else secret
        assert secret_in not in mask_argv(argv), argv
        if " " not in secret_in or argv[0] == "bash":  # joined by spaces, `--api-key a b` is ambiguous
            assert secret_in not in mask_secrets(" ".join(argv)), argv


def test_a_secret_found_inside_quotes_is_masked_where_it_appears_again_without_them():
    from gpuops.server.recipes import mask_secrets

    masked = mask_secrets("""echo "--token='hf_x123456'" hf_x123456""")
    assert "hf_x123456" not in masked, masked
