"""The task edge: where gpuops' exceptions become one clear message and an exit code.

    @task(help={...})
    @edge
    def start_server(c, ...):
        ...

Nothing below the task layer prints tracebacks or calls sys.exit; this is the one place that
decides what the user sees when something goes wrong.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

from invoke.exceptions import Exit

from gpuops.checks import number  # noqa: F401  (tasks check their flags with it)
from gpuops.errors import GpuopsError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def edge(fn):
    """Run a task body; turn GpuopsError into its message and exit code, Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GpuopsError as err:
            print(f"error: {err.render()}", file=sys.stderr, flush=True)
            raise Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr, flush=True)
            raise Exit(code=EXIT_INTERRUPTED) from None
        except Exit:
            raise
        except Exception as err:  # a bug in gpuops: say so plainly, traceback only on request
            if os.environ.get("GPUOPS_DEBUG"):
                traceback.print_exc()
            print(
                f"internal error in gpuops: {type(err).__name__}: {err}\n"
                "hint: re-run with GPUOPS_DEBUG=1 for the traceback and report it",
                file=sys.stderr,
                flush=True,
            )
            raise Exit(code=EXIT_INTERNAL) from None

    return wrapper


PROJECT_PATHS = ("agents_file", "run_dir")  # relative settings that mean "in the project", not "here"


def setting(c, key: str, value=None):
    """A flag's value if given, else `c.config.gpuops.<key>` (defaults < invoke.yaml < env < flag).

    A relative AGENTS.local.md or run folder from the configuration is the project's: when `inv`
    found tasks.py in a folder above this one, it is taken from there (a flag stays as typed).
    """
    if value is not None:
        return value
    got = c.config.gpuops.get(key)
    if key in PROJECT_PATHS and got:
        root = project_root(c)
        if root is not None and not os.path.isabs(os.path.expanduser(got)):
            return os.path.relpath(os.path.join(root, got))
    return got


def project_root(c) -> str | None:
    """The folder of the tasks.py that `inv` loaded (None for the `gpuops` command and in tests)."""
    return getattr(c.config, "_project_prefix", None)
