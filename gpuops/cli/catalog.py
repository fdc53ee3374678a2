"""The servers task: the server recipes of AGENTS.local.md, and new ones for the models in a folder.

    inv servers [--json]                 # name, port, engine, needs, disabled, running: a row per recipe
    inv servers --discover ~/models [--template NAME] [--ports 8001-8099] [--write] [--json]

The use cases are gpuops/server/catalog.py and gpuops/server/discover.py; the text is rendered from
the --json document, so a remote host's document (`gpuops -H gpu1 servers`) reads the same.
"""

from __future__ import annotations

import sys
from typing import TextIO

from invoke import task

from gpuops.cli.edge import edge
from gpuops.cli.project import agents_file_path, output, resolved, run_dir
from gpuops.settings import help_for


@task(auto_shortflags=False, help=help_for("servers"))
@edge
def servers(c, discover=None, template=None, ports=None, write=False, agents_file=None, json=False):  # noqa: A002
    """List the server recipes of AGENTS.local.md (and which run now), or make one for each model in a folder.

    inv servers                                   # a row per recipe: name, port, engine, needs, disabled, running
    inv servers --discover ~/models               # a `## Server: NAME` recipe per model, to paste
    inv servers --discover ~/models --write       # appended to AGENTS.local.md
    inv servers --json | jq -r '.servers[] | select(.running) | .name'
    """
    from gpuops.errors import UsageError

    out = output(c, json)
    folder = resolved(c, "discover_dir", discover, "--discover")
    path = agents_file_path(c, agents_file)
    if folder is None:
        given = [f for f, v in (("--template", template), ("--ports", ports), ("--write", write)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} only go{'es' if len(given) == 1 else ''} with --discover DIR",
                             hint="e.g. inv servers --discover ~/models --write")
        from gpuops.server.catalog import catalog
        from gpuops.server.recipes import load_recipes

        recipes = load_recipes(path)
        recipes.server(None)  # no server recipe at all: the error with an example
        doc = catalog(recipes, run_dir(c, agents_file)).as_dict()
    else:
        from gpuops.server.discover import append_recipes
        from gpuops.server.discover import discover as discover_models

        result = discover_models(folder, path, template=resolved(c, "discover_template", template, "--template"),
                                 ports=resolved(c, "discover_ports", ports, "--ports"))
        if resolved(c, "discover_write", write, "--write", False) and result.recipes:
            append_recipes(path, result.recipes)
            result.written_to = str(path)
        doc = result.as_dict()
    show(doc, out=None if out.json else out.human, err=sys.stderr)
    out.result("servers", doc)


def show(doc: dict, *, out: TextIO | None, err: TextIO) -> None:
    """A servers document for people: the table or the new recipes on `out` (None: --json, the document
    speaks), notes on `err`."""
    notes = [f"note: {n}" for n in doc.get("notes", [])]
    if doc.get("mode") == "discover":
        notes = [f"skipped {s['path']}: {s['reason']}" for s in doc.get("skipped", [])] + [discover_summary(doc)]
        if out is not None and doc.get("text") and not doc.get("written_to"):
            print(doc["text"], end="", file=out, flush=True)
    elif out is not None:
        from rich.console import Console

        list_table(doc, Console(file=out))
    for line in notes:
        print(line, file=err, flush=True)


def discover_summary(doc: dict) -> str:
    """The one line that says what discovery made and what to do next."""
    made = doc.get("models", [])
    names = ", ".join(m["name"] for m in made)
    if not made:
        return (f"no new models in {doc.get('folder')} (looked for *.gguf files and folders with config.json and "
                "*.safetensors)")
    first_port, last_port = made[0]["port"], made[-1]["port"]
    ports = f"port {first_port}" if len(made) == 1 else f"ports {first_port}-{last_port}"
    if doc.get("written_to"):
        return (f"added {len(made)} recipe{'s' if len(made) > 1 else ''} to {doc['written_to']}: {names} ({ports}); "
                f"start one with `inv start-server --server {made[0]['name']}`")
    return (f"{len(made)} new recipe{'s' if len(made) > 1 else ''} from template '{doc.get('template')}' ({ports}): "
            f"{names}; paste them into {doc.get('agents_file')}, or run again with --write")


def list_table(doc: dict, console) -> None:
    """The recipes as a table: name, port, engine, needs, disabled, running."""
    from rich.table import Table

    rows = doc.get("servers", [])
    table = Table(caption=f"{len(rows)} server recipe{'s' if len(rows) != 1 else ''} in {doc.get('agents_file')}, "
                          f"{sum(1 for s in rows if s.get('running'))} running")
    for column in ("name", "port", "engine", "needs", "disabled", "running", "note"):
        table.add_column(column, overflow="fold")
    for s in rows:
        port = "-" if s.get("port") is None else str(s["port"])
        if s.get("port") is not None and not s.get("port_named") and not s.get("running"):
            port += " (default)"
        note = ", ".join(n for n, on in (("template", s.get("template")), ("shares GPUs", s.get("share_gpus"))) if on)
        table.add_row(s.get("name", "?"), port, s.get("engine", "?"), ", ".join(s.get("needs") or []) or "-",
                      "yes" if s.get("disabled") else "-",
                      f"yes (pid {s.get('pid')})" if s.get("running") else "-", note)
    console.print(table)
