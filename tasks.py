"""gpuops' tasks for this project: `inv --list` shows them, `inv --help TASK` explains each flag."""

from gpuops.cli import project_tasks

ns = project_tasks(__file__)
