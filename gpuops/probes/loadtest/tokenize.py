"""Counting tokens the way the server will: its own `POST /tokenize`, or a local Hugging Face tokenizer.

    counter = server_counter("http://127.0.0.1:8000", model="tiny-llama")   # None: no /tokenize there
    counter.count("the river under")     # -> 4 (with the BOS token, as usage.prompt_tokens counts)
    cal = calibrate(counter.count, prompts.VOCABULARY)
    cal.overhead, len(cal.words)          # -> (1, 231): every prompt is BOS + one token per word

Shapes of `/tokenize` (detected once per run, first that answers):
- vLLM and SGLang: `{"model": M, "prompt": TEXT}` -> `{"count": N, "tokens": [...], "max_model_len": L}`
- llama.cpp's server: `{"content": TEXT, "add_special": true}` -> `{"tokens": [...]}`

Calibration finds the words of the vocabulary that are exactly one token each after a space (by
halving groups that do not add up), the tokens every prompt carries besides its words (BOS), and the
words that are one token at the very start of a prompt (the first salt word). A prompt of N tokens is
then `N - overhead` such words, counted without asking anyone again: the Locust processes build every
request's prompt locally, so no tokenizer runs inside the load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpuops.errors import UsageError

TOKENIZE_TIMEOUT_S = 10.0
MIN_WORDS = 32  # fewer single-token words than this: the tokenizer is too unlike the vocabulary's
START_WORDS = 16

Count = Callable[[str], int]


@dataclass
class Counter:
    """How to count tokens: `source` says which (reported with the run), `count(text)` does it."""

    source: str
    count: Count
    max_model_len: int | None = None


@dataclass
class Calibration:
    """What a prompt of exactly N tokens is made of (carried to every Locust process in the plan)."""

    source: str
    overhead: int  # tokens every prompt has besides its words (BOS)
    costs: dict[str, int]  # word -> its tokens after a space (1 for most words of big vocabularies)
    start: dict[str, int] = field(default_factory=dict)  # word -> its tokens at the very start of a prompt
    one: str = "the"  # a word of one token both after a space and at the start: fills the last token

    @property
    def words(self) -> list[str]:
        return list(self.costs)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the server's /tokenize


def _post(url: str, body: dict, timeout: float):
    import requests

    from gpuops.probes.openai import auth_headers

    try:
        resp = requests.post(url, json=body, headers=auth_headers(), timeout=timeout)
    except requests.RequestException:
        return None
    if resp.status_code != 200:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _openai_shape(data) -> int | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("count"), int):
        return data["count"]
    tokens = data.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


SHAPES = {
    # name: (request body for TEXT, count from the answer)
    "vllm": (lambda text, model: {**({"model": model} if model else {}), "prompt": text}, _openai_shape),
    "llama.cpp": (lambda text, model: {"content": text, "add_special": True}, _openai_shape),
}


def _get(url: str, timeout: float) -> tuple[int | None, str]:
    import requests

    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None, ""
    return resp.status_code, resp.headers.get("server", "")


ENGINE_SHAPES = {"vllm": ("vllm",), "sglang": ("vllm",), "demo": ("vllm",), "llama.cpp": ("llama.cpp",)}


def shapes_to_try(url: str, engine: str | None, get=_get, timeout: float = TOKENIZE_TIMEOUT_S) -> tuple[str, ...]:
    """Which /tokenize shapes to POST: the engine's when gpuops knows it; else what a GET says: 405 (a
    POST-only route: vLLM, SGLang) -> both, a 404 from llama.cpp's own server -> llama.cpp's, anything
    else -> none (a POST to a server without the route could be taken for a generation request)."""
    if engine in ENGINE_SHAPES:
        return ENGINE_SHAPES[engine]
    status, server = get(f"{url}/tokenize", timeout)
    if status == 405:
        return ("vllm", "llama.cpp")
    if status == 404 and "llama.cpp" in server.lower():
        return ("llama.cpp",)
    return ()


def server_counter(url: str, model: str | None, timeout: float = TOKENIZE_TIMEOUT_S, post=_post, get=_get,
                   engine: str | None = None) -> Counter | None:
    """The server's own tokenizer through `POST {url}/tokenize`, in the first shape that answers; None
    when no shape does (the server has no such route, or refuses both)."""
    endpoint = f"{url}/tokenize"
    for name in shapes_to_try(url, engine, get, timeout):
        body, read = SHAPES[name]
        data = post(endpoint, body("hello world", model), timeout)
        if not read(data):  # llama.cpp answers vLLM's shape with 200 and `"tokens": []`: not a count
            continue
        limit = data.get("max_model_len") if isinstance(data.get("max_model_len"), int) else None

        def count(text: str, body=body, read=read) -> int:
            answer = read(post(endpoint, body(text, model), timeout))
            if answer is None:
                raise TokenizeFailed(f"POST {endpoint} stopped answering while prompts were measured")
            return answer

        shape = "vLLM/SGLang" if name == "vllm" else name
        return Counter(f"the server's POST /tokenize ({shape} shape)", count, limit)
    return None


class TokenizeFailed(UsageError):
    """A tokenizer that answered once and then did not."""


# ---------------------------------------------------------------- a local Hugging Face tokenizer

TOKENIZER_HINT = "pip install tokenizers (or transformers) into gpuops' environment, or leave --tokenizer off " \
                 "to use the server's /tokenize"


def local_counter(spec: str) -> Counter:
    """`--tokenizer PATH|NAME`: a tokenizer.json (or a folder holding one) through the `tokenizers`
    package, else `transformers.AutoTokenizer` from a folder or the local Hugging Face cache (offline:
    nothing is downloaded). UsageError (exit 2) saying what to install or where it looked."""
    path = Path(spec).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    if tokenizers is not None and file.is_file():
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as err:  # noqa: BLE001 - a malformed file: one line, not a traceback
            raise UsageError(f"--tokenizer {spec}: cannot read {file}: {err}") from None
        return Counter(f"the local tokenizer {file}",
                       lambda text: len(tok.encode(text, add_special_tokens=True).ids))
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is None:
        if tokenizers is None:
            raise UsageError(f"--tokenizer {spec}: neither the 'tokenizers' nor the 'transformers' package is "
                             "installed", hint=TOKENIZER_HINT)
        raise UsageError(f"--tokenizer {spec}: no tokenizer.json there",
                         hint="give the path of a tokenizer.json or of a model folder holding one "
                              "(a model NAME needs the transformers package and the model in the local cache)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"--tokenizer {spec}: not found as a folder or in the local Hugging Face cache "
                         f"({type(err).__name__})", hint="nothing is downloaded: give a folder with tokenizer.json, "
                         "or fetch the model first (huggingface-cli download NAME)") from None
    return Counter(f"the local tokenizer {spec}", lambda text: len(tok(text)["input_ids"]))


# ---------------------------------------------------------------- calibration (pure, given `count`)


def calibrate(count: Count, vocabulary: list[str], source: str = "") -> Calibration | None:
    """What each word of the vocabulary costs in tokens, and the prompt's own overhead (BOS); None when
    the tokenizer does not add up word by word (then lengths are words, and the run says so).

    Big vocabularies make most words one token: found by halving groups that do not add up, a few
    dozen questions. Small ones (a test model's 512 tokens) cost one question per word."""
    overhead = count("the") - 1
    if overhead < 0 or count("the the") != 2 + overhead:
        return None
    vocab = list(dict.fromkeys(vocabulary))
    good: list[str] = []

    def check(group: list[str]) -> None:
        # "the " in front: every word of the group is counted after a space, as inside a prompt
        if count("the " + " ".join(group)) == 1 + len(group) + overhead:
            good.extend(group)
        elif len(group) > 1:
            half = len(group) // 2
            check(group[:half])
            check(group[half:])

    check(vocab)
    if len(good) >= MIN_WORDS:
        costs = {w: 1 for w in vocab if w in set(good)}
    else:
        costs = {w: c for w in vocab if (c := count("the " + w) - 1 - overhead) >= 1}
    start: dict[str, int] = {}
    for word in costs:
        cost = count(word) - overhead
        if cost >= 1:
            start[word] = cost
        if len(start) == START_WORDS:
            break
    one = next((w for w, c in start.items() if c == 1 and costs[w] == 1), None)
    if one is None:  # a one-token word among the rest, asked about one by one
        one = next((w for w in costs if costs[w] == 1 and w not in start and count(w) - overhead == 1), None)
    if len(costs) < 8 or one is None:
        return None
    start.setdefault(one, 1)
    return Calibration(source, overhead, costs, start, one)


def verify(count: Count, cal: Calibration, texts_and_lengths: list[tuple[str, int]]) -> list[str]:
    """Problems found when real prompts are counted (empty: every one has the length it was built for)."""
    return [f"a prompt built for {n} tokens has {got}" for text, n in texts_and_lengths
            if (got := count(text)) != n]


def load_calibration(data: dict | None) -> Calibration | None:
    return Calibration(**data) if data else None


def dumps(cal: Calibration | None) -> str:
    return json.dumps(cal.as_dict() if cal else None)
