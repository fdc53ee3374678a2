"""The smoke test: one real request to the running server, and what it answered, how fast.

    >>> result = run_smoke("http://127.0.0.1:8000", "vllm", prompt="Why is the sky blue?", max_tokens=64)
    >>> result.summary()
    '64 tokens in 1.23 s (TTFT 0.120 s, 53.2 tok/s) from Qwen/Qwen3-8B: "The sky looks blue because…"'
    >>> resolve_preset(DEFAULTS["smoke_presets"], "hello", None, None)
    ('Say hello in one short sentence.', 16)

OpenAI-compatible servers (vLLM, SGLang, llama-server, mlx_lm, the demo, in-house uvicorn) get
`/v1/completions` or `/v1/chat/completions`, streamed as server-sent events; ComfyUI, which has no
text model, gets `/system_stats` and a look at its queue. Failures raise RequestFailed (exit 7)
saying what failed, where, and what to try; the task adds the server's last log lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gpuops.checks import number
from gpuops.errors import GpuopsError, RequestFailed, UsageError
from gpuops.server.logs import add_log_tail

OPENAI_ENGINES = frozenset({"openai", "demo", "uvicorn", "vllm", "sglang", "llama.cpp", "mlx_lm", "generic"})
STATS_ENGINES = frozenset({"comfyui"})
DEFAULT_PRESET = "blue_sky"
DEFAULT_MAX_TOKENS = 64
PRESET_KEYS = ("prompt", "max_tokens")
ANSWER_EXCERPT = 80  # characters of the answer shown in the one-line summary


# ---------------------------------------------------------------- presets (pure)


def merge_presets(config_presets, recipe_presets) -> dict[str, dict]:
    """Config presets (defaults, invoke.yaml) with AGENTS.local.md's laid over them, name by name."""
    merged = {str(k): dict(v) if hasattr(v, "items") else v for k, v in (config_presets or {}).items()}
    merged.update({str(k): dict(v) if hasattr(v, "items") else v for k, v in (recipe_presets or {}).items()})
    return merged


def resolve_preset(presets: dict, name: str | None, prompt: str | None,
                   max_tokens: int | None) -> tuple[str, int]:
    """The prompt and token budget to send: flags beat the preset, the preset beats the defaults.

    No --preset and no --prompt means the blue_sky preset (or the first one, if blue_sky was removed).
    """
    preset: dict = {}
    chosen = None
    if name is not None or prompt is None:
        chosen = name if name is not None else (DEFAULT_PRESET if DEFAULT_PRESET in presets else next(iter(presets), None))
        if chosen is None:
            raise UsageError("no smoke presets are configured and no --prompt was given",
                             hint="pass --prompt TEXT, or add presets under `gpuops.smoke_presets` in invoke.yaml")
        if chosen not in presets:
            known = ", ".join(sorted(presets)) or "none"
            raise UsageError(f"unknown smoke preset '{chosen}' (known: {known})",
                             hint="add it under `gpuops.smoke_presets` in invoke.yaml, or in the ```json block "
                                  "under the '## Smoke presets' heading of AGENTS.local.md")
        preset = presets[chosen]
        if not hasattr(preset, "get"):
            raise UsageError(f"smoke preset '{chosen}' must be a mapping like "
                             '{"prompt": "...", "max_tokens": 64}, not ' + repr(preset))
        unknown = sorted(set(preset) - set(PRESET_KEYS))
        if unknown:
            raise UsageError(f"smoke preset '{chosen}' has unknown key(s) {', '.join(unknown)}",
                             hint=f"a preset takes only: {', '.join(PRESET_KEYS)}")
        if prompt is None and not (isinstance(preset.get("prompt"), str) and preset["prompt"].strip()):
            raise UsageError(f"smoke preset '{chosen}' has no prompt", hint='give it "prompt": "some text"')
    final_prompt = prompt if prompt is not None else preset["prompt"]
    if not final_prompt.strip():
        raise UsageError("the smoke prompt is empty", hint="pass --prompt with some text")
    final_max = max_tokens if max_tokens is not None else preset.get("max_tokens", DEFAULT_MAX_TOKENS)
    source = "--max-tokens" if max_tokens is not None else f"smoke preset '{chosen}': max_tokens"
    try:
        if isinstance(final_max, bool) or isinstance(final_max, float) and not final_max.is_integer():
            raise ValueError
        final_max = int(final_max)
        if final_max < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"{source} must be a whole number of at least 1, not {final_max!r}",
                         hint="e.g. --max-tokens 64" if max_tokens is not None
                         else 'give it "max_tokens": 64, or pass --max-tokens') from None
    return final_prompt, final_max


