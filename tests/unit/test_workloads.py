"""Workload parts of `load-test` as pure functions: length distributions, token calibration, salts,
datasets, the context check, the fail-fast rule, and the flags that choose them."""

from __future__ import annotations

import json
import random
import sys
from types import SimpleNamespace

import pytest

from gpuops.errors import UsageError
from gpuops.probes.loadtest import options, prompts, tokenize, workloads
from gpuops.probes.loadtest.lengths import LengthError, Lengths, parse

# ---------------------------------------------------------------- lengths


@pytest.mark.parametrize(("text", "spec", "low", "high"), [
    ("128", 128, 128, 128),
    ("fixed:64", 64, 64, 64),
    (" uniform:10,20 ", "uniform:10,20", 10, 20),
    ("normal:100,10", "normal:100,10", 1, 140),
    ("normal:5,0", "normal:5,0", 1, 5),
])
def test_length_specs_parse_to_their_bounds(text, spec, low, high):
    d = Lengths.of(text)
    assert parse(text) == spec and (d.low, d.high) == (low, high)


@pytest.mark.parametrize("text", ["0", "-5", "abc", "uniform:20,10", "uniform:1.5,3", "normal:0,3", "fixed:",
                                  "poisson:3,4", "uniform:3"])
def test_bad_length_specs_are_refused(text):
    with pytest.raises(LengthError):
        Lengths.of(text)


@pytest.mark.parametrize("spec", ["uniform:3,9", "normal:20,15", "normal:2,50"])
def test_samples_stay_within_bounds_and_repeat_with_the_seed(spec):
    d = Lengths.of(spec)
    rng_a, rng_b = random.Random(5), random.Random(5)
    a = [d.sample(rng_a) for _ in range(500)]
    b = [d.sample(rng_b) for _ in range(500)]
    assert a == b
    assert all(d.low <= x <= d.high for x in a) and len(set(a)) > 1


# ---------------------------------------------------------------- calibration and salts


def bpe_like(long_words_two_tokens: bool = True, bos: int = 1):
    """A tokenizer stand-in: BOS, one token per word, two for words longer than 5 letters."""
    calls = []

    def count(text: str) -> int:
        calls.append(text)
        return bos + sum(2 if long_words_two_tokens and len(w) > 5 else 1 for w in text.split())
    return count, calls


def test_calibration_keeps_the_single_token_words_and_finds_the_bos():
    count, calls = bpe_like()
    cal = tokenize.calibrate(count, prompts.VOCABULARY, "test")
    assert cal.overhead == 1
    assert cal.words and all(len(w) <= 5 for w in cal.words)
    assert set(cal.words) == {w for w in prompts.VOCABULARY if len(w) <= 5}


def test_calibration_asks_a_few_dozen_questions_when_most_words_are_one_token():
    calls = []

    def count(text: str) -> int:
        calls.append(text)
        return 1 + sum(2 if w in ("morning", "garden") else 1 for w in text.split())

    cal = tokenize.calibrate(count, prompts.VOCABULARY)
    assert set(cal.costs) == set(prompts.VOCABULARY) - {"morning", "garden"}
    assert len(calls) < 60  # halving finds the two, instead of one question a word


def test_calibration_gives_up_on_a_tokenizer_unlike_the_words():
    assert tokenize.calibrate(lambda text: 3 * len(text.split()), prompts.VOCABULARY) is None


