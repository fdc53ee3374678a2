"""`load-test` workloads end to end: exact token counts, length distributions, datasets, shared prefixes,
chat sessions, embeddings, and failing fast, against the demo server and scripted servers (real
processes, real HTTP, real Locust).

The scripted OpenAI server here has its own tokenizer, unlike words: a BOS token, and two tokens for
every word longer than five letters. A prompt built by words would come out longer than asked; a
prompt built from the server's own /tokenize comes out exact, and its usage says so.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpuops.probes.loadtest import metrics
from support.scripted import drain, send

pytestmark = pytest.mark.demo_options(load_seconds=0, ttft_ms=5, itl_ms=1, log=False)


def server_tokens(text: str) -> int:
    """The scripted server's tokenizer: BOS + 1 token per short word, 2 per word of more than five letters."""
    return 1 + sum(2 if len(w) > 5 else 1 for w in text.split())


class ScriptedOpenAI:
    """An OpenAI-compatible server whose behaviour a test sets: its tokenizer (with or without
    POST /tokenize), a context limit it enforces with vLLM's 400, whether /v1/models states it, and
    the bodies it was sent. Streams every answer at once, `max_tokens` chunks `a<N>`."""

    def __init__(self, *, tokenize_route: bool = True, context: int | None = None, state_limit: bool = True,
                 count=server_tokens, close_after_preflight: bool = False):
        self.tokenize_route, self.context, self.state_limit = tokenize_route, context, state_limit
        self.count = count
        self.close_after_preflight = close_after_preflight
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.answers = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.get(self)

            def do_POST(self):  # noqa: N802
                outer.post(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def get(self, h):
        if h.path == "/tokenize" and self.tokenize_route:
            return send(h, 405, b'{"detail": "Method Not Allowed"}')  # as FastAPI (vLLM, SGLang) answers
        model = {"id": "scripted", "object": "model"}
        if self.context and self.state_limit:
            model["max_model_len"] = self.context
        send(h, 200, json.dumps({"object": "list", "data": [model]}).encode())

    def post(self, h):
        body = drain(h) or {}
        if h.path == "/tokenize":
            if not self.tokenize_route or "prompt" not in body:
                return send(h, 404, b'{"detail": "Not Found"}')
            n = self.count(body["prompt"])
            return send(h, 200, json.dumps({"count": n, "tokens": list(range(n))}).encode())
        messages = body.get("messages")
        text = body.get("prompt") if messages is None else " ".join(m["content"] for m in messages)
        n_in = self.count(text)
        with self.lock:
            self.bodies.append(body)
            self.answers += 1
            k = self.answers
        if self.context and n_in + body["max_tokens"] > self.context:
            message = (f"This model's maximum context length is {self.context} tokens. However, you requested "
                       f"{n_in + body['max_tokens']} tokens ({n_in} in the messages, {body['max_tokens']} in the "
                       "completion). Please reduce the length of the messages or completion.")
            return send(h, 400, json.dumps({"object": "error", "message": message, "type": "BadRequestError",
                                            "code": 400}).encode())
        chunks = []
        for i in range(body["max_tokens"]):
            piece = f" a{k}.{i}"
            choice = {"index": 0, "delta": {"content": piece}} if messages is not None else {"index": 0, "text": piece}
            choice["finish_reason"] = "length" if i == body["max_tokens"] - 1 else None
            chunks.append({"choices": [choice]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": body["max_tokens"]}})
        data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        send(h, 200, data.encode(), ctype="text/event-stream")
        if self.close_after_preflight and k == 1:
            threading.Thread(target=self.close, daemon=True).start()  # from now on: connection refused


@pytest.fixture
def openai_server():
    servers = []

    def start(**kw) -> ScriptedOpenAI:
        servers.append(ScriptedOpenAI(**kw))
        return servers[-1]

    yield start
    for s in servers:
        try:
            s.close()
        except OSError:
            pass


def _load_test(project, *args, timeout=120):
    return project.gpuops("load-test", *args, timeout=timeout)


def _only_report(project) -> Path:
    dirs = sorted((project.run_dir / "load_tests").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _records(project) -> list[dict]:
    return [r for r in metrics.read_records(_only_report(project) / "records.jsonl") if not r["cancelled"]]


def _summary(project) -> dict:
    return json.loads((_only_report(project) / "summary.json").read_text())


# ---------------------------------------------------------------- 1. token counts that are tokens


def test_prompts_have_exactly_the_tokens_asked_as_the_servers_own_tokenizer_counts(project, openai_server):
    server = openai_server()
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "2s", "--prompt-tokens", "40",
                     "--max-tokens", "4")
    assert res.code == 0, res.text
    ok = [r for r in _records(project) if r["ok"]]
    assert ok and {r["prompt_tokens"] for r in ok} == {40}  # usage, counted by the server
    # and the prompts really are different (salted), each 40 tokens by the server's rule
    prompts = [b["prompt"] for b in server.bodies[1:]]
    assert len(set(prompts)) == len(prompts) and {server_tokens(p) for p in prompts} == {40}
    s = _summary(project)
    assert s["prompt_lengths"] == "tokens" and "/tokenize" in s["tokens_counted_by"]


def test_without_a_tokenizer_lengths_are_words_and_the_report_says_so(project, openai_server):
    server = openai_server(tokenize_route=False)
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "1s", "--prompt-tokens", "20",
                     "--max-tokens", "2")
    assert res.code == 0, res.text
    assert "prompt lengths are approximate: words" in res.text
    assert _summary(project)["prompt_lengths"] == "prompt lengths are approximate: words"


def test_a_local_tokenizer_counts_offline_instead_of_the_server(project, openai_server, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    # a word-level tokenizer with a BOS token, as the server counts (BOS + one token a word)
    tok = tokenizers.Tokenizer(models.WordLevel({"<s>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(tmp_path / "tokenizer.json"))
    server = openai_server(tokenize_route=False, count=lambda text: 1 + len(text.split()))
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "1s", "--prompt-tokens", "30",
                     "--max-tokens", "2", "--tokenizer", str(tmp_path))
    assert res.code == 0, res.text
    ok = [r for r in _records(project) if r["ok"]]
    assert ok and {r["prompt_tokens"] for r in ok} == {30}  # by words it would be 31: the BOS
    assert "local tokenizer" in _summary(project)["tokens_counted_by"]


# ---------------------------------------------------------------- 2. fail fast, and say why


def test_prompt_and_output_longer_than_the_stated_context_are_refused_before_any_load(project, openai_server):
    server = openai_server(context=100)
    res = _load_test(project, "--url", server.url, "--prompt-tokens", "90", "--max-tokens", "20")
    assert res.code == 2, res.text
    assert "context length is 100" in res.err and "110" in res.err and "--prompt-tokens" in res.err
    assert len(server.bodies) == 1  # the preflight's 2-token request only: no load was sent
    assert not (project.run_dir / "load_tests").exists()


def test_requests_that_all_fail_with_the_same_400_stop_the_run_at_once_with_the_cause(project, openai_server):
    server = openai_server(context=100, state_limit=False, tokenize_route=False)  # the limit is not stated
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "60s", "--prompt-tokens", "150",
                     "--max-tokens", "8")
    assert res.code == 7, res.text
    assert "the first 3 requests all failed the same way: HTTP 400: This model's maximum context length" in res.err
    assert "lower --prompt-tokens or --max-tokens" in res.err
    s = _summary(project)
    assert s["status"] == "failing" and s["completed"] == 0
    records = _records(project)
    # stopped long before its 60 s: the failures came in the first moments, the rest never went out
    # (how many failed before the stop depends on the machine's speed: the span is the behaviour)
    assert max(r["end"] for r in records) - min(r["start"] for r in records) < 30


def test_a_server_that_refuses_connections_from_the_first_request_stops_the_run(project, openai_server):
    server = openai_server(tokenize_route=False, close_after_preflight=True)
    res = _load_test(project, "--url", server.url, "--users", "2", "--run-time", "60s", "--prompt-tokens", "10",
                     "--max-tokens", "2")
    assert res.code == 7, res.text
    assert "all failed the same way: connection refused" in res.err
    assert f"nothing accepts connections at {server.url}" in res.err
    assert _summary(project)["status"] == "failing"


# ---------------------------------------------------------------- 3. workloads


def _lengths_of_one_user_run(project, server, seed: str, out: str) -> list[tuple[int, int]]:
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "2s", "--seed", seed,
                     "--prompt-tokens", "uniform:20,40", "--max-tokens", "normal:8,3", "--out", out)
    assert res.code == 0, res.text
    records = [r for r in metrics.read_records(project.root / out / "records.jsonl") if r["ok"]]
    return [(r["prompt_tokens"], r["output_tokens"]) for r in sorted(records, key=lambda r: r["start"])]


def test_length_distributions_are_seeded_and_within_their_bounds(project, demo):
    server = demo()
    a = _lengths_of_one_user_run(project, server, "7", "a")
    b = _lengths_of_one_user_run(project, server, "7", "b")
    c = _lengths_of_one_user_run(project, server, "8", "c")
    n = min(len(a), len(b), len(c), 10)
    assert n >= 5
    assert a[:n] == b[:n]  # the same seed draws the same lengths
    assert a[:n] != c[:n]
    assert all(20 <= p <= 40 for p, _ in a) and len({p for p, _ in a}) > 3  # the demo counts the prompt exactly
    assert all(1 <= o <= 8 + 4 * 3 for _, o in a) and len({o for _, o in a}) > 2  # clipped to [1, mean + 4 sd]


def test_a_jsonl_dataset_sends_its_prompts_and_chat_messages_within_the_filters(project, openai_server, tmp_path):
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"question {i} " + "word " * i} for i in range(1, 30)]
    rows.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]})
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    server = openai_server(tokenize_route=False)
    res = _load_test(project, "--url", server.url, "--chat", "--users", "1", "--run-time", "2s", "--max-tokens", "2",
                     "--dataset", str(data), "--dataset-max-tokens", "12", "--max-prompts", "5")
    assert res.code == 0, res.text
    chosen = [json.loads(x) for x in (_only_report(project) / "prompts.jsonl").read_text().splitlines()]
    assert len(chosen) == 5 and all(r["prompt_tokens"] <= 12 for r in chosen)
    sent = [b["messages"] for b in server.bodies[1:]]
    assert sent
    known = {r["prompt"] for r in chosen if "prompt" in r}
    for messages in sent:
        if len(messages) > 1:  # the chat row: its first message carries the salt (a system prompt is cached too)
            assert messages[0]["content"].endswith(" be brief") and messages[1:] == [rows[-1]["messages"][1]]
        else:
            assert messages[0]["content"].split(" ", 1)[1] in known  # the salt word, then the dataset's text
    assert _summary(project)["dataset"]["prompts"] == 5


