"""`gpuops -H HOST install`: this gpuops, as a wheel built here, into a virtualenv on the host.

    wheel = build_wheel()                                 # once per source state, cached in ~/.cache/gpuops/wheels
    with connect("gpu1", SshOptions()) as conn:
        done = install(conn, "gpu1", wheel, venv="~/.gpuops/venv", extras=("loadtest",))
    done.version                                          # 'gpuops 0.1.0', from the host's own `gpuops --version`

On the host: the Python is checked (3.11+), the venv is made when missing, the wheel goes in with
`pip install --no-index --find-links` (so only the sent wheel can be gpuops), then its dependencies
from the host's own pip configuration (index, mirrors, find-links). Lean by default: no Locust,
no matplotlib; `--loadtest` adds the `[loadtest]` extra.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpuops.errors import GpuopsError, RemoteError
from gpuops.hosts.ssh import (
    MARK,
    MIN_PYTHON,
    NO_PYTHON,
    PYTHON_TOO_OLD,
    VENV_FAILED,
    HostError,
    run_script,
    sh_path,
)

SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in")
REMOTE_WHEELS = ".gpuops/wheels"  # under the remote home


@dataclass
class InstallResult:
    host: str
    venv: str
    wheel: str
    extras: tuple[str, ...]
    version: str  # what the host's gpuops --version says now
    python: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"host": self.host, "venv": self.venv, "wheel": self.wheel, "extras": list(self.extras),
                "version": self.version, "python": self.python, "seconds": round(self.seconds, 3)}


def source_root() -> Path:
    """The source tree this gpuops runs from (pyproject.toml beside the gpuops package)."""
    import gpuops

    root = Path(gpuops.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise GpuopsError(f"cannot build a wheel: no pyproject.toml beside {root / 'gpuops'} (this gpuops was "
                          "installed from a wheel, not from its source tree)",
                          hint="run `gpuops -H HOST install` from a checkout installed with `pip install -e .`")
    return root


def _source_paths(root: Path) -> list[Path]:
    files = [root / name for name in SOURCE_FILES if (root / name).is_file()]
    for folder, dirs, names in os.walk(root / "gpuops"):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
        files += [Path(folder) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def source_stamp(root: Path) -> str:
    """A hash of the files that go into the wheel: the same tree gives the same wheel from the cache."""
    h = hashlib.sha256()
    for path in _source_paths(root):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_wheel(root: Path | None = None, cache: Path | None = None, *, write=lambda line: None) -> Path:
    """The wheel of the source tree, built in a copy of it (the working tree gets no build/ or egg-info)."""
    root = root or source_root()
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gpuops" / "wheels"
    folder = cache / source_stamp(root)
    found = sorted(folder.glob("gpuops-*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    write(f"building the gpuops wheel from {root}")
    with tempfile.TemporaryDirectory(prefix="gpuops-wheel-") as tmp:
        copy = Path(tmp) / "src"
        for path in _source_paths(root):
            target = copy / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        out = Path(tmp) / "dist"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "--disable-pip-version-check", "-w", str(out), str(copy)]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:  # e.g. setuptools missing here: let pip fetch the build backend
            cmd.remove("--no-build-isolation")
            done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wheels = sorted(out.glob("gpuops-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
            raise GpuopsError("building the gpuops wheel failed", details=tail,
                              hint=f"run `{shlex.join(cmd)}` to see the whole output")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / wheels[0].name
        shutil.copy2(wheels[0], target.with_suffix(".part"))
        os.replace(target.with_suffix(".part"), target)
    return target


def install_script(wheel_name: str, *, venv: str, python: str, extras: tuple[str, ...], version: str) -> str:
    """The sh script run on the host once the wheel is in ~/.gpuops/wheels/<stamp>/."""
    folder = sh_path("~/" + posixpath.join(REMOTE_WHEELS, wheel_name.rsplit("/", 1)[0]))
    spec = shlex.quote(f"gpuops{'[' + ','.join(extras) + ']' if extras else ''}=={version}")
    pip = '"$V/bin/python" -m pip --disable-pip-version-check install -q'
    low = ".".join(map(str, MIN_PYTHON))
    return "\n".join([
        f"P={shlex.quote(python)}; V={sh_path(venv)}; W={folder}",
        f'command -v "$P" >/dev/null 2>&1 || {{ echo "{MARK} no python $P" >&2; exit {NO_PYTHON}; }}',
        f'"$P" -c "import sys; sys.exit(sys.version_info < {MIN_PYTHON!r})" || '
        f'{{ echo "{MARK} python $("$P" -V 2>&1)" >&2; exit {PYTHON_TOO_OLD}; }}',
        f'if [ ! -x "$V/bin/python" ]; then "$P" -m venv "$V" >&2 || {{ echo "{MARK} venv $V failed (Debian: '
        f'apt-get install python3-venv; need Python {low}+)" >&2; exit {VENV_FAILED}; }}; fi',
        f'{pip} --no-index --no-deps --force-reinstall --find-links "$W" {shlex.quote(f"gpuops=={version}")} >&2 '
        "|| exit $?",
        f'{pip} --find-links "$W" {spec} >&2 || exit $?',
        'rm -rf "$W"',
        'echo "python: $("$V/bin/python" -V 2>&1)"',
        'echo "version: $("$V/bin/gpuops" --version)"',
    ])


def install(conn, host: str, wheel: Path, *, venv: str, python: str = "python3", extras: tuple[str, ...] = (),
            write=lambda line: None, timeout: float | None = 1800) -> InstallResult:
    """Send the wheel over SFTP and install it into `venv` on the host (made when missing)."""
    import time

    start = time.monotonic()
    version = wheel.name.split("-")[1]
    stamp = wheel.parent.name
    sftp = conn.sftp()
    path = ""
    for part in (*REMOTE_WHEELS.split("/"), stamp):
        path = posixpath.join(path, part)
        try:
            sftp.mkdir(path, mode=0o700)
        except OSError:
            pass  # exists
    sftp.put(str(wheel), posixpath.join(path, wheel.name))
    write(f"{host}: sent {wheel.name}; installing into {venv}" + (f" with [{','.join(extras)}]" if extras else ""))
    script = install_script(f"{stamp}/{wheel.name}", venv=venv, python=python, extras=extras, version=version)
    run = run_script(conn, host, script, timeout=timeout)
    said = [line[len(MARK):].strip() for line in run.stderr.splitlines() if line.startswith(MARK)]
    said = said[-1] if said else ""
    if run.exit_code == NO_PYTHON:
        raise HostError(host, "no-python", f"no {python} there", hint="install Python 3.11+ there, or set "
                        "gpuops.remote_python to its path")
    if run.exit_code == PYTHON_TOO_OLD:
        low = ".".join(map(str, MIN_PYTHON))
        raise HostError(host, "python-too-old", f"remote {said.removeprefix('python ') or python} is too old: "
                        f"gpuops needs Python {low}+",
                        hint=f"install Python {low}+ there and set gpuops.remote_python to it (e.g. python3.12)")
    if run.exit_code == VENV_FAILED:
        raise HostError(host, "venv", said or f"could not create the venv {venv}",
                        hint="check the path and that the venv module works there")
    if run.exit_code != 0:
        tail = [line for line in run.stderr.splitlines() if line.strip()][-8:]
        raise HostError(host, "pip", f"pip install into {venv} failed (exit {run.exit_code})", details=tail,
                        hint="the lines above are pip's; the host needs its package index (or a mirror) for "
                             "gpuops' dependencies")
    info = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    got = info.get("version", "").strip()
    if got.split()[-1:] != [version]:
        raise RemoteError(f"{host}: installed, but its gpuops --version says {got!r}, not {version}")
    return InstallResult(host, venv, wheel.name, tuple(extras), got, info.get("python", "").strip(),
                         time.monotonic() - start)