def small_vocabulary(text: str) -> int:
    """A test model's 512-token tokenizer: a few words are one token, the rest cost a token per 2 letters."""
    return sum(1 if w in ("the", "of", "and", "in", "is") else (len(w) + 1) // 2 for w in text.split())


@pytest.mark.parametrize("count", [bpe_like()[0], small_vocabulary], ids=["big-vocabulary", "small-vocabulary"])
def test_prompts_built_from_a_calibration_have_the_exact_count(count):
    cal = tokenize.calibrate(count, prompts.VOCABULARY)
    assert cal is not None
    maker = prompts.PromptMaker(3, cal.as_dict(), shared_prefix_tokens=20)
    prompts_made = set()
    for n in (21, 22, 50, 333, 1000):
        for use_prefix in (False, True):
            text = maker.make(n, maker.salt("run1", 2, n), use_prefix)
            assert count(text) == n, (n, use_prefix)
            prompts_made.add(text)
    assert len(prompts_made) == 10


def test_the_small_vocabulary_is_costed_word_by_word():
    cal = tokenize.calibrate(small_vocabulary, prompts.VOCABULARY)
    assert cal.costs["river"] == 3 and cal.costs["the"] == 1 and cal.one == "the"


def test_token_salts_are_unique_per_request_and_worker():
    words = [f"w{i}" for i in range(40)]
    salts = {tuple(prompts.token_salt("r", w, seq, words, ["s"])) for w in range(4) for seq in range(1, 3000)}
    assert len(salts) == 4 * 2999
    assert {len(s) for s in salts} == {1 + prompts.SALT_DIGITS}


def test_server_counter_detects_the_llama_cpp_shape_when_vllms_is_refused():
    def post(url, body, timeout):
        if "content" in body:
            return {"tokens": [1] * len(body["content"].split())}
        return None  # vLLM's shape refused

    counter = tokenize.server_counter("http://x", "m", post=post, get=lambda url, t: (405, "uvicorn"))
    assert "llama.cpp" in counter.source and counter.count("a b c") == 3
    assert tokenize.server_counter("http://x", "m", post=lambda *a: None, get=lambda url, t: (405, "")) is None


@pytest.mark.parametrize(("engine", "get", "shapes"), [
    ("vllm", None, ("vllm",)),
    ("llama.cpp", None, ("llama.cpp",)),
    ("openai", (405, "uvicorn"), ("vllm", "llama.cpp")),  # FastAPI's answer to GET on a POST-only route
    ("openai", (404, "llama.cpp"), ("llama.cpp",)),  # llama-server answers 404, and names itself
    ("openai", (404, "BaseHTTP/0.6"), ()),  # no such route: nothing is POSTed there
    ("openai", (200, ""), ()),
    ("openai", (None, ""), ()),
])
def test_tokenize_shapes_are_only_posted_where_the_route_exists(engine, get, shapes):
    def fake_get(url, timeout):
        assert get is not None, "a known engine needs no probe"
        return get

    assert tokenize.shapes_to_try("http://x", engine, fake_get) == shapes


def test_a_local_tokenizer_without_the_packages_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError) as err:
        tokenize.local_counter("Qwen/Qwen3-8B")
    assert "neither the 'tokenizers' nor the 'transformers' package" in str(err.value)
    assert "pip install tokenizers" in err.value.hint


# ---------------------------------------------------------------- datasets


def test_jsonl_rows_are_prompts_or_messages_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"prompt": "hi", "output_tokens": 5}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n')
    assert workloads.load_dataset(str(good)) == [{"prompt": "hi", "output_tokens": 5},
                                                 {"messages": [{"role": "user", "content": "yo"}]}]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "hi"}\nnot json\n')
    with pytest.raises(UsageError, match="line 2 is not JSON"):
        workloads.load_dataset(str(bad))
    with pytest.raises(UsageError, match="no such file"):
        workloads.load_dataset(str(tmp_path / "missing.jsonl"))


def test_sharegpt_takes_the_first_human_turn_and_skips_the_rest(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}]},
                                {"conversations": [{"from": "human", "value": "alone"}]}]))
    assert workloads.load_dataset(str(path)) == [{"prompt": "Q1", "reply": "A1"}]


def test_the_shipped_dataset_loads():
    rows = workloads.load_dataset("builtin")
    assert len(rows) >= 100 and any("messages" in r for r in rows)


def test_select_filters_by_length_shuffles_by_seed_and_caps():
    rows = [{"prompt": "w " * n} for n in range(1, 50)] + [{"messages": [{"role": "user", "content": "x"}]}]
    chosen, skipped = workloads.select(rows, api="completion", count=lambda t: len(t.split()), seed=1,
                                       max_prompts=None, min_tokens=10, max_tokens=20)
    assert sorted(r["prompt_tokens"] for r in chosen) == list(range(10, 21))
    assert skipped == {"chat messages (need --chat)": 1, "outside the length filter": 38}
    again, _ = workloads.select(rows, api="completion", count=lambda t: len(t.split()), seed=1, max_prompts=3,
                                min_tokens=10, max_tokens=20)
    assert again == chosen[:3]