# ---------------------------------------------------------------- request shapes (pure)


def base_url(url: str) -> str:
    """`http://host:port` from what users type: trailing slashes and an OpenAI-style `/v1` dropped."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"'{url}' is not a server URL", hint="use the form http://HOST:PORT, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class SmokeRequest:
    method: str
    path: str
    body: dict | None
    stream: bool


def request_for(engine: str, *, prompt: str, max_tokens: int, stream: bool = True, chat: bool = False,
                model: str | None = None) -> SmokeRequest:
    """The request a smoke test sends to an engine (temperature 0, so answers repeat run to run)."""
    if engine in STATS_ENGINES:
        return SmokeRequest("GET", "/system_stats", None, False)
    if engine not in OPENAI_ENGINES:
        known = ", ".join(sorted(OPENAI_ENGINES | STATS_ENGINES))
        raise UsageError(f"no smoke request known for engine '{engine}'", hint=f"pass --engine, one of: {known}")
    body: dict = {"max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if model:
        body["model"] = model
    if stream:
        # Only with stream=True: vLLM rejects stream_options on a non-streamed request.
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        return SmokeRequest("POST", "/v1/chat/completions", body, stream)
    body["prompt"] = prompt
    return SmokeRequest("POST", "/v1/completions", body, stream)


# ---------------------------------------------------------------- answers (pure)


class MalformedAnswer(ValueError):
    """The server's answer does not have the OpenAI shape (turned into RequestFailed with the URL)."""


class ServerReportedError(ValueError):
    """The answer carries an error object (e.g. vLLM's mid-stream `{"error": {...}}`)."""


def error_message(data) -> str | None:
    """The human message inside an error body: OpenAI `{"error": {"message"}}`, FastAPI `{"detail"}`, ..."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    for key in ("detail", "message"):
        if data.get(key):
            return data[key] if isinstance(data[key], str) else json.dumps(data[key])
    return None


def _choice_parts(choice: dict) -> tuple[str, str]:
    """(answer text, reasoning text) of one choice of a chunk or a whole response."""
    if not isinstance(choice, dict):
        raise MalformedAnswer(f"a choice is {type(choice).__name__}, not an object")
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict):
            # reasoning models: vLLM/SGLang put the thinking in reasoning_content (newer vLLM: reasoning)
            reasoning = part.get("reasoning_content") or part.get("reasoning") or ""
            return part.get("content") or "", reasoning if isinstance(reasoning, str) else ""
    text = choice.get("text")
    return (text if isinstance(text, str) else ""), ""


@dataclass
class StreamParser:
    """Reads an OpenAI-style SSE stream line by line; `feed` returns the new text of each line.

    >>> p = StreamParser(); p.feed('data: {"choices": [{"text": "Hi"}]}'), p.feed("data: [DONE]"), p.done
    ('Hi', '', True)
    """

    text: str = ""
    reasoning: str = ""
    content_chunks: int = 0  # chunks that carried text: one token each on the engines gpuops knows
    usage_tokens: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    done: bool = False
    lines: int = 0

    def feed(self, line: str) -> str:
        self.lines += 1
        line = line.strip("\r")
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return ""  # blank separators, keep-alive comments, SSE fields gpuops does not need
        if line.startswith("error:"):  # llama-server's error event
            raise ServerReportedError(line[len("error:"):].strip())
        if not line.startswith("data:"):
            raise MalformedAnswer(f"line {self.lines} is not a server-sent event: {line[:120]!r}")
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise MalformedAnswer(f"line {self.lines} is not JSON: {payload[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise MalformedAnswer(f"line {self.lines} is JSON but not an object: {payload[:120]!r}")
        if "error" in chunk:
            raise ServerReportedError(error_message(chunk) or payload[:300])
        self.model = chunk.get("model") or self.model
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        choices = chunk.get("choices")
        if not choices:
            return ""  # the usage chunk has choices: []
        if not isinstance(choices, list):
            raise MalformedAnswer(f"line {self.lines}: 'choices' is not a list")
        text, reasoning = _choice_parts(choices[0])
        self.finish_reason = choices[0].get("finish_reason") or self.finish_reason
        if text or reasoning:
            self.content_chunks += 1
            self.text += text
            self.reasoning += reasoning
        return text + reasoning


def parse_whole(data) -> tuple[str, str, int | None, str | None, str | None]:
    """(text, reasoning, completion tokens, finish reason, model) of a non-streamed answer."""
    if not isinstance(data, dict):
        raise MalformedAnswer(f"the answer is JSON {type(data).__name__}, not an object")
    if "error" in data and not data.get("choices"):
        raise ServerReportedError(error_message(data) or json.dumps(data)[:300])
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedAnswer("the answer has no 'choices'")
    text, reasoning = _choice_parts(choices[0])
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None
    return text, reasoning, tokens, choices[0].get("finish_reason"), data.get("model")


def log_pointer(log_shown: bool) -> str:
    """Where the server's own account is: in the log lines that follow, or `inv logs` / its console."""
    return "its log below shows why (`inv logs` for more)" if log_shown else \
        "its log says why (`inv logs` for a server gpuops started)"


