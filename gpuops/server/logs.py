"""Run logs: timestamped, never overwritten, listed newest last, tailed and followed.

    path = create_log(RunDir("do_not_commit").logs, "server")
    path.name
    'server-20261122-101500.log'        # a second one in the same second: server-20261122-101500-2.log
    tail_lines(path, 3)
    ['INFO:     Waiting for application startup.', 'INFO:     Application startup complete.', ...]
    [f.name for f in log_files(RunDir("do_not_commit").logs)]      # inv logs --list
    ['server-20261122-101500.log', 'locust-20261122-102000.log']
    choose_log(RunDir("do_not_commit").logs, prefix="locust")       # inv logs: which file
    PosixPath('do_not_commit/server_logs/locust-20261122-102000.log')
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuops.errors import UsageError
from gpuops.rundir import PRIVATE_DIR, PRIVATE_FILE, private_dir

LOG_TAIL_LINES = 20  # how many of a server's last log lines come with an error about it
LOG_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_.-]+?)-(?P<stamp>\d{8}-\d{6})(?:-(?P<n>\d+))?\.log$")


def shown(path: str | Path) -> str:
    """A path as the user reads it: relative when it is under the current folder, else absolute."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def create_run_folder(parent: Path, now: float | None = None) -> Path:
    """Create `parent/YYYYMMDD-HHMMSS` (then -2, -3, ... in the same second): a profile or load-test
    report never lands in an earlier one's folder. Both are 0700 (a report holds URLs, a trace the
    server's environment)."""
    private_dir(parent, tighten=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    n = 1
    while True:
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            n += 1
            continue
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
        return path


def create_log(folder: Path, prefix: str, now: float | None = None) -> Path:
    """Create `<prefix>-YYYYMMDD-HHMMSS.log` exclusively (O_EXCL): an existing log is never reused.
    The log is 0600 in a 0700 folder (it holds the command and environment); the server writes into
    it through the descriptor it inherits."""
    private_dir(folder, tighten=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    n = 1
    while True:
        name = f"{prefix}-{stamp}.log" if n == 1 else f"{prefix}-{stamp}-{n}.log"
        path = folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        except FileExistsError:
            n += 1
            continue
        os.fchmod(fd, PRIVATE_FILE)
        os.close(fd)
        return path


def _sort_key(path: Path) -> tuple:
    m = LOG_NAME.match(path.name)
    if not m:
        return ("", 0, path.name)
    return (m["stamp"], int(m["n"] or 1), path.name)


def list_logs(folder: Path, prefix: str | None = None) -> list[Path]:
    """Logs in `folder`, oldest first (so the newest is last), optionally of one prefix."""
    if not folder.is_dir():
        return []
    logs = []
    for p in folder.glob("*.log"):
        m = LOG_NAME.match(p.name)
        if m and (prefix is None or m["prefix"] == prefix):
            logs.append(p)
    return sorted(logs, key=_sort_key)


@dataclass(frozen=True)
class LogFile:
    """One log of the run folder, as `inv logs --list` shows it."""

    path: Path
    size: int  # bytes
    mtime: float  # last written, seconds since the epoch
    kind: str  # the name's prefix: a server name, or locust

    @property
    def name(self) -> str:
        return self.path.name

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "size": self.size, "mtime": self.mtime, "kind": self.kind}


def log_files(folder: Path, prefix: str | None = None) -> list[LogFile]:
    """The logs in `folder` with size, time and kind, oldest first (the newest is last)."""
    out = []
    for p in list_logs(folder, prefix):
        try:
            st = p.stat()
        except OSError:  # removed meanwhile
            continue
        out.append(LogFile(p, st.st_size, st.st_mtime, LOG_NAME.match(p.name)["prefix"]))
    return out


def choose_log(folder: Path, name: str | None = None, prefix: str | None = None) -> Path:
    """The log `inv logs` shows: `name` (a file name in `folder`, or a path), else the newest (of `prefix`).
    UsageError (exit 2) saying what there is when there is no such log."""
    if name:
        path = Path(name) if Path(name).exists() else folder / name
        if not path.is_file():
            raise UsageError(f"no log {name!r} (looked in {folder})", hint="`inv logs --list` shows the logs")
        return path
    found = list_logs(folder, prefix)
    if found:
        return found[-1]
    if prefix:
        kinds = sorted({m["prefix"] for p in list_logs(folder) if (m := LOG_NAME.match(p.name))})
        raise UsageError(f"no {prefix} logs in {folder}", hint=f"logs there are of: {', '.join(kinds)}" if kinds
                         else "start a server with `inv start-server`")
    raise UsageError(f"no logs in {folder}", hint="start a server with `inv start-server`")


def tail_lines(path: str | Path, n: int = 50) -> list[str]:
    """The last n lines of a file (without newlines); [] if it does not exist."""
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 64 * 1024, b""
            pos = size
            while pos > 0 and data.count(b"\n") <= n:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except (FileNotFoundError, IsADirectoryError):
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return list(deque(lines, maxlen=n))


READ_CHUNK = 1 << 20  # bytes one read_lines() takes at most: a burst of hundreds of MB is read in steps
MAX_PARTIAL = 1 << 20  # an unterminated line longer than this is shown cut (a terminal would wrap it anyway)


def _as_shown(raw: bytes) -> str:
    """What a terminal shows of a line: a progress bar redrawn with `\r` leaves only its last state."""
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text.rsplit("\r", 1)[-1]


class LogReader:
    """Reads whole new lines appended to a log since the last call (a partial last line waits).

    r = LogReader(path); r.read_lines()
    ['INFO:     Started server process [4242]']

    At most READ_CHUNK bytes per call (`more` says whether more were waiting), so a burst of
    hundreds of MB never sits in memory at once. Progress bars (tqdm, model downloads) redraw one
    line with `\r` and end it with `\n` only when done: `grew` tells that bytes arrived even when no
    whole line did, and `progress()` is the bar's current state.
    """

    def __init__(self, path: str | Path, start_at_end: bool = False, offset: int = 0):
        self.path = Path(path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._f.seek(0, os.SEEK_END) if start_at_end else self._f.seek(offset)
        self._partial = b""
        self.grew = False  # whether the last read_lines() found any new bytes
        self.more = False  # whether it stopped at READ_CHUNK with bytes still unread

    def read_lines(self, limit: int = READ_CHUNK) -> list[str]:
        chunk = self._f.read(limit)
        self.grew = bool(chunk)
        self.more = len(chunk) == limit
        if not chunk:
            return []
        data = self._partial + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = self._bounded(data)
            return []
        whole, self._partial = data[:cut], self._bounded(data[cut + 1:])
        text = whole.decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]
        return lines

    @staticmethod
    def _bounded(partial: bytes) -> bytes:
        """Hold at most MAX_PARTIAL bytes of an unterminated line: a bar keeps its last redraw, other text
        its first MAX_PARTIAL bytes (the rest is dropped until the line ends)."""
        if len(partial) <= MAX_PARTIAL:
            return partial
        at = partial.rfind(b"\r", 0, len(partial) - 1)
        return partial[at:] if 0 <= at and len(partial) - at <= MAX_PARTIAL else partial[:MAX_PARTIAL]

    def progress(self) -> str:
        """The latest `\r`-redraw of the unterminated line ('' when it is no progress bar)."""
        if b"\r" not in self._partial:
            return ""
        return _as_shown(self._partial.rstrip(b"\r"))

    def flush_partial(self) -> list[str]:
        """The unterminated last line, if any (at the end of a process's life)."""
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace")] if rest else []

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def follow(path: str | Path, write: Callable[[str], None], *, from_lines: int = 0,
           should_stop: Callable[[], bool] = lambda: False, poll: float = 0.1,
           newer: Callable[[Path], Path | None] | None = None) -> None:
    """`tail -f`: print the last `from_lines` lines, then new lines until should_stop() or Ctrl-C.

    `newer(path)`: a newer log that replaces this one (the same server, restarted), or None; once the
    current file is read to its end, following moves there (from its start), saying so.
    """
    path = Path(path)
    for line in tail_lines(path, from_lines):
        write(line)
    reader = LogReader(path, start_at_end=True)
    try:
        while not should_stop():
            lines = reader.read_lines()
            for line in lines:
                write(line)
            if lines or reader.more:
                continue
            nxt = newer(path) if newer is not None else None
            if nxt is not None and nxt != path:
                for line in reader.read_lines() + reader.flush_partial():  # what came in meanwhile
                    write(line)
                reader.close()
                write(f"==> {shown(nxt)} <== (a newer log of the same server: following it now)")
                path, reader = nxt, LogReader(nxt)
                continue
            time.sleep(poll)
    finally:
        reader.close()


def newer_log(folder: Path, path: Path) -> Path | None:
    """The newest log of the same kind (prefix) as `path`, when it is newer than `path`; else None.

    >>> newer_log(Path("/nonexistent"), Path("server-20261122-101500.log")) is None
    True
    """
    m = LOG_NAME.match(path.name)
    if not m:
        return None
    found = list_logs(folder, m["prefix"])
    if found and _sort_key(found[-1]) > _sort_key(path):
        return found[-1]
    return None


def add_log_tail(err, log_path: str | Path | None, n: int = LOG_TAIL_LINES):
    """Append the server's last log lines (and the likely cause, when one is recognised) to an error."""
    if not log_path:
        return err
    from gpuops.server.engines import diagnose

    lines = tail_lines(log_path, n)
    if not lines:
        err.details.append(f"(the server log {log_path} is empty or missing)")
        return err
    found = diagnose(lines)
    if found:
        err.details.append(f"likely cause: {found.kind}: {found.line}")
        if found.hint and not err.hint:
            err.hint = found.hint
    err.details.append(f"last {len(lines)} lines of {log_path}:")
    err.details += [f"  {line}" for line in lines]
    return err
