"""The task collection as users meet it: every flag explained, and `inv --list` kept light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpuops.cli import ns
from support.fixtures import REPO

TASKS = sorted(ns.task_names)


def test_the_daily_tasks_are_all_there():
    assert {"start-server", "stop-server", "status", "logs", "gpus", "smoke", "profile", "load-test"} <= set(TASKS)


def _undocumented_flags() -> dict[str, list[str]]:
    """Each task's flags without help, read in a fresh process: building a parser pops `task.help`, so
    an earlier in-process `Program.run` would make every flag look undocumented."""
    code = ("import json; from gpuops.cli import ns\n"
            "print(json.dumps({n: [a.name for a in ns[n].get_arguments() if not a.help] for n in ns.task_names}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def undocumented():
    return _undocumented_flags()


@pytest.mark.parametrize("name", TASKS)
def test_every_flag_of_every_task_has_help_and_the_task_a_docstring(name, undocumented):
    assert undocumented[name] == []
    assert (ns[name].body.__doc__ or "").strip(), f"{name} has no docstring for `inv --help {name}`"


def test_loading_the_tasks_imports_no_heavy_module():
    # locust monkey-patches with gevent; fabric/paramiko, matplotlib and pynvml are slow to import
    code = ("import sys, gpuops.cli; heavy = ('locust', 'gevent', 'fabric', 'paramiko', 'matplotlib', 'pynvml');"
            "print(' '.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_no_task_has_one_letter_flags_so_a_letter_never_means_two_things():
    """Invoke would pick each task's short flags from its own flag names (`-a` was --all in one task and
    --agents-file in another): gpuops turns them off everywhere; only long flags, and -h for help."""
    code = ("import json; from gpuops.cli import ns\n"
            "print(json.dumps({n: [a.names for a in ns[n].get_arguments() if len(a.names) > 1] for n in ns.task_names}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {name: [] for name in TASKS}