def test_a_sharegpt_file_sends_the_first_human_turn_with_its_replys_length(project, openai_server, tmp_path):
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "What is a GPU?"},
                                      {"from": "gpt", "value": "A graphics processor."}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "no human turn first: skipped"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "7"}]},
    ]))
    server = openai_server(tokenize_route=False)
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "1s", "--max-tokens", "dataset",
                     "--dataset", str(data))
    assert res.code == 0, res.text
    sent = {(b["prompt"].split(" ", 1)[1], b["max_tokens"]) for b in server.bodies[1:]}
    assert sent == {("What is a GPU?", 3), ("Name a prime.", 1)}  # the replies' lengths (in words: no tokenizer)


def test_the_shipped_dataset_works_offline(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--chat", "--users", "2", "--run-time", "2s", "--max-tokens", "4",
                     "--dataset", "builtin", "--max-prompts", "20")
    assert res.code == 0, res.text
    s = _summary(project)
    assert s["completed"] > 0 and s["failed"] == 0 and s["dataset"]["prompts"] == 20


def test_multi_turn_sessions_carry_every_previous_turn_and_answer(project, openai_server):
    server = openai_server(tokenize_route=False)
    res = _load_test(project, "--url", server.url, "--chat", "--turns", "3", "--users", "1", "--run-time", "2s",
                     "--prompt-tokens", "6", "--max-tokens", "2")
    assert res.code == 0, res.text
    bodies = server.bodies[1:]  # after the preflight
    assert len(bodies) >= 6
    records = sorted(_records(project), key=lambda r: r["start"])
    assert [r["turn"] for r in records[:6]] == [1, 2, 3, 1, 2, 3]
    assert records[0]["conversation"] == records[2]["conversation"] != records[3]["conversation"]
    for i in range(0, 6, 3):
        first, second, third = bodies[i]["messages"], bodies[i + 1]["messages"], bodies[i + 2]["messages"]
        assert [len(first), len(second), len(third)] == [1, 3, 5]
        assert second[:1] == first and third[:3] == second  # each turn carries the previous ones
        answer = "".join(f" a{server.bodies.index(bodies[i]) + 1}.{k}" for k in range(2))
        assert second[1] == {"role": "assistant", "content": answer}  # with the answer as it streamed