def http_error_hint(status: int, message: str, req: SmokeRequest, *, log_shown: bool = False) -> str:
    """What to try after an HTTP error, by status and what the server said (log_shown: the server's
    last log lines come with the error)."""
    low = message.lower()
    if status == 404 and "model" in low:
        return "the model name is wrong: pass --model with an id from GET /v1/models"
    if status in (404, 405):
        other = "without --chat" if req.path.endswith("/chat/completions") else "--chat"
        return f"this server does not serve {req.path}: try {other}, or check --url / the engine (--engine)"
    if status in (401, 403):
        return "the server wants credentials (e.g. vLLM started with --api-key); smoke sends none"
    if status == 400 and ("chat template" in low or "chat_template" in low):
        return "the model has no chat template: drop --chat (plain /v1/completions)"
    if status == 400:
        return "the server rejected the request: see its message; try a smaller --max-tokens, or with/without --chat"
    if status in (429, 503):
        return "the server is busy or still loading: wait a little and retry (`inv status`)"
    return f"the server failed while answering: {log_pointer(log_shown)}"


# ---------------------------------------------------------------- result


def _wrapped(text: str, width: int = 100) -> list[str]:
    """Answer text indented and wrapped; the model's own line breaks are kept."""
    import textwrap

    return [f"  {part}" for line in text.splitlines() for part in (textwrap.wrap(line, width) or [""])]


def _fmt_s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.3f} s"


