"""The errors gpuops raises; the task layer turns each into a message and an exit code.

    GpuopsError                 exit 1: anything gpuops can explain
     +-- CorruptRecord          exit 1: a state record of the wrong shape (server/state.py; start sets it aside)
     +-- UsageError             exit 2: bad flag values, bad configuration
     |    +-- RecipeError       exit 2: AGENTS.local.md missing or malformed (names file:line)
     +-- StartupFailed          exit 3: the server crashed, hung or timed out while starting
     +-- PortInUse              exit 4: the port is held by a process that is not this server
     +-- GpusBusy               exit 5: the GPUs the command needs hold other processes' memory
     +-- ServerNotRunning       exit 6: no running server to talk to (smoke, profile, load-test)
     +-- RequestFailed          exit 7: the server answered badly or not at all (smoke, profile)
     +-- RemoteError            exit 8: an SSH host could not be reached or failed
     +-- Interrupted            exit 130: Ctrl-C, with what was left running and how to go on

Each error's text is what the user reads: what happened, where, and what to do.
"""

from __future__ import annotations


class GpuopsError(Exception):
    """Base of everything gpuops explains to the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])

    @classmethod
    def combine(cls, problems: list[tuple[str, GpuopsError]], *, what: str, note: str = "") -> GpuopsError:
        """One error for several (labelled) ones, with the first one's exit code; a single one as it is.

        >>> GpuopsError.combine([("'a'", GpusBusy("GPU 0 still held")), ("'b'", PortInUse("port 8001"))],
        ...                     what="stopping").render().splitlines()[0]
        "2 problems while stopping 'a', 'b':"
        """
        if len(problems) == 1:
            return problems[0][1]
        labels = ", ".join(dict.fromkeys(label for label, _ in problems))
        err = GpuopsError(f"{len(problems)} problems while {what} {labels}" + (f" ({note})" if note else "") + ":",
                          details=[line for label, p in problems for line in f"{label}: {p.render()}".splitlines()])
        err.exit_code = problems[0][1].exit_code
        return err

    def render(self) -> str:
        """The full text shown at the task edge: message, indented details, then the hint."""
        lines = [self.message]
        lines += [f"  {d}" for d in self.details]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class UsageError(GpuopsError):
    exit_code = 2


class RecipeError(UsageError):
    """AGENTS.local.md is missing or a command in it cannot be parsed."""

    def __init__(self, message: str, *, path=None, line: int | None = None, hint: str | None = None):
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}", hint=hint)
        self.path = path
        self.line = line


class StartupFailed(GpuopsError):
    exit_code = 3


class PortInUse(GpuopsError):
    exit_code = 4


class GpusBusy(GpuopsError):
    exit_code = 5


class ServerNotRunning(GpuopsError):
    exit_code = 6


class RequestFailed(GpuopsError):
    exit_code = 7


class RemoteError(GpuopsError):
    exit_code = 8


class Interrupted(GpuopsError):
    """Ctrl-C where it leaves something behind the user must know about (a server still starting)."""

    exit_code = 130
