"""Load-test flags -> one validated LoadTestOptions; AGENTS.local.md's `## Load test` block under the command line.

    >>> recipe = parse_flag_words(["--users", "4", "--run-time", "20s", "--no-stream"], source="AGENTS.local.md")
    >>> opts = build_options(merge(recipe, {"users": "8"}))       # the command line wins
    >>> opts.users, opts.run_time_s, opts.stream, opts.mode
    (8, 20, False, 'users')

Every bad value is a UsageError (exit 2) that names the flag, the value, where it came from and
what is accepted. A flag the block sets can be turned off on the command line: `--qps off`,
`--sweep off`, `--slo-ttft-ms off` (or 0), `--no-shared-prefix`.

In --qps mode --users and --spawn-rate from the block apply only when the block also gives --qps:
the block's closed-loop `--users 4` would otherwise become a cap of 4 requests in flight.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from gpuops.errors import UsageError
from gpuops.probes.loadtest.arrivals import ARRIVALS

DEFAULT_USERS = 4
DEFAULT_QPS_USERS = 64  # in --qps mode --users caps requests in flight; a generous cap keeps the loop open
MAX_WORKERS = 256

# flag -> (option key, value it sets; None = takes a value)
FLAGS: dict[str, tuple[str, object]] = {
    "--users": ("users", None),
    "--spawn-rate": ("spawn_rate", None),
    "--run-time": ("run_time", None),
    "--prompt-tokens": ("prompt_tokens", None),
    "--max-tokens": ("max_tokens", None),
    "--stream": ("stream", True),
    "--no-stream": ("stream", False),
    "--chat": ("api", "chat"),
    "--completion": ("api", "completion"),
    "--model": ("model", None),
    "--qps": ("qps", None),
    "--arrival": ("arrival", None),
    "--seed": ("seed", None),
    "--workers": ("workers", None),
    "--sweep": ("sweep", None),
    "--shared-prefix": ("shared_prefix", True),
    "--no-shared-prefix": ("shared_prefix", False),
    "--slo-ttft-ms": ("slo_ttft_ms", None),
    "--slo-tpot-ms": ("slo_tpot_ms", None),
    "--slo-e2el-ms": ("slo_e2el_ms", None),
    "--request-timeout": ("request_timeout", None),
    "--url": ("url", None),
}
FLAG_OF = {key: flag for flag, (key, const) in FLAGS.items() if const is None}
FLAG_OF.update({"stream": "--stream/--no-stream", "api": "--chat/--completion",
                "shared_prefix": "--shared-prefix/--no-shared-prefix",
                "web": "--web", "detach": "--detach", "out": "--out", "server": "--server"})

OFF = ("off", "none")  # `--qps off`: the flag is not set, whatever AGENTS.local.md says
SLO_KEYS = ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms")

_TIMESPAN = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


@dataclass(frozen=True)
class LoadTestOptions:
    users: int = DEFAULT_USERS
    spawn_rate: float = float(DEFAULT_USERS)
    run_time_s: int = 30
    prompt_tokens: int = 128
    max_tokens: int = 64
    stream: bool = True
    api: str = "completion"  # or "chat"
    model: str | None = None
    qps: float | None = None
    arrival: str = "poisson"
    seed: int = 0
    workers: int = 1
    sweep: tuple[float, ...] = ()
    shared_prefix: bool = False
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2el_ms: float | None = None
    request_timeout: float = 300.0
    url: str | None = None
    server: str | None = None
    web: bool = False
    detach: bool = False
    out: str | None = None

    @property
    def mode(self) -> str:
        """'qps' (open-loop arrivals) or 'users' (fixed concurrency)."""
        return "qps" if self.qps is not None else "users"

    @property
    def slo(self) -> dict[str, float]:
        return {k: v for k, v in (("ttft", self.slo_ttft_ms), ("tpot", self.slo_tpot_ms),
                                  ("e2el", self.slo_e2el_ms)) if v is not None}

    def at_level(self, level: float) -> LoadTestOptions:
        """These options at one sweep level: that many users, or that rate in --qps mode."""
        if self.mode == "qps":
            return replace(self, qps=float(level), sweep=())
        users = int(level)
        return replace(self, users=users, spawn_rate=float(users), sweep=())

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sweep"] = list(self.sweep)
        return d


# ---------------------------------------------------------------- words -> values


def parse_flag_words(words: list[str], source: str) -> dict:
    """Flags written as command-line words (the AGENTS.local.md block) -> {option key: value}."""
    values: dict = {}
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, inline = word.partition("=")
        if name not in FLAGS:
            known = " ".join(sorted(FLAGS))
            what = "unknown load-test flag" if word.startswith("-") else "unexpected word"
            raise UsageError(f"{source}: {what} {word!r}", hint=f"the load-test block takes: {known}")
        key, const = FLAGS[name]
        if const is not None:
            if eq:
                raise UsageError(f"{source}: {name} takes no value (got {word!r})")
            values[key] = const
            i += 1
            continue
        if eq:
            values[key] = inline
            i += 1
        elif i + 1 < len(words):
            values[key] = words[i + 1]
            i += 2
        else:
            raise UsageError(f"{source}: {name} needs a value", hint=f"e.g. {name} {_example(key)}")
    return {k: (v, source) for k, v in values.items()}


def merge(recipe: dict, cli: dict) -> dict:
    """{key: (value, source)}: the AGENTS.local.md values, with the command line's laid over them."""
    merged = dict(recipe)
    merged.update({k: (v, "command line") for k, v in cli.items() if v is not None})
    return merged


