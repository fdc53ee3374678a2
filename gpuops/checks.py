"""Checks of values users type: a flag's number, in range, or a UsageError that names the flag.

    >>> number("--hang-timeout", "2.5"), number("--port", "8000", whole=True, high=65535)
    (2.5, 8000)
    >>> number("--lines", "-1", whole=True, low_ok=True)
    Traceback (most recent call last):
    gpuops.errors.UsageError: --lines must be a whole number at least 0, not '-1'
"""

from __future__ import annotations

from gpuops.errors import UsageError


def number(flag: str, value, *, whole: bool = False, low: float = 0, high: float | None = None,
           low_ok: bool = False) -> float | int:
    """A flag's value as a finite number in range, else UsageError naming the flag (exit 2, no traceback).

    >>> number("--hang-timeout", "2.5"), number("--port", "8000", whole=True, high=65535)
    (2.5, 8000)
    """
    kind = "a whole number" if whole else "a number"
    bound = f"{'at least' if low_ok else 'above'} {low:g}" + (f" and at most {high:g}" if high is not None else "")
    try:
        if isinstance(value, bool):
            raise ValueError
        got = float(value)
        if whole and not got.is_integer():  # also refuses inf and nan
            raise ValueError
        if not (got >= low if low_ok else got > low) or got == float("inf") or (high is not None and got > high):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        example = 10 if whole else 30
        if flag.startswith("gpuops."):  # from invoke.yaml or INVOKE_GPUOPS_*
            key = flag.split(".", 1)[1]
            hint = f"e.g. `{key}: {example}` under `gpuops:` in invoke.yaml, or INVOKE_GPUOPS_{key.upper()}={example}"
        else:
            hint = f"e.g. {flag} {example}"
        raise UsageError(f"{flag} must be {kind} {bound}, not {value!r}", hint=hint) from None
    return int(got) if whole else got
