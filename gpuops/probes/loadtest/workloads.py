"""What the load is made of, settled once per run before any load: token counting, the context check,
datasets; and, while it runs, the fail-fast rule for requests that all fail the same way.

    target, rows = prepare(opts, target, write=print)   # after runner.preflight, before the report folder
    save(target, rows, report_dir)                       # the chosen dataset prompts, for every Locust process

`target.workload` then says how prompt lengths are counted (`lengths`: "tokens" or "words", and by
what), the calibration the Locust processes build exact-length prompts from, the model's context
length when the server says it, and where the dataset prompts are. It travels in plan.json.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from gpuops.errors import UsageError
from gpuops.probes.loadtest import prompts, tokenize
from gpuops.probes.loadtest.lengths import Lengths

SHIPPED = Path(__file__).with_name("data") / "prompts.jsonl"
SHIPPED_NAME = "builtin"
APPROXIMATE = "prompt lengths are approximate: words"
DATASET_MAX_TOKENS = 64  # --max-tokens dataset, for a prompt whose dataset row gives no answer length
EMBEDDINGS_PATH = "/v1/embeddings"


# ---------------------------------------------------------------- datasets


def load_dataset(spec: str) -> list[dict]:
    """Rows `{"prompt": TEXT}` or `{"messages": [...]}` (with `output_tokens` when the file gives it) from
    a JSONL file of prompts or chat messages, a ShareGPT-format JSON file, or `builtin` (shipped)."""
    path = SHIPPED if spec == SHIPPED_NAME else Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--dataset {spec}: no such file",
                         hint=f"a JSONL file of prompts, a ShareGPT JSON file, or '{SHIPPED_NAME}' (shipped)")
    text = path.read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    rows: list[dict] = []
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UsageError(f"--dataset {spec}: not valid JSON ({err})") from None
        for i, item in enumerate(data):
            rows.extend(_row(item, f"{path} item {i + 1}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise UsageError(f"--dataset {spec}: line {n} is not JSON",
                                 hint='one object a line: {"prompt": "..."} or {"messages": [...]}') from None
            rows.extend(_row(item, f"{path} line {n}"))
    if not rows:
        raise UsageError(f"--dataset {spec}: no prompts in it",
                         hint='JSONL lines {"prompt": "..."} / {"messages": [...]}, or ShareGPT "conversations"')
    return rows


def _row(item, where: str) -> list[dict]:
    if not isinstance(item, dict):
        raise UsageError(f"{where}: an object was expected, not {type(item).__name__}")
    out = item.get("output_tokens")
    extra = {"output_tokens": out} if isinstance(out, int) and out > 0 else {}
    if isinstance(item.get("conversations"), list):  # ShareGPT: the first human turn, the reply's length
        turns = [t for t in item["conversations"] if isinstance(t, dict) and isinstance(t.get("value"), str)]
        if len(turns) < 2 or turns[0].get("from") not in ("human", "user"):
            return []  # as vllm bench serve: conversations without a human turn and a reply are skipped
        return [{"prompt": turns[0]["value"], "reply": turns[1]["value"], **extra}]
    for key in ("prompt", "text", "question"):
        if isinstance(item.get(key), str) and item[key].strip():
            return [{"prompt": item[key], **extra}]
    messages = item.get("messages")
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        return [{"messages": messages, **extra}]
    raise UsageError(f"{where}: no 'prompt', 'text', 'messages' or ShareGPT 'conversations'",
                     hint='e.g. {"prompt": "Why is the sky blue?"}')


def select(rows: list[dict], *, api: str, count, seed: int, max_prompts: int | None,
           min_tokens: int | None, max_tokens: int | None) -> tuple[list[dict], dict]:
    """The rows a run sends, shuffled by the seed, each with its `prompt_tokens` (`count` of its text);
    and what was left out, by reason."""
    skipped: dict[str, int] = {}
    order = list(rows)
    random.Random(seed).shuffle(order)
    chosen = []
    for row in order:
        if "messages" in row and api != "chat":
            skipped["chat messages (need --chat)"] = skipped.get("chat messages (need --chat)", 0) + 1
            continue
        text = row.get("prompt") or "\n".join(m["content"] for m in row.get("messages", []))
        n = count(text)
        if (min_tokens and n < min_tokens) or (max_tokens and n > max_tokens):
            skipped["outside the length filter"] = skipped.get("outside the length filter", 0) + 1
            continue
        entry = {k: v for k, v in row.items() if k != "reply"}
        if "reply" in row and "output_tokens" not in row:  # ShareGPT: the answer's length, as vllm bench serve
            entry["output_tokens"] = max(1, count(row["reply"]))
        chosen.append({**entry, "prompt_tokens": n})
        if max_prompts and len(chosen) >= max_prompts:
            break
    return chosen, skipped


# ---------------------------------------------------------------- before the run


def _words(text: str) -> int:
    return len(text.split())


def context_length(url: str, model: str | None, timeout: float = 10.0) -> int | None:
    """The model's context length when the server says it: `max_model_len` in GET /v1/models (vLLM,
    SGLang, the demo), else llama.cpp's `n_ctx` in GET /props."""
    import requests

    from gpuops.probes.openai import auth_headers

    try:
        data = requests.get(f"{url}/v1/models", headers=auth_headers(), timeout=timeout).json()
        for m in data.get("data") or []:
            if isinstance(m, dict) and (model is None or m.get("id") == model) and isinstance(m.get("max_model_len"), int):
                return m["max_model_len"]
    except (requests.RequestException, ValueError, AttributeError):
        pass
    try:
        props = requests.get(f"{url}/props", headers=auth_headers(), timeout=timeout).json()
        n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        if isinstance(n_ctx, int) and n_ctx > 0:
            return n_ctx
    except (requests.RequestException, ValueError, AttributeError):
        pass
    return None


