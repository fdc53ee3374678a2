"""Length distributions for prompts and answers: `fixed`, `uniform:a,b`, `normal:mean,sd`, seeded, clipped.

    >>> parse("128"), parse("fixed:128"), parse("uniform:64,256"), parse("normal:512,64")
    (128, 128, 'uniform:64,256', 'normal:512,64')
    >>> d = Lengths.of("uniform:10,20"); d.low, d.high
    (10, 20)
    >>> import random; rng = random.Random(0); [Lengths.of("normal:100,30").sample(rng) for _ in range(4)]
    [128, 58, 80, 111]

A fixed length stays a plain int (what the options, titles and plans always held); any other is its
normalized text, which every Locust process turns back into a `Lengths` and samples from its own
seeded generator. `normal` is clipped to [1, mean + 4 sd] (never below one token), `uniform` draws
whole numbers from a to b inclusive.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

KINDS = ("fixed", "uniform", "normal")
ACCEPTED = "a whole number, fixed:N, uniform:A,B (A <= B) or normal:MEAN,SD"
MAX_LEN = 1_000_000
_NUM = r"\s*(\d+(?:\.\d+)?)\s*"


class LengthError(ValueError):
    """Not a length distribution; str() says what is accepted."""


def parse(text) -> int | str:
    """A length spec -> an int (fixed) or its normalized text; LengthError otherwise."""
    return Lengths.of(text).spec


@dataclass(frozen=True)
class Lengths:
    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def of(cls, text) -> Lengths:
        if isinstance(text, bool):
            raise LengthError(ACCEPTED)
        if isinstance(text, int):
            return cls._fixed(text)
        if isinstance(text, float):
            if not text.is_integer():
                raise LengthError(ACCEPTED)
            return cls._fixed(int(text))
        raw = str(text).strip().lower()
        if re.fullmatch(r"\d+", raw):
            return cls._fixed(int(raw))
        kind, _, rest = raw.partition(":")
        if kind == "fixed" and re.fullmatch(r"\s*\d+\s*", rest):
            return cls._fixed(int(rest))
        m = re.fullmatch(_NUM + "," + _NUM, rest)
        if kind not in ("uniform", "normal") or not m:
            raise LengthError(ACCEPTED)
        a, b = float(m[1]), float(m[2])
        if kind == "uniform":
            if not (a.is_integer() and b.is_integer()) or a < 1 or a > b or b > MAX_LEN:
                raise LengthError("uniform:A,B takes whole numbers 1 <= A <= B")
            return cls("uniform", a, b)
        if a < 1 or a > MAX_LEN or not math.isfinite(b):
            raise LengthError("normal:MEAN,SD takes a mean of at least 1 and an SD >= 0")
        return cls("normal", a, b)

    @classmethod
    def _fixed(cls, n: int) -> Lengths:
        if n < 1 or n > MAX_LEN:
            raise LengthError(f"a length must be between 1 and {MAX_LEN}")
        return cls("fixed", float(n))

    @property
    def spec(self) -> int | str:
        if self.kind == "fixed":
            return int(self.a)
        return f"{self.kind}:{self.a:g},{self.b:g}"

    @property
    def low(self) -> int:
        """The shortest length it can draw."""
        if self.kind == "normal":
            return 1
        return int(self.a)

    @property
    def high(self) -> int:
        """The longest length it can draw (what a context-length check must allow for)."""
        if self.kind == "uniform":
            return int(self.b)
        if self.kind == "normal":
            return max(1, math.ceil(self.a + 4 * self.b))
        return int(self.a)

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return min(self.high, max(1, round(rng.gauss(self.a, self.b))))
