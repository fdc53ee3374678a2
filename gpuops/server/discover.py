"""Model discovery: a folder of model files -> one `## Server: NAME` recipe per model, from a template.

    models, skipped = scan_models("/models")   # *.gguf (split shards once), HF folders (config.json + *.safetensors)
    [(m.label, m.kind, human_size(m.size)) for m in models]
    [('Qwen3-8B-Q4_K_M', 'gguf', '4.7 GiB'), ('Llama-3.1-8B-Instruct', 'hf', '15.0 GiB')]
    result = discover("/models", "AGENTS.local.md", ports=(8001, 8099))
    print(result.text)
    ## Server: qwen3-8b-q4km

    <!-- /models/Qwen3-8B-Q4_K_M.gguf: GGUF, 4.7 GiB -->
    ```bash
    llama-server -m /models/Qwen3-8B-Q4_K_M.gguf --port 8001
    ```

The template is a recipe of AGENTS.local.md whose command holds `{model}` (replaced by the model's
path, shell-quoted) and `{port}` (a port of the range that no other recipe names and nothing listens
on now); `{name}` is the new recipe's name. Names are what `## Server: NAME` parses back to
(recipes.parse_recipes is the judge), so every printed recipe can be started by that name.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.errors import GpuopsError, RecipeError, UsageError
from gpuops.server import engines
from gpuops.server.recipes import Recipes, ServerRecipe, load_recipes, parse_recipes

MAX_DEPTH = 6  # model folders are shallow (the HF cache: models--org--name/snapshots/HASH/)
MAX_ENTRIES = 200_000  # a mistaken `--discover /` must not walk the whole disk
PLACEHOLDER = "{model}"
TEMPLATE_EXAMPLE = ("## Server: template\n\ndisabled: yes\n\n```bash\n"
                    "llama-server -m {model} --port {port} --alias {name} -ngl 99\n```")

_SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
_NOT_A_MODEL = re.compile(r"^(mmproj|ggml-vocab)", re.I)  # projectors and vocab-only files llama.cpp ships
_FIELD = re.compile(r"""(?<!\$)(['"]?)\{(model|port|name)\}\1""")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LOADS = {"llama.cpp": {"gguf"}, "mlx_lm": {"hf"}}  # what a template's engine can load; other engines: both
_KIND_WORDS = {"gguf": "GGUF files", "hf": "Hugging Face folders"}


@dataclass(frozen=True)
class Model:
    """One model found on disk."""

    label: str  # the name its file or folder gives: "Qwen3-8B-Q4_K_M", "Llama-3.1-8B-Instruct"
    path: Path  # what the command loads: the .gguf, the first of its shards, or the HF folder
    kind: str  # "gguf" or "hf"
    size: int  # bytes: every shard of a split GGUF, every *.safetensors of a folder
    files: int  # weight files counted

    def describe(self) -> str:
        """'GGUF, 3 shards, 14.2 GiB' / 'HF folder, 4 safetensors files, 15.0 GiB'."""
        if self.kind == "gguf":
            what = "GGUF" + (f", {self.files} shards" if self.files > 1 else "")
        else:
            what = f"HF folder, {self.files} safetensors file{'s' if self.files != 1 else ''}"
        return f"{what}, {human_size(self.size)}"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class NewRecipe:
    """A model with the recipe made for it."""

    model: Model
    name: str
    port: int
    text: str  # its Markdown section: heading, comment line, fenced command


@dataclass
class DiscoverResult:
    folder: str
    agents_file: str
    template: str
    ports: tuple[int, int]
    recipes: list[NewRecipe] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    written_to: str | None = None

    @property
    def text(self) -> str:
        """Every new section, ready to paste (or to append)."""
        return "\n".join(r.text for r in self.recipes)

    def as_dict(self) -> dict:
        return {
            "mode": "discover", "folder": self.folder, "agents_file": self.agents_file, "template": self.template,
            "ports": list(self.ports),
            "models": [{"name": r.name, "path": str(r.model.path), "kind": r.model.kind, "files": r.model.files,
                        "size_bytes": r.model.size, "size": human_size(r.model.size), "port": r.port}
                       for r in self.recipes],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "text": self.text, "written_to": self.written_to,
        }


def human_size(n: int) -> str:
    """Bytes for people.

    >>> human_size(0), human_size(1536), human_size(5_046_586_573)
    ('0 B', '1.5 KiB', '4.7 GiB')
    """
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"


# ---------------------------------------------------------------- scanning


def _folder_error(folder: str, problem: str) -> UsageError:
    return UsageError(f"--discover {folder}: {problem}",
                      hint="give the folder that holds your models (*.gguf files, or folders with config.json "
                           "and *.safetensors), e.g. --discover ~/models")


def _hf_label(folder: Path) -> str:
    """A folder's model name; in the Hugging Face cache, models--org--NAME/snapshots/HASH is NAME."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def scan_models(folder: str | os.PathLike) -> tuple[list[Model], list[Skipped]]:
    """The models under `folder` (by path), and what looked like one but was left out, with why.

    A `*.gguf` file is a model; `NAME-00001-of-00003.gguf` shards are one model (the first shard,
    which llama.cpp loads the rest from, and their total size); a folder holding config.json and
    *.safetensors is a Hugging Face model. UsageError when the folder is missing or unreadable.
    """
    given = str(folder)
    root = Path(os.path.abspath(os.path.expanduser(given)))
    if not root.exists():
        raise _folder_error(given, "no such folder")
    if not root.is_dir():
        raise _folder_error(given, "a file, not a folder")
    try:
        with os.scandir(root):
            pass
    except OSError as err:
        raise _folder_error(given, f"cannot read it ({err.strerror or err})") from None
    models: list[Model] = []
    skipped: list[Skipped] = []
    seen = 0

    def unreadable(err: OSError) -> None:
        skipped.append(Skipped(str(err.filename), f"cannot read it ({err.strerror or err})"))

    for here, dirs, files in os.walk(root, onerror=unreadable):
        base = Path(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if len(base.relative_to(root).parts) >= MAX_DEPTH:
            dirs[:] = []
        seen += len(dirs) + len(files)
        _gguf_models(base, files, models, skipped)
        if "config.json" in files and any(f.endswith(".safetensors") for f in files):
            weights = [base / f for f in files if f.endswith(".safetensors")]
            size = _sizes(weights, skipped)
            if size is not None:
                models.append(Model(_hf_label(base), base, "hf", size, len(weights)))
        if seen > MAX_ENTRIES:
            skipped.append(Skipped(str(root), f"stopped after {MAX_ENTRIES} entries: point --discover at the "
                                              "models' own folder"))
            break
    return sorted(models, key=lambda m: str(m.path).lower()), skipped


def _sizes(paths: list[Path], skipped: list[Skipped]) -> int | None:
    """Their total size, or None (with the reason in `skipped`) when one cannot be read (a broken link)."""
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError as err:
            skipped.append(Skipped(str(p), f"cannot read its size ({err.strerror or err}; a broken link?)"))
            return None
    return total


def _gguf_models(base: Path, files: list[str], models: list[Model], skipped: list[Skipped]) -> None:
    shards: dict[tuple[str, int], dict[int, str]] = {}
    for f in sorted(files):
        if not f.lower().endswith(".gguf"):
            continue
        if _NOT_A_MODEL.match(f):
            skipped.append(Skipped(str(base / f), "a projector or vocabulary file, not a model (give it to its "
                                                  "model's recipe, e.g. --mmproj)"))
            continue
        m = _SHARD.match(f)
        if m is None:
            size = _sizes([base / f], skipped)
            if size is not None:
                models.append(Model(f[:-len(".gguf")], base / f, "gguf", size, 1))
            continue
        shards.setdefault((m["base"], int(m["count"])), {})[int(m["index"])] = f
    for (label, count), found in shards.items():
        missing = [i for i in range(1, count + 1) if i not in found]
        if missing:
            shown = ", ".join(f"{i:05d}" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            skipped.append(Skipped(str(base / found[min(found)]),
                                   f"split GGUF with {count - len(missing)} of {count} shards (missing {shown}): "
                                   "finish the download"))
            continue
        size = _sizes([base / found[i] for i in sorted(found)], skipped)
        if size is not None:
            models.append(Model(label, base / found[1], "gguf", size, count))


# ---------------------------------------------------------------- names


_PROBE = "gpuops-discover-probe"


def heading_name(name: str) -> str | None:
    """What `## Server: NAME` parses back to (recipes.parse_recipes decides), or None when it names nothing.

    >>> heading_name("qwen3-8b"), heading_name("run-the-qwen3-8b"), heading_name("Qwen2.5")
    ('qwen3-8b', 'qwen3-8b', 'qwen2-5')
    """
    # a named probe first: a heading that names nothing then leaves its block untitled (and ignored)
    text = f"## Server: {_PROBE}\n\n```bash\ntrue\n```\n\n## Server: {name}\n\n```bash\ntrue\n```\n"
    try:
        names = list(parse_recipes(text).servers)
    except RecipeError:  # it parsed to the probe's own name
        return None
    return names[1] if len(names) == 2 else None


def name_candidates(label: str) -> list[str]:
    """Names for a model, shortest readable first (version numbers glued to their word).

    >>> name_candidates("Qwen3-8B")[0], name_candidates("Meta-Llama-3.1-8B-Instruct-Q4_K_M")[-1]
    ('qwen3-8b', 'meta-llama-3-1-8b-instruct-q4-k-m')
    """
    low = label.lower()
    words = re.findall(r"[a-z0-9]+", low)
    # word groups: `-` and spaces split them, and a `.` before a letter (mistral-7b-v0.2.Q4_K_M)
    groups = [g for g in (re.sub(r"[^a-z0-9]", "", s) for s in re.split(r"[-\s]+|\.(?=[a-z])", low)) if g]
    glued: list[str] = []
    for g in groups:  # a bare version number belongs to the word before it: llama-3.1 -> llama31
        if glued and g.isdigit():
            glued[-1] += g
        else:
            glued.append(g)
    out = ["-".join(glued), "-".join(groups), "-".join(words)]  # the shortest readable one first
    return [c for c in dict.fromkeys(out) if c]


def model_name(label: str) -> str:
    """The recipe name of a model: the first candidate that a heading parses back to.

    >>> model_name("Qwen2.5-0.5B-Instruct"), model_name("gemma-2-9b-it-Q5_K_M")
    ('qwen25-05b-instruct', 'gemma2-9b-it-q5km')
    """
    for candidate in name_candidates(label):
        got = heading_name(candidate)
        if got and (got != "server" or candidate == "server"):  # filler words alone name the default `server`
            return got
    return "model"


def _numbered(name: str, k: int) -> str:
    """`name-2`, or `name2` glued to its last word when a fifth word would not parse back."""
    return heading_name(f"{name}-{k}") or f"{name}{k}"


# ---------------------------------------------------------------- the template and the plan


def template_of(recipes: Recipes, name: str | None) -> ServerRecipe:
    """The template: the recipe `name`, else the only recipe whose command holds {model}."""
    if name is not None:
        recipe = recipes.server(name)  # an unknown name: RecipeError listing the known ones
        if not _is_template(recipe):
            raise UsageError(f"recipe '{name}' holds no {PLACEHOLDER}: it cannot be a template",
                             hint=f"write {PLACEHOLDER} where the model path goes and {{port}} for the port, e.g."
                                  f"\n{TEMPLATE_EXAMPLE}")
        return recipe
    found = [r for r in recipes.servers.values() if _is_template(r)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"no recipe in {recipes.path} holds {PLACEHOLDER}, so there is no template to copy",
                         hint=f"add one (disabled, so `--all` skips it), e.g.\n{TEMPLATE_EXAMPLE}")
    raise UsageError(f"{len(found)} recipes hold {PLACEHOLDER}: {', '.join(r.name for r in found)}",
                     hint=f"choose one with --template {found[0].name}")


def _is_template(recipe: ServerRecipe) -> bool:
    return PLACEHOLDER in recipe.script or any(PLACEHOLDER in v for v in recipe.env.values())


def template_block(text: str, recipe: ServerRecipe) -> str:
    """The template's fenced block as written in AGENTS.local.md (comments, env and continuations kept)."""
    lines = text.splitlines()
    start = recipe.line - 1
    while start > 0 and not _FENCE.match(lines[start]):
        start -= 1
    opener = _FENCE.match(lines[start])[1]
    end = start + 1
    while end < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(opener[0])}{{{len(opener)},}}\s*$", lines[end]):
        end += 1
    return "\n".join(lines[start:end + 1])


def fill(block: str, *, model: Path, port: int, name: str) -> str:
    """The block with {model} (shell-quoted; a quoted '{model}' too), {port} and {name} filled in.

    >>> fill("llama-server -m '{model}' --port {port} --alias {name}", model=Path("/m/a b.gguf"), port=8001,
    ...      name="a-b")
    "llama-server -m '/m/a b.gguf' --port 8001 --alias a-b"
    """
    values = {"model": shlex.quote(str(model)), "port": str(port), "name": name}
    return _FIELD.sub(lambda m: values[m[2]], block)


def _mentioned_paths(recipe: ServerRecipe, base: Path) -> set[str]:
    """The absolute paths a recipe's command words name (`--model=X` too)."""
    words = list(recipe.argv)
    if recipe.shell:
        try:
            words += shlex.split(recipe.script, comments=True)
        except ValueError:
            pass
    paths = set()
    for word in words:
        for value in (word, word.split("=", 1)[-1]):
            if value and "{" not in value:
                paths.add(os.path.normpath(base / os.path.expanduser(value)))
    return paths


def _loaded_by(m: Model, loaded: dict[str, str]) -> str | None:
    """The recipe whose command names the model (for a split GGUF: any of its shards)."""
    if str(m.path) in loaded:
        return loaded[str(m.path)]
    shard = _SHARD.match(m.path.name)
    if shard is None:
        return None
    for path, name in loaded.items():
        other = _SHARD.match(os.path.basename(path))
        if other and os.path.dirname(path) == str(m.path.parent) and other["base"] == shard["base"]:
            return name
    return None


def _ports_named(recipes: Recipes) -> set[int]:
    """Ports the recipes will listen on: their --port/-p, else their engine's default port."""
    named = set()
    for r in recipes.servers.values():
        value = r.option("--port", "-p")
        if value is None:
            named.add(engines.detect(r.argv).default_port)
        elif value.isdigit():
            named.add(int(value))
    return named


def plan_recipes(models: list[Model], recipes: Recipes, text: str, *, template: str | None,
                 ports: tuple[int, int], in_use: Callable[[int], bool],
                 skipped: list[Skipped] | None = None) -> tuple[ServerRecipe, list[NewRecipe], list[Skipped]]:
    """A recipe per model from the template (pure but for `in_use(port)`): (template, new recipes, skipped).

    Models a recipe already loads, or whose name a recipe already has, are skipped with the reason.
    UsageError when the range has too few free ports for them all (nothing is made then).
    """
    tmpl = template_of(recipes, template)
    block = template_block(text, tmpl)
    if "{port}" not in block:
        raise UsageError(f"the template '{tmpl.name}' holds no {{port}}: every new server would take the same port",
                         hint=f"put --port {{port}} in its command, e.g.\n{TEMPLATE_EXAMPLE}")
    skipped = list(skipped or [])
    kinds = _LOADS.get(engines.detect(tmpl.argv).name)
    if kinds is not None:
        for m in [m for m in models if m.kind not in kinds]:
            skipped.append(Skipped(str(m.path), f"the template '{tmpl.name}' runs {engines.detect(tmpl.argv).name}, "
                                                f"which does not load {_KIND_WORDS[m.kind]}: use a template for them "
                                                "(--template NAME)"))
        models = [m for m in models if m.kind in kinds]
    base = Path(os.path.abspath(recipes.path)).parent
    loaded = {p: r.name for r in recipes.servers.values() for p in _mentioned_paths(r, base)}
    taken = set(recipes.servers)
    chosen: list[tuple[Model, str]] = []
    for m in models:
        where = _loaded_by(m, loaded)
        if where:
            skipped.append(Skipped(str(m.path), f"recipe '{where}' loads it already"))
            continue
        name = model_name(m.label)
        if name in recipes.servers:
            skipped.append(Skipped(str(m.path), f"a recipe named '{name}' exists already (line "
                                                f"{recipes.servers[name].line}): add this one by hand under a "
                                                "heading of its own"))
            continue
        k, unique = 2, name
        while unique in taken:  # two models with one name (the same file name in two folders)
            unique, k = _numbered(name, k), k + 1
        taken.add(unique)
        chosen.append((m, unique))
    free = _free_ports(ports, len(chosen), _ports_named(recipes), in_use)
    made = []
    for (m, name), port in zip(chosen, free, strict=True):
        comment = f"<!-- {str(m.path).replace('-->', '- ->')}: {m.describe()} -->"
        section = f"## Server: {name}\n\n{comment}\n\n{fill(block, model=m.path, port=port, name=name)}\n"
        made.append(NewRecipe(m, name, port, section))
    return tmpl, made, skipped


def _free_ports(ports: tuple[int, int], count: int, named: set[int], in_use: Callable[[int], bool]) -> list[int]:
    low, high = ports
    free: list[int] = []
    for port in range(low, high + 1):
        if len(free) == count:
            break
        if port not in named and not in_use(port):
            free.append(port)
    if len(free) < count:
        raise UsageError(f"the ports {low}-{high} have {len(free)} free for {count} new server{'s' if count > 1 else ''} "
                         "(ports other recipes name, and ports in use now, are skipped)",
                         hint=f"give a wider range, e.g. --ports {low}-{min(65535, high + max(100, count))}")
    return free


# ---------------------------------------------------------------- the use case


def discover(folder: str, agents_file: str | os.PathLike, *, template: str | None = None,
             ports: tuple[int, int] = (8001, 8099), in_use: Callable[[int], bool] | None = None) -> DiscoverResult:
    """Scan `folder`, make a recipe per new model from the agents file's template; nothing is written."""
    if in_use is None:
        from gpuops.server.procs import port_in_use

        def in_use(port: int) -> bool:
            return port_in_use(port, "0.0.0.0")  # a server on any address holds it

    recipes = load_recipes(agents_file)
    text = Path(agents_file).read_text(encoding="utf-8")
    models, skipped = scan_models(folder)
    tmpl, made, skipped = plan_recipes(models, recipes, text, template=template, ports=ports, in_use=in_use,
                                       skipped=skipped)
    check_parses(text, made, agents_file)
    return DiscoverResult(os.path.abspath(os.path.expanduser(folder)), str(agents_file), tmpl.name, ports, made,
                          skipped)


def _joined(text: str, addition: str) -> str:
    """The separator that puts `addition` after `text` as sections of their own."""
    if not text or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


_CHECK_TEMPLATE = "check the template's block (write {model} and {port} unquoted)"


def check_parses(text: str, made: list[NewRecipe], path, *, failure: str = "the new recipes do not parse back",
                 hint: str = _CHECK_TEMPLATE) -> Recipes:
    """The agents file with the new sections appended, parsed: each new name, with its port. GpuopsError if not."""
    if not made:
        return parse_recipes(text, path)
    addition = "\n".join(r.text for r in made)
    try:
        parsed = parse_recipes(text + _joined(text, addition) + addition, path)
    except RecipeError as err:
        raise GpuopsError(f"{failure}: {err.message}", hint=hint) from None
    for r in made:
        got = parsed.servers.get(r.name)
        if got is None or got.option("--port", "-p") not in (None, str(r.port)):
            raise GpuopsError(f"{failure}: the new recipe '{r.name}' does not parse back as itself", hint=hint)
    return parsed


def append_recipes(path: str | os.PathLike, made: list[NewRecipe]) -> None:
    """Append the new sections to AGENTS.local.md (append: its mode, owner and links stay as they are; nothing
    already there is rewritten). Checked first: a heading that now exists there is an error, nothing written."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        check_parses(text, made, path, failure="not written", hint="run it again: the file changed meanwhile")
        addition = "\n".join(r.text for r in made)
        with open(path, "a", encoding="utf-8") as f:
            f.write(_joined(text, addition) + addition)
    except OSError as err:
        raise GpuopsError(f"cannot write {path}: {err.strerror or err}",
                          hint="check its permissions, or leave out --write and paste the recipes") from None
