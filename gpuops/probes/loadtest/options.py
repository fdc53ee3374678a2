"""Load-test flags -> one validated LoadTestOptions, from four layers, highest first: the command
line > Invoke's config (invoke.yaml, INVOKE_GPUOPS_LOAD_*) > AGENTS.local.md's `## Load test` block >
the built-in defaults (gpuops.settings' `shown` of each `load_*` row).

    >>> recipe = parse_flag_words(["--users", "4", "--run-time", "20s", "--no-stream"], source="AGENTS.local.md")
    >>> config = from_config({"load_run_time": "10s"}.get)          # c.config.gpuops.get in a task
    >>> opts = build_options(merge(recipe, {"users": "8"}, config))  # the command line wins, then config
    >>> opts.users, opts.run_time_s, opts.stream, opts.mode
    (8, 10, False, 'users')

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
from gpuops.settings import SETTINGS

# option key -> setting key (gpuops.<key> in Invoke's config); `chat` stands for the option `api`
SETTING_OF = {key: f"load_{key}" for key in (
    "users", "spawn_rate", "run_time", "prompt_tokens", "max_tokens", "stream", "chat", "qps", "arrival", "seed",
    "workers", "sweep", "detach", "web", "shared_prefix", "slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms",
    "request_timeout", "out")}
SETTING_OF.update({"model": "model", "url": "url", "server": "server"})


def builtin(option: str):
    """The built-in default of an option: the `shown` default of its row in gpuops.settings."""
    row = SETTINGS.get(SETTING_OF[option])
    return None if row is None else row.shown


DEFAULT_USERS = builtin("users")
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


def parse_timespan(text) -> int | None:
    """'90', '90s', '1m30s', '2h' -> seconds; None if it is not one."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    m = _TIMESPAN.match(text)
    if not text or not m:
        return None
    return int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + int(m["s"] or 0)


@dataclass(frozen=True)
class LoadTestOptions:
    users: int = DEFAULT_USERS
    spawn_rate: float = float(DEFAULT_USERS)
    run_time_s: int = parse_timespan(builtin("run_time"))
    prompt_tokens: int = builtin("prompt_tokens")
    max_tokens: int = builtin("max_tokens")
    stream: bool = builtin("stream")
    api: str = "chat" if builtin("chat") else "completion"
    model: str | None = None
    qps: float | None = None
    arrival: str = builtin("arrival")
    seed: int = builtin("seed")
    workers: int = builtin("workers")
    sweep: tuple[float, ...] = ()
    shared_prefix: bool = builtin("shared_prefix")
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2el_ms: float | None = None
    request_timeout: float = float(builtin("request_timeout"))
    url: str | None = None
    server: str | None = None
    web: bool = builtin("web")
    detach: bool = builtin("detach")
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


def merge(recipe: dict, cli: dict, config: dict | None = None) -> dict:
    """{key: (value, source)}: the AGENTS.local.md values, config's (from_config) over them, the command
    line's over both."""
    merged = dict(recipe)
    merged.update(config or {})
    merged.update({k: (v, "command line") for k, v in cli.items() if v is not None})
    return merged


PAIRS = (("stream", "no_stream", "stream"), ("chat", "completion", "api"),
         ("shared_prefix", "no_shared_prefix", "shared_prefix"))  # yes flag, no flag, option key


def from_command_line(flags: dict) -> dict:
    """{option key: value} from a task's keyword arguments (None: not given). Each pair of yes/no flags
    (--stream/--no-stream, --chat/--completion, --shared-prefix/--no-shared-prefix) becomes one option;
    both of a pair is a UsageError.

    >>> from_command_line({"users": "8", "no_stream": True, "chat": False, "completion": False})
    {'users': '8', 'stream': False}
    """
    cli = dict(flags)
    for yes, no, key in PAIRS:
        given_yes, given_no = cli.pop(yes, False), cli.pop(no, False)
        if given_yes and given_no:
            a, b = yes.replace("_", "-"), no.replace("_", "-")
            raise UsageError(f"--{a} and --{b} contradict each other", hint=f"give one of --{a}, --{b}")
        if given_yes or given_no:
            cli[key] = ("chat" if given_yes else "completion") if key == "api" else bool(given_yes)
    for key in ("web", "detach"):
        if key in cli:
            cli[key] = cli[key] or None  # a yes/no flag not given is False: let lower layers speak
    return {k: v for k, v in cli.items() if v is not None}


