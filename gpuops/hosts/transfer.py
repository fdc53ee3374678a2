"""Files between here and a host over the command's own SSH connection (SFTP): reports and traces back.

    fetch_tree(conn, "/home/me/llm/do_not_commit/load_tests/20261202-101500", Path("do_not_commit/load_tests/gpu1/20261202-101500"))
    fetch_files(conn, [("/abs/trace.json.gz", "trace.json.gz")], Path("do_not_commit/profiles/gpu1/20261202-101500"))
"""

from __future__ import annotations

import posixpath
import stat
from pathlib import Path

from gpuops.rundir import private_dir


def fetch_tree(conn, remote: str, local: Path) -> list[Path]:
    """Copy a remote folder (recursively) into `local`; the local paths written."""
    sftp = conn.sftp()
    private_dir(local)
    got = []
    for entry in sftp.listdir_attr(remote):
        source = posixpath.join(remote, entry.filename)
        target = local / entry.filename
        if stat.S_ISDIR(entry.st_mode or 0):
            got += fetch_tree(conn, source, target)
        elif stat.S_ISREG(entry.st_mode or 0):
            sftp.get(source, str(target))
            got.append(target)
    return got


def fetch_files(conn, files: list[tuple[str, str]], local: Path) -> list[Path]:
    """Copy (remote path, relative name) pairs into `local`/name; the local paths written."""
    sftp = conn.sftp()
    got = []
    for source, name in files:
        target = local / name
        private_dir(target.parent)
        sftp.get(source, str(target))
        got.append(target)
    return got


def fetch_file(conn, remote: str, local: Path) -> bool:
    """Copy one file if it exists there; whether it did."""
    sftp = conn.sftp()
    try:
        sftp.stat(remote)
    except FileNotFoundError:
        return False
    private_dir(local.parent)
    sftp.get(remote, str(local))
    return True
