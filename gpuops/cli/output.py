"""Where a task's words go: people read stdout; with --json, stdout holds one JSON document.

    out = Output(json=False)
    out.say("server ready")              # stdout for people; stderr when --json
    out.result("status", {"servers": []})  # with --json: {"schema": 1, "task": "status", "ok": true, ...}

The document is also the wire format between a laptop and a remote gpuops; docs/json.md describes
each task's fields. Keep `SCHEMA` at 1 while changes only add fields.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any, TextIO

SCHEMA = 1


def document(task: str, data: dict[str, Any], *, ok: bool = True) -> dict[str, Any]:
    """The JSON document of one task run.

    >>> document("status", {"servers": []})
    {'schema': 1, 'task': 'status', 'ok': True, 'servers': []}
    """
    return {"schema": SCHEMA, "task": task, "ok": ok, **data}


def error_document(task: str, err) -> dict[str, Any]:
    """A GpuopsError as the JSON document a --json run prints on stdout (same exit code as without)."""
    return document(task, {"error": {"type": type(err).__name__, "message": err.message, "hint": err.hint,
                                     "details": list(err.details), "exit_code": err.exit_code}}, ok=False)


class Output:
    """A task's output: lines for people, and the result document when --json is on."""

    def __init__(self, json: bool = False, *, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.json = bool(json)
        self._stdout = stdout
        self._stderr = stderr

    @property
    def human(self) -> TextIO:
        """The stream for human text: stdout normally, stderr under --json."""
        return (self._stderr or sys.stderr) if self.json else (self._stdout or sys.stdout)

    def console(self):
        """A rich Console on the human stream: the terminal's width, or 160 columns when piped (a
        table of URLs and log names stays one line per server in a file or a pager)."""
        import os

        from rich.console import Console

        stream = self.human
        piped = not (hasattr(stream, "isatty") and stream.isatty())
        return Console(file=stream, width=160 if piped and "COLUMNS" not in os.environ else None)

    def say(self, line: str) -> None:
        stream = self.human
        try:
            print(line, file=stream, flush=True)
        except BrokenPipeError:  # the reader left (`| head -1`): the task goes on, unheard
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    def fail(self, task: str, data: dict[str, Any], err) -> None:
        """A task that has a result to report and failed anyway (a failed smoke test, a server not stopped,
        a load test where no request succeeded): raises `err` for the edge; under --json one document
        carries both the result and the error, with the error's exit code."""
        if not self.json:
            raise err
        from invoke.exceptions import Exit

        print(f"error: {err.render()}", file=self._stderr or sys.stderr, flush=True)
        self.result(task, {**data, "error": error_document(task, err)["error"]}, ok=False)
        raise Exit(code=err.exit_code)

    def result(self, task: str, data: dict[str, Any], *, ok: bool = True) -> None:
        """With --json, the one document on stdout; without, nothing (the renderer has spoken)."""
        if self.json:
            print(_json.dumps(document(task, data, ok=ok), indent=2, default=str),
                  file=self._stdout or sys.stdout, flush=True)
