"""The run folder: the git-ignored `do_not_commit/` that holds logs, state, profiles and reports.

    >>> RunDir("do_not_commit").logs
    PosixPath('do_not_commit/server_logs')

Everything gpuops writes there can hold a command, an environment or a URL with a key in it, and
GPU boxes are shared: folders it makes are 0700 and files 0600, whatever the umask
(`private_dir`, `open_private`, `write_private`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def _tighten(path: Path, mode: int) -> None:
    """Take group and other bits off a path that is ours (another user's is left as it is)."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
            path.chmod(st.st_mode & mode)
    except OSError:
        pass


def private_dir(path: str | Path, *, tighten: bool = False) -> Path:
    """Create `path` and every missing folder above it as 0700 (umask or not); an existing one is
    kept as it is, unless `tighten` (folders of the run folder itself). Raises OSError."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by another gpuops
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    if tighten:
        _tighten(path, PRIVATE_DIR)
    return path


_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
          "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def open_private(path: str | Path, mode: str = "w", **kwargs):
    """`open(path, mode)` for writing ("w", "x", "a", with "b" for bytes) that creates the file
    0600, and makes an existing file of ours 0600 too: `with open_private(p, "x") as f: ...`."""
    fd = os.open(path, _FLAGS[mode.replace("b", "")[0]], PRIVATE_FILE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.fchmod(fd, st.st_mode & PRIVATE_FILE)
        return os.fdopen(fd, mode.replace("x", "w"), **kwargs)  # the fd is open already: "w" truncates nothing
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | Path, text: str, *, exclusive: bool = False) -> Path:
    """Write a text file readable by its owner only (`exclusive`: fail if it exists)."""
    with open_private(path, "x" if exclusive else "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


@dataclass(frozen=True)
class RunDir:
    """The git-ignored folder that holds everything a run leaves behind; subfolders made on demand."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def _sub(self, name: str) -> Path:
        return self.root / name

    @property
    def logs(self) -> Path:
        return self._sub("server_logs")

    @property
    def state(self) -> Path:
        return self._sub("state")

    @property
    def profiles(self) -> Path:
        return self._sub("profiles")

    @property
    def load_tests(self) -> Path:
        return self._sub("load_tests")

    def ensure(self, path: Path) -> Path:
        """Create `path` (a folder of the run folder), 0700, and the run folder itself 0700: what an
        earlier gpuops or a `mkdir` left open to others is closed (their files inside with it)."""
        private_dir(self.root, tighten=True)
        return private_dir(path, tighten=True)