def prepare(opts, target, write=lambda line: None):
    """Count tokens as the server will (or say that lengths are words), check prompt + output against
    the context length the server states, load the dataset. Returns (target with `workload`, rows)."""
    counter = tokenize.local_counter(opts.tokenizer) if opts.tokenizer else (
        tokenize.server_counter(target.url, target.model, engine=target.engine))
    cal = None
    problem = None
    if counter is not None and not opts.dataset:
        cal = tokenize.calibrate(counter.count, prompts.VOCABULARY, counter.source)
        if cal is None:
            problem = f"{counter.source} does not count the prompt words as one token each"
        else:
            problem = _verify(counter.count, cal, opts)
            if problem:
                cal = None
    limit = (counter.max_model_len if counter else None) or context_length(target.url, target.model)
    workload = {"lengths": "tokens" if cal else "words", "source": counter.source if counter else None,
                "calibration": cal.as_dict() if cal else None, "max_model_len": limit, "dataset": None,
                "note": None}
    if cal is None:
        why = problem or ("no --tokenizer, and the server has no POST /tokenize" if counter is None else "")
        workload["note"] = f"{APPROXIMATE} ({why})"
        if not opts.dataset:
            write(f"note: {workload['note']}")
    rows: list[dict] = []
    if opts.dataset:
        rows, skipped = select(load_dataset(opts.dataset), api=opts.api, count=counter.count if counter else _words,
                               seed=opts.seed, max_prompts=opts.max_prompts, min_tokens=opts.dataset_min_tokens,
                               max_tokens=opts.dataset_max_tokens)
        if not rows:
            left = ", ".join(f"{n} x {why}" for why, n in skipped.items()) or "none"
            raise UsageError(f"--dataset {opts.dataset}: no prompt is left to send (left out: {left})",
                             hint="widen --dataset-min-tokens/--dataset-max-tokens, or use --chat for chat messages")
        workload["dataset"] = {"name": opts.dataset, "prompts": len(rows), "skipped": skipped,
                               "counted_in": "tokens" if counter else "words"}
        if counter:
            workload["note"] = None
            workload["lengths"] = "tokens"
        else:
            workload["note"] = f"{APPROXIMATE} (dataset prompts counted in words for the filters)"
        write(f"dataset {opts.dataset}: {len(rows)} prompt(s)"
              + (f" ({', '.join(f'{n} x {why}' for why, n in skipped.items())} left out)" if skipped else ""))
    if limit:
        check_context(opts, limit, rows, counted="tokens" if counter else "words")
    return replace(target, workload=workload), rows


