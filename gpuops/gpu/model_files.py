"""How many weight files a server command's model path holds, for the start-up banner.

    count_model_files(["vllm", "serve", "./models/qwen3-8b", "--port", "8000"], cwd=".")
    # -> [('./models/qwen3-8b', 5)]   (when that directory exists)
    >>> count_model_files(["llama-server", "-m", "Qwen/Qwen3-8B"], cwd=".")   # a hub id, not a path
    []

A directory holding 0 model files is reported too: that is usually a wrong path.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FLAGS = ("--model", "-m", "--model-path", "--model_path", "--model-dir", "--checkpoint")
MODEL_SUFFIXES = (".safetensors", ".gguf", ".bin")
MAX_DEPTH = 4  # model folders are shallow; a mistaken `--model /` must not walk the disk
MAX_ENTRIES = 100_000


def _is_python(token: str) -> bool:
    return os.path.basename(token).startswith("python")


def model_args(argv: list[str]) -> list[str]:
    """Arguments that may name a model: values of MODEL_FLAGS and the positional after `serve`.
    `python -m module` is a module, not a model."""
    found: list[str] = []
    for i, tok in enumerate(argv):
        value = None
        if tok in MODEL_FLAGS and i + 1 < len(argv):
            if tok == "-m" and i > 0 and _is_python(argv[i - 1]):
                continue
            value = argv[i + 1]
        elif "=" in tok and tok.split("=", 1)[0] in MODEL_FLAGS and tok.startswith("--"):
            value = tok.split("=", 1)[1]
        elif tok == "serve" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
        if value and value not in found:
            found.append(value)
    return found


def _count_in(folder: Path) -> int:
    n = seen = 0
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if f.endswith(MODEL_SUFFIXES))
        seen += len(files) + len(dirs)
        if seen > MAX_ENTRIES:
            break
    return n


def count_model_files(argv: list[str], cwd) -> list[tuple[str, int]]:
    """[(argument as written, number of *.safetensors / *.gguf / *.bin files)] for each model
    argument that names an existing file or folder (relative to `cwd`)."""
    out = []
    for arg in model_args(argv):
        path = Path(os.path.expanduser(arg))
        if not path.is_absolute():
            path = Path(cwd) / path
        try:
            if path.is_dir():
                out.append((arg, _count_in(path)))
            elif path.is_file():
                out.append((arg, 1 if path.name.endswith(MODEL_SUFFIXES) else 0))
        except OSError:
            continue
    return out
