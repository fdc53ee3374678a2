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
_SECRET_NAME = re.compile(r"TOKEN(?!S|IZER)|KEY|SECRET|PASSW(?:OR)?D|CREDENTIAL|AUTH", re.I)
_SECRET_FLAG = re.compile(r"^--?(?:[\w-]*[-_])?(?:token|key|secret|password|passwd|credentials?|apikey)$", re.I)
_LOAD_TEST = re.compile(r"load[\s_-]?test", re.I)


def is_secret_name(name: str) -> bool:
    """HF_TOKEN, OPENAI_API_KEY, DB_PASSWORD: yes; MAX_TOKENS, TOKENIZERS_PARALLELISM: no."""
    return bool(_SECRET_NAME.search(name))


def mask_secrets(text: str, env: dict[str, str]) -> str:
    """Replace every secret value of `env` in `text`, and the values of secret flags, with ****.

    >>> mask_secrets("--api-key sk-123 HF_TOKEN=hf_abc", {"HF_TOKEN": "hf_abc"})
    '--api-key **** HF_TOKEN=****'
    """
    for name, value in env.items():
        if is_secret_name(name) and len(value) >= 4:
            text = text.replace(value, MASK)
    return re.sub(r"(?<![\w-])(--?[\w-]+)(=|\s+)('[^']*'|\"[^\"]*\"|\S+)",
                  lambda m: f"{m[1]}{m[2]}{MASK}" if _SECRET_FLAG.match(m[1]) else m[0], text)


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
        """What the user sees: the environment as `export` lines, then the command."""
        lines = [f"export {k}={MASK if mask and is_secret_name(k) else shlex.quote(v)}" for k, v in self.env.items()]
        command = self.script if self.shell else shlex.join(self.argv)
        lines.append(mask_secrets(command, self.env) if mask else command)
        return "\n".join(lines)


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


_FILLER = {"start", "starting", "run", "running", "launch", "launching", "the", "a", "an", "dev", "development",
           "inference", "command", "commands", "how", "to", "our", "my", "local"}


def _slug(heading: str) -> str | None:
    """The recipe name a heading gives, or None when the heading is not about a server.

    "Server" -> server, "Server: vision" -> vision, "Server (vLLM 8B)" -> vllm-8b, "Start the dev server" ->
    server; a long sentence that merely mentions a server (a page title) names nothing.
    """
    if not re.search(r"\bservers?\b", heading, re.I):
        return None
    words = re.findall(r"[a-z0-9]+", re.sub(r"\bservers?\b", " ", heading.lower()))
    words = [w for w in words if w not in _FILLER]
    if len(words) > 4:
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