def _example(key: str) -> str:
    return {"run_time": "30s", "sweep": "1,2,4,8", "arrival": "poisson", "url": "http://127.0.0.1:8000",
            "model": "Qwen/Qwen3-8B"}.get(key, "8")


def _bad(key: str, value, source: str, accepted: str) -> UsageError:
    where = f" (from {source})" if source != "command line" else ""
    return UsageError(f"{FLAG_OF.get(key, key)} {value!r}{where}: {accepted}",
                      hint=f"e.g. {FLAG_OF.get(key, key).split('/')[0]} {_example(key)}")


def _int(key, value, source, lo: int, hi: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            number = int(value)
        else:
            number = int(str(value).strip())
    except ValueError:
        raise _bad(key, value, source, "must be a whole number") from None
    if number < lo or (hi is not None and number > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise _bad(key, value, source, f"must be {rng}")
    return number


def _is_off(key: str, value) -> bool:
    text = str(value).strip().lower()
    return text in OFF or (key in SLO_KEYS and _zero(text))


def _zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def _float(key, value, source, *, positive: bool = True) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(str(value).strip())
    except ValueError:
        raise _bad(key, value, source, "must be a number") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise _bad(key, value, source, "must be a number > 0")
    return number


def parse_timespan(text) -> int | None:
    """'90', '90s', '1m30s', '2h' -> seconds; None if it is not one."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    m = _TIMESPAN.match(text)
    if not text or not m:
        return None
    return int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + int(m["s"] or 0)


def normalize_url(value: str, source: str = "command line") -> str:
    """'http://host:8000/v1/' -> 'http://host:8000' (the API paths are added per request)."""
    from urllib.parse import urlsplit

    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("url", value, source, "must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _bad("url", value, source, "has a bad port") from None
    text = text.rstrip("/")
    if text.endswith("/v1"):
        text = text[:-3]
    return text


# ---------------------------------------------------------------- the options


def build_options(merged: dict) -> LoadTestOptions:
    """Validate every value; apply defaults that depend on other flags (users in --qps mode, spawn rate)."""

    def get(key):
        return merged.get(key, (None, "command line"))

    kw: dict = {}
    for key in ("prompt_tokens", "max_tokens"):
        value, src = get(key)
        if value is not None:
            kw[key] = _int(key, value, src, 1, 1_000_000)
    value, src = get("workers")
    if value is not None:
        kw["workers"] = _int("workers", value, src, 1, MAX_WORKERS)
    value, src = get("seed")
    if value is not None:
        kw["seed"] = _int("seed", value, src, 0)
    value, src = get("run_time")
    if value is not None:
        seconds = parse_timespan(value)
        if seconds is None or seconds < 1:
            raise _bad("run_time", value, src, "must be a duration of at least 1 s like 30s, 90, 2m, 1m30s, 1h")
        kw["run_time_s"] = seconds
    turned_off = set()
    for key in ("qps", "spawn_rate", *SLO_KEYS, "request_timeout"):
        value, src = get(key)
        if value is not None and key in ("qps", *SLO_KEYS) and _is_off(key, value):
            turned_off.add(key)
            continue
        if value is not None:
            kw[key] = _float(key, value, src)
    value, src = get("arrival")
    if value is not None:
        if str(value) not in ARRIVALS:
            raise _bad("arrival", value, src, f"must be one of: {', '.join(ARRIVALS)}")
        kw["arrival"] = str(value)
    value, src = get("model")
    if value is not None:
        if not str(value).strip():
            raise _bad("model", value, src, "must not be empty")
        kw["model"] = str(value).strip()
    value, src = get("url")
    if value is not None:
        kw["url"] = normalize_url(value, src)
    for key in ("stream", "shared_prefix", "web", "detach"):
        value, _ = get(key)
        if value is not None:
            kw[key] = bool(value)
    value, _ = get("api")
    if value is not None:
        kw["api"] = str(value)
    for key in ("server", "out"):
        value, _ = get(key)
        if value is not None:
            kw[key] = str(value)

    qps_mode = kw.get("qps") is not None
    if qps_mode:
        # the block's --users/--spawn-rate were written for its own mode: in --qps mode (asked for
        # elsewhere) they would become the in-flight cap and throttle the schedule
        qps_source = get("qps")[1]
        for key in ("users", "spawn_rate"):
            src = get(key)[1]
            if key in merged and src not in ("command line", qps_source):
                kw.pop(key, None)
                merged = {k: v for k, v in merged.items() if k != key}
    value, src = get("users")
    users = _int("users", value, src, 1, 100_000) if value is not None else (
        DEFAULT_QPS_USERS if qps_mode else DEFAULT_USERS)
    kw["users"] = users
    kw.setdefault("spawn_rate", float(users))

    value, src = get("sweep")
    if value is not None and str(value).strip().lower() not in OFF:
        kw["sweep"] = _sweep(value, src, qps_mode)

    opts = LoadTestOptions(**kw)
    _check_combinations(opts, merged, qps_off="qps" in turned_off)
    return opts


def _sweep(value, source: str, qps_mode: bool) -> tuple[float, ...]:
    accepted = ("must be a comma-separated list of " +
                ("request rates > 0 (you gave --qps)" if qps_mode else "user counts >= 1"))
    items = [p.strip() for p in str(value).split(",") if p.strip()]
    if not items:
        raise _bad("sweep", value, source, accepted)
    levels = []
    for item in items:
        try:
            level = float(item)
        except ValueError:
            raise _bad("sweep", value, source, accepted) from None
        if not math.isfinite(level) or level <= 0 or (not qps_mode and (not level.is_integer() or level < 1)):
            raise _bad("sweep", value, source, accepted)
        levels.append(level)
    if len(set(levels)) != len(levels):
        raise _bad("sweep", value, source, "lists a level twice")
    return tuple(levels)


def _check_combinations(opts: LoadTestOptions, merged: dict, qps_off: bool = False) -> None:
    if not opts.stream and (opts.slo_ttft_ms is not None or opts.slo_tpot_ms is not None):
        raise UsageError("--slo-ttft-ms and --slo-tpot-ms need streamed answers, but --no-stream is set",
                         hint="drop --no-stream, or use --slo-e2el-ms alone")
    if opts.web and opts.sweep:
        raise UsageError("--web and --sweep do not go together: a sweep runs its levels headless",
                         hint="drop --web to run the sweep, or drop --sweep to drive the load from Locust's UI")
    if opts.web and opts.detach:
        raise UsageError("--web and --detach do not go together: the web UI is driven from your browser "
                         "while this command waits", hint="drop --detach")
    arrival = merged.get("arrival", (None, ""))
    # `--qps off` on the command line also turns off the block's --arrival (it came with its --qps)
    if opts.qps is None and arrival[0] is not None and not (qps_off and arrival[1] != "command line"):
        raise UsageError("--arrival only applies with --qps (open-loop arrivals)",
                         hint="add --qps RATE, or drop --arrival")
