"""Containers: whether gpuops runs inside one, and what that means for who can reach a server.

    in_container()                              # what says so, or None on a plain machine
    '/.dockerenv'
    binding_note("127.0.0.1", 8000)             # a server on loopback in a container: only the container sees it
    'inside a container (/.dockerenv), 127.0.0.1:8000 is reachable only from inside the container: ...'
    outside_url(record)                         # GPUOPS_PUBLIC_HOST=gpu7.lab -> 'http://gpu7.lab:8000'

What a user outside would type is known only when they say so (`GPUOPS_PUBLIC_HOST`): the port a
`docker run -p` published, or a host name a laptop resolves, is not visible from inside. The
container's own address is not guessed: only the machine it runs on can use it, and only on Docker's
default network.

Cheap on purpose (two stat calls and two small /proc reads): `inv status` asks it every time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

PUBLIC_HOST_VAR = "GPUOPS_PUBLIC_HOST"  # the host name (or address) users outside reach this one by

# files container runtimes create at the root of every container
MARKER_FILES = (".dockerenv", "run/.containerenv")  # Docker; Podman and other libpod runtimes
# a path segment of PID 1's cgroup (cgroup v1, or v2 as seen from the host's namespace)
CGROUP_NAMES = ("docker", "kubepods", "containerd", "lxc", "libpod")
# files every runtime bind-mounts into a container (seen under cgroup v2, where /proc/1/cgroup says "0::/")
BIND_MOUNTED = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]", "ip6-localhost")


class Bound(Protocol):
    host: str
    port: int | None


def in_container(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> str | None:
    """What says this machine is a container ("/.dockerenv", "container=podman", ...), or None.

    >>> in_container(Path("/nonexistent"), {"container": "podman"})
    'container=podman'
    >>> in_container(Path("/nonexistent"), {}) is None
    True
    """
    env = os.environ if environ is None else environ
    for marker in MARKER_FILES:
        if (root / marker).exists():
            return f"/{marker}"
    if env.get("container"):  # systemd's convention: podman, systemd-nspawn, lxc set it for PID 1
        return f"container={env['container']}"
    if env.get("KUBERNETES_SERVICE_HOST"):  # set in every Kubernetes pod
        return "KUBERNETES_SERVICE_HOST"
    name = _cgroup_hint(_read(root / "proc/1/cgroup"))
    if name:
        return f"/proc/1/cgroup: {name}"
    mounted = _bind_mount_hint(_read(root / "proc/self/mountinfo"))
    if mounted:
        return f"{mounted} is mounted into it (/proc/self/mountinfo)"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _cgroup_hint(text: str) -> str | None:
    """The runtime a /proc/1/cgroup names ("12:memory:/docker/3f2a..." -> "docker"), or None.

    >>> _cgroup_hint("0::/system.slice/docker-3f2a.scope\\n"), _cgroup_hint("0::/\\n1:name=systemd:/init.scope")
    ('docker', None)
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for segment in path.split("/"):
            for name in CGROUP_NAMES:
                if segment.startswith(name):
                    return name
    return None


def _bind_mount_hint(text: str) -> str | None:
    """The first of /etc/hostname, /etc/hosts, /etc/resolv.conf that is a mount point, or None.
    (On a plain machine they are files of the root filesystem; the runtime of a container mounts them.)

    >>> _bind_mount_hint("1062 1043 259:1 /var/lib/docker/containers/3f2a/hostname /etc/hostname rw - ext4 /dev/x rw")
    '/etc/hostname'
    """
    points = {fields[4] for fields in (line.split() for line in text.splitlines()) if len(fields) > 4}
    return next((p for p in BIND_MOUNTED if p in points), None)


def is_loopback(host: str | None) -> bool:
    """Does `host` mean this machine only?

    >>> is_loopback("127.0.0.1"), is_loopback("127.0.1.1"), is_loopback("0.0.0.0"), is_loopback("::1")
    (True, True, False, True)
    """
    return bool(host) and (host in LOOPBACK or host.startswith("127."))


def binding_note(host: str | None, port: int | None, *, root: Path = Path("/"),
                 environ: Mapping[str, str] | None = None, why: str | None = None) -> str | None:
    """A warning when a server in a container listens on loopback only, or None. `why`: what says it
    is a container, when the caller has asked in_container already.

    >>> binding_note("0.0.0.0", 8000) is None    # every interface: reachable through a published port
    True
    """
    if not is_loopback(host):
        return None
    why = why or in_container(root, environ)
    if why is None:
        return None
    where = f"{host}:{port}" if port else host
    publish = f"`docker run -p {port}:{port}`" if port else "`docker run -p PORT:PORT`"
    return (f"inside a container ({why}), {where} is reachable only from inside the container: "
            f"add `--host 0.0.0.0` to its command in AGENTS.local.md and publish the port ({publish}), "
            "unless the container shares the host's network (--network host)")


def outside_url(record: Bound, environ: Mapping[str, str] | None = None) -> str | None:
    """The URL a user on another machine would use: only known when GPUOPS_PUBLIC_HOST names this
    machine and the server listens beyond loopback; None otherwise.

    >>> from types import SimpleNamespace as Rec
    >>> outside_url(Rec(host="0.0.0.0", port=8000), {"GPUOPS_PUBLIC_HOST": "gpu7.lab"})
    'http://gpu7.lab:8000'
    >>> outside_url(Rec(host="127.0.0.1", port=8000), {"GPUOPS_PUBLIC_HOST": "gpu7.lab"}) is None
    True
    """
    env = os.environ if environ is None else environ
    public = env.get(PUBLIC_HOST_VAR, "").strip()
    if not public or record.port is None or is_loopback(record.host):
        return None
    if ":" in public and not public.startswith("["):  # an IPv6 address
        public = f"[{public}]"
    return f"http://{public}:{record.port}"
