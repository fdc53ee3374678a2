"""The run folder: the git-ignored `do_not_commit/` that holds logs, state, profiles and reports.

    >>> RunDir("do_not_commit").logs
    PosixPath('do_not_commit/server_logs')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        path.mkdir(parents=True, exist_ok=True)
        return path
