"""Prompts of a chosen length, salted per request so a warm prefix cache cannot flatter the numbers.

    >>> build_prompt(["the", "river", "under"], 4, salt="k3x9-0-17")
    'k3x9-0-17 the river under'
    >>> build_prompt(["the", "river", "under"], 4, salt=None)   # --shared-prefix: all identical
    'the river under the'

Prefix caches (vLLM's automatic prefix caching, SGLang's radix cache) match from the first token,
so the salt goes first: one differing leading word makes the whole prompt a cache miss. The rest of
the text is fixed by the seed, so runs with the same --seed send the same body.

Length is counted in whitespace-separated words, chosen from common English words that most
tokenizers encode as one token each; the server's `usage.prompt_tokens` is what gets reported.
"""

from __future__ import annotations

import random

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


def base_words(seed: int, count: int = 4096) -> list[str]:
    """The seed's fixed word sequence that every prompt of a run is cut from."""
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) for _ in range(count)]


def build_prompt(base: list[str], n_words: int, salt: str | None) -> str:
    """`n_words` words: the salt (if any) then the start of `base`, repeated as needed."""
    if n_words < 1:
        raise ValueError("a prompt needs at least one word")
    head = [salt] if salt else []
    need = n_words - len(head)
    body = (base * (need // len(base) + 1))[:need] if need > 0 else []
    return " ".join(head + body)


def salt(run_id: str, worker: int, seq: int) -> str:
    """A word unique to this run, worker process and request: `<run>-<worker>-<seq>`."""
    return f"{run_id}-{worker}-{seq}"
