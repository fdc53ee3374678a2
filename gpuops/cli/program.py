"""The `gpuops` console script: the same task collection as `inv`, usable outside the repo.

    gpuops --list
    gpuops start-server --agents-file ~/work/AGENTS.local.md --no-follow
"""

from invoke import Program

from gpuops import __version__
from gpuops.cli import ns

program = Program(namespace=ns, version=__version__, name="gpuops", binary="gpuops")


def main() -> None:
    program.run()