@dataclass
class SmokeResult:
    text: str
    output_tokens: int | None
    ttft_s: float | None  # None when not streamed (the whole answer arrives at once)
    total_s: float
    model: str | None
    endpoint: str  # e.g. "/v1/completions"
    url: str = ""
    engine: str = ""
    stream: bool = True
    tokens_from: str | None = None  # "usage" (the server counted) or "chunks" (gpuops counted)
    finish_reason: str | None = None
    reasoning: str = ""
    details: list[str] = field(default_factory=list)  # ComfyUI: one line per device, the queue

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second after the first one (the decode rate); None when it cannot be told."""
        if not self.output_tokens or self.output_tokens < 2 or self.ttft_s is None:
            return None
        span = self.total_s - self.ttft_s
        return (self.output_tokens - 1) / span if span > 0 else None

    def stats(self) -> str:
        """`64 tokens in 1.23 s (TTFT 0.120 s, 53.2 tok/s)`"""
        if self.output_tokens is None:
            tokens = "? tokens"
        else:
            tokens = f"{self.output_tokens} token{'s' if self.output_tokens != 1 else ''}"
            if self.tokens_from == "chunks":
                tokens = "~" + tokens
        parts = [f"TTFT {_fmt_s(self.ttft_s)}" if self.stream else "not streamed"]
        if self.decode_tok_s is not None:
            parts.append(f"{self.decode_tok_s:.1f} tok/s")
        return f"{tokens} in {self.total_s:.2f} s ({', '.join(parts)})"

    def summary(self) -> str:
        """One line for the ready banner."""
        if self.engine in STATS_ENGINES:
            return f"{self.text} ({self.total_s:.2f} s)"
        answer = " ".join((self.text or self.reasoning).split())
        if len(answer) > ANSWER_EXCERPT:
            answer = answer[: ANSWER_EXCERPT - 1] + "…"
        who = f" from {self.model}" if self.model else ""
        return f"{self.stats()}{who}: \"{answer}\""

    def render(self, prompt: str | None = None) -> list[str]:
        """The full report `inv smoke` prints."""
        mode = "stream" if self.stream else "no stream"
        if self.engine in STATS_ENGINES:
            return [f"GET {self.url}{self.endpoint}", self.text, *[f"  {d}" for d in self.details],
                    f"answered in {self.total_s:.2f} s"]
        lines = [f"POST {self.url}{self.endpoint}  (model {self.model or 'not named'}, {mode})"]
        if prompt is not None:
            lines.append(f"prompt: {prompt}")
        if self.reasoning:
            lines.append("reasoning:")
            lines += _wrapped(self.reasoning.strip())
        lines.append("answer:")
        lines += _wrapped(self.text.strip() or "(empty)")
        tail = f", finish: {self.finish_reason}" if self.finish_reason else ""
        source = {"usage": "; tokens counted by the server", "chunks": "; tokens counted as streamed chunks (no usage)"}
        lines.append(f"{self.stats()}{tail}{source.get(self.tokens_from, '')}")
        return lines


# ---------------------------------------------------------------- I/O


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


def _fail(what: str, url: str, err: Exception, *, hint: str, timeout: float | None = None,
          purpose: str = "smoke test") -> RequestFailed:
    """RequestFailed for a transport problem, with the cause named plainly."""
    return RequestFailed(f"{purpose} failed: {what} {url}: {transport_cause(err, timeout)}", hint=hint)


DOWN_HINT = "is the server running and ready? `inv status`, `inv logs`; or check --url"
HUNG_HINT = "the server accepted the connection but did not answer: it may be hung or overloaded (`inv logs`); " \
            "--timeout waits longer"


def response_message(resp, limit: int = 300) -> str:
    """The message of an error response: the `message`/`detail` of a JSON body, else the body, on one line."""
    body = resp.text[:4000]
    try:
        message = error_message(json.loads(body)) or body
    except ValueError:
        message = body
    return " ".join(message.split())[:limit] or resp.reason or ""


def _get_json(session, url: str, timeout: float, purpose: str = "smoke test"):
    """GET and decode JSON; (status, data) with data None when the body is not JSON."""
    import requests

    try:
        resp = session.get(url, timeout=timeout)
    except requests.exceptions.Timeout as err:
        raise _fail("GET", url, err, hint=HUNG_HINT, timeout=timeout, purpose=purpose) from None
    except requests.exceptions.RequestException as err:
        raise _fail("GET", url, err, hint=DOWN_HINT, timeout=timeout, purpose=purpose) from None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def fetch_model(base: str, *, timeout: float = 10.0, session=None, purpose: str = "smoke test") -> str | None:
    """The first model id of GET /v1/models, or None when the server has no such route.

    >>> fetch_model("http://127.0.0.1:8000")
    'Qwen/Qwen3-8B'
    """
    import requests

    session = session or requests.Session()
    status, data = _get_json(session, f"{base}/v1/models", timeout, purpose)
    if status != 200 or not isinstance(data, dict):
        return None  # in-house servers without /v1/models: send no model name
    models = data.get("data")
    if isinstance(models, list) and models and isinstance(models[0], dict) and models[0].get("id"):
        return str(models[0]["id"])
    return None


def _gib(n) -> str:
    return f"{n / 2**30:.1f}" if isinstance(n, int | float) else "?"


def comfyui_stats(stats: dict, queue: dict | None) -> tuple[str, list[str]]:
    """One line about a ComfyUI server, and a line per device and for the queue."""
    system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
    devices = stats.get("devices") if isinstance(stats.get("devices"), list) else []
    version = system.get("comfyui_version") or "?"
    head = f"ComfyUI {version} up (PyTorch {system.get('pytorch_version', '?')}), {len(devices)} device(s)"
    details = [f"{d.get('name', d.get('type', '?'))}: {_gib(d.get('vram_free'))} of {_gib(d.get('vram_total'))} GiB free"
               for d in devices if isinstance(d, dict)]
    if isinstance(queue, dict):
        running = len(queue.get("queue_running") or [])
        pending = len(queue.get("queue_pending") or [])
        details.append(f"queue: {running} running, {pending} pending")
        head += f", queue {running} running / {pending} pending"
    return head, details


def _smoke_comfyui(base: str, timeout: float, session) -> SmokeResult:
    t0 = time.monotonic()
    status, stats = _get_json(session, f"{base}/system_stats", timeout)
    if status != 200 or not isinstance(stats, dict):
        raise RequestFailed(f"smoke test failed: GET {base}/system_stats answered HTTP {status}"
                            + ("" if isinstance(stats, dict) else " without JSON"),
                            hint="is this ComfyUI? check --url / --engine")
    q_status, queue = _get_json(session, f"{base}/queue", timeout)
    head, details = comfyui_stats(stats, queue if q_status == 200 else None)
    return SmokeResult(text=head, output_tokens=None, ttft_s=None, total_s=time.monotonic() - t0, model=None,
                       endpoint="/system_stats", url=base, engine="comfyui", stream=False, details=details)


def run_smoke(url: str, engine: str, *, prompt: str, max_tokens: int, stream: bool = True, chat: bool = False,
              model: str | None = None, timeout: float = 60.0,
              on_text: Callable[[str], None] | None = None, log_shown: bool = False) -> SmokeResult:
    """Send one real request and measure it; RequestFailed (exit 7) when the server does not answer well.

    TTFT is the time from just before sending to the first chunk with text; `timeout` bounds the
    whole exchange (model lookup included). `on_text` receives the text as it streams in.
    `log_shown`: the caller adds the server's log lines to a failure (the hints then point at them).
    """
    import requests

    base = base_url(url)
    timeout = number("--timeout", timeout)
    request_for(engine, prompt=prompt, max_tokens=max_tokens)  # unknown engine: UsageError before any I/O
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        if engine in STATS_ENGINES:
            return _smoke_comfyui(base, timeout, session)
        if model is None:
            model = fetch_model(base, timeout=min(timeout, 30.0), session=session)
        req = request_for(engine, prompt=prompt, max_tokens=max_tokens, stream=stream, chat=chat, model=model)
        target = f"{base}{req.path}"
        left = max(0.1, deadline - time.monotonic())
        t0 = time.monotonic()
        try:
            resp = session.post(target, json=req.body, stream=req.stream, timeout=(min(left, 10.0), left))
        except requests.exceptions.Timeout as err:
            raise _fail("POST", target, err, hint=HUNG_HINT, timeout=left) from None
        except requests.exceptions.RequestException as err:
            raise _fail("POST", target, err, hint=DOWN_HINT, timeout=left) from None
        with resp:
            if resp.status_code >= 400:
                message = response_message(resp)
                raise RequestFailed(f"smoke test failed: POST {target} answered HTTP {resp.status_code}: {message}",
                                    hint=http_error_hint(resp.status_code, message, req, log_shown=log_shown))
            try:
                if req.stream:
                    result = _read_stream(resp, t0, deadline, on_text)
                else:
                    result = _read_whole(resp, t0, on_text)
            except requests.exceptions.Timeout as err:
                raise _fail("reading the answer of", target, err, hint=HUNG_HINT, timeout=timeout) from None
            except requests.exceptions.RequestException as err:
                hint = HUNG_HINT if "timed out" in str(err) else DOWN_HINT
                raise _fail("reading the answer of", target, err, hint=hint, timeout=timeout) from None
            except TimeoutError:
                raise RequestFailed(f"smoke test failed: the answer of {target} took longer than {timeout:g} s",
                                    hint="--timeout waits longer; a smaller --max-tokens finishes sooner") from None
            except MalformedAnswer as err:
                raise RequestFailed(f"smoke test failed: malformed answer from {target}: {err}",
                                    hint="is this an OpenAI-compatible server? check --url and --engine"
                                         + (", or try --no-stream" if req.stream else "")) from None
            except ServerReportedError as err:
                raise RequestFailed(f"smoke test failed: {target} reported an error while answering: {err}",
                                    hint=f"the engine failed on this request: {log_pointer(log_shown)}") from None
    result.url, result.engine, result.endpoint, result.stream = base, engine, req.path, req.stream
    result.model = result.model or model
    if not result.text and not result.reasoning:
        raise RequestFailed(f"smoke test failed: {target} answered, but with no text "
                            f"(finish reason: {result.finish_reason or 'none'})",
                            hint="check the model and its chat template; try with or without --chat, "
                                 "or a larger --max-tokens")
    return result


def _read_stream(resp, t0: float, deadline: float, on_text) -> SmokeResult:
    parser = StreamParser()
    ttft = None
    for raw in resp.iter_lines(decode_unicode=False):
        piece = parser.feed(raw.decode("utf-8", "replace"))
        if piece:
            if ttft is None:
                ttft = time.monotonic() - t0
            if on_text:
                on_text(piece)
        if parser.done:
            break
        if time.monotonic() > deadline:
            raise TimeoutError
    total = time.monotonic() - t0
    if not parser.done and parser.finish_reason is None:
        raise MalformedAnswer(f"the stream ended after {parser.lines} line(s) without [DONE] or a finish reason "
                              "(the server closed it early)")
    tokens, source = (parser.usage_tokens, "usage") if parser.usage_tokens is not None else (parser.content_chunks, "chunks")
    return SmokeResult(text=parser.text, output_tokens=tokens, ttft_s=ttft, total_s=total, model=parser.model,
                       endpoint="", tokens_from=source, finish_reason=parser.finish_reason,
                       reasoning=parser.reasoning)


def _read_whole(resp, t0: float, on_text) -> SmokeResult:
    try:
        data = resp.json()
    except ValueError:
        raise MalformedAnswer(f"the answer is not JSON: {resp.text[:120]!r}") from None
    total = time.monotonic() - t0
    text, reasoning, tokens, finish, model = parse_whole(data)
    if on_text and (text or reasoning):
        on_text(text or reasoning)
    return SmokeResult(text=text, output_tokens=tokens, ttft_s=None, total_s=total, model=model, endpoint="",
                       stream=False, tokens_from="usage" if tokens is not None else None, finish_reason=finish,
                       reasoning=reasoning)


def load_presets(config_presets, agents_file: str | Path | None) -> dict[str, dict]:
    """Config presets merged with those of AGENTS.local.md (when that file exists)."""
    recipe_presets: dict = {}
    if agents_file and Path(agents_file).is_file():
        from gpuops.server.recipes import load_recipes

        recipe_presets = getattr(load_recipes(agents_file), "smoke_presets", None) or {}
    return merge_presets(config_presets, recipe_presets)


@dataclass(frozen=True)
class Target:
    """The server a smoke test or profile talks to."""

    url: str
    engine: str
    log_path: str | None = None
    record: object | None = None  # state.StateRecord of the live server, when gpuops started it
    note: str | None = None  # said with a failure: e.g. that the server gpuops started at this URL has exited


def with_server_log(err: GpuopsError, target: Target) -> GpuopsError:
    """A failed request's error with what gpuops knows of the server: the note, then its last log lines."""
    if target.note:
        err.details.append(target.note)
    return add_log_tail(err, target.log_path)


