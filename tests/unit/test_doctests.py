"""Every `>>>` example in gpuops' docstrings runs and shows what it claims (examples that cannot run
here are written as plain usage lines, without `>>>`)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpuops

# Locust's user module monkey-patches with gevent when imported: it is checked by the load-test runs.
NOT_IMPORTED = {"gpuops.probes.loadtest.locustfile", "gpuops.__main__", "gpuops.demo.__main__"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(gpuops.__path__, "gpuops.") if m.name not in NOT_IMPORTED)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run it with -s)"


def test_the_modules_are_found():
    assert "gpuops.settings" in MODULES and "gpuops.server.state" in MODULES
