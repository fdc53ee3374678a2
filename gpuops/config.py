"""gpuops configuration: the defaults under Invoke's `gpuops` key, and the run folder layout.

Every value can be set, lowest to highest, in: these defaults < `invoke.yaml` (`gpuops:` key)
< environment `INVOKE_GPUOPS_<KEY>` < command-line flags.

    >>> RunDir("do_not_commit").logs
    PosixPath('do_not_commit/server_logs')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULTS: dict = {
    "agents_file": "AGENTS.local.md",  # where the commands live
    "run_dir": "do_not_commit",  # logs, state, profiles, load-test reports (git-ignored)
    "server": None,  # which server recipe; None = the first one in AGENTS.local.md
    "stop_timeout": 10.0,  # seconds between SIGTERM and SIGKILL
    "hang_timeout": 60.0,  # no new log output for this long while not ready = hung
    "start_timeout": 1800.0,  # overall limit for the server to become ready
    "gpu_busy_mib": 300,  # a GPU with more memory used than this (by others) is busy
    "gpu_release_timeout": 30.0,  # how long to wait for NVML to show memory released
    "smoke_presets": {
        "blue_sky": {"prompt": "Why is the sky blue?", "max_tokens": 64},
        "hello": {"prompt": "Say hello in one short sentence.", "max_tokens": 16},
    },
    "smoke_timeout": 60.0,  # seconds one smoke request may take, model lookup included
    "smoke_chat": False,  # smoke via /v1/chat/completions (--chat / --completion override it)
    "profile_num_steps": 25,  # steps a profile records (10 suits decode-only servers)
    "profile_settle_timeout": 120.0,  # how long to wait for trace files to appear and stop growing
    "profile_quiet_seconds": 5.0,  # trace sizes unchanged this long = written; per-worker files can start seconds apart
}


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
