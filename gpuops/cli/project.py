"""Where the project is and what its settings say: the run folder, AGENTS.local.md, config values.

    rd = run_dir(c, agents_file)          # RunDir of this project (beside tasks.py, or the agents file)
    server_recipe(c, "vllm").argv                # the named recipe, read fresh
    setting(c, "stop_timeout", flag)      # flag if given, else gpuops.stop_timeout from Invoke's config
"""

from __future__ import annotations

import os

from gpuops.rundir import RunDir

PROJECT_PATHS = ("agents_file", "run_dir")  # relative settings that mean "in the project", not "here"


def setting(c, key: str, value=None):
    """A flag's value if given, else `c.config.gpuops.<key>` (defaults < invoke.yaml < env < flag).

    A relative AGENTS.local.md or run folder from the configuration is the project's: when `inv`
    found tasks.py in a folder above this one, it is taken from there (a flag stays as typed).
    """
    if value is not None:
        return value
    got = configured(c, key)
    if key in PROJECT_PATHS and got:
        root = project_root(c)
        if root is not None and not os.path.isabs(os.path.expanduser(got)):
            return os.path.relpath(os.path.join(root, got))
    return got


def configured(c, key: str):
    """The setting from Invoke's config, checked (an error names `gpuops.<key>`), else the table's default.

    Invoke's `gpuops` defaults are all None (gpuops.settings.config_defaults): Invoke casts an
    INVOKE_GPUOPS_* value to its default's type, which would turn "false" into True and make "abc" a
    traceback; a None default keeps the text, and the table's check reads it.
    """
    import copy

    from gpuops.settings import SETTINGS, check

    got = c.config.gpuops.get(key)
    default = copy.deepcopy(SETTINGS[key].default)
    if got is None or (isinstance(default, dict) and got == {}):
        return default
    got = check(key, got)
    if isinstance(default, dict) and isinstance(got, dict):
        return {**default, **got}  # presets from invoke.yaml join the built-in ones
    return got


def resolved(c, key: str, value=None, flag: str | None = None, default=None):
    """A flag's value when it was given (not None and not the task's own default), else the setting from
    Invoke's config; checked by the settings table: an error names the flag, or `gpuops.<key>`.

        resolved(c, "stop_timeout", timeout, "--timeout")     # 10.0, or the flag's number
        resolved(c, "follow", follow, "--no-follow", True)     # a yes/no flag whose default is True
    """
    from gpuops.settings import check

    given = value is not None and value != default
    return check(key, value if given else setting(c, key), flag=flag if given else None)


def output(c, json=False):
    """The task's Output: --json from the flag or `gpuops.json` in the config."""
    from gpuops.cli.output import Output

    return Output(json=resolved(c, "json", json, "--json", False))


def project_root(c) -> str | None:
    """The folder of the project's tasks.py (`project_tasks(__file__)`); None for the `gpuops` command."""
    return configured(c, "project_dir")


def run_dir(c, agents_file=None) -> RunDir:
    """The run folder. For the `gpuops` command (no tasks.py), a relative one sits beside the
    AGENTS.local.md given with --agents-file, so a later `gpuops stop-server` run from that folder
    finds the server again."""
    folder = setting(c, "run_dir")
    if agents_file and project_root(c) is None and not os.path.isabs(os.path.expanduser(folder)):
        folder = os.path.join(os.path.dirname(agents_file), folder)
    return RunDir(folder)


def agents_file_path(c, agents_file=None) -> str:
    """AGENTS.local.md's path; one given as a flag must exist (a typo must not fall back to defaults)."""
    from gpuops.errors import RecipeError

    if agents_file is not None and not os.path.isfile(agents_file):
        raise RecipeError("file not found", path=agents_file,
                          hint="check the --agents-file path (leave it out to use the project's AGENTS.local.md)")
    return setting(c, "agents_file", agents_file)


def server_recipe(c, server=None, agents_file=None):
    from gpuops.server.recipes import load_recipes

    return load_recipes(agents_file_path(c, agents_file)).server(setting(c, "server", server))


def smoke_presets(c, agents_file=None) -> dict:
    """Presets from config, with those of the agents file's "Smoke presets" block laid over them."""
    from gpuops.probes import smoke

    return smoke.load_presets(setting(c, "smoke_presets"), agents_file_path(c, agents_file))