def test_a_shared_prefix_starts_the_given_share_of_prompts(project, openai_server):
    server = openai_server()
    res = _load_test(project, "--url", server.url, "--users", "1", "--run-time", "2s", "--prompt-tokens", "40",
                     "--max-tokens", "2", "--shared-prefix-tokens", "20", "--shared-prefix-share", "0.5")
    assert res.code == 0, res.text
    prompts = [b["prompt"] for b in server.bodies[1:]]
    assert len(prompts) >= 10 and {server_tokens(p) for p in prompts} == {40}
    heads = [p.split()[:10] for p in prompts]
    shared = max(heads, key=heads.count)
    with_prefix = sum(h == shared for h in heads)
    assert 0 < with_prefix < len(prompts)  # some, not all
    assert len({p for p in prompts}) == len(prompts)  # the rest stays salted


def test_embeddings_are_load_tested_with_input_tokens_from_usage(project, demo):
    server = demo()
    res = _load_test(project, "--url", server.url, "--embeddings", "--users", "2", "--run-time", "2s",
                     "--prompt-tokens", "12")
    assert res.code == 0, res.text
    ok = [r for r in _records(project) if r["ok"]]
    assert ok and {r["prompt_tokens"] for r in ok} == {12} and {r["output_tokens"] for r in ok} == {0}
    assert _summary(project)["failed"] == 0
