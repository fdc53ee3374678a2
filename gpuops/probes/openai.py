"""The one OpenAI-compatible client: request bodies, server-sent events, usage, error text, the model.

    >>> request_body("chat", "Qwen/Qwen3-8B", "Hello", max_tokens=64, stream=True, ignore_eos=True)
    {'model': 'Qwen/Qwen3-8B', 'max_tokens': 64, 'stream': True, 'stream_options': {'include_usage': True}, \
'ignore_eos': True, 'messages': [{'role': 'user', 'content': 'Hello'}]}
    >>> parse_sse_line(b'data: {"choices": [{"text": "Hi"}]}\\n')
    {'choices': [{'text': 'Hi'}]}
    >>> parse_sse_line(b"data: [DONE]\\n") is DONE
    True
    >>> chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    ''
    >>> error_message({"object": "error", "message": "max_tokens is too large", "code": 400})
    'max_tokens is too large'

Used by smoke, profile's background load, the load-test preflight and the Locust user (which keeps
its own geventhttpclient transport but builds its bodies and reads its streams with this module).
So this module is pure at import time: no `requests` (imported inside the few functions that do
I/O), nothing that would not run inside Locust's gevent-patched processes.

A token chunk is one whose first choice carries non-empty text: `text` (completions), or
`delta.content` / `delta.reasoning_content` / `delta.reasoning` (chat). The chat stream's opening
role-only delta and the final usage chunk (`choices: []`) are not tokens, so they never count as
the first token (vLLM's own bench client does count the role delta, which makes its chat TTFT
too early).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from gpuops.errors import UsageError

API_PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}
MODELS_PATH = "/v1/models"
DONE = object()  # the `data: [DONE]` sentinel
# Engines that accept `ignore_eos`: they then generate exactly max_tokens, so every run does the same work.
IGNORE_EOS_ENGINES = frozenset({"vllm", "sglang", "llama.cpp", "demo"})
# Engines gpuops talks to with /v1/completions and /v1/chat/completions.
OPENAI_ENGINES = frozenset({"openai", "demo", "uvicorn", "vllm", "sglang", "llama.cpp", "mlx_lm", "generic"})


class StreamFormatError(ValueError):
    """A line of the answer that is not what the protocol says (not an event, not JSON, wrong shape)."""


MalformedAnswer = StreamFormatError  # the smoke test's name for it


class ServerReportedError(ValueError):
    """The answer carries an error object (vLLM's mid-stream `{"error": {...}}`, llama-server's `error:`)."""


# ---------------------------------------------------------------- URLs and headers


def base_url(url: str) -> str:
    """`http://host:port` from what users type: trailing slashes and an OpenAI-style `/v1` dropped.

    >>> base_url("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000'
    """
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"'{url}' is not a server URL", hint="use the form http://HOST:PORT, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def auth_headers(environ=None) -> dict[str, str]:
    """`Authorization: Bearer $OPENAI_API_KEY` when that variable is set (servers started with --api-key).

    >>> auth_headers({"OPENAI_API_KEY": "sk-1"}), auth_headers({})
    ({'Authorization': 'Bearer sk-1'}, {})
    """
    key = (os.environ if environ is None else environ).get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def headers(stream: bool, environ=None) -> dict[str, str]:
    """The headers of a generation request: JSON in, an event stream (or JSON) out, the key if any."""
    return {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json",
            **auth_headers(environ)}


# ---------------------------------------------------------------- request bodies


def ignore_eos_for(engine: str | None) -> bool:
    return engine in IGNORE_EOS_ENGINES


def request_body(api: str, model: str | None, prompt: str, *, max_tokens: int, stream: bool,
                 ignore_eos: bool = False, temperature: float | None = None) -> dict:
    """The JSON body of one request (`api`: "completion" or "chat"); usage is asked for when streaming,
    so token counts come from the server."""
    body: dict = {}
    if model:
        body["model"] = model
    body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    body["stream"] = stream
    if stream:
        # Only with stream=True: vLLM rejects stream_options on a non-streamed request.
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


# ---------------------------------------------------------------- answers (pure)


def parse_sse_line(line: bytes | str) -> dict | object | None:
    """One line of an event stream: the JSON of a `data:` line, DONE, or None (blank, comment, event:).

    Lenient and fast (the Locust user calls it per token); `StreamParser` is the strict reader.
    """
    if isinstance(line, str):
        line = line.encode("utf-8")
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


def choice_parts(choice) -> tuple[str, str]:
    """(answer text, reasoning text) of one choice of a chunk or a whole answer; ('', '') for anything else."""
    if not isinstance(choice, dict):
        return "", ""
    text = choice.get("text")
    if isinstance(text, str) and text:
        return text, ""
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict):
            # reasoning models: vLLM/SGLang put the thinking in reasoning_content (newer vLLM: reasoning)
            reasoning = part.get("reasoning_content") or part.get("reasoning") or ""
            content = part.get("content") or ""
            return (content if isinstance(content, str) else ""), (reasoning if isinstance(reasoning, str) else "")
    return "", ""


def chunk_text(chunk: dict) -> str:
    """The generated text a chunk carries ('' for role-only deltas, usage-only and empty chunks)."""
    choices = chunk.get("choices")  # the Locust user calls this per token: kept short
    if not choices or not isinstance(choices, list):
        return ""
    first = choices[0]
    if not isinstance(first, dict):
        return ""
    text = first.get("text")
    if text and isinstance(text, str):
        return text
    for key in ("delta", "message"):
        part = first.get(key)
        if isinstance(part, dict):
            found = part.get("content") or part.get("reasoning_content") or part.get("reasoning") or ""
            return found if isinstance(found, str) else ""
    return ""


def usage_tokens(chunk: dict) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a chunk's or answer's `usage`, else (None, None)."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _detail_text(detail) -> str:
    """FastAPI's `detail`: a string, or pydantic's list of {loc, msg} (a 422 for a bad field)."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and all(isinstance(d, dict) and "msg" in d for d in detail):
        return "; ".join(
            f"{d['msg']} ({'.'.join(str(x) for x in d['loc'])})" if isinstance(d.get("loc"), list) else str(d["msg"])
            for d in detail)
    return json.dumps(detail)


def error_message(data) -> str | None:
    """The human message inside an error body or event, in the shapes servers use:
    OpenAI / llama.cpp / newer vLLM `{"error": {"message"}}`, older vLLM `{"object": "error", "message"}`,
    FastAPI `{"detail"}`, a bare `{"error": "text"}`. None when it is no error body."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str) and err:
        return err
    if data.get("detail"):
        return _detail_text(data["detail"])
    if data.get("message") and (data.get("object") == "error" or "choices" not in data):
        return data["message"] if isinstance(data["message"], str) else json.dumps(data["message"])
    return None


def error_text(body: str | bytes, limit: int = 300, *, fallback: str = "") -> str:
    """An error response's body as one line: the message of a JSON error body, else the body itself.

    >>> error_text('{"error": {"message": "model not found", "code": 404}}')
    'model not found'
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    body = body[:4000]
    try:
        message = error_message(json.loads(body)) or body
    except ValueError:
        message = body
    return " ".join(message.split())[:limit] or fallback


def response_message(resp, limit: int = 300) -> str:
    """`error_text` of a requests-style response (`.text`, `.reason`)."""
    return error_text(resp.text, limit, fallback=resp.reason or "")


def model_ids(data) -> list[str]:
    """The ids GET /v1/models lists, in its order ([] for anything else).

    >>> model_ids({"object": "list", "data": [{"id": "org/tiny-1B", "object": "model"}]})
    ['org/tiny-1B']
    """
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return []
    return [str(m["id"]) for m in models if isinstance(m, dict) and m.get("id")]


@dataclass
class StreamParser:
    """Reads an OpenAI-style event stream line by line, strictly; `feed` returns the new text of each line.

    >>> p = StreamParser(); p.feed('data: {"choices": [{"text": "Hi"}]}'), p.feed("data: [DONE]"), p.done
    ('Hi', '', True)
    """

    text: str = ""
    reasoning: str = ""
    content_chunks: int = 0  # chunks that carried text: one token each on the engines gpuops knows
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    done: bool = False
    lines: int = 0

    def feed(self, line: str | bytes) -> str:
        self.lines += 1
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip("\r")
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return ""  # blank separators, keep-alive comments, SSE fields gpuops does not need
        if line.startswith("error:"):  # llama-server's error event
            payload = line[len("error:"):].strip()
            try:
                message = error_message(json.loads(payload))
            except ValueError:
                message = None
            raise ServerReportedError(message or payload)
        if not line.startswith("data:"):
            raise StreamFormatError(f"line {self.lines} is not a server-sent event: {line[:120]!r}")
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise StreamFormatError(f"line {self.lines} is not JSON: {payload[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamFormatError(f"line {self.lines} is JSON but not an object: {payload[:120]!r}")
        if "error" in chunk:
            raise ServerReportedError(error_message(chunk) or payload[:300])
        self.model = chunk.get("model") or self.model
        prompt, completion = usage_tokens(chunk)
        if completion is not None:
            self.usage_tokens, self.prompt_tokens = completion, prompt
        choices = chunk.get("choices")
        if not choices:
            return ""  # the usage chunk has choices: []
        if not isinstance(choices, list):
            raise StreamFormatError(f"line {self.lines}: 'choices' is not a list")
        if not isinstance(choices[0], dict):
            raise StreamFormatError(f"line {self.lines}: a choice is {type(choices[0]).__name__}, not an object")
        text, reasoning = choice_parts(choices[0])
        self.finish_reason = choices[0].get("finish_reason") or self.finish_reason
        if text or reasoning:
            self.content_chunks += 1
            self.text += text
            self.reasoning += reasoning
        return text + reasoning


def parse_whole(data) -> tuple[str, str, int | None, str | None, str | None]:
    """(text, reasoning, completion tokens, finish reason, model) of a non-streamed answer."""
    if not isinstance(data, dict):
        raise StreamFormatError(f"the answer is JSON {type(data).__name__}, not an object")
    if not data.get("choices") and ("error" in data or error_message(data)):
        raise ServerReportedError(error_message(data) or json.dumps(data)[:300])
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise StreamFormatError("the answer has no 'choices'")
    if not isinstance(choices[0], dict):
        raise StreamFormatError(f"a choice is {type(choices[0]).__name__}, not an object")
    text, reasoning = choice_parts(choices[0])
    _, tokens = usage_tokens(data)
    return text, reasoning, tokens, choices[0].get("finish_reason"), data.get("model")


# ---------------------------------------------------------------- I/O (requests, imported when called)


def new_session():
    """A requests.Session that sends the API key (OPENAI_API_KEY) with every request."""
    import requests

    s = requests.Session()
    s.headers.update(auth_headers())
    return s


def transport_cause(err: Exception, timeout: float | None = None) -> str:
    """A requests exception in plain words: `connection refused (nothing listens there)`, ..."""
    import requests

    waited = f"no answer within {timeout:g} s" if timeout is not None else "no answer in time"
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:g} s" if timeout is not None else "no connection in time"
    if isinstance(err, requests.exceptions.ReadTimeout):
        return waited
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the connection broke in the middle of the answer (did the server crash?)"
    text = str(err)
    if isinstance(err, requests.exceptions.ConnectionError):
        if "Read timed out" in text:  # requests reports a timeout while streaming the body this way
            return waited
        if "Connection refused" in text or "Errno 111" in text:
            return "connection refused (nothing listens there)"
        if "RemoteDisconnected" in text or "without response" in text or "Connection aborted" in text:
            return "the server closed the connection without answering"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "unknown host name"
        return f"connection failed: {text[:200]}"
    return text[:300]


DOWN_HINT = "is the server running and ready? `inv status`, `inv logs`; or check --url"
HUNG_HINT = "the server accepted the connection but did not answer: it may be hung or overloaded (`inv logs`); " \
            "--timeout waits longer"


def get_json(sess, url: str, timeout: float, purpose: str = "smoke test"):
    """GET and decode JSON: (status, data), data None when the body is not JSON; RequestFailed
    (exit 7) naming `purpose` when nothing answers."""
    import requests

    from gpuops.errors import RequestFailed

    try:
        resp = sess.get(url, timeout=timeout)
    except requests.exceptions.RequestException as err:
        hint = HUNG_HINT if isinstance(err, requests.exceptions.Timeout) else DOWN_HINT
        raise RequestFailed(f"{purpose} failed: GET {url}: {transport_cause(err, timeout)}", hint=hint) from None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def fetch_model(base: str, *, timeout: float = 10.0, session=None, purpose: str = "smoke test") -> str | None:
    """The first model id of GET /v1/models, or None when the server has no such route (in-house
    servers: then no model name is sent)."""
    if session is None:
        with new_session() as own:
            return fetch_model(base, timeout=timeout, session=own, purpose=purpose)
    status, data = get_json(session, f"{base}{MODELS_PATH}", timeout, purpose)
    ids = model_ids(data) if status == 200 else []
    return ids[0] if ids else None
