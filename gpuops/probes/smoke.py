"""The smoke test: one real request to the running server, and what it answered, how fast.

    result = smoke_target(find_target(RunDir("do_not_commit")), prompt="Why is the sky blue?", max_tokens=64)
    result.summary()
    # -> '64 tokens in 1.23 s (TTFT 0.120 s, 53.2 tok/s) from Qwen/Qwen3-8B: "The sky looks blue because…"'
    result.as_dict()["output_tokens"], result.as_dict()["tokens_from"]   # -> (64, 'usage')

    >>> from gpuops.settings import DEFAULTS
    >>> resolve_preset(DEFAULTS["smoke_presets"], "hello", None, None)
    ('Say hello in one short sentence.', 16)

OpenAI-compatible servers (vLLM, SGLang, llama-server, mlx_lm, the demo, in-house uvicorn) get
`/v1/completions` or `/v1/chat/completions` (bodies and stream parsing from gpuops.probes.openai),
streamed as server-sent events; ComfyUI, which has no text model, gets `/system_stats` and a look at
its queue. Failures raise RequestFailed (exit 7) saying what failed, where, and what to try;
`smoke_target` adds what gpuops knows of the server (its last log lines). cli/render_probes.py
turns a SmokeResult into text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.checks import number
from gpuops.errors import GpuopsError, RequestFailed, UsageError
from gpuops.probes.openai import (
    API_PATHS,
    DOWN_HINT,
    HUNG_HINT,
    OPENAI_ENGINES,
    MalformedAnswer,
    ServerReportedError,
    StreamParser,
    base_url,
    fetch_model,
    get_json,
    new_session,
    parse_whole,
    request_body,
    response_message,
    transport_cause,
    usage_tokens,
)
from gpuops.probes.target import Target, with_server_log
from gpuops.server.logs import add_log_tail

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
    api = "chat" if chat else "completion"
    body = request_body(api, model, prompt, max_tokens=max_tokens, stream=stream, temperature=0)
    return SmokeRequest("POST", API_PATHS[api], body, stream)


# ---------------------------------------------------------------- what to try after a failure (pure)


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
        return ("the server wants credentials (e.g. vLLM started with --api-key): set OPENAI_API_KEY to its key "
                "(gpuops sends it as a Bearer token)")
    if status == 400 and ("chat template" in low or "chat_template" in low):
        return "the model has no chat template: drop --chat (plain /v1/completions)"
    if status == 400:
        return "the server rejected the request: see its message; try a smaller --max-tokens, or with/without --chat"
    if status in (429, 503):
        return "the server is busy or still loading: wait a little and retry (`inv status`)"
    return f"the server failed while answering: {log_pointer(log_shown)}"


# ---------------------------------------------------------------- result


def _fmt_s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.3f} s"


@dataclass
class SmokeResult:
    """What one smoke request answered, and how fast (times in seconds)."""

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
    prompt: str | None = None  # what was sent (None for ComfyUI, which gets no prompt)
    prompt_tokens: int | None = None  # from the server's usage, when it gave one

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

    def as_dict(self) -> dict:
        """The fields of `inv smoke --json` (docs/json.md), decode_tok_s included."""
        data = asdict(self)
        data["decode_tok_s"] = None if self.decode_tok_s is None else round(self.decode_tok_s, 3)
        return data


# ---------------------------------------------------------------- I/O


def _fail(what: str, url: str, err: Exception, *, hint: str, timeout: float | None = None,
          purpose: str = "smoke test") -> RequestFailed:
    """RequestFailed for a transport problem, with the cause named plainly."""
    return RequestFailed(f"{purpose} failed: {what} {url}: {transport_cause(err, timeout)}", hint=hint)


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
    status, stats = get_json(session, f"{base}/system_stats", timeout)
    if status != 200 or not isinstance(stats, dict):
        raise RequestFailed(f"smoke test failed: GET {base}/system_stats answered HTTP {status}"
                            + ("" if isinstance(stats, dict) else " without JSON"),
                            hint="is this ComfyUI? check --url / --engine")
    q_status, queue = get_json(session, f"{base}/queue", timeout)
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
    with new_session() as session:
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
    result.prompt = prompt
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
                       reasoning=parser.reasoning, prompt_tokens=parser.prompt_tokens)


def _read_whole(resp, t0: float, on_text) -> SmokeResult:
    try:
        data = resp.json()
    except ValueError:
        raise MalformedAnswer(f"the answer is not JSON: {resp.text[:120]!r}") from None
    total = time.monotonic() - t0
    text, reasoning, tokens, finish, model = parse_whole(data)
    prompt_tokens, _ = usage_tokens(data)
    if on_text and (text or reasoning):
        on_text(text or reasoning)
    return SmokeResult(text=text, output_tokens=tokens, ttft_s=None, total_s=total, model=model, endpoint="",
                       stream=False, tokens_from="usage" if tokens is not None else None, finish_reason=finish,
                       reasoning=reasoning, prompt_tokens=prompt_tokens)


def load_presets(config_presets, agents_file: str | Path | None) -> dict[str, dict]:
    """Config presets merged with those of AGENTS.local.md (when that file exists)."""
    recipe_presets: dict = {}
    if agents_file and Path(agents_file).is_file():
        from gpuops.server.recipes import load_recipes

        recipe_presets = getattr(load_recipes(agents_file), "smoke_presets", None) or {}
    return merge_presets(config_presets, recipe_presets)


def smoke_target(target: Target, *, prompt: str, max_tokens: int, stream: bool = True, chat: bool = False,
                 model: str | None = None, timeout: float = 60.0,
                 on_text: Callable[[str], None] | None = None) -> SmokeResult:
    """`inv smoke`'s use case: run_smoke against a found server (gpuops.probes.target); a failure
    carries what gpuops knows of that server (a note that it has exited, its last log lines)."""
    try:
        return run_smoke(target.url, target.engine, prompt=prompt, max_tokens=max_tokens, stream=stream, chat=chat,
                         model=model, timeout=timeout, on_text=on_text, log_shown=bool(target.log_path))
    except RequestFailed as err:
        raise with_server_log(err, target) from None


# ---------------------------------------------------------------- start-server's automatic smoke test


@dataclass(frozen=True)
class SmokePlan:
    """What start-server's smoke test will send, settled (and checked) before the server starts.

    >>> from gpuops.settings import DEFAULTS
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