def _verify(count, cal: tokenize.Calibration, opts) -> str | None:
    """Build the shortest and the longest prompt this run can send and count them."""
    maker = prompts.PromptMaker(opts.seed, cal.as_dict(), opts.shared_prefix_tokens)
    lengths = Lengths.of(opts.prompt_tokens)
    checks = []
    for n in sorted({lengths.low, (lengths.low + lengths.high) // 2, lengths.high}):
        if n <= cal.overhead:
            return f"a prompt of {n} token(s) is not longer than what every prompt carries ({cal.overhead})"
        for use_prefix in {False, bool(maker.prefix)}:
            checks.append((maker.make(n, maker.salt("check", 0, n), use_prefix), n))
    problems = tokenize.verify(count, cal, checks)
    return problems[0] if problems else None


def output_high(opts, rows: list[dict] | None = None) -> int:
    """The longest answer a run asks for (`--max-tokens dataset`: the dataset's longest)."""
    if opts.max_tokens == "dataset":
        return max((r.get("output_tokens") or DATASET_MAX_TOKENS for r in rows or []), default=DATASET_MAX_TOKENS)
    return Lengths.of(opts.max_tokens).high


def check_context(opts, limit: int, rows: list[dict], counted: str) -> None:
    """Prompt + output tokens asked for against the model's context length: UsageError (exit 2) before
    anything is sent, naming what to change."""
    out_high = output_high(opts, rows)
    if rows:
        longest = max(r["prompt_tokens"] for r in rows)
        prompt_what = f"the longest dataset prompt ({longest} {counted})"
        fix = "--dataset-max-tokens or --max-tokens"
    else:
        longest = Lengths.of(opts.prompt_tokens).high
        prompt_what = f"a prompt of up to {longest} {counted} (--prompt-tokens {opts.prompt_tokens})"
        fix = "--prompt-tokens or --max-tokens"
    if opts.api == "embeddings":
        if longest > limit:
            raise UsageError(f"{prompt_what} is longer than the model's context length, {limit} tokens",
                             hint=f"lower {fix.split(' or ')[0]}")
        return
    turns = max(1, opts.turns or 1)
    need = turns * (longest + out_high)
    if need > limit:
        per = f"{longest} + {out_high}" + (f", times {turns} turns carried in the conversation" if turns > 1 else "")
        raise UsageError(
            f"{prompt_what} plus up to {out_high} output tokens (--max-tokens {opts.max_tokens}) needs {need} "
            f"tokens ({per}), but the model's context length is {limit}, as the server states it",
            hint=f"lower {fix}" + (" or --turns" if turns > 1 else "") + f" so that they fit in {limit}")


def save(target, rows: list[dict], report_dir: Path):
    """Write the chosen dataset prompts into the report folder (prompts.jsonl) and point the plan at them."""
    if not rows:
        return target
    path = report_dir / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    workload = dict(target.workload or {})
    workload["dataset"] = {**(workload.get("dataset") or {}), "file": str(path.resolve())}
    return replace(target, workload=workload)


def summary_fields(target) -> dict:
    """What summary.json says about the workload: how lengths were counted, the dataset."""
    w = target.workload or {}
    return {"prompt_lengths": "tokens" if w.get("lengths") == "tokens" else APPROXIMATE,
            "tokens_counted_by": w.get("source"), "max_model_len": w.get("max_model_len"),
            "dataset": {k: v for k, v in (w.get("dataset") or {}).items() if k != "file"} or None}


# ---------------------------------------------------------------- while it runs: fail fast

FAIL_FAST_KINDS = ("http", "connect")


def uniform_failure(records: list[dict], ok_so_far: int, users: int) -> dict | None:
    """The first requests all failed the same way (the same 4xx, or a refused connection): the run can
    measure nothing. `{"reason", "count", "status", "kind"}` once `max(3, min(users, 8))` of them have,
    before any success; else None."""
    from gpuops.probes.loadtest.metrics import reason_key

    need = max(3, min(users, 8))
    done = [r for r in records if not r.get("cancelled")]
    if ok_so_far or len(done) < need or any(r.get("ok") for r in done):
        return None
    first = done[:need]
    kinds = {r.get("error_kind") for r in first}
    keys = {reason_key(r.get("error") or "") for r in first}
    if len(kinds) != 1 or len(keys) != 1 or kinds.pop() not in FAIL_FAST_KINDS:
        return None
    status = first[0].get("status")
    if first[0].get("error_kind") == "http" and not (isinstance(status, int) and 400 <= status < 500):
        return None  # a 5xx may pass (an overloaded server): the run goes on
    return {"reason": first[0].get("error"), "count": need, "status": status, "kind": first[0].get("error_kind")}


def fail_fast_message(failure: dict, opts, target) -> tuple[str, str]:
    """(reason, what to change) for a run stopped by uniform_failure."""
    n, reason = failure["count"], failure["reason"]
    head = f"the first {n} requests all failed the same way: {reason}"
    if failure["kind"] == "connect":
        return head, f"nothing accepts connections at {target.url}: is the server up (`inv status`)? check --url"
    status = failure["status"]
    low = (reason or "").lower()
    limit = (target.workload or {}).get("max_model_len")
    if status == 400 and ("context" in low or "too long" in low or "maximum" in low):
        asked = f"prompts of up to {Lengths.of(opts.prompt_tokens).high} + {output_high(opts)} output tokens"
        if opts.dataset:
            asked = "the dataset's prompts + --max-tokens"
        told = f"the model's context length is {limit}" if limit else "the server did not say its context length"
        return head, f"{asked} do not fit: {told}; lower --prompt-tokens or --max-tokens (or --dataset-max-tokens)"
    if status in (401, 403):
        return head, "the server wants an API key: set OPENAI_API_KEY"
    if status == 404:
        return head, f"the server has no such route: try {'--completion' if opts.api == 'chat' else '--chat'}"
    return head, "check --model, --max-tokens and the prompt lengths against what the server accepts (`inv logs`)"



# ---------------------------------------------------------------- what the Locust processes get


def plan_fields(opts, target) -> dict:
    """The workload part of plan-locust.json (runner.locust_plan)."""
    return {"workload": target.workload, "shared_prefix_tokens": opts.shared_prefix_tokens,
            "shared_prefix_share": opts.shared_prefix_share, "turns": opts.turns}


def preflight_embeddings(url: str, model: str | None, timeout: float) -> None:
    """One embedding request before the load: the server has the route and answers it."""
    import requests

    from gpuops.errors import RequestFailed, ServerNotRunning
    from gpuops.probes.openai import error_text, headers

    body = {**({"model": model} if model else {}), "input": "Say hi."}
    try:
        resp = requests.post(f"{url}{EMBEDDINGS_PATH}", json=body, headers=headers(False), timeout=timeout)
    except requests.ConnectionError:
        raise ServerNotRunning(f"nothing answers at {url}{EMBEDDINGS_PATH} (connection refused)",
                               hint="is the server up? `inv status` shows it; check --url") from None
    except requests.Timeout:
        raise RequestFailed(f"{url}{EMBEDDINGS_PATH} did not answer a test request within {timeout:.0f} s") from None
    if resp.status_code != 200:
        hint = ("the server serves no embeddings: start it with an embedding model (vLLM: --task embed / "
                "--runner pooling; llama-server: --embeddings)" if resp.status_code in (400, 404, 501)
                else "`inv logs` shows the server's log")
        raise RequestFailed(f"{url}{EMBEDDINGS_PATH} refused a test request: HTTP {resp.status_code}: "
                            f"{error_text(resp.text, 200)}", hint=hint)
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RequestFailed(f"{url}{EMBEDDINGS_PATH} answered a test request without a 'data' list of embeddings")
