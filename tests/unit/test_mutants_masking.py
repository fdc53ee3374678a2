"""Tests that kill surviving mutants (docs/development.md, "Mutation testing"): masking.

Secrets inside command substitutions (`$(...)`, backticks) keep the substitution as written; a
secret found once (a URL's password, a token as a URL's user) is masked wherever else it appears.
"""

from __future__ import annotations

import pytest

from gpuops.server.recipes import mask_argv, mask_secrets


@pytest.mark.parametrize(("text", "masked"), [
    ("A=$(curl --api-key sk-12345678 x) run", "A=$(curl --api-key **** x) run"),
    ("A=`curl --api-key sk-12345678 x` run", "A=`curl --api-key **** x` run"),
    ("A=pre$(curl --api-key sk-12345678 x)post run", "A=pre$(curl --api-key **** x)post run"),
    ("A=$(cat $(curl --api-key sk-12345678 x)) run", "A=$(cat $(curl --api-key **** x)) run"),
    ("A=$(a)`curl --token tk-12345678 y` run", "A=$(a)`curl --token **** y` run"),
    ('A="$(curl -H "Authorization: Bearer sk-abcdef12" x)" run',
     """A="$(curl -H 'Authorization: Bearer ****' x)" run"""),
    ("A=$(curl --api-key sk-12345678 x) run; echo sk-12345678", "A=$(curl --api-key **** x) run; echo ****"),
])
def test_a_secret_inside_a_command_substitution_is_masked_and_the_substitution_kept(text, masked):
    assert mask_secrets(text) == masked
    assert mask_secrets(masked) == masked


def test_a_substitution_in_a_joined_argv_is_masked_inside():
    assert mask_argv(["bash", "-c", "X=$(curl --api-key sk-12345678 u) run"]) == \
        "bash -c 'X=$(curl --api-key **** u) run'"


def test_a_urls_password_is_masked_wherever_else_it_appears():
    assert mask_secrets("curl https://me:pw123456@host/v1; echo pw123456") == \
        "curl https://me:****@host/v1; echo ****"


@pytest.mark.parametrize(("user", "masked"), [
    ("ghp_abcdefghijkl", True),  # 16 characters: a token standing as the user
    ("ghp_abcdefghijk", False),  # 15: a user name
])
def test_a_long_user_alone_in_a_url_is_a_token(user, masked):
    text = f"git clone https://{user}@github.com/x; echo {user}"
    expected = "git clone https://****@github.com/x; echo ****" if masked else text
    assert mask_secrets(text) == expected


@pytest.mark.parametrize("value", ["|#secret1", ")x0", "ab;cd"])
def test_a_secret_with_operators_or_a_hash_glued_to_it_is_masked_up_to_the_next_space(value):
    assert mask_argv(["vllm", "--api-key", value, "--port", "1"]) == "vllm --api-key **** --port 1"


def test_a_script_after_a_dash_c_with_capital_options_is_judged_word_by_word():
    # `bash -Ec '...'` is shell text: only the secret goes, not the rest of the script
    assert mask_secrets("bash -Ec 'HF_TOKEN=hf_abc123 run --port 1'") == "bash -Ec 'HF_TOKEN=**** run --port 1'"


def test_a_name_the_secret_pattern_knows_is_secret_whatever_its_last_word():
    from gpuops.server.recipes import is_secret_name

    assert is_secret_name("CREDENTIALS_JSON") and is_secret_name("GH_TOKEN_VALUE")


@pytest.mark.parametrize(("argv", "shown"), [
    (["vllm", "--api-key", "k1", "--port", "8000"], "vllm --api-key **** --port 8000"),
    (["vllm", "serve", "m", "--api-key", "k1"], "vllm serve m --api-key ****"),
    (["x", "y", "z", "--token=k2", "w"], "x y z --token=**** w"),
])
def test_a_short_secret_in_an_argv_is_masked_where_it_stands(argv, shown):
    # shorter than 6 characters: not replaced everywhere afterwards, so its own position must be right
    assert mask_argv(argv) == shown


def test_an_assignment_holding_shell_text_is_masked_inside_and_one_without_a_secret_is_left_as_written():
    assert mask_secrets("A='curl --api-key k1 x' run") == "A='curl --api-key **** x' run"
    for text in ('A="x y" run', 'CUDA_VISIBLE_DEVICES="0,1" vllm serve m'):
        assert mask_secrets(text) == text  # not re-quoted
