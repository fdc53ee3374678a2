"""The server recipes of AGENTS.local.md, one entry each, with whether each runs now (`inv servers`).

    result = catalog(load_recipes("AGENTS.local.md"), RunDir("do_not_commit"))
    [(s.name, s.port, s.engine, s.running) for s in result.servers]
    [('chat', 8001, 'llama.cpp', True), ('embed', 8002, 'vllm', False), ('template', None, 'llama.cpp', False)]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gpuops.rundir import RunDir
from gpuops.server import engines, procs, state
from gpuops.server.recipes import Recipes


@dataclass
class ServerEntry:
    name: str
    port: int | None  # the port it listens on: its running record's, else its --port/-p, else its engine's default
    port_named: bool  # the command names the port (else the engine's default applies)
    engine: str
    needs: list[str]
    disabled: bool
    share_gpus: bool
    template: bool  # its command holds {model}: `inv servers --discover` copies it
    running: bool
    pid: int | None = None
    url: str | None = None
    line: int = 0  # where its command starts in AGENTS.local.md


@dataclass
class Catalog:
    agents_file: str
    servers: list[ServerEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # records that could not be read

    def as_dict(self) -> dict:
        return {"mode": "list", "agents_file": self.agents_file, "servers": [asdict(s) for s in self.servers],
                "notes": list(self.notes)}


def catalog(recipes: Recipes, run_dir: RunDir) -> Catalog:
    """Each server recipe in file order; running: its state record's process is alive (PID + start time)."""
    result = Catalog(str(recipes.path))
    records = {r.name: r for r in state.all_records(run_dir, on_corrupt=lambda e: result.notes.append(e.message))}
    for name, recipe in recipes.servers.items():
        engine = engines.detect(recipe.argv)
        named = recipe.option("--port", "-p")
        port = int(named) if named is not None and named.isdigit() else None
        rec = records.get(name)
        running = rec is not None and procs.matches(rec.pid, rec.create_time)
        if running and rec.port is not None:
            port = rec.port
        elif named is None:
            port = engine.default_port
        result.servers.append(ServerEntry(
            name, port, named is not None, engine.name, list(recipe.needs), recipe.disabled, recipe.share_gpus,
            "{model}" in recipe.script, running, rec.pid if running else None, rec.url if running else None,
            recipe.line))
    return result
