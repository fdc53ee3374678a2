"""AGENTS.local.md -> recipes: the server commands, load-test flags and smoke presets it holds.

    recipes = load_recipes("AGENTS.local.md")
    recipe = recipes.server(None)              # the first server recipe
    recipe.env, recipe.argv[:3]
    ({'CUDA_VISIBLE_DEVICES': '0,1'}, ['vllm', 'serve', 'Qwen/Qwen3-8B'])
    print(recipe.display())
    export CUDA_VISIBLE_DEVICES=0,1
    vllm serve Qwen/Qwen3-8B --tensor-parallel-size 2

Which fenced block is what is decided by the nearest Markdown heading above it:
  - a heading with "load test" (or load-test, loadtest): its ```bash block holds `inv load-test` flags;
  - a heading with "smoke": its ```json block holds smoke presets {"name": {"prompt": ..., ...}};
  - a heading with "server": a server recipe named after the heading without the word "server"
    ("## Server" -> server, "## Server: vision" -> vision, "## Server (vLLM 8B)" -> vllm-8b);
    the first ```bash block under the heading is the command;
  - when no heading names a server, the first ```bash block under no such heading is the server.
Other blocks are documentation and are ignored. docs/configuration-agents-file.md has the details.

A command is a simple command (argv + env, started without a shell) unless it needs one: shell
operators (`&&`, `;`, `|`, redirections), `$VAR` expansions, `cd`/`source` lines, or several
command lines. Shell recipes run as `bash -c SCRIPT` with `exec` put in front of the last command
where that is safe, so the server process replaces bash and keeps the recorded PID.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.errors import RecipeError

SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh", "shell-session"}
MASK = "****"

EXAMPLE = "## Server\n\n```bash\nvllm serve Qwen/Qwen3-8B --port 8000\n```"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`{]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SECRET_NAME = re.compile(r"TOKEN(?!S|IZER)|KEY|SECRET|PASSW(?:OR)?D|PASSPHRASE|CREDENTIAL|AUTH|COOKIE", re.I)
_LOAD_TEST = re.compile(r"load[\s_-]?test", re.I)


def is_secret_name(name: str) -> bool:
    """HF_TOKEN, OPENAI_API_KEY, DB_PASSWORD, MYSQL_PWD: yes; MAX_TOKENS, TOKENIZERS_PARALLELISM, PWD: no."""
    return bool(_SECRET_NAME.search(name)) or is_secret_key(name)


_SECRET_WORDS = frozenset({
    "key", "keys", "apikey", "apikeys", "token", "secret", "secrets", "password", "passwords", "passwd",
    "passphrase", "credential", "credentials", "creds", "auth", "authorization", "bearer", "cookie", "sig",
    "signature", "jwt",
})
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "apikey")
_SWITCH_PREFIXES = frozenset({"no", "enable", "disable"})  # --enable-auth is a switch: it takes no value


def is_secret_key(name: str) -> bool:
    """Whether a flag, header, JSON key or query parameter names a secret, by its last word.

    >>> [is_secret_key(n) for n in ("--api-keys", "--hf-token", "X-Api-Key", "access_token", "apiKey")]
    [True, True, True, True, True]
    >>> [is_secret_key(n) for n in ("--max-tokens", "--tokenizer", "--ssl-keyfile", "--token-file", "--enable-auth")]
    [False, False, False, False, False]
    """
    parts = [p for p in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if p]
    if not parts or parts[0] in _SWITCH_PREFIXES:
        return False
    last = parts[-1]
    if last in ("pwd", "pass"):  # MYSQL_PWD, --db-pass; but PWD alone is the working directory
        return len(parts) > 1
    return last in _SECRET_WORDS or last.endswith(_SECRET_ENDINGS)


# ---------------------------------------------------------------- masking
#
# Secrets are masked by meaning, wherever they can stand in shell text: the text is split into
# shell words (quotes, escapes, $(...) honoured) and each word is judged by what it is: an
# assignment to a secret name (at any position: inline, export, env, declare -x, docker -e), the
# value of a secret flag (`--api-key X`, `--api-key=X`), an `Authorization:` header, a URL with
# credentials, a JSON key. A quoted word that holds shell text (`bash -c '...'`) is judged the
# same way inside. A regex pass over the result then catches the same shapes in text that is no
# valid shell (a process's argv joined by spaces), and every secret value found, or given in
# `env`, is replaced wherever else it appears.


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "op" (an operator or newline: ends a flag's reach) or "comment"
    start: int
    end: int
    value: str  # a word's value once its quotes are removed; the raw text of an op or comment


_BREAKS = frozenset(" \t\n;&|()<>")
_ASSIGN_WORD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?=)(.*)$", re.S)
_FLAG_WORD = re.compile(r"^(--?[A-Za-z][\w.-]*)$")
_FLAG_EQ_WORD = re.compile(r"^(--?[A-Za-z][\w.-]*)=(.*)$", re.S)
_HEADER_NAME_WORD = re.compile(r"^([A-Za-z][\w-]*):$")
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "apikey", "key"})
_MASK_WORD_LIMIT = 4  # how deep quoted shell text inside quoted shell text is followed


def _dq_end(text: str, i: int) -> int:
    """Index of the `"` closing a double-quoted string whose content starts at i (len(text) if none)."""
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == '"':
            return i
        elif ch == "$" and text.startswith(("$(", "${"), i):
            i = _close(text, i + 1)
        elif ch == "`":
            i = _tick_end(text, i + 1) + 1
        else:
            i += 1
    return n


def _tick_end(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] != "`":
        i += 2 if text[i] == "\\" else 1
    return min(i, n)


def _close(text: str, i: int) -> int:
    """Index after the bracket matching text[i] (`(` or `{`), skipping quoted text; len(text) if none."""
    opener = text[i]
    closer = ")" if opener == "(" else "}"
    depth, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "'":
            j = text.find("'", i + 1)
            i = n if j < 0 else j + 1
            continue
        if ch == '"':
            i = _dq_end(text, i + 1) + 1
            continue
        if ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _dq_value(raw: str) -> str:
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m[1] == "\n" else m[1], raw)


def _shell_tokens(text: str) -> list[_Token]:
    """Split shell text into words (values without their quotes), operators and comments; never raises."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            i += 1
        elif ch == "\\" and text.startswith("\n", i + 1):
            i += 2
        elif ch == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            tokens.append(_Token("comment", i, j, text[i:j]))
            i = j
        elif ch in _BREAKS:
            j = i + 1
            while j < n and text[j] in ";&|<>" and ch != "\n":
                j += 1
            tokens.append(_Token("op", i, j, text[i:j]))
            i = j
        else:
            start, value = i, []
            while i < n and text[i] not in _BREAKS:
                ch = text[i]
                if ch == "\\":
                    if i + 1 < n and text[i + 1] != "\n":
                        value.append(text[i + 1])
                    i += 2
                elif ch == "'" or (ch == "$" and text.startswith("$'", i)):
                    at = i + (2 if ch == "$" else 1)
                    j = at
                    while j < n and text[j] != "'":
                        j += 2 if ch == "$" and text[j] == "\\" else 1
                    value.append(text[at:min(j, n)])
                    i = j + 1
                elif ch == '"':
                    j = _dq_end(text, i + 1)
                    value.append(_dq_value(text[i + 1:j]))
                    i = j + 1
                elif ch == "$" and text.startswith(("$(", "${"), i):
                    j = _close(text, i + 1)
                    value.append(text[i:j])
                    i = j
                elif ch == "`":
                    j = _tick_end(text, i + 1)
                    value.append(text[i:j + 1])
                    i = j + 1
                else:
                    value.append(ch)
                    i += 1
            tokens.append(_Token("word", start, min(i, n), "".join(value)))
    return tokens


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[\w@%+=:,./*-]+", value) else shlex.quote(value)


def _secret_value(value: str, found: set[str]) -> str:
    """A secret's value is replaced by ****, and remembered (to be masked wherever else it appears).
    `--api-key "$OPENAI_API_KEY"` is masked too: in a process's argv a `$` is no reference."""
    found.add(value)
    bare = value.strip("'\"")  # `--token='x'` inside a quoted word: the same secret without its quotes
    if bare:
        found.add(bare)
    return MASK


_USER_FLAGS = frozenset({"-u", "--user", "--proxy-user"})  # curl/wget: `-u name:password`
_MANY = 1 << 30  # `--api-keys k1 k2 ...`: every word up to the next flag


def _is_script(prev: str | None) -> bool:
    """The word after `-c` (`bash -c '...'`, `sh -lc`, `su -c`) is shell text, not one value: judged word
    by word. Anywhere else `'HF_TOKEN=x y'` is one assignment, masked whole (too much rather than too little)."""
    return bool(prev and re.fullmatch(r"-[A-Za-z]*c", prev))


def _mask_word(token: _Token, found: set[str], depth: int, prev: str | None,
               bare: bool = False) -> tuple[str | None, int | str]:
    """(the word's new text or None to keep it, what the following words hold: how many are
    secrets, "header" for an optional scheme then a secret, "user" for a `name:password` pair)."""
    value = token.value
    # `bash -c 'A=1 cmd'` is a script; `bash -c A='x; y' cmd` (an argv joined by spaces: `bare`) an assignment
    script = _is_script(prev) and re.search(r"\s", value) and not bare
    assign = None if script else _ASSIGN_WORD.match(value)
    if assign:
        name, op, rest = assign.groups()
        if is_secret_name(name):
            return f"{name}{op}{_secret_value(rest, found)}", 0
        masked = _mask_value(rest, found, depth)
        return (f"{name}{op}{_quote(masked)}" if masked != rest else None), 0
    flag_eq = _FLAG_EQ_WORD.match(value)
    if flag_eq:
        flag, rest = flag_eq.groups()
        if is_secret_key(flag):
            return f"{flag}={_secret_value(rest, found)}", 0
        if flag in _USER_FLAGS and ":" in rest:
            return f"{flag}={_quote(rest.split(':', 1)[0])}:{_found(rest.split(':', 1)[1], found)}", 0
        masked = _mask_value(rest, found, depth)
        return (f"{flag}={_quote(masked)}" if masked != rest else None), 0
    if _FLAG_WORD.match(value):
        if value in _USER_FLAGS:
            return None, "user"
        if not is_secret_key(value):
            return None, 0
        plural = re.search(r"(?:keys|secrets|tokens|credentials|passwords)$", value, re.I)
        return None, _MANY if plural else 1
    header = _HEADER_NAME_WORD.match(value)
    if header and (is_secret_key(header[1]) or header[1].lower() == "proxy-authorization"):
        return None, "header"  # `Authorization: Bearer X` as three words (an argv joined by spaces)
    if value.lower() == "bearer":
        return None, 1
    masked = _mask_value(value, found, depth)
    return (_quote(masked) if masked != value else None), 0


def _mask_substitutions(raw: str, found: set[str], depth: int) -> str:
    """A word holding `$(...)` or backticks, masked inside them, its quoting kept."""
    out, i = [], 0
    while i < len(raw):
        if raw.startswith("$(", i):
            j = _close(raw, i + 1)
            out.append("$(" + _mask_shell(raw[i + 2:j - 1], found, depth + 1) + raw[j - 1:j])
            i = j
        elif raw[i] == "`":
            j = _tick_end(raw, i + 1)
            out.append("`" + _mask_shell(raw[i + 1:j], found, depth + 1) + raw[j:j + 1])
            i = j + 1
        else:
            out.append(raw[i])
            i += 1
    return _mask_patterns("".join(out), found)


def _adjacent_run(tokens: list[_Token], i: int) -> tuple[int, int]:
    """(index of the next token, end) of the words and operators glued to tokens[i] (no space between),
    trailing operators left out: `)x0`, `|#x` or `ab;cd` in an argv joined by spaces is one value,
    `x;` is a value and a `;`. A `#` glued on is no comment there: it ends at the next space."""
    j = i + 1
    while j < len(tokens) and tokens[j].start == tokens[j - 1].end and tokens[j].value != "\n":
        if tokens[j].kind == "comment":
            space = re.search(r"\s", tokens[j].value)
            return j + 1, tokens[j].start + (space.start() if space else len(tokens[j].value))
        j += 1
    while j > i and tokens[j - 1].kind == "op":
        j -= 1
    return j, tokens[j - 1].end if j > i else tokens[i].start


def _mask_tokens(text: str, tokens: list[_Token], found: set[str], depth: int, raw: bool = True) -> str:
    pieces: list[tuple[int, int, str]] = []
    secret_next: int | str = 0
    prev: str | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.kind == "word":
            prev, before = token.value, prev
        else:
            prev = before = None
        if token.kind == "comment" and secret_next and not token.value.startswith("# "):
            word = re.match(r"\S+", token.value)[0]  # `--api-key #x1`: in a joined argv, the value
            found.add(word)
            pieces.append((token.start, token.start + len(word), MASK))
            secret_next = 0
            continue
        if token.kind == "comment":
            body = _mask_value(token.value[1:], found, depth)
            if body != token.value[1:]:
                pieces.append((token.start, token.end, "#" + body))
            secret_next = 0
            continue
        if secret_next and not _FLAG_WORD.match(token.value):  # `--auth --port 80`: --auth was a switch
            end, stop = _adjacent_run(tokens, i - 1)
            if end == i - 1:  # an operator alone: the flag had no value
                secret_next = 0
                continue
            if secret_next == "user":
                secret_next = 0
                if ":" in token.value:
                    user, _, password = token.value.partition(":")
                    pieces.append((token.start, token.end, f"{_quote(user)}:{_found(password, found)}"))
                continue
            if secret_next == "header":
                secret_next = 1
                if token.value.lower() in _AUTH_SCHEMES:
                    continue  # `Authorization: Bearer X`: the scheme stays, X is the secret
            secret_next -= 1
            if end > i:  # a value with operators glued to it: all of it
                found.add(text[token.start:stop])
                pieces.append((token.start, stop, MASK))
                i = end
                continue
            pieces.append((token.start, token.end, _secret_value(token.value, found)))
            continue
        if token.kind == "op":
            secret_next = 0
            continue
        bare = raw and bool(_ASSIGN_WORD.match(text[token.start:token.end]))
        new, secret_next = _mask_word(token, found, depth, before, bare)
        if new is not None and raw and not new.endswith(MASK) and re.search(r"\$\(|`", text[token.start:token.end]):
            new = _mask_substitutions(text[token.start:token.end], found, depth)  # keep `$(...)` as written
        if new is not None and new.endswith("=" + MASK):  # a secret's value may have operators glued to it
            end, stop = _adjacent_run(tokens, i - 1)
            if end > i:
                found.add(text[token.start:stop].partition("=")[2])
                pieces.append((token.start, stop, new))
                i = end
                continue
        if new is not None:
            pieces.append((token.start, token.end, new))
    for start, end, new in reversed(pieces):
        text = text[:start] + new + text[end:]
    return text


def _mask_shell(text: str, found: set[str], depth: int = 0) -> str:
    return _mask_tokens(text, _shell_tokens(text), found, depth)


def _mask_value(value: str, found: set[str], depth: int) -> str:
    """A word's value: shell text itself when it has spaces (`bash -c '...'`, `"Authorization: Bearer X"`),
    then headers, URLs, JSON keys in it."""
    if depth < _MASK_WORD_LIMIT and re.search(r"\s", value) and not value.lstrip().startswith(("{", "[")):
        tokens = _shell_tokens(value)
        if not (len(tokens) == 1 and tokens[0].value == value):  # else it is one word: nothing new inside
            value = _mask_tokens(value, tokens, found, depth + 1)
    return _mask_patterns(value, found)


# the same shapes in any text, for what is no valid shell: `bash -c HF_TOKEN=x cmd` from a joined argv
_VALUE = r"""("(?:\\.|[^"\\])*"|'[^']*'|[^\s;&|()<>'"]+)"""
_P_AUTH = re.compile(r"""(?i)\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?\s*)"""
                     r"""(?:((?:bearer|basic|token|digest|apikey)\s+))?([^\s"',;}]+)""")
_P_BEARER = re.compile(r"(?i)\b(bearer\s+)([^\s\"',;}]+)")
_P_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#@'\"]+)@")
_P_QUERY = re.compile(r"([?&])([\w.-]+)=([^&#\s'\"]*)")
_P_JSON = re.compile(r"""(["'])([\w.-]+)\1(\s*:\s*)(["'])((?:\\.|(?!\4).)*)\4""")
_P_ASSIGN = re.compile(r"(?<![\w$./-])([A-Za-z_][A-Za-z0-9_]*)(\+?=)" + _VALUE)
_P_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w.-]*)(=|[ \t]+)" + _VALUE)
_USERINFO_TOKEN_LEN = 16  # a user name alone in a URL is a token when it is this long (https://ghp_...@host)


def _found(value: str, found: set[str]) -> str:
    if value and MASK not in value:
        found.add(value.strip("'\""))
    return MASK


def _userinfo(m: re.Match, found: set[str]) -> str:
    user, colon, password = m[2].partition(":")
    if colon:
        return f"{m[1]}{user}:{_found(password, found)}@"
    return f"{m[1]}{_found(user, found)}@" if len(user) >= _USERINFO_TOKEN_LEN else m[0]


def _mask_patterns(text: str, found: set[str]) -> str:
    text = _P_AUTH.sub(lambda m: f"{m[1]}{m[2] or ''}{_found(m[3], found)}", text)
    text = _P_BEARER.sub(lambda m: f"{m[1]}{_found(m[2], found)}", text)
    text = _P_URL.sub(lambda m: _userinfo(m, found), text)
    text = _P_QUERY.sub(lambda m: f"{m[1]}{m[2]}={_found(m[3], found)}" if is_secret_key(m[2]) else m[0], text)
    text = _P_JSON.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{_found(m[5], found)}{m[4]}"
                       if is_secret_key(m[2]) and MASK not in m[5] else m[0], text)
    text = _P_ASSIGN.sub(lambda m: f"{m[1]}{m[2]}{_found(m[3], found)}"
                         if is_secret_name(m[1]) else m[0], text)
    return _P_FLAG.sub(lambda m: f"{m[1]}{m[2]}{_found(m[3], found)}"
                       if is_secret_key(m[1]) and not m[3].startswith("-") else m[0], text)


_MIN_FOUND_LEN = 6  # shorter values found by a rule are masked where they stand, not everywhere


def _finish(text: str, found: set[str], env: dict[str, str] | None) -> str:
    text = _mask_patterns(text, found)
    values = {v for v in found if len(v) >= _MIN_FOUND_LEN and v != MASK}
    values |= {v for k, v in (env or {}).items() if is_secret_name(k) and len(v) >= 4}
    for value in sorted(values, key=len, reverse=True):  # the longest first: one may hold another
        text = text.replace(value, MASK)
    return text


def mask_secrets(text: str, env: dict[str, str] | None = None) -> str:
    """Shell text (a recipe, a process's command line) with every secret in it replaced by ****.

    >>> mask_secrets("cd /srv && HF_TOKEN=hf_abc vllm serve m --api-key sk-123 --port 8000")
    'cd /srv && HF_TOKEN=**** vllm serve m --api-key **** --port 8000'
    >>> mask_secrets("export HF_TOKEN=x; curl -H 'Authorization: Bearer sk-1' https://me:pw@host/v1")
    "export HF_TOKEN=****; curl -H 'Authorization: Bearer ****' https://me:****@host/v1"

    Values of secret-named variables in `env` are masked wherever they appear.
    """
    found: set[str] = set()
    return _finish(_mask_shell(text, found), found, env)


def mask_argv(argv: list[str]) -> str:
    """A process's command line as gpuops shows it (its words joined by spaces), secrets masked.

    >>> mask_argv(["vllm", "serve", "m", "--api-key", "sk-123", "--served-model-name", "it's"])
    "vllm serve m --api-key **** --served-model-name it's"
    """
    tokens, at = [], 0
    for arg in argv:
        tokens.append(_Token("word", at, at + len(arg), arg))
        at += len(arg) + 1
    found: set[str] = set()
    return _finish(_mask_tokens(" ".join(argv), tokens, found, 0, raw=False), found, None)


@dataclass(frozen=True)
class ServerRecipe:
    """One server command, ready to launch: argv+env, or a bash script when it needs a shell."""

    name: str
    title: str | None
    argv: list[str]
    env: dict[str, str]
    shell: bool
    script: str
    path: Path
    line: int
    needs: tuple[str, ...] = ()  # `needs: model` under its heading: started (and ready) first
    disabled: bool = False  # `disabled: yes`: left out of --all (still started by name)
    share_gpus: bool = False  # `share-gpus: yes`: may use GPUs another server of this box uses

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else "bash"

    def option(self, *names: str) -> str | None:
        """The value of the last `--port 8000` / `--port=8000` / `-p 8000` in the command, or None."""
        found = None
        for i, word in enumerate(self.argv):
            for name in names:
                if word == name and i + 1 < len(self.argv):
                    found = self.argv[i + 1]
                elif name.startswith("--") and word.startswith(name + "="):
                    found = word[len(name) + 1:]
        return found

    def display(self, mask: bool = True) -> str:
        """What the user sees: the environment as `export` lines, then the command; masked, the
        whole of it goes through mask_secrets (a non-secret variable can hold https://user:pw@...)."""
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        lines.append(self.script if self.shell else shlex.join(self.argv))
        text = "\n".join(lines)
        return mask_secrets(text, self.env) if mask else text


@dataclass
class Recipes:
    """Everything AGENTS.local.md says: server recipes (in file order), load-test flags, smoke presets."""

    path: Path
    servers: dict[str, ServerRecipe] = field(default_factory=dict)
    load_test_args: list[str] = field(default_factory=list)
    smoke_presets: dict[str, dict] = field(default_factory=dict)
    shell_blocks: int = 0

    def server(self, name: str | None = None) -> ServerRecipe:
        """The recipe called `name`, or the first one when name is None."""
        if not self.servers:
            what = "no ```bash block" if not self.shell_blocks else "no server block"
            raise RecipeError(f"{what} found (looked for a '## Server' heading, else the first untitled ```bash block)",
                              path=self.path, hint=f"add the server command, e.g.\n{EXAMPLE}")
        if name is None:
            return next(iter(self.servers.values()))
        if name not in self.servers:
            raise RecipeError(f"no server recipe named '{name}'", path=self.path,
                              hint=f"known: {', '.join(self.servers)} (headings like '## Server: {name}' name them)")
        return self.servers[name]


# ---------------------------------------------------------------- Markdown


@dataclass
class _Block:
    lang: str
    line: int  # line of the opening fence
    lines: list[str]
    heading: str | None
    heading_line: int | None


def _blocks(text: str, path) -> Iterator[_Block]:
    heading: tuple[str, int] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            head = _HEADING.match(lines[i])
            if head:
                heading = (head[2], i + 1)
            i += 1
            continue
        opener, lang, start = fence[1], fence[2].lower(), i
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^ {{0,3}}{opener[0]}{{{len(opener)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise RecipeError(f"code block opened with {opener} is never closed", path=path, line=start + 1,
                              hint=f"add a closing {opener} line after the command")
        i += 1
        yield _Block(lang, start + 1, body, heading[0] if heading else None, heading[1] if heading else None)


_MARKER = re.compile(r"^ {0,3}(?:[-*] +)?(needs|disabled|share-gpus|share_gpus): *(.*?)\s*$")  # lower case only
_YES, _NO = {"yes", "true", "on", "1"}, {"no", "false", "off", "0"}


def _markers(text: str, path) -> dict[int, dict[str, object]]:
    """The marker lines of each server heading's section, outside code blocks (pure): {heading line: markers}.
    Only under a heading that names a server, and only in lower case: prose such as "Disabled: the old
    recipe was removed" or a "## Notes" section is never read as one.

    >>> _markers("## Server: app\\nneeds: model, Vision Model\\ndisabled: yes\\n", "A.md")
    {1: {'needs': ('model', 'vision-model'), 'disabled': True}}
    """
    found: dict[int, dict[str, object]] = {}
    heading_line: int | None = None
    fence: str | None = None
    for no, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", line):
                fence = None
            continue
        opened = _FENCE.match(line)
        if opened:
            fence = opened[1]
            continue
        head = _HEADING.match(line)
        if head:
            heading_line = no if _slug(head[2]) is not None else None
            continue
        m = _MARKER.match(line)
        if m is None or heading_line is None:
            continue
        key, value = m[1].replace("_", "-"), m[2].strip("`").strip()
        marks = found.setdefault(heading_line, {})
        if key == "needs":  # names as a heading gives them: `needs: Vision Model` is vision-model
            names = tuple(_slug(f"Server: {n}") for n in value.split(",") if n.strip())
            if not names:
                raise RecipeError("`needs:` names no server", path=path, line=no,
                                  hint="write the names of the servers it needs, e.g. `needs: model`")
            marks["needs"] = tuple(dict.fromkeys([*marks.get("needs", ()), *names]))
        else:
            word = value.lower() or "yes"
            if word not in _YES | _NO:
                raise RecipeError(f"`{m[1]}: {value}`: say yes or no", path=path, line=no,
                                  hint=f"write `{key}: yes` (or remove the line)")
            marks["share_gpus" if key == "share-gpus" else key] = word in _YES
    return found


_FILLER = {"start", "starting", "run", "running", "launch", "launching", "the", "a", "an", "dev", "development",
           "inference", "command", "commands", "how", "to", "our", "my", "local"}


def _slug(heading: str) -> str | None:
    """The recipe name a heading gives, or None when the heading is not about a server.

    "Server" -> server, "Server: vision" -> vision, "Server (vLLM 8B)" -> vllm-8b, "Start the dev server" ->
    server; a long sentence that merely mentions a server (a page title) names nothing, but after
    "Server:" any length names: "Server: Qwen2.5-0.5B-Instruct" -> qwen2-5-0-5b-instruct.
    """
    if not re.search(r"\bservers?\b", heading, re.I):
        return None
    named = re.match(r"^\s*servers?\s*:", heading, re.I) is not None  # "Server: NAME" names, however long
    words = re.findall(r"[a-z0-9]+", re.sub(r"\bservers?\b", " ", heading.lower()))
    words = [w for w in words if w not in _FILLER]
    if len(words) > 4 and not named:
        return None
    return "-".join(words) or "server"


# ---------------------------------------------------------------- shell text


def _scan(text: str) -> Iterator[tuple[int, str]]:
    """Yield (index, operator) for shell syntax outside quotes: && || ; | & < > ( ) ` $ and newline.

    Stops at an unquoted `#` that starts a word (a comment). Raises ValueError on an open quote.
    """
    i, quote = 0, None
    while i < len(text):
        ch = text[i]
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "\\":
            i += 1
        elif quote == '"':
            if ch == '"':
                quote = None
            elif ch in "$`":
                yield i, ch
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t\n"):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith(("&&", "||"), i):
            yield i, text[i:i + 2]
            i += 1
        elif ch in ";|&<>()`$\n":
            yield i, ch
        i += 1
    if quote:
        raise ValueError(f"unbalanced {quote} quote")


def _logical_lines(block: _Block, path) -> list[tuple[int, str]]:
    """Join `\\` continuations and quoted newlines into (line number, text) commands; drop comments/blank."""
    raw = [(block.line + 1 + n, s) for n, s in enumerate(block.lines)]
    if block.lang in ("console", "shell-session") and any(s.lstrip().startswith("$ ") for _, s in raw):
        kept, cont = [], False
        for no, s in raw:
            if s.lstrip().startswith("$ ") or cont:
                kept.append((no, s.lstrip()[2:] if s.lstrip().startswith("$ ") else s))
                cont = s.rstrip().endswith("\\")
        raw = kept
    out: list[tuple[int, str]] = []
    start, buf = None, ""
    for no, s in raw:
        if start is None:
            if not s.strip() or s.lstrip().startswith("#"):
                continue
            start, buf = no, ""
        stripped = s.rstrip()
        # lenient: `\` followed by trailing spaces still continues (bash would not; it is never meant)
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            buf += stripped[:-1] + " "
            continue
        buf += s
        try:
            list(_scan(buf))
        except ValueError:
            buf += "\n"  # a quoted string spanning lines: keep reading
            continue
        out.append((start, buf.strip()))
        start = None
    if start is not None:
        try:
            list(_scan(buf))
        except ValueError as err:
            raise RecipeError(f"{err} in the command", path=path, line=start,
                              hint="close the quote (quotes must pair up on the command)") from None
        raise RecipeError("the command ends with a dangling `\\` (a continuation with nothing after it)",
                          path=path, line=raw[-1][0], hint="remove the last `\\` or add the missing line")
    return out


def _words(text: str, path, line: int) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError as err:
        raise RecipeError(f"cannot split the command into words: {err}", path=path, line=line,
                          hint="check the quotes and backslashes on this command") from None


def _split_assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    i = 0
    while i < len(words) and _ASSIGN.match(words[i]):
        k, _, v = words[i].partition("=")
        env[k] = v
        i += 1
    return env, words[i:]


def _needs_shell(ops: list[str]) -> bool:
    return any(op != "\n" for op in ops)


def _strip_env_prefix(words: list[str]) -> tuple[dict[str, str], list[str]] | None:
    """`A=1 env B=2 cmd` -> ({A, B}, [cmd]); None when `env` has options that need the real `env`."""
    env, rest = _split_assignments(words)
    while rest and rest[0] == "env":
        if len(rest) > 1 and rest[1].startswith("-"):
            return None
        more, rest = _split_assignments(rest[1:])
        env.update(more)
    return env, rest


# after a pipe, `||`, `&` or inside a subshell / command substitution, `exec` would change what runs
_EXEC_UNSAFE = {"|", "||", "&", "(", ")", "`"}
_KEYWORDS = {"exec", "if", "for", "while", "until", "case", "{", "function", "select", "time", "[[", "!"}


def _with_exec(line: str) -> str:
    """Put `exec` in front of the line's last command when only `&&`/`;` come before it."""
    try:
        ops = list(_scan(line))
    except ValueError:
        return line
    if any(op in _EXEC_UNSAFE for _, op in ops):
        return line
    seps = [i + len(op) for i, op in ops if op in ("&&", ";")]
    cut = seps[-1] if seps else 0
    head, tail = line[:cut], line[cut:].lstrip()
    first = tail.split(None, 1)[0] if tail.split() else ""
    if not tail or first in _KEYWORDS or _ASSIGN.match(first):
        return line  # `exec A=1 cmd` would try to run "A=1"
    return f"{head} exec {tail}" if head else f"exec {tail}"


def _last_command_words(line: str) -> list[str]:
    """Best-effort argv of the last command on a shell line (for port and engine detection)."""
    try:
        ops = [(i, op) for i, op in _scan(line) if op in ("&&", "||", ";", "|", "&")]
    except ValueError:
        return []
    cut = ops[-1][0] + len(ops[-1][1]) if ops else 0
    if ops and ops[-1][1] == "&" and not line[cut:].strip() and len(ops) > 1:
        cut = ops[-2][0] + len(ops[-2][1])
    try:
        words = shlex.split(line[cut:], comments=True)
    except ValueError:
        return []
    stripped = _strip_env_prefix(words)
    words = stripped[1] if stripped else words
    while words and words[0] in ("exec", "nohup", "env"):
        words = words[1:]
        while words and (words[0].startswith("-") or _ASSIGN.match(words[0])):
            words = words[2:] if words[0] in ("-u", "--unset", "-C", "--chdir") else words[1:]
    return [w for w in words if not re.match(r"^\d?[<>]", w)]


def parse_server(block: _Block, name: str, path) -> ServerRecipe:
    """One bash block -> ServerRecipe (pure)."""
    commands = _logical_lines(block, path)
    env: dict[str, str] = {}
    script_lines: list[tuple[int, str]] = []
    for no, text in commands:
        words = _words(text, path, no)
        if not words:
            continue
        try:
            ops = [op for _, op in _scan(text)]
        except ValueError as err:  # pragma: no cover - _logical_lines already paired the quotes
            raise RecipeError(str(err), path=path, line=no) from None
        is_export = words[0] == "export" and all(_ASSIGN.match(w) for w in words[1:]) and len(words) > 1
        only_assignments = all(_ASSIGN.match(w) for w in words)
        if (is_export or only_assignments) and not _needs_shell(ops):
            env.update(_split_assignments(words[1:] if is_export else words)[0])
            continue
        script_lines.append((no, text))
    if not script_lines:
        raise RecipeError("the server block holds no command (only comments, blank lines or exports)",
                          path=path, line=block.line, hint=f"put the server command in the block, e.g.\n{EXAMPLE}")
    first_line = script_lines[0][0]
    last_no, last = script_lines[-1]
    ops = [op for _, op in _scan(last)]
    if ops and ops[-1] == "&" and last.rstrip().endswith("&"):
        raise RecipeError("the command ends with `&` (runs it in the background)", path=path, line=last_no,
                          hint="remove `nohup`, the output redirection and the trailing `&`: "
                               "gpuops runs the server detached and writes its log itself")
    if len(script_lines) == 1 and not _needs_shell(ops):
        simple = _strip_env_prefix(_words(last, path, last_no))
        if simple is not None and simple[1]:
            inline, argv = simple
            while argv and argv[0] == "exec":
                argv = argv[1:]
            if argv:
                env.update(inline)
                return ServerRecipe(name=name, title=block.heading, argv=argv, env=env, shell=False,
                                    script=shlex.join(argv), path=Path(path), line=first_line)
    # a shell recipe: the last simple command may still carry inline env; lift it into `env`
    if not _needs_shell(ops):
        simple = _strip_env_prefix(_words(last, path, last_no))
        if simple is not None and simple[0] and simple[1]:
            env.update(simple[0])
            last = shlex.join(simple[1])
    lines = [text for _, text in script_lines[:-1]] + [_with_exec(last)]
    return ServerRecipe(name=name, title=block.heading, argv=_last_command_words(last), env=env, shell=True,
                        script="\n".join(lines), path=Path(path), line=first_line)


def _load_test_args(block: _Block, path) -> list[str]:
    words: list[str] = []
    for no, text in _logical_lines(block, path):
        words += _words(text, path, no)
    # people paste the whole command: `inv load-test --users 8`
    for prefix in (["inv", "load-test"], ["invoke", "load-test"], ["gpuops", "load-test"], ["load-test"]):
        if words[:len(prefix)] == prefix:
            return words[len(prefix):]
    return words


def _smoke_presets(block: _Block, path) -> dict[str, dict]:
    try:
        data = json.loads("\n".join(block.lines) or "{}")
    except json.JSONDecodeError as err:
        raise RecipeError(f"smoke presets are not valid JSON: {err.msg}", path=path, line=block.line + err.lineno,
                          hint='write {"name": {"prompt": "...", "max_tokens": 32}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise RecipeError("smoke presets must be a JSON object of objects", path=path, line=block.line + 1,
                          hint='write {"name": {"prompt": "...", "max_tokens": 32}}')
    return data


def parse_recipes(text: str, path: str | Path = "AGENTS.local.md") -> Recipes:
    """Parse AGENTS.local.md's text (pure): raises RecipeError naming path:line on bad input."""
    recipes = Recipes(path=Path(path))
    named: dict[str, int] = {}
    untitled: _Block | None = None
    taken_headings: set[int | None] = set()
    for block in _blocks(text, path):
        heading = block.heading or ""
        recipes.shell_blocks += block.lang in SHELL_LANGS
        if _LOAD_TEST.search(heading):
            if block.lang in SHELL_LANGS or block.lang in ("", "text"):
                recipes.load_test_args = _load_test_args(block, path)
            continue
        if "smoke" in heading.lower():
            if block.lang == "json":
                recipes.smoke_presets.update(_smoke_presets(block, path))
            continue
        if block.lang not in SHELL_LANGS:
            continue
        name = _slug(heading)
        if name is not None:
            if block.heading_line in taken_headings:
                continue  # a second block under the same heading is notes, not the command
            taken_headings.add(block.heading_line)
            if name in named:
                raise RecipeError(f"two server recipes are named '{name}' (lines {named[name]} and "
                                  f"{block.heading_line})", path=path, line=block.heading_line,
                                  hint="give each server heading a distinct name, e.g. '## Server: vision'")
            named[name] = block.heading_line or block.line
            recipes.servers[name] = parse_server(block, name, path)
        elif untitled is None:
            untitled = block
    if not recipes.servers and untitled is not None:
        recipes.servers["server"] = parse_server(untitled, "server", path)
    markers = _markers(text, path)
    for name, line in named.items():
        if line in markers:
            recipes.servers[name] = dataclasses.replace(recipes.servers[name], **markers[line])
    return recipes


def load_recipes(path: str | Path) -> Recipes:
    """Read and parse AGENTS.local.md (fresh every call: edits apply at the next start)."""
    path = Path(path)
    hint = (f"create {path.name} with a ```bash block holding the server command (see "
            "docs/configuration-agents-file.md), or point --agents-file / gpuops.agents_file at yours")
    if path.is_dir():
        raise RecipeError(f"{path} is a directory, not a file", path=path, hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path.name} not found (looked at {path.absolute()})", hint=hint) from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=path,
                          hint="save the file as UTF-8") from None
    except OSError as err:
        raise RecipeError(f"cannot read it: {err.strerror}", path=path, hint="check its permissions") from None
    return parse_recipes(text, path)
