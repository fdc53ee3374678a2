"""The task edge: flag numbers checked into clear usage errors, paths taken from the project."""

import pytest

from gpuops.edge import number, setting
from gpuops.errors import UsageError


@pytest.mark.parametrize(
    "value,whole,expected",
    [("2.5", False, 2.5), (30, False, 30.0), ("10", True, 10), (4.0, True, 4), ("1e3", True, 1000)],
)
def test_number_reads_flag_numbers(value, whole, expected):
    got = number("--x", value, whole=whole)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value,whole", [("abc", False), ("0", False), ("-1", False), ("inf", False),
                                         ("nan", False), (None, False), (True, True), ("2.5", True), ("", True)])
def test_number_rejects_what_is_not_a_number_above_zero(value, whole):
    with pytest.raises(UsageError, match="--x must be a (whole )?number above 0"):
        number("--x", value, whole=whole)


def test_number_keeps_to_its_range():
    assert number("--lines", "0", whole=True, low_ok=True) == 0
    assert number("--port", "65535", whole=True, high=65535) == 65535
    with pytest.raises(UsageError, match="--port must be a whole number above 0 and at most 65535, not '70000'"):
        number("--port", "70000", whole=True, high=65535)
    with pytest.raises(UsageError, match="--lines must be a whole number at least 0"):
        number("--lines", "-1", whole=True, low_ok=True)


class _Config(dict):
    def __init__(self, gpuops: dict, prefix: str | None):
        super().__init__()
        self.gpuops = gpuops
        self._project_prefix = prefix


class _Context:
    def __init__(self, gpuops: dict, prefix: str | None = None):
        self.config = _Config(gpuops, prefix)


def test_relative_project_paths_from_config_are_the_projects(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "docs")
    c = _Context({"agents_file": "AGENTS.local.md", "run_dir": "do_not_commit", "hang_timeout": 60},
                 prefix=str(tmp_path) + "/")
    assert setting(c, "agents_file") == "../AGENTS.local.md"
    assert setting(c, "run_dir") == "../do_not_commit"
    assert setting(c, "agents_file", "mine.md") == "mine.md"  # a flag is relative to where it was typed
    assert setting(c, "hang_timeout") == 60


def test_without_a_tasks_file_paths_are_relative_to_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = _Context({"agents_file": "AGENTS.local.md"}, prefix=None)  # the `gpuops` command
    assert setting(c, "agents_file") == "AGENTS.local.md"
