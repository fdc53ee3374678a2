"""Preflight: what must hold before a server is launched — paths, the port, the GPUs.

    check_paths(recipe, Path("."))          # StartupFailed naming a missing program, cd target or venv
    check_port(endpoint_of(recipe, engine))  # PortInUse naming the PIDs and commands holding it
    check_gpus(recipe, [], GpuPolicy(busy_mib=300), write=print)   # GpusBusy, or the GPU indices it uses
    [0, 1]
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpuops.errors import PortInUse, StartupFailed, UsageError
from gpuops.server import procs
from gpuops.server.launch import Endpoint, child_environment
from gpuops.server.recipes import ServerRecipe

_CD = re.compile(r"(?:^|&&|;|\n)\s*cd\s+(\S+)")
_SOURCE = re.compile(r"(?:^|&&|;|\n)\s*(?:source|\.)\s+(\S+)")


def _expand(word: str, env: dict[str, str]) -> str:
    word = word.strip("'\"")
    for name, value in env.items():
        word = word.replace("${" + name + "}", value).replace("$" + name, value)
    return os.path.expanduser(os.path.expandvars(word))


def check_paths(recipe: ServerRecipe, cwd: Path) -> None:
    """The working directory, `cd` targets, activated virtualenvs and the program must exist."""
    env = recipe.env
    if not cwd.is_dir():
        raise StartupFailed(f"working directory {cwd} does not exist",
                            hint=f"the commands of {recipe.path} run in its folder: create it, or move the file")
    if recipe.shell:
        cur = cwd
        for m in re.finditer(rf"{_CD.pattern}|{_SOURCE.pattern}", recipe.script):
            if m.group(1):
                target = cur / _expand(m.group(1), env)
                if "$" not in m.group(1) and not target.is_dir():
                    raise StartupFailed(
                        f"`cd {m.group(1)}` in {recipe.path}:{recipe.line}: directory {target} does not exist",
                        hint="is the install directory somewhere else on this machine? fix the path in AGENTS.local.md")
                cur = target
            elif m.group(2):
                target = cur / _expand(m.group(2), env)
                if "$" not in m.group(2) and not target.exists():
                    hint = ("create the virtual environment (e.g. `python -m venv .venv && .venv/bin/pip install ...`)"
                            if "activate" in m.group(2) else "fix the path in AGENTS.local.md")
                    raise StartupFailed(
                        f"`source {m.group(2)}` in {recipe.path}:{recipe.line}: {target} does not exist", hint=hint)
        return
    program = recipe.argv[0]
    path_var = child_environment(recipe, "preflight").get("PATH", "")
    if "/" in program:
        exe = cwd / os.path.expanduser(program)
        if not exe.exists():
            venv = next((p for p in exe.parents if (p / "pyvenv.cfg").exists() or p.name in (".venv", "venv")), None)
            hint = (f"the virtual environment {venv} is missing or incomplete: create it and install the server"
                    if venv else "build or install it, or fix the path in AGENTS.local.md")
            raise StartupFailed(f"program {program} not found (looked at {exe})", hint=hint)
        if not os.access(exe, os.X_OK):
            raise StartupFailed(f"program {exe} is not executable", hint=f"chmod +x {exe}")
    elif shutil.which(program, path=path_var) is None:
        raise StartupFailed(f"program '{program}' is not on PATH",
                            hint="install it, activate its virtualenv in AGENTS.local.md "
                                 "(`source .venv/bin/activate && ...`), or give its full path")


def check_port(ep: Endpoint) -> None:
    """PortInUse (exit 4) naming what holds the port; UsageError for a host that is not this machine."""
    if ep.port is None:
        return
    try:
        if not procs.port_in_use(ep.port, ep.host):
            return
    except procs.AddressNotHere:
        raise UsageError(f"cannot listen on {ep.host}:{ep.port}: {ep.host} is not an address of this machine",
                         hint="use --host 127.0.0.1 (this machine only) or 0.0.0.0 (every interface) "
                              "in AGENTS.local.md") from None
    owners = procs.port_owners(ep.port)
    raise PortInUse(
        f"port {ep.port} is already in use by {len(owners) or 'an unknown number of'} process(es) "
        "that are not this server",
        details=[o.describe() for o in owners],
        hint=(f"stop it (`inv stop-server --port {ep.port}` for an old gpuops server, or `kill PID`), "
              "or change --port in AGENTS.local.md"),
    )


@dataclass(frozen=True)
class GpuPolicy:
    """start-server's GPU settings: refuse busy GPUs, or free them first (--kill-gpu-procs)."""

    kill: bool = False  # --kill-gpu-procs
    yes: bool = False  # no confirmation before killing
    busy_mib: float = 300  # gpuops.gpu_busy_mib
    release_timeout: float = 30.0  # gpuops.gpu_release_timeout
    stop_timeout: float = 10.0  # SIGTERM -> SIGKILL for the processes it frees the GPUs of


def check_gpus(recipe: ServerRecipe, replaced_pids: Iterable[int], policy: GpuPolicy, *,
               write: Callable[[str], None], confirm: Callable[[str], bool] | None = None,
               environ: Mapping[str, str] | None = None, shared_pids: Iterable[int] = ()) -> list[int]:
    """The GPU step of the preflight: the GPU indices the server will use, after refusing busy ones
    (GpusBusy, exit 5) or freeing them (`policy.kill`; `confirm` asks first unless `policy.yes`, None
    when nobody can answer). `replaced_pids`: a restarted server's processes, whose memory NVML keeps
    listing for seconds after they exit. `shared_pids`: the processes of servers it may share GPUs with
    (share-gpus): their memory does not make a GPU busy, and they are never terminated."""
    from gpuops.gpu import inventory as gpus

    inv = gpus.inventory()
    if inv.unavailable:
        write(f"no NVIDIA GPU visible: {inv.unavailable} (starting without a GPU check)")
        return []
    replaced = list(replaced_pids)
    if replaced:
        inv = gpus.wait_released(replaced, policy.release_timeout)
    # the server inherits our environment: a CUDA_VISIBLE_DEVICES exported in the shell counts
    needed = gpus.needed_gpus({**(os.environ if environ is None else environ), **recipe.env}, recipe.argv, inv)
    if policy.kill:
        gpus.free_gpus(inv, needed, policy.busy_mib, yes=policy.yes, confirm=confirm, timeout=policy.stop_timeout,
                       release_timeout=policy.release_timeout, write=write, ignore_pids=shared_pids)
    else:
        gpus.check_gpus_free(inv, needed, policy.busy_mib, ignore_pids=shared_pids)
    return needed
