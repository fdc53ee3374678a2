"""The one OpenAI-compatible client (gpuops.probes.openai): bodies, event lines, chunks, usage, error text.

Shapes are those real servers send: vLLM, SGLang, llama.cpp's llama-server, OpenAI, FastAPI-based servers.
"""

from __future__ import annotations

import json

import pytest

from gpuops.errors import UsageError
from gpuops.probes import openai
from gpuops.probes.openai import (
    DONE,
    ServerReportedError,
    StreamFormatError,
    StreamParser,
    chunk_text,
    error_message,
    error_text,
    model_ids,
    parse_sse_line,
    parse_whole,
    request_body,
    usage_tokens,
)


def sse(obj) -> str:
    return "data: " + json.dumps(obj)


# ---------------------------------------------------------------- request bodies


@pytest.mark.parametrize(
    "api,model,stream,ignore_eos,temperature,expected",
    [
        ("completion", "m", True, False, None,
         {"model": "m", "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}, "prompt": "Hi"}),
        ("chat", None, True, True, None,
         {"max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
          "messages": [{"role": "user", "content": "Hi"}]}),
        # vLLM rejects stream_options on a request that does not stream
        ("completion", None, False, False, 0, {"max_tokens": 8, "temperature": 0, "stream": False, "prompt": "Hi"}),
        ("chat", "m", False, True, 0,
         {"model": "m", "max_tokens": 8, "temperature": 0, "stream": False, "ignore_eos": True,
          "messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
def test_request_body_per_api_stream_and_ignore_eos(api, model, stream, ignore_eos, temperature, expected):
    body = request_body(api, model, "Hi", max_tokens=8, stream=stream, ignore_eos=ignore_eos, temperature=temperature)
    assert body == expected


@pytest.mark.parametrize("engine,ignore", [("vllm", True), ("sglang", True), ("llama.cpp", True), ("demo", True),
                                           ("openai", False), ("mlx_lm", False), ("uvicorn", False), (None, False)])
def test_ignore_eos_only_for_engines_that_accept_it(engine, ignore):
    assert openai.ignore_eos_for(engine) is ignore


@pytest.mark.parametrize(
    "environ,stream,expected",
    [
        ({}, True, {"Content-Type": "application/json", "Accept": "text/event-stream"}),
        ({"OPENAI_API_KEY": "sk-x"}, False,
         {"Content-Type": "application/json", "Accept": "application/json", "Authorization": "Bearer sk-x"}),
        ({"OPENAI_API_KEY": ""}, True, {"Content-Type": "application/json", "Accept": "text/event-stream"}),
    ],
)
def test_headers_carry_the_api_key_only_when_set(environ, stream, expected):
    assert openai.headers(stream, environ) == expected


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("https://gpu-box:8443/v1/", "https://gpu-box:8443"),
        ("http://host/proxy/llm", "http://host/proxy/llm"),
    ],
)
def test_base_url_accepts_what_users_paste(url, expected):
    assert openai.base_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://x", "", "http://"])
def test_base_url_rejects_non_urls(url):
    with pytest.raises(UsageError, match="not a server URL"):
        openai.base_url(url)


# ---------------------------------------------------------------- event lines (the lenient, fast reader)


@pytest.mark.parametrize(
    "line,expected",
    [
        (b'data: {"choices": [{"text": "Hi"}]}\n', {"choices": [{"text": "Hi"}]}),
        (b'data:{"choices": []}\r\n', {"choices": []}),  # no space after the colon (llama-server)
        ('data: {"a": 1}', {"a": 1}),  # text lines too
        (b"data: [DONE]\n", DONE),
        (b"data: [DONE]", DONE),
        (b"\n", None),
        (b"", None),
        (b": keep-alive\n", None),
        (b"event: message\n", None),
        (b"data: \n", None),
    ],
)
def test_parse_sse_line(line, expected):
    got = parse_sse_line(line)
    assert got is DONE if expected is DONE else got == expected


def test_parse_sse_line_refuses_data_that_is_not_json():
    with pytest.raises(StreamFormatError, match="malformed event data"):
        parse_sse_line(b'data: {"choices": [{"te\n')


@pytest.mark.parametrize(
    "chunk,text",
    [
        ({"choices": [{"index": 0, "text": " sky", "finish_reason": None}]}, " sky"),  # completions
        ({"choices": [{"delta": {"content": "Rayleigh"}}]}, "Rayleigh"),  # chat
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, ""),  # chat's opening role delta
        ({"choices": [{"delta": {"role": "assistant"}}]}, ""),
        ({"choices": [{"delta": {"reasoning_content": "Hmm."}}]}, "Hmm."),  # vLLM/SGLang reasoning
        ({"choices": [{"delta": {"reasoning": "Hmm."}}]}, "Hmm."),  # newer vLLM
        ({"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2}}, ""),  # the usage-only chunk
        ({"choices": []}, ""),  # a chunk with empty choices
        ({"choices": None}, ""),
        ({"id": "x"}, ""),
        ({"choices": [{"text": "", "finish_reason": "length"}]}, ""),  # the last chunk of llama-server
        ({"choices": ["odd"]}, ""),
        ({"choices": [{"message": {"role": "assistant", "content": "Yo"}}]}, "Yo"),  # a whole chat answer
    ],
)
def test_chunk_text_counts_only_generated_text(chunk, text):
    assert chunk_text(chunk) == text


@pytest.mark.parametrize(
    "chunk,expected",
    [
        ({"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}}, (6, 2)),
        ({"usage": {"completion_tokens": 5}}, (None, 5)),
        ({"usage": None}, (None, None)),  # vLLM sends usage: null on every chunk but the last
        ({"usage": {"prompt_tokens": "6"}}, (None, None)),
        ({"choices": [{"text": "x"}]}, (None, None)),
    ],
)
def test_usage_tokens(chunk, expected):
    assert usage_tokens(chunk) == expected


# ---------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    "body,message",
    [
        # OpenAI, and newer vLLM
        ({"error": {"message": "The model `gpt-5` does not exist", "type": "invalid_request_error", "param": None,
                    "code": "model_not_found"}}, "The model `gpt-5` does not exist"),
        # older vLLM (and SGLang): the error object itself
        ({"object": "error", "message": "This model's maximum context length is 4096 tokens.",
          "type": "BadRequestError", "param": None, "code": 400}, "This model's maximum context length is 4096 tokens."),
        # llama.cpp's llama-server
        ({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, "Loading model"),
        # mid-stream errors (vLLM)
        ({"error": {"message": "CUDA error: an illegal memory access", "code": 500}},
         "CUDA error: an illegal memory access"),
        ({"error": "slot unavailable"}, "slot unavailable"),
        # FastAPI / Starlette
        ({"detail": "Not Found"}, "Not Found"),
        ({"detail": [{"loc": ["body", "max_tokens"], "msg": "Input should be a valid integer", "type": "int_parsing"}]},
         "Input should be a valid integer (body.max_tokens)"),
        # not errors
        ({"choices": []}, None),
        ({"choices": [{"text": "x"}], "message": "hi"}, None),
        ({"error": None, "choices": [{"text": "x"}]}, None),
        ([1, 2], None),
        ("text", None),
    ],
)
def test_error_message_in_the_shapes_servers_send(body, message):
    assert error_message(body) == message


@pytest.mark.parametrize(
    "body,text",
    [
        ('{"error": {"message": "model not found", "code": 404}}', "model not found"),
        (b'{"object": "error", "message": "bad\\n  request"}', "bad request"),  # one line
        ("<html>\n<body>502 Bad Gateway</body>\n</html>", "<html> <body>502 Bad Gateway</body> </html>"),
        ("", "Bad Gateway"),  # the fallback: the HTTP reason
    ],
)
def test_error_text_is_the_message_on_one_line(body, text):
    assert error_text(body, fallback="Bad Gateway") == text


def test_error_text_is_cut_to_the_limit():
    assert error_text("x" * 500, 20) == "x" * 20


@pytest.mark.parametrize(
    "data,ids",
    [
        ({"object": "list", "data": [{"id": "org/tiny-1B", "object": "model"}, {"id": "lora-a"}]},
         ["org/tiny-1B", "lora-a"]),
        ({"data": [{"object": "model"}, "x", {"id": ""}]}, []),
        ({"models": []}, []),
        (None, []),
    ],
)
def test_model_ids_in_order(data, ids):
    assert model_ids(data) == ids


# ---------------------------------------------------------------- the strict reader (smoke, profile's load)


def test_stream_parser_reads_completion_chunks_usage_and_done():
    p = StreamParser()
    pieces = [p.feed(line) for line in [
        sse({"id": "c", "model": "demo-model", "choices": [{"index": 0, "text": "The", "finish_reason": None}]}),
        "",
        ": keep-alive",
        sse({"choices": [{"index": 0, "text": " sky", "finish_reason": "length"}]}),
        sse({"choices": [], "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}}),
        "data: [DONE]",
    ]]
    assert [x for x in pieces if x] == ["The", " sky"]
    assert (p.text, p.content_chunks, p.usage_tokens, p.prompt_tokens, p.finish_reason, p.model, p.done) == (
        "The sky", 2, 2, 6, "length", "demo-model", True)


def test_stream_parser_chat_role_chunk_carries_no_text_and_reasoning_counts():
    p = StreamParser()
    assert p.feed(sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]})) == ""
    assert p.feed(sse({"choices": [{"delta": {"reasoning_content": "Hmm."}}]})) == "Hmm."
    assert p.feed(b"data:" + json.dumps({"choices": [{"delta": {"content": "Rayleigh."}}]}).encode()) == "Rayleigh."
    assert (p.text, p.reasoning, p.content_chunks, p.usage_tokens) == ("Rayleigh.", "Hmm.", 2, None)


def test_stream_parser_empty_choices_chunk_is_no_token():
    p = StreamParser()
    assert p.feed(sse({"id": "x", "choices": []})) == ""
    assert (p.content_chunks, p.done) == (0, False)


@pytest.mark.parametrize(
    "line,error,words",
    [
        ("data: {not json", StreamFormatError, "not JSON"),
        ("<html>", StreamFormatError, "not a server-sent event"),
        ("data: [1, 2]", StreamFormatError, "not an object"),
        ("data: " + json.dumps({"choices": "x"}), StreamFormatError, "not a list"),
        ("data: " + json.dumps({"choices": ["x"]}), StreamFormatError, "a choice is str"),
        (sse({"error": {"message": "CUDA error: an illegal memory access", "code": 500}}),
         ServerReportedError, "illegal memory access"),
        (sse({"object": "error", "error": "overloaded"}), ServerReportedError, "overloaded"),
        ('error: {"code": 500, "message": "slot unavailable", "type": "server_error"}', ServerReportedError,
         "^slot unavailable$"),  # llama-server's error event: its message, not its JSON
        ("error: something broke", ServerReportedError, "something broke"),
    ],
)
def test_stream_parser_rejects_malformed_and_error_lines(line, error, words):
    with pytest.raises(error, match=words):
        StreamParser().feed(line)


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"model": "m", "choices": [{"text": "Hi", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}},
         ("Hi", "", 1, "stop", "m")),
        ({"choices": [{"message": {"role": "assistant", "content": "Yo"}, "finish_reason": "length"}]},
         ("Yo", "", None, "length", None)),
        ({"choices": [{"message": {"content": None, "reasoning_content": "think"}}]}, ("", "think", None, None, None)),
    ],
)
def test_parse_whole_reads_non_streamed_answers(data, expected):
    assert parse_whole(data) == expected


@pytest.mark.parametrize("data", [[], {"choices": []}, {"object": "list"}, {"choices": [3]}])
def test_parse_whole_rejects_answers_without_choices(data):
    with pytest.raises(StreamFormatError):
        parse_whole(data)


@pytest.mark.parametrize("data", [
    {"object": "error", "message": "maximum context length is 4096", "code": 400},  # older vLLM
    {"error": {"message": "maximum context length is 4096", "type": "BadRequestError"}},  # OpenAI, newer vLLM
])
def test_parse_whole_names_the_servers_error(data):
    with pytest.raises(ServerReportedError, match="maximum context length"):
        parse_whole(data)
