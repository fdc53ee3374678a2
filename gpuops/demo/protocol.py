"""OpenAI's request and response shapes, as vLLM serves them: parsing, checking, building (all pure).

    >>> req = parse_request("chat", {"messages": [{"role": "user", "content": "Why is the sky blue?"}],
    ...                              "max_tokens": 4, "stream": True}, default_model="m")
    >>> req.prompt_tokens, req.max_tokens, req.stream, req.model
    (5, 4, True, 'm')
    >>> sse({"a": 1})
    'data: {"a":1}\\n\\n'

Prompt tokens are counted as whitespace-separated words (chat: of all message contents); a list of
token ids counts its length. There is no tokenizer: the numbers are stable, not realistic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_MODEL_LEN = 8192
DEFAULT_MAX_TOKENS = 16
DONE = "data: [DONE]\n\n"


class BadRequest(Exception):
    """A request the server refuses with 400 and an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class GenerationRequest:
    kind: str  # "completion" or "chat"
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def error_body(message: str, type_: str, code: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def count_words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict) -> int:
    if "prompt" not in body:
        raise BadRequest("'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list):  # a batch: the demo answers for the first prompt
        if not prompt:
            raise BadRequest("'prompt' must not be an empty list", "prompt")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)  # one prompt given as token ids
        prompt = prompt[0]
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids", "prompt")
    return count_words(prompt)


def _content_words(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}, ...]
        return sum(count_words(p["text"]) for p in content
                   if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    raise BadRequest("message 'content' must be a string or a list of content parts", "messages")


def _chat_tokens(body: dict) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty list", "messages")
    total = 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message must be an object with a 'role'", "messages")
        total += _content_words(message.get("content"))
    return total


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false", key)
    return value


def parse_request(kind: str, body, default_model: str, max_model_len: int = MAX_MODEL_LEN) -> GenerationRequest:
    """Check a /v1/completions ("completion") or /v1/chat/completions ("chat") body; raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model", default_model)
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    prompt_tokens = _chat_tokens(body) if kind == "chat" else _prompt_tokens(body)
    key = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"'{key}' must be an integer of at least 1, got {json.dumps(max_tokens)}", key)
    if prompt_tokens + max_tokens > max_model_len:
        where = "messages" if kind == "chat" else "prompt"
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in the "
            f"completion). Please reduce the length of the {where} or completion.", key)
    stream = _flag(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:  # vLLM refuses this too
        raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    include_usage = _flag(options or {}, "include_usage", False)
    return GenerationRequest(kind, model or default_model, prompt_tokens, max_tokens, stream, include_usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _envelope(req: GenerationRequest, req_id: str, created: int, chunk: bool) -> dict:
    if req.kind == "chat":
        obj = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        obj = "text_completion"
    return {"id": req_id, "object": obj, "created": created, "model": req.model}


def content_chunk(req: GenerationRequest, req_id: str, created: int, text: str, finish_reason: str | None) -> dict:
    """One streamed piece: `choices[0].text` (completions) or `choices[0].delta.content` (chat)."""
    if req.kind == "chat":
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
    return {**_envelope(req, req_id, created, True), "choices": [choice]}


def role_chunk(req: GenerationRequest, req_id: str, created: int) -> dict:
    """vLLM's first chat chunk: the role, with empty content (TTFT clients skip it)."""
    choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    return {**_envelope(req, req_id, created, True), "choices": [choice]}


def usage_chunk(req: GenerationRequest, req_id: str, created: int, completion_tokens: int) -> dict:
    return {**_envelope(req, req_id, created, True), "choices": [],
            "usage": usage(req.prompt_tokens, completion_tokens)}


def full_response(req: GenerationRequest, req_id: str, created: int, text: str, finish_reason: str,
                  completion_tokens: int) -> dict:
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
    return {**_envelope(req, req_id, created, False), "choices": [choice],
            "usage": usage(req.prompt_tokens, completion_tokens)}


def sse(obj: dict) -> str:
    """One server-sent event as OpenAI servers frame it."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
