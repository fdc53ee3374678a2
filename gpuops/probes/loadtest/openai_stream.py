"""OpenAI-compatible request bodies and the server-sent-event lines that answer them (pure).

    >>> request_body("chat", "Qwen/Qwen3-8B", "Hello there", max_tokens=64, stream=True, ignore_eos=True)
    {'model': 'Qwen/Qwen3-8B', 'max_tokens': 64, 'stream': True, 'stream_options': {'include_usage': True},
     'ignore_eos': True, 'messages': [{'role': 'user', 'content': 'Hello there'}]}
    >>> parse_sse_line(b'data: {"choices": [{"text": "Hi"}]}\\n')
    {'choices': [{'text': 'Hi'}]}
    >>> parse_sse_line(b"data: [DONE]\\n") is DONE
    True
    >>> chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    ''

A token chunk is one whose first choice carries non-empty text: `text` (completions), or
`delta.content` / `delta.reasoning_content` / `delta.reasoning` (chat). The chat stream's opening
role-only delta and the final usage chunk (`choices: []`) are not tokens, so they never count as
the first token (vLLM's own bench client does count the role delta, which makes its chat TTFT
too early).
"""

from __future__ import annotations

import json

API_PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}
DONE = object()  # the `data: [DONE]` sentinel


class StreamFormatError(ValueError):
    """A `data:` line whose payload is not JSON."""


def request_body(api: str, model: str | None, prompt: str, *, max_tokens: int, stream: bool,
                 ignore_eos: bool) -> dict:
    """The JSON body for one request; usage is asked for so token counts come from the server."""
    body: dict = {}
    if model:
        body["model"] = model
    body["max_tokens"] = max_tokens
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        # vLLM, SGLang and llama.cpp: generate exactly max_tokens, so every run does the same work.
        body["ignore_eos"] = True
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def parse_sse_line(line: bytes) -> dict | object | None:
    """One line of an event stream: the JSON of a `data:` line, DONE, or None (blank, comment, event:)."""
    if not line.startswith(b"data:"):
        line = line.strip()
        if not line.startswith(b"data:"):
            return None
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return DONE
    if not payload:
        return None
    try:
        return json.loads(payload.decode("utf-8"))  # str parses faster than bytes (no encoding sniffing)
    except ValueError as err:
        raise StreamFormatError(f"malformed event data: {payload[:80]!r}") from err


def chunk_text(chunk: dict) -> str:
    """The generated text a chunk carries ('' for role-only deltas, usage-only and empty chunks)."""
    choices = chunk.get("choices")
    if not choices:
        return ""
    first = choices[0]
    if not isinstance(first, dict):
        return ""
    text = first.get("text")
    if text:
        return text
    delta = first.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
    message = first.get("message")  # a non-streamed chat answer
    if isinstance(message, dict):
        return message.get("content") or ""
    return ""


def usage_tokens(chunk: dict) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a chunk's or answer's `usage`, else (None, None)."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def error_message(chunk: dict) -> str | None:
    """The message of an in-stream error event (`{"error": {...}}`), if this chunk is one."""
    err = chunk.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)
