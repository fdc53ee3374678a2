"""Which GPUs a server command will use, read from its environment and flags (pure).

    >>> needed_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, ["vllm", "serve", "m"], inv)
    [2, 3]
    >>> needed_gpus({}, ["vllm", "serve", "m", "--tensor-parallel-size", "2"], inv)
    [0, 1]
    >>> needed_gpus({}, ["llama-server", "-m", "m.gguf"], inv)          # no hint: every GPU
    [0, 1, 2, 3]

Rules, first match wins for *which* GPUs, then a GPU count keeps the first N of them:
  which: CUDA_VISIBLE_DEVICES (indices or GPU-UUID prefixes, as CUDA reads it), ComfyUI's
         --cuda-device N, llama.cpp's --device CUDA0,CUDA1; else every GPU.
  count: tensor x pipeline x data parallel sizes (vLLM, SGLang), or --num-gpus.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuops.gpus import Inventory

TP_FLAGS = ("--tensor-parallel-size", "--tensor-parallel", "-tp", "--tp", "--tp-size")
PP_FLAGS = ("--pipeline-parallel-size", "-pp", "--pp", "--pp-size")
DP_FLAGS = ("--data-parallel-size", "-dp", "--dp", "--dp-size")
COUNT_FLAGS = ("--num-gpus", "--num_gpus", "--n-gpus", "--gpus")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def flag_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The last value given to any of `names`, as `--flag V` or `--flag=V` (argparse: last one wins)."""
    value = None
    for i, tok in enumerate(argv):
        if tok in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in tok and tok.split("=", 1)[0] in names:
            value = tok.split("=", 1)[1]
    return value


def inline_env(argv: list[str]) -> dict[str, str]:
    """`VAR=v cmd` and `env VAR=v cmd` assignments at the front of a command."""
    env: dict[str, str] = {}
    rest = argv[1:] if argv[:1] == ["env"] else argv
    for tok in rest:
        if not _ASSIGNMENT.match(tok):
            break
        name, value = tok.split("=", 1)
        env[name] = value
    return env


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_visible_devices(value: str, inv: Inventory) -> list[int]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: indices or UUID prefixes, stopping at the first invalid
    entry ("-1", an unknown UUID); "" hides every GPU. MIG UUIDs are not mapped (no parent known)."""
    count = len(inv.gpus)
    out: list[int] = []
    for item in (s.strip() for s in value.split(",")):
        if re.fullmatch(r"\d+", item):
            index = int(item)
            if count and index >= count:
                break
        elif item.upper().startswith("GPU-") and len(item) > 4:
            found = [g.index for g in inv.gpus if g.uuid and g.uuid.lower().startswith(item.lower())]
            if len(found) != 1:
                break
            index = found[0]
        else:
            break
        if index in out:
            break  # CUDA rejects a repeated device
        out.append(index)
    return out


def needed_gpus(env: dict, argv: list[str], inv: Inventory) -> list[int]:
    """The GPU indices (NVML numbering) the command will use, in the order it will use them."""
    env = {**env, **inline_env(argv)}
    all_gpus = [g.index for g in inv.gpus]
    if "CUDA_VISIBLE_DEVICES" in env:
        visible = parse_visible_devices(str(env["CUDA_VISIBLE_DEVICES"]), inv)
    else:
        visible = all_gpus
    chosen = visible
    comfy = _int(flag_value(argv, ("--cuda-device",)))
    llama = flag_value(argv, ("--device", "-dev"))
    if comfy is not None:  # ComfyUI sets CUDA_VISIBLE_DEVICES itself from this flag
        chosen = [comfy] if not all_gpus or comfy in all_gpus else []
    elif llama and re.fullmatch(r"CUDA\d+(,CUDA\d+)*", llama):  # positions within the visible ones
        positions = [int(d[4:]) for d in llama.split(",")]
        chosen = [visible[i] for i in positions if i < len(visible)]
    chosen = list(dict.fromkeys(chosen))  # a device named twice is still one GPU
    count = _count(argv)
    return chosen[:count] if count is not None else chosen


def _count(argv: list[str]) -> int | None:
    tp = _int(flag_value(argv, TP_FLAGS))
    pp = _int(flag_value(argv, PP_FLAGS))
    dp = _int(flag_value(argv, DP_FLAGS))
    if "--enable-dp-attention" in argv:
        dp = None  # SGLang: DP attention splits the tp GPUs, it does not multiply them
    if tp or pp or dp:
        return max(1, tp or 1) * max(1, pp or 1) * max(1, dp or 1)
    return _int(flag_value(argv, COUNT_FLAGS))