def from_config(get) -> dict:
    """{option key: (value, 'gpuops.<setting>')} for every load-test setting set in Invoke's config
    (`get`: c.config.gpuops.get). Yes/no values from INVOKE_GPUOPS_* arrive as text; they are read here."""
    from gpuops.settings import flag

    layer = {}
    for key, setting in SETTING_OF.items():
        value = get(setting)
        if value is None:
            continue
        source = f"gpuops.{setting}"
        if key in ("stream", "shared_prefix", "web", "detach", "chat"):
            value = flag(source, value)
        if key == "chat":
            key, value = "api", ("chat" if value else "completion")
        layer[key] = (value, source)
    return layer


def check_value(key: str, value, source: str = "command line"):
    """One option's value checked on its own (no defaults, no combinations); UsageError names the flag
    and where the value came from. `key` is an option key ('users', 'run_time', ...; 'chat' for the api).

    >>> check_value("run_time", "1m30s"), check_value("qps", "off"), check_value("chat", "true")
    (90, None, True)
    """
    if value is None:
        return None
    if source.startswith("--"):  # gpuops.settings.check(..., flag="--users"): the flag names itself
        source = "command line"
    if key in ("prompt_tokens", "max_tokens"):
        return _int(key, value, source, 1, 1_000_000)
    if key == "users":
        return _int(key, value, source, 1, 100_000)
    if key == "workers":
        return _int(key, value, source, 1, MAX_WORKERS)
    if key == "seed":
        return _int(key, value, source, 0)
    if key == "run_time":
        seconds = parse_timespan(value)
        if seconds is None or seconds < 1:
            raise _bad(key, value, source, "must be a duration of at least 1 s like 30s, 90, 2m, 1m30s, 1h")
        return seconds
    if key in ("qps", "spawn_rate", *SLO_KEYS, "request_timeout"):
        if key in ("qps", *SLO_KEYS) and _is_off(key, value):
            return None
        return _float(key, value, source)
    if key == "arrival":
        if str(value) not in ARRIVALS:
            raise _bad(key, value, source, f"must be one of: {', '.join(ARRIVALS)}")
        return str(value)
    if key == "model":
        if not str(value).strip():
            raise _bad(key, value, source, "must not be empty")
        return str(value).strip()
    if key == "url":
        return normalize_url(value, source)
    if key == "sweep":
        return None if str(value).strip().lower() in OFF else _sweep(value, source, qps_mode=False, check_only=True)
    if key in ("stream", "shared_prefix", "web", "detach", "chat"):
        if isinstance(value, bool):
            return value
        from gpuops.settings import flag

        return flag(source if source != "command line" else FLAG_OF.get(key, key), value)
    if key == "api":
        if str(value) not in ("chat", "completion"):
            raise _bad(key, value, source, "must be chat or completion")
        return str(value)
    return None if value is None else str(value)


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
    turned_off = set()
    for key in ("prompt_tokens", "max_tokens", "workers", "seed", "run_time", "qps", "spawn_rate", *SLO_KEYS,
                "request_timeout", "arrival", "model", "url", "stream", "shared_prefix", "web", "detach", "api",
                "server", "out"):
        value, src = get(key)
        if value is None:
            continue
        checked = check_value(key, value, src)
        if checked is None:  # `--qps off`, `--slo-ttft-ms 0`: not set, whatever a lower layer says
            turned_off.add(key)
            continue
        kw["run_time_s" if key == "run_time" else key] = checked

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


def _sweep(value, source: str, qps_mode: bool, check_only: bool = False) -> tuple[float, ...]:
    """The sweep's levels; `check_only`: without knowing the mode, any list of numbers > 0 passes."""
    accepted = ("must be a comma-separated list of " +
                ("request rates > 0 (you gave --qps)" if qps_mode else "user counts >= 1"))
    if check_only:
        accepted = "must be a comma-separated list of user counts >= 1, or of request rates > 0 with --qps"
    items = [p.strip() for p in str(value).split(",") if p.strip()]
    if not items:
        raise _bad("sweep", value, source, accepted)
    levels = []
    for item in items:
        try:
            level = float(item)
        except ValueError:
            raise _bad("sweep", value, source, accepted) from None
        if not math.isfinite(level) or level <= 0 or (
                not qps_mode and not check_only and (not level.is_integer() or level < 1)):
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
