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
import os
import re
from dataclasses import asdict, dataclass, replace

from gpuops.errors import UsageError
from gpuops.probes.loadtest.arrivals import ARRIVALS
from gpuops.settings import SETTINGS

# option key -> setting key (gpuops.<key> in Invoke's config); `chat` stands for the option `api`
SETTING_OF = {key: f"load_{key}" for key in (
    "users", "spawn_rate", "run_time", "prompt_tokens", "max_tokens", "stream", "chat", "qps", "arrival", "seed",
    "workers", "sweep", "detach", "web", "shared_prefix", "slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms",
    "request_timeout", "out", "warmup", "cooldown", "find_max", "slo_quantile", "locustfile", "workers_on")}
SETTING_OF.update({"model": "model", "url": "url", "server": "server"})
# workloads (gpuops.probes.loadtest.workloads): what the requests are made of
WORKLOAD_KEYS = ("tokenizer", "dataset", "max_prompts", "dataset_min_tokens", "dataset_max_tokens",
                 "shared_prefix_tokens", "shared_prefix_share", "turns")
SETTING_OF.update({key: f"load_{key}" for key in (*WORKLOAD_KEYS, "embeddings")})


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
    "--workers-on": ("workers_on", None),
    "--sweep": ("sweep", None),
    "--shared-prefix": ("shared_prefix", True),
    "--no-shared-prefix": ("shared_prefix", False),
    "--slo-ttft-ms": ("slo_ttft_ms", None),
    "--slo-tpot-ms": ("slo_tpot_ms", None),
    "--slo-e2el-ms": ("slo_e2el_ms", None),
    "--request-timeout": ("request_timeout", None),
    "--url": ("url", None),
    "--warmup": ("warmup", None),
    "--cooldown": ("cooldown", None),
    "--find-max": ("find_max", True),
    "--slo-quantile": ("slo_quantile", None),
    "--locustfile": ("locustfile", None),
}
FLAGS.update({f"--{key.replace('_', '-')}": (key, None) for key in WORKLOAD_KEYS})
FLAGS["--embeddings"] = ("api", "embeddings")
# Locust's own spellings of what gpuops means too (`locust -f FILE -u 16 -r 16 -t 1m --headless` pasted into
# the '## Load test' block); the one-letter ones only there: gpuops' tasks have long flags only
LOCUST_SPELLINGS: dict[str, tuple[str, object]] = {
    "-u": ("users", None), "-r": ("spawn_rate", None), "-t": ("run_time", None), "-H": ("url", None),
    "--host": ("url", None), "--processes": ("workers", None), "--headless": ("headless", True),
    "-f": ("locustfile", None),
}
FLAG_OF = {key: flag for flag, (key, const) in FLAGS.items() if const is None}
FLAG_OF.update({"stream": "--stream/--no-stream", "api": "--chat/--completion",
                "shared_prefix": "--shared-prefix/--no-shared-prefix",
                "web": "--web", "detach": "--detach", "out": "--out", "server": "--server", "headless": "--headless"})

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
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    find_max: bool = False
    slo_quantile: float = 0.99
    locustfile: str | None = None  # the user's own locustfile (-f), run instead of gpuops' user
    locust_args: tuple[str, ...] = ()  # words for that locustfile that gpuops does not know
    tokenizer: str | None = None  # a local Hugging Face tokenizer; default: the server's /tokenize
    dataset: str | None = None  # a JSONL / ShareGPT file, or `builtin`
    max_prompts: int | None = None
    dataset_min_tokens: int | None = None
    dataset_max_tokens: int | None = None
    shared_prefix_tokens: int = 0  # every (or --shared-prefix-share of the) prompt(s) starts with these tokens
    shared_prefix_share: float = 1.0
    turns: int = 1  # chat sessions: each user carries its conversation for this many turns
    workers_on: tuple[str, ...] = ()  # hosts running --workers Locust workers each (gpuops.hosts.workers)

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

    @property
    def ramp_s(self) -> float:
        """Seconds Locust takes to start every user (batches of floor(spawn_rate) users, one batch a second)."""
        from gpuops.probes.loadtest.metrics import ramp_s

        return ramp_s(self.users, self.spawn_rate)

    @property
    def locust_run_time_s(self) -> int:
        """How long Locust sends load: --run-time of steady state, after a ramp of a second or more and the
        warm-up, plus the cool-down (edges that steady_state leaves out, so they must not eat --run-time)."""
        ramp = math.ceil(self.ramp_s) if self.ramp_s >= 1 else 0
        return int(math.ceil(self.run_time_s + ramp + self.warmup_s + self.cooldown_s))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sweep"] = list(self.sweep)
        d["locust_args"] = list(self.locust_args)
        d["workers_on"] = list(self.workers_on)
        return d