def _same_url(rec, base: str) -> bool:
    if not rec.url:
        return False
    try:
        return base_url(rec.url) == base
    except UsageError:
        return False


def find_target(run_dir, *, url: str | None = None, server: str | None = None,
                engine: str | None = None) -> Target:
    """`--url` (engine "openai" unless --engine), else the running server's state record.

    A --url that is a server gpuops started still finds its record: the log tail and the process
    (vLLM's profiler folder) come from it. If that server has exited, its log still comes with a
    failure, so a refused connection shows why the server is gone.
    """
    from gpuops.server import procs, state

    if url:
        base = base_url(url)
        same = sorted((r for r in state.all_records(run_dir) if _same_url(r, base)), key=lambda r: r.started_at)
        live = [r for r in same if procs.matches(r.pid, r.create_time)]
        if live:
            return Target(base, engine or live[-1].engine, live[-1].log_path, live[-1])
        if same:
            rec = same[-1]
            state_word = "was stopped" if rec.stopped_at else "has exited"
            return Target(base, engine or rec.engine, rec.log_path,
                          note=f"server '{rec.name}' (pid {rec.pid}), which gpuops started at this URL at "
                               f"{state.started_text(rec)}, {state_word}")
        return Target(base, engine or "openai")
    rec = state.find_running(run_dir, server)
    if not rec.url:
        raise UsageError(f"server '{rec.name}' has no URL (its command names no port)",
                         hint="pass --url http://HOST:PORT")
    return Target(rec.url, engine or rec.engine, rec.log_path, rec)


