"""Prompts of a chosen length, salted per request so a warm prefix cache cannot flatter the numbers.

    >>> build_prompt(["the", "river", "under"], 4, salt="k3x9-0-17")
    'k3x9-0-17 the river under'
    >>> build_prompt(["the", "river", "under"], 4, salt=None)   # --shared-prefix: all identical
    'the river under the'
    >>> compose(6, ["one", "two"], ["the", "river"], prefix=["stone", "water"])   # --shared-prefix-tokens
    'stone water one two the river'

Prefix caches (vLLM's automatic prefix caching, SGLang's radix cache) match from the first token,
so the salt goes first (after a deliberately shared prefix): one differing word makes the rest of
the prompt a cache miss. The rest of the text is fixed by the seed, so runs with the same --seed
send the same body.

Length: with a tokenizer (the server's /tokenize or --tokenizer; see tokenize.py) the words come
from those of VOCABULARY that are one token each, and the salt is made of such words too
(`token_salt`), so a prompt of N tokens is exactly `N - overhead` words. Without one, length is
counted in whitespace-separated words of VOCABULARY, which most tokenizers encode as about one token
each: approximate, and the report says so.
"""

from __future__ import annotations

import itertools
import random
import zlib

# Common words that are a single token in the GPT-2/Llama/Qwen tokenizers (with a leading space).
VOCABULARY = (
    "the of and to in is was for on that with as by at from his her they this had not are but be "
    "have which one you were all we she there been their has would who will more no if out so said "
    "what up its about than into them can only other new some could time these two may then do first "
    "any my now such like our over man me even most made after also did many before must through back "
    "years where much your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right used take three "
    "river green morning light stone water house city field road north south east west small large high "
    "open early late music paper table window garden summer winter number letter story"
).split()

SALT_DIGITS = 6  # token salts: a start word + 6 digits in base len(words) (>= 32): unique per run, worker, request


def base_words(seed: int, count: int = 4096, vocabulary: list[str] | None = None) -> list[str]:
    """The seed's fixed word sequence that every prompt of a run is cut from."""
    rng = random.Random(seed)
    vocab = vocabulary or VOCABULARY
    return [rng.choice(vocab) for _ in range(count)]


def build_prompt(base: list[str], n_words: int, salt: str | None) -> str:
    """`n_words` words: the salt (if any) then the start of `base`, repeated as needed."""
    if n_words < 1:
        raise ValueError("a prompt needs at least one word")
    return compose(n_words, [salt] if salt else [], base)


def compose(n_words: int, head: list[str], base: list[str], prefix: list[str] | None = None) -> str:
    """`n_words` words: `prefix`, then `head` (the salt), then `base` repeated; cut to length from the end
    of the head, so a short prompt keeps its prefix and the start of its salt."""
    if n_words < 1:
        raise ValueError("a prompt needs at least one word")
    front = (list(prefix or []) + list(head))[:n_words]
    need = n_words - len(front)
    body = (base * (need // len(base) + 1))[:need] if need > 0 else []
    return " ".join(front + body)


def fill(budget: int, wanted, cost, *, at_start: bool, start_cost=None, one: str = "the") -> list[str]:
    """Words from `wanted` (an iterable: the head, then the body repeated) whose tokens add up to exactly
    `budget`: a word that would overshoot becomes `one` (a one-token word). `cost(word)` is its tokens
    after a space, `start_cost(word)` at the start of a prompt (None: not known there: `one` instead).

    >>> fill(5, iter(["aa", "b", "ccc", "b", "b"]), {"aa": 2, "b": 1, "ccc": 3}.get, at_start=False, one="b")
    ['aa', 'b', 'b', 'b']
    """
    out: list[str] = []
    left = budget
    for word in wanted:
        if left <= 0:
            break
        first = at_start and not out
        c = (start_cost or cost)(word) if first else cost(word)
        if c is None or c > left:
            word, c = one, 1
        out.append(word)
        left -= c
    return out


def salt(run_id: str, worker: int, seq: int) -> str:
    """A word unique to this run, worker process and request: `<run>-<worker>-<seq>`."""
    return f"{run_id}-{worker}-{seq}"


def token_salt(run_id: str, worker: int, seq: int, words: list[str], start: list[str]) -> list[str]:
    """The same uniqueness made of single-token words (exactly 1 + SALT_DIGITS tokens): a start word
    and the digits of (run, worker, request) in base len(words).

    >>> token_salt("ab12", 0, 1, ["x", "y", "z"] * 11, ["the"])
    ['the', 'z', 'y', 'x', 'x', 'x', 'y']
    """
    base = len(words)
    run = zlib.crc32(run_id.encode())
    number = ((run % base) * 256 + worker % 256) * base ** (SALT_DIGITS - 2) + seq % base ** (SALT_DIGITS - 2)
    digits = []
    for _ in range(SALT_DIGITS):
        number, d = divmod(number, base)
        digits.append(words[d])
    return [start[run % len(start)], *reversed(digits)]


class PromptMaker:
    """Every prompt of a run, from its seed and (with a tokenizer) its calibration (tokenize.Calibration
    as a dict): exactly N tokens with one, N words without.

        maker = PromptMaker(seed=0, calibration=plan_workload["calibration"], shared_prefix_tokens=64)
        maker.make(512, maker.salt("k3x9", 0, 17), use_prefix=True)    # 512 tokens, the first 64 shared
    """

    def __init__(self, seed: int, calibration: dict | None = None, shared_prefix_tokens: int = 0):
        cal = calibration or {}
        self.exact = bool(cal)
        self.overhead = int(cal.get("overhead") or 0)
        costs: dict[str, int] = cal.get("costs") or {}
        start: dict[str, int] = cal.get("start") or {}
        self.cost = costs.get if costs else (lambda word: 1)
        self.start_cost = start.get if start else None
        self.start_words = list(start)
        self.one = cal.get("one") or "the"
        vocabulary = list(costs) or None
        self.vocabulary = list(costs)
        self.base = base_words(seed, vocabulary=vocabulary)
        self.prefix_tokens = max(0, shared_prefix_tokens - self.overhead) if shared_prefix_tokens else 0
        self.prefix = fill(self.prefix_tokens, itertools.cycle(base_words(seed + 1, vocabulary=vocabulary)),
                           self.cost, at_start=True, start_cost=self.start_cost, one=self.one)

    def salt(self, run_id: str, worker: int, seq: int) -> list[str]:
        if self.exact:
            return token_salt(run_id, worker, seq, self.vocabulary, self.start_words)
        return [salt(run_id, worker, seq)]

    def make(self, n_tokens: int, head: list[str], use_prefix: bool = False) -> str:
        """A prompt of `n_tokens` (words without a calibration): [shared prefix,] head (the salt), body."""
        words = list(self.prefix) if use_prefix and self.prefix else []
        budget = max(1, n_tokens - self.overhead - (self.prefix_tokens if words else 0))
        words += fill(budget, itertools.chain(head, itertools.cycle(self.base)), self.cost, at_start=not words,
                      start_cost=self.start_cost, one=self.one)
        return " ".join(words)