# ---------------------------------------------------------------- words -> values


def parse_flag_words(words: list[str], source: str, base=None) -> dict:
    """Flags written as command-line words (the AGENTS.local.md block) -> {option key: value}.

    Locust's own command works too: `locust -f FILE -u 16 -r 16 -t 1m --headless -H URL --processes 4`;
    with -f the words gpuops does not know go to that locustfile (`locust_args`), without it they are an
    error that names the nearest gpuops flag. A relative -f path is taken from `base` (the block's folder).

    >>> sorted(parse_flag_words(["locust", "-u", "8", "-t", "1m", "--headless"], source="block").items())
    [('headless', (True, 'block')), ('run_time', ('1m', 'block')), ('users', ('8', 'block'))]
    """
    values: dict = {}
    words = list(words)
    for prefix in (["locust"], ["python", "-m", "locust"], ["python3", "-m", "locust"]):
        if words[:len(prefix)] == prefix:
            words = words[len(prefix):]
    user_file = any(w in ("-f", "--locustfile") or w.startswith(("-f=", "--locustfile=")) for w in words)
    passed: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, inline = word.partition("=")
        spelled = FLAGS.get(name) or LOCUST_SPELLINGS.get(name)
        if spelled is None:
            if user_file and word.startswith("-"):  # for the user's locustfile, with the words that follow
                passed.append(word)
                i += 1
                while i < len(words) and not words[i].startswith("-"):
                    passed.append(words[i])
                    i += 1
                continue
            raise _unknown_word(word, name, source)
        key, const = spelled
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
    if values.get("workers") is not None and str(values["workers"]).strip() == "-1":  # Locust: one per core
        values["workers"] = str(os.cpu_count() or 1)
    if values.get("locustfile") and base is not None and not os.path.isabs(values["locustfile"]):
        values["locustfile"] = os.path.join(str(base), values["locustfile"])
    if passed:
        values["locust_args"] = tuple(passed)
    return {k: (v, source) for k, v in values.items()}


def _unknown_word(word: str, name: str, source: str) -> UsageError:
    """An unknown word in the block, named with the nearest gpuops flag."""
    import difflib

    if not word.startswith("-"):
        return UsageError(f"{source}: unexpected word {word!r}",
                          hint=f"the load-test block takes flags: {' '.join(sorted(FLAGS))}")
    near = difflib.get_close_matches(name, [*FLAGS, *LOCUST_SPELLINGS], n=1, cutoff=0.5)
    nearest = f"the nearest gpuops flag is {near[0]}" if near else "no gpuops flag is near it"
    return UsageError(f"{source}: unknown load-test flag {word!r} ({nearest})",
                      hint=f"Locust's other flags go to your own locustfile only: add -f FILE; "
                           f"gpuops' flags: {' '.join(sorted(FLAGS))}")


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
    if cli.pop("embeddings", False):
        if cli.get("api"):
            raise UsageError(f"--embeddings and --{cli['api']} contradict each other",
                             hint="give one of --embeddings, --chat, --completion")
        cli["api"] = "embeddings"
    for key in ("web", "detach", "find_max", "headless"):
        if key in cli:
            cli[key] = cli[key] or None  # a yes/no flag not given is False: let lower layers speak
    for alias, key in (("host", "url"), ("processes", "workers")):  # Locust's long spellings
        value = cli.pop(alias, None)
        if value is not None:
            if cli.get(key) is not None:
                raise UsageError(f"--{alias} and --{key} say the same thing: give one of them")
            cli[key] = str(os.cpu_count() or 1) if str(value).strip() == "-1" else value
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
        if key in ("stream", "shared_prefix", "web", "detach", "chat", "find_max"):
            value = flag(source, value)
        if key == "chat":
            key, value = "api", ("chat" if value else "completion")
        if key == "embeddings":
            if not flag(source, value):
                continue
            key, value = "api", "embeddings"
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
        from gpuops.probes.loadtest.lengths import LengthError, parse

        if key == "max_tokens" and str(value).strip().lower() == "dataset":
            return "dataset"  # each dataset prompt's own answer length (checked with --dataset below)
        try:
            return parse(value)  # an int (fixed), or a distribution's text: uniform:64,256, normal:512,64
        except LengthError as err:
            raise _bad(key, value, source, f"must be {err}") from None
    if key in (*WORKLOAD_KEYS, "embeddings"):
        return _workload_value(key, value, source)
    if key == "users":
        return _int(key, value, source, 1, 100_000)
    if key == "workers_on":  # hosts, comma-separated: --workers-on gpu2,gpu3 ('off': none)
        from gpuops.hosts.hosts import split_names

        names = split_names(value)
        return None if not names or _is_off(key, value) else tuple(names)
    if key == "workers":
        return _int(key, value, source, 1, MAX_WORKERS)
    if key == "seed":
        return _int(key, value, source, 0)
    if key in ("warmup", "cooldown"):
        seconds = parse_timespan(value)
        if seconds is None:
            raise _bad(key, value, source, "must be a duration like 5s, 10, 1m (0: none)")
        return seconds
    if key == "slo_quantile":
        return _quantile(value, source)
    if key == "locustfile":
        if not str(value).strip():
            raise _bad(key, value, source, "must name a locustfile")
        return str(value)
    if key == "locust_args":
        return tuple(value)
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
    if key in ("stream", "shared_prefix", "web", "detach", "chat", "find_max", "headless"):
        if isinstance(value, bool):
            return value
        from gpuops.settings import flag

        return flag(source if source != "command line" else FLAG_OF.get(key, key), value)
    if key == "api":
        if str(value) not in ("chat", "completion", "embeddings"):
            raise _bad(key, value, source, "must be chat, completion or embeddings")
        return str(value)
    return None if value is None else str(value)