# ---------------------------------------------------------------- the context check and failing fast


def _opts(**kw):
    return options.build_options(options.merge({}, kw))


def test_the_context_check_names_what_to_lower():
    with pytest.raises(UsageError) as err:
        workloads.check_context(_opts(prompt_tokens="uniform:100,500", max_tokens="64"), 512, [], "tokens")
    assert "needs 564 tokens" in str(err.value) and "context length is 512" in str(err.value)
    assert "--prompt-tokens or --max-tokens" in err.value.hint
    workloads.check_context(_opts(prompt_tokens="448", max_tokens="64"), 512, [], "tokens")  # fits exactly
    with pytest.raises(UsageError, match="times 3 turns"):
        workloads.check_context(_opts(prompt_tokens="100", max_tokens="64", turns="3", api="chat"), 400, [], "tokens")


def _rec(ok=False, kind="http", status=400, error="HTTP 400: too long", cancelled=False):
    return {"ok": ok, "error_kind": None if ok else kind, "status": status, "error": None if ok else error,
            "cancelled": cancelled}


@pytest.mark.parametrize(("records", "ok_so_far", "users", "stops"), [
    ([_rec()] * 3, 0, 1, True),
    ([_rec()] * 2, 0, 1, False),  # too few yet
    ([_rec()] * 3, 0, 4, False),  # 4 users: wait for 4
    ([_rec()] * 4, 0, 4, True),
    ([_rec(), _rec(ok=True), _rec(), _rec()], 0, 1, False),  # one succeeded: the load is measurable
    ([_rec()] * 3, 1, 1, False),
    ([_rec(status=500, error="HTTP 500: boom")] * 5, 0, 1, False),  # a 5xx may pass
    ([_rec(kind="connect", status=None, error="connection refused")] * 3, 0, 1, True),
    ([_rec(), _rec(error="HTTP 400: model not found"), _rec()], 0, 1, False),  # not one cause
    ([_rec(kind="timeout", status=None, error="no response")] * 3, 0, 1, False),
])
def test_fail_fast_needs_the_first_requests_all_failing_alike(records, ok_so_far, users, stops):
    assert (workloads.uniform_failure(records, ok_so_far, users) is not None) is stops


def test_fail_fast_says_what_to_change_for_a_context_error():
    failure = workloads.uniform_failure([_rec(error="HTTP 400: This model's maximum context length is 512")] * 3, 0, 1)
    target = SimpleNamespace(url="http://h:1", workload={"max_model_len": 512})
    head, hint = workloads.fail_fast_message(failure, _opts(prompt_tokens="600"), target)
    assert head.startswith("the first 3 requests all failed the same way: HTTP 400")
    assert "600 + 64 output tokens" in hint and "context length is 512" in hint and "--prompt-tokens" in hint


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(("given", "message"), [
    ({"prompt_tokens": "uniform:9,3"}, "--prompt-tokens 'uniform:9,3'"),
    ({"turns": "3"}, "--turns 3 carries a chat conversation: it needs --chat"),
    ({"max_prompts": "5"}, "--max-prompts filters a dataset, but no --dataset is given"),
    ({"shared_prefix_tokens": "200"}, "--shared-prefix-tokens 200 leaves nothing"),
    ({"shared_prefix_share": "0.5"}, "--shared-prefix-share needs --shared-prefix-tokens"),
    ({"shared_prefix_tokens": "10", "shared_prefix_share": "2"}, "at most 1"),
    ({"api": "embeddings", "slo_ttft_ms": "100"}, "embeddings have no tokens to stream"),
])
def test_bad_workload_flags_are_usage_errors(given, message):
    with pytest.raises(UsageError) as err:
        _opts(**given)
    assert message in str(err.value)


def test_embeddings_and_distributions_resolve_from_the_command_line():
    cli = options.from_command_line({"embeddings": True, "chat": False, "completion": False,
                                     "prompt_tokens": "normal:64,8"})
    opts = _opts(**cli)
    assert opts.api == "embeddings" and opts.stream is False and opts.prompt_tokens == "normal:64,8"
    with pytest.raises(UsageError, match="contradict"):
        options.from_command_line({"embeddings": True, "chat": True})