# ---------------------------------------------------------------- start-server's automatic smoke test


@dataclass(frozen=True)
class SmokePlan:
    """What start-server's smoke test will send, settled (and checked) before the server starts.

    >>> plan_smoke(DEFAULTS["smoke_presets"], "hello")
    SmokePlan(prompt='Say hello in one short sentence.', max_tokens=16, chat=False, timeout=60.0)
    """

    prompt: str
    max_tokens: int
    chat: bool = False
    timeout: float = 60.0


def plan_smoke(presets: dict, preset: str | None, *, chat: bool = False, timeout=60.0) -> SmokePlan:
    """UsageError (exit 2) for an unknown preset or a bad gpuops.smoke_timeout: before anything starts."""
    prompt, max_tokens = resolve_preset(presets, preset, None, None)
    try:
        seconds = number("gpuops.smoke_timeout", timeout)
    except UsageError as err:
        err.hint = "set gpuops.smoke_timeout to a number of seconds (invoke.yaml, or INVOKE_GPUOPS_SMOKE_TIMEOUT)"
        raise
    return SmokePlan(prompt, max_tokens, chat=bool(chat), timeout=float(seconds))


BANNER_EXCERPT = 110  # characters of a failure shown in the ready banner; the full error follows it


def failure_line(err: GpuopsError, url: str | None = None) -> str:
    """The banner's one line for a failed smoke test; the banner names the URL, the error below the rest.

    >>> failure_line(RequestFailed("smoke test failed: POST http://h:1/v1/completions answered HTTP 500: boom"),
    ...              "http://h:1")
    'FAILED: POST /v1/completions answered HTTP 500: boom (details below)'
    """
    text = err.message.removeprefix("smoke test failed: ")
    if url:
        text = text.replace(base_url(url), "")
    if len(text) > BANNER_EXCERPT:
        text = text[: BANNER_EXCERPT - 1].rstrip() + "…"
    return f"FAILED: {text} (details below)"


def auto_smoke(plan: SmokePlan, record) -> tuple[str, GpuopsError | None]:
    """Run the planned smoke test against a server that just became ready: (banner line, error or None).

    The error, when there is one, carries the server's last log lines; the caller shows the banner,
    then raises it (exit 7).
    """
    if not record.url:
        return "skipped (the server's command names no port)", None
    try:
        result = run_smoke(record.url, record.engine, prompt=plan.prompt, max_tokens=plan.max_tokens,
                           chat=plan.chat, timeout=plan.timeout, log_shown=bool(record.log_path))
    except RequestFailed as err:
        return failure_line(err, record.url), add_log_tail(err, record.log_path)
    except GpuopsError as err:  # e.g. an engine smoke has no request for: nothing in the log explains it
        return failure_line(err, record.url), err
    return result.summary(), None