def _quantile(value, source: str) -> float:
    """0.99, 99 or 99%: the share of requests that must meet the SLOs, as a fraction."""
    text = str(value).strip().rstrip("%")
    try:
        number = float(text)
    except ValueError:
        raise _bad("slo_quantile", value, source, "must be a share like 0.99, 99 or 99%") from None
    if number > 1:
        number /= 100.0
    if not math.isfinite(number) or not 0 < number <= 1:
        raise _bad("slo_quantile", value, source, "must be a share above 0 and at most 100%")
    return number


def _example(key: str) -> str:
    return {"run_time": "30s", "warmup": "5s", "cooldown": "5s", "slo_quantile": "0.99",
            "locustfile": "benchmark/load_test.py", "sweep": "1,2,4,8", "arrival": "poisson", "url": "http://127.0.0.1:8000",
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
    for key in ("prompt_tokens", "max_tokens", "workers", "workers_on", "seed", "run_time", "qps", "spawn_rate", *SLO_KEYS,
                "request_timeout", "arrival", "model", "url", "stream", "shared_prefix", "web", "detach", "api",
                "server", "out", "warmup", "cooldown", "find_max", "slo_quantile", "locustfile", "locust_args", "headless", *WORKLOAD_KEYS):
        value, src = get(key)
        if value is None:
            continue
        checked = check_value(key, value, src)
        if checked is None:  # `--qps off`, `--slo-ttft-ms 0`: not set, whatever a lower layer says
            turned_off.add(key)
            continue
        kw[{"run_time": "run_time_s", "warmup": "warmup_s", "cooldown": "cooldown_s"}.get(key, key)] = checked

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
    if "users" in merged and "spawn_rate" in merged and _below(merged["spawn_rate"][1], merged["users"][1]):
        # the block's --spawn-rate was written for the block's --users: `--users 32` on the command line
        # would otherwise ramp at the block's 4 users/s for 8 s
        kw.pop("spawn_rate", None)
    value, src = get("users")
    users = _int("users", value, src, 1, 100_000) if value is not None else (
        DEFAULT_QPS_USERS if qps_mode else DEFAULT_USERS)
    kw["users"] = users
    kw.setdefault("spawn_rate", float(users))

    value, src = get("sweep")
    if value is not None and str(value).strip().lower() not in OFF:
        kw["sweep"] = _sweep(value, src, qps_mode)

    headless = kw.pop("headless", None)
    if headless and kw.get("web") and get("web")[1] == get("headless")[1]:
        raise UsageError("--headless and --web contradict each other", hint="give one of them")
    if headless and get("web")[1] != "command line":
        kw["web"] = False  # --headless (Locust's spelling of gpuops' default) turns off a lower --web
    opts = LoadTestOptions(**kw)
    _check_combinations(opts, merged, qps_off="qps" in turned_off)
    return _check_workload(opts, merged)


def _workload_value(key: str, value, source: str):
    if key == "embeddings":
        from gpuops.settings import flag

        return value if isinstance(value, bool) else flag(source if source != "command line" else "--embeddings",
                                                          value)
    if key in ("tokenizer", "dataset"):
        if not str(value).strip():
            raise _bad(key, value, source, "must not be empty")
        return str(value).strip()
    if key == "shared_prefix_share":
        number = _float(key, value, source)
        if number > 1:
            raise _bad(key, value, source, "must be a share above 0 and at most 1 (e.g. 0.5)")
        return number
    if key == "turns":
        return _int(key, value, source, 1, 1000)
    if key == "shared_prefix_tokens":
        return _int(key, value, source, 0, 1_000_000)
    return _int(key, value, source, 1, 10_000_000)


def _check_workload(opts: LoadTestOptions, merged: dict) -> LoadTestOptions:
    """The workload flags among themselves (gpuops.probes.loadtest.workloads uses them)."""
    from gpuops.probes.loadtest.lengths import Lengths

    if opts.turns > 1 and opts.api != "chat":
        raise UsageError(f"--turns {opts.turns} carries a chat conversation: it needs --chat",
                         hint="add --chat, or drop --turns")
    if opts.dataset is None:
        if opts.max_tokens == "dataset":
            raise UsageError("--max-tokens dataset takes each dataset prompt's answer length, but no --dataset "
                             "is given", hint="add --dataset FILE, or give --max-tokens a number")
        for key in ("max_prompts", "dataset_min_tokens", "dataset_max_tokens"):
            if getattr(opts, key) is not None:
                raise UsageError(f"{FLAG_OF[key]} filters a dataset, but no --dataset is given",
                                 hint="add --dataset FILE (or --dataset builtin)")
    elif opts.shared_prefix_tokens:
        raise UsageError("--shared-prefix-tokens builds its own prompts; a --dataset brings its own",
                         hint="drop one of them")
    if (opts.dataset_min_tokens and opts.dataset_max_tokens and opts.dataset_min_tokens > opts.dataset_max_tokens):
        raise UsageError(f"--dataset-min-tokens {opts.dataset_min_tokens} is above --dataset-max-tokens "
                         f"{opts.dataset_max_tokens}: no prompt could pass")
    if "shared_prefix_share" in merged and not opts.shared_prefix_tokens:
        raise UsageError("--shared-prefix-share needs --shared-prefix-tokens N (the prefix to share)")
    if opts.shared_prefix_tokens and opts.shared_prefix:
        raise UsageError("--shared-prefix sends one identical prompt; --shared-prefix-tokens shares only its start",
                         hint="give one of them")
    low = Lengths.of(opts.prompt_tokens).low
    if opts.shared_prefix_tokens and opts.shared_prefix_tokens >= low:
        raise UsageError(f"--shared-prefix-tokens {opts.shared_prefix_tokens} leaves nothing of a prompt of "
                         f"{low} token(s) to differ (--prompt-tokens {opts.prompt_tokens})",
                         hint="make the prefix shorter than the shortest prompt")
    if opts.api == "embeddings":
        if opts.turns > 1:
            raise UsageError("--turns is for chat sessions, not --embeddings")
        if opts.slo_ttft_ms is not None or opts.slo_tpot_ms is not None:
            raise UsageError("embeddings have no tokens to stream: --slo-ttft-ms and --slo-tpot-ms do not apply",
                             hint="use --slo-e2el-ms")
        opts = replace(opts, stream=False)  # an embedding answer is one JSON document
    return opts


def _below(lower: str, higher: str) -> bool:
    """Whether the source `lower` is a lower layer than `higher` (block < config < command line)."""
    def rank(src: str) -> int:
        return 2 if src == "command line" else 1 if src.startswith("gpuops.") else 0
    return rank(lower) < rank(higher)


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
    if opts.find_max and not opts.slo:
        raise UsageError("--find-max searches for the highest load that meets SLOs, but none is given",
                         hint="add --slo-ttft-ms and/or --slo-tpot-ms (or --slo-e2el-ms)")
    for flag_, on in (("--sweep", bool(opts.sweep)), ("--web", opts.web), ("--locustfile", bool(opts.locustfile))):
        if opts.find_max and on:
            raise UsageError(f"--find-max and {flag_} do not go together: --find-max picks its own load levels",
                             hint=f"drop {flag_} (or --find-max)")
    if opts.locustfile:
        if not os.path.isfile(opts.locustfile):
            src = merged.get("locustfile", (None, "command line"))[1]
            raise UsageError(f"locustfile {opts.locustfile} not found (from {src})",
                             hint="-f takes a path to your locustfile, relative to the AGENTS.local.md folder "
                                  "in the '## Load test' block, to the current folder on the command line")
        if opts.sweep:
            raise UsageError("--sweep runs gpuops' own user; your locustfile (-f) runs once",
                             hint="drop --sweep, or drop -f to sweep with gpuops' user")
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
