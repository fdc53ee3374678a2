"""`gpuops -H HOST install`: a wheel built here, sent over SFTP, pip-installed into a venv on the host."""

import json

import pytest

pytestmark = pytest.mark.ssh


def test_install_puts_this_version_into_a_fresh_venv(remote):
    from gpuops import __version__

    out = remote.install_output
    assert f"gpu1: gpuops {__version__} in {remote.venv}" in out.out
    assert "lean" in out.out
    assert (remote.venv / "bin" / "gpuops").exists()
    # lean: no Locust, no matplotlib
    assert not [n for n in remote.installed if n.startswith(("locust", "matplotlib"))]
    assert f"gpuops-{__version__}.dist-info" in remote.installed


def test_install_again_updates_in_place_and_reports_the_version(remote):
    from gpuops import __version__

    r = remote.gpuops("-H", "gpu1", "install", "--json", timeout=600)  # gpu1..8 share one venv here: one at a time
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    assert [(h["host"], h["ok"], h["version"]) for h in doc["hosts"]] == [("gpu1", True, f"gpuops {__version__}")]


def test_the_wheel_of_an_unchanged_tree_comes_from_the_cache(tmp_path):
    import shutil

    from gpuops.hosts.install import _source_paths, build_wheel, source_root

    root = source_root()
    tree = tmp_path / "src"  # a frozen copy: the working tree may change while the test runs
    for path in _source_paths(root):
        target = tree / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    said = []
    first = build_wheel(tree, tmp_path / "cache", write=said.append)
    again = build_wheel(tree, tmp_path / "cache", write=said.append)
    assert first == again and first.name.startswith("gpuops-")
    assert len(said) == 1  # built once
    assert not (tree / "build").exists() and not list(tree.glob("*.egg-info"))  # built in a copy
