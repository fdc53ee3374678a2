"""The task edge: where gpuops' exceptions become one clear message and an exit code.

    @task(help={...})
    @edge
    def start_server(c, ...):
        ...

Nothing below the task layer prints tracebacks or calls sys.exit; this is the one place that
decides what the user sees when something goes wrong. Under --json the error is also one JSON
document on stdout (`{"ok": false, "error": {...}}`), with the same exit code.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback

from invoke.exceptions import Exit

from gpuops.errors import GpuopsError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def _json_wanted(args, kwargs) -> bool:
    if kwargs.get("json"):
        return True
    try:
        from gpuops.settings import check

        return bool(args and check("json", args[0].config.gpuops.get("json")))  # invoke.yaml or the env
    except GpuopsError:
        return False
    except AttributeError:
        return False


def _emit_json(task: str, err: GpuopsError) -> None:
    import json

    from gpuops.cli.output import error_document

    try:
        print(json.dumps(error_document(task, err), indent=2), flush=True)
    except (BrokenPipeError, ValueError):
        pass


def edge(fn):
    """Run a task body; turn GpuopsError into its message and exit code, Ctrl-C into 130."""
    task_name = fn.__name__.replace("_", "-")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GpuopsError as err:
            print(f"error: {err.render()}", file=sys.stderr, flush=True)
            if _json_wanted(args, kwargs):
                _emit_json(task_name, err)
            raise Exit(code=err.exit_code) from None
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr, flush=True)
            raise Exit(code=EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # `inv status | head -1`: the reader left; nothing more to say to it
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
            raise Exit(code=0) from None
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
            if _json_wanted(args, kwargs):
                internal = GpuopsError(f"internal error in gpuops: {type(err).__name__}: {err}")
                internal.exit_code = EXIT_INTERNAL
                _emit_json(task_name, internal)
            raise Exit(code=EXIT_INTERNAL) from None

    return wrapper
