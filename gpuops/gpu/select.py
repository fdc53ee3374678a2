"""Which GPUs a server command will use, read from its environment and flags (pure).

    >>> from gpuops.gpu.inventory import Gpu
    >>> inv = Inventory([Gpu(i, "NVIDIA H100", None, 0.0, 81559.0, 0, False) for i in range(4)], None, "550.54")
    >>> needed_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, ["vllm", "serve", "m"], inv)
    [2, 3]
    >>> needed_gpus({}, ["vllm", "serve", "m", "--tensor-parallel-size", "2"], inv)
    [0, 1]
    >>> needed_gpus({}, ["llama-server", "-m", "m.gguf"], inv)          # no hint: every GPU
    [0, 1, 2, 3]

Rules, first match wins for *which* GPUs, then a GPU count keeps the first N of them:
  which: CUDA_VISIBLE_DEVICES (indices, GPU-UUID or MIG-UUID prefixes, as CUDA reads it; a MIG
         device counts as its parent GPU), ComfyUI's --cuda-device N, llama.cpp's --device
         CUDA0,CUDA1; else every GPU.
  count: tensor x pipeline x data parallel sizes (vLLM, SGLang), or --num-gpus: the first N devices.
"""

from __future__ import annotations

import re

from gpuops.gpu.inventory import Inventory

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


def _mig_parents(item: str, inv: Inventory) -> tuple[str, tuple[int, ...]] | None:
    """(device, GPUs it may be on) for a MIG entry of CUDA_VISIBLE_DEVICES; None when CUDA would reject it.

    "MIG-<uuid>" (R470+) or "MIG-GPU-<uuid>/<gi>/<ci>" (R450/R460), matched by unique prefix against the
    MIG devices the inventory lists. An entry matching none, where some MIG GPU's devices could not be
    listed, is taken to be on each such GPU: better a needless busy check than a missed one."""
    key = item.lower()
    known = [(u, g.index) for g in inv.gpus for u in (g.mig_devices or []) if u.lower().startswith(key)]
    if len(known) == 1:
        return known[0][0].lower(), (known[0][1],)
    if known:
        return None  # ambiguous prefix
    if key.startswith("mig-gpu-") and "/" in key:
        parent = key[len("mig-"):].split("/", 1)[0]
        found = [g.index for g in inv.gpus if g.uuid and g.uuid.lower().startswith(parent)]
        if len(found) == 1:
            return key, (found[0],)
    unlisted = tuple(g.index for g in inv.gpus if g.mig and g.mig_devices is None)
    return (key, unlisted) if unlisted else None


def visible_devices(value: str, inv: Inventory) -> list[tuple[int, ...]]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it, one entry per CUDA device: the GPU indices it may be on
    (one, unless a MIG device's parent is unknown). Stops at the first invalid entry ("-1", an unknown
    UUID, a repeat); "" hides every GPU."""
    count = len(inv.gpus)
    out: list[tuple[int, ...]] = []
    seen: set = set()
    for item in (s.strip() for s in value.split(",")):
        if re.fullmatch(r"\d+", item):
            index = int(item)
            if count and index >= count:
                break
            device, gpus = index, (index,)
        elif item.upper().startswith("GPU-") and len(item) > 4:
            found = [g.index for g in inv.gpus if g.uuid and g.uuid.lower().startswith(item.lower())]
            if len(found) != 1:
                break
            device, gpus = found[0], (found[0],)
        elif item.upper().startswith("MIG-") and len(item) > 4:
            mig = _mig_parents(item, inv)
            if mig is None:
                break
            device, gpus = mig
        else:
            break
        if device in seen:
            break  # CUDA rejects a repeated device
        seen.add(device)
        out.append(gpus)
    return out


def parse_visible_devices(value: str, inv: Inventory) -> list[int]:
    """The GPU indices CUDA_VISIBLE_DEVICES makes visible, in CUDA's order, each once (a GPU split into
    MIG devices is listed once for all of them)."""
    return list(dict.fromkeys(i for gpus in visible_devices(value, inv) for i in gpus))


def needed_gpus(env: dict, argv: list[str], inv: Inventory) -> list[int]:
    """The GPU indices (NVML numbering) the command will use, in the order it will use them."""
    env = {**env, **inline_env(argv)}
    all_gpus = [g.index for g in inv.gpus]
    if "CUDA_VISIBLE_DEVICES" in env:
        visible = visible_devices(str(env["CUDA_VISIBLE_DEVICES"]), inv)
    else:
        visible = [(i,) for i in all_gpus]
    chosen = visible  # CUDA devices, each with the GPUs it may be on
    comfy = _int(flag_value(argv, ("--cuda-device",)))
    llama = flag_value(argv, ("--device", "-dev"))
    if comfy is not None:  # ComfyUI sets CUDA_VISIBLE_DEVICES itself from this flag
        chosen = [(comfy,)] if not all_gpus or comfy in all_gpus else []
    elif llama and re.fullmatch(r"CUDA\d+(,CUDA\d+)*", llama):  # positions within the visible ones
        positions = dict.fromkeys(int(d[4:]) for d in llama.split(","))  # a device named twice is one device
        chosen = [visible[i] for i in positions if i < len(visible)]
    count = _count(argv)
    if count is not None:
        chosen = chosen[:count]
    return list(dict.fromkeys(i for gpus in chosen for i in gpus))  # two MIG devices of one GPU: one GPU


def _count(argv: list[str]) -> int | None:
    tp = _int(flag_value(argv, TP_FLAGS))
    pp = _int(flag_value(argv, PP_FLAGS))
    dp = _int(flag_value(argv, DP_FLAGS))
    if "--enable-dp-attention" in argv:
        dp = None  # SGLang: DP attention splits the tp GPUs, it does not multiply them
    if tp or pp or dp:
        return max(1, tp or 1) * max(1, pp or 1) * max(1, dp or 1)
    return _int(flag_value(argv, COUNT_FLAGS))
