"""Several servers at once: which ones and in what order (needs, cycles, clashes), started concurrently.

    plan = plan_start(recipes, ["app"])            # app needs model: model first, then app
    plan.order, plan.added
    (['model', 'app'], ['model'])
    result = start_group(plan, recipes, start_one, write=print)   # start_one(recipe, say, stream) -> StartResult
    [(s.name, s.state) for s in result.servers]
    [('model', 'ready'), ('app', 'ready')]

A server starts once everything it needs is ready; servers that need nothing of each other start
together (each its own detached process, log and watcher), so N servers take about as long as the
slowest one. One failing does not stop the others (its dependents are skipped), unless fail_fast.
Unknown names, cycles and two recipes asking for one port (or the same GPUs) are refused before
anything starts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuops.errors import GpuopsError, Interrupted, RecipeError, UsageError
from gpuops.server.recipes import Recipes, ServerRecipe
from gpuops.server.start import StartResult

Write = Callable[[str], None]
StartOne = Callable[[ServerRecipe, Write, Write], StartResult]
Event = Callable[[str, str], None]  # (server name, state: waiting | starting | ready | failed | skipped)


@dataclass
class Plan:
    """Which servers a start means, dependencies first."""

    order: list[str]
    needs: dict[str, tuple[str, ...]]
    requested: list[str]
    added: list[str] = field(default_factory=list)  # started only because a requested one needs them

    def dependents(self, name: str) -> list[str]:
        return [n for n in self.order if name in self.needs[n]]


def requested_names(recipes: Recipes, servers: str | Iterable[str] | None, *, all: bool = False) -> list[str]:  # noqa: A002
    """`--server a,b` -> ['a', 'b']; `--all` -> every recipe but those marked `disabled: yes`; neither ->
    the first recipe. Unknown names are a RecipeError naming the known ones."""
    if all:
        names = [n for n, r in recipes.servers.items() if not r.disabled]
        if not names:
            raise RecipeError("--all: every server recipe is marked `disabled: yes`", path=recipes.path,
                              hint="start one by name (--server NAME), or remove a `disabled:` line")
        return names
    if servers is None:
        return [recipes.server(None).name]
    if isinstance(servers, str):
        servers = servers.split(",")
    names = list(dict.fromkeys(n.strip() for n in servers if n.strip()))
    if not names:
        raise UsageError("--server names no server", hint=f"known: {', '.join(recipes.servers) or 'none'}; "
                                                          "e.g. --server model,app")
    for name in names:
        recipes.server(name)  # RecipeError for an unknown one
    return names


def plan_start(recipes: Recipes, names: list[str], *, share_gpus: bool = False,
               environ: Mapping[str, str] | None = None, inventory: Any = None) -> Plan:
    """Order `names` and what they need (transitively) so that needs come first (pure but for `environ`).
    RecipeError (exit 2) for a need that names no recipe, a cycle, or two of them asking for the same
    port or GPUs (unless both may share GPUs: `share-gpus: yes`, or `share_gpus`). `inventory` (the
    GPUs NVML sees) lets a command without CUDA_VISIBLE_DEVICES count as needing what it will use."""
    needs: dict[str, tuple[str, ...]] = {}
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in needs:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise RecipeError(f"the servers need each other in a cycle: {cycle}", path=recipes.path,
                              line=recipes.servers[name].line,
                              hint="remove one of these `needs:` lines; nothing was started")
        recipe = recipes.servers[name]
        visiting.append(name)
        for dep in recipe.needs:
            if dep not in recipes.servers:
                raise RecipeError(f"'{name}' needs '{dep}', but no server recipe is named '{dep}'",
                                  path=recipes.path, line=recipe.line,
                                  hint=f"known: {', '.join(recipes.servers)}; fix its `needs:` line")
            visit(dep)
        visiting.pop()
        needs[name] = recipe.needs
        order.append(name)

    for name in names:
        visit(name)
    plan = Plan(order, needs, list(names), [n for n in order if n not in names])
    check_clashes([recipes.servers[n] for n in order], share_gpus=share_gpus, environ=environ, inventory=inventory)
    return plan


def recipe_port(recipe: ServerRecipe) -> int | None:
    """The port it will listen on: its command's `--port`, else its engine's default; None for a wrapper
    (`bash -c`, a script) that does not name one (its port is learned as it starts)."""
    from gpuops.server import engines
    from gpuops.server.launch import endpoint_of
    from gpuops.server.start import port_given, wrapped

    engine = engines.detect(recipe.argv)
    if wrapped(recipe) and not port_given(recipe, engine):
        return None
    try:
        return endpoint_of(recipe, engine).port
    except RecipeError:  # not a number (a template's {port}): its own start says so
        return None


def recipe_gpus(recipe: ServerRecipe, environ: Mapping[str, str] | None = None, inventory: Any = None) -> set[int] | None:
    """The GPU indices it will use: with the GPUs NVML sees, what gpu.select says (CUDA_VISIBLE_DEVICES,
    parallel sizes, else every GPU); without, only what its CUDA_VISIBLE_DEVICES names by index (or None)."""
    env = {**(os.environ if environ is None else environ), **recipe.env}
    if inventory is not None and not inventory.unavailable:
        from gpuops.gpu.select import needed_gpus

        return set(needed_gpus(env, recipe.argv, inventory))
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return {int(p) for p in parts} if all(p.isdigit() for p in parts) else None


def check_clashes(recipes: list[ServerRecipe], *, share_gpus: bool = False,
                  environ: Mapping[str, str] | None = None, inventory: Any = None) -> None:
    """Two of these recipes naming one port, or one GPU (by CUDA_VISIBLE_DEVICES) without both sharing:
    a RecipeError naming both, before anything starts."""
    for i, a in enumerate(recipes):
        for b in recipes[i + 1:]:
            port = recipe_port(a)
            if port is not None and port == recipe_port(b):
                raise RecipeError(f"'{a.name}' and '{b.name}' both use port {port}", path=a.path, line=b.line,
                                  hint="give one of them another --port in AGENTS.local.md; nothing was started")
            ga, gb = recipe_gpus(a, environ, inventory), recipe_gpus(b, environ, inventory)
            both = sorted((ga or set()) & (gb or set()))
            if both and not (share_gpus or (a.share_gpus and b.share_gpus)):
                raise RecipeError(
                    f"'{a.name}' and '{b.name}' both use GPU {', '.join(map(str, both))}",
                    path=a.path, line=b.line,
                    hint="give them different GPUs, or let them share: `share-gpus: yes` under both headings "
                         "(or --share-gpus / gpuops.share_gpus); nothing was started")


# ---------------------------------------------------------------- starting


@dataclass
class ServerOutcome:
    """How one server of a group start ended."""

    name: str
    result: StartResult | None = None
    error: GpuopsError | None = None
    skipped: str | None = None  # why it was never started
    stopped: str | None = None  # why this run stopped it again (--fail-fast)
    requested: bool = True
    record: Any = None  # the state record of a failed start (its pid and log), when it got that far

    @property
    def log_path(self) -> str | None:
        rec = self.result.record if self.result is not None else self.record
        return rec.log_path if rec is not None else None

    @property
    def state(self) -> str:
        """ready | running (reused) | failed | skipped | stopped"""
        if self.skipped:
            return "skipped"
        if self.stopped:
            return "stopped"
        if self.error is not None or self.result is None:
            return "failed"
        return "running" if self.result.already_running else "ready"

    @property
    def ok(self) -> bool:
        return self.state in ("ready", "running") and (self.result is None or self.result.smoke_error is None)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"server": self.name, "requested": self.requested}
        if self.result is not None:
            doc.update(self.result.as_dict())
        elif self.record is not None:
            doc.update(pid=self.record.pid, port=self.record.port, url=self.record.url,
                       log_path=self.record.log_path)
        doc.update(state=self.state, ok=self.ok, skipped=self.skipped, stopped=self.stopped)
        err = self.error or (self.result.smoke_error if self.result is not None else None)
        doc["error"] = None if err is None else {"type": type(err).__name__, "message": err.message,
                                                 "hint": err.hint, "exit_code": err.exit_code}
        return doc


@dataclass
class GroupResult:
    servers: list[ServerOutcome]
    elapsed: float = 0.0

    def error(self) -> GpuopsError | None:
        """None when every server is up; else one error naming the others, with the first failure's exit code."""
        bad = [s for s in self.servers if not s.ok]
        if not bad:
            return None
        first = next((s for s in bad if s.error is not None or (s.result and s.result.smoke_error)), bad[0])
        cause = first.error or (first.result.smoke_error if first.result else None)
        good = len(self.servers) - len(bad)
        err = GpuopsError(f"{len(bad)} of {len(self.servers)} servers did not start "
                          f"({', '.join(f'{s.name}: {s.state}' for s in bad)}); {good} running",
                          details=[f"{s.name}: {_why(s)}" for s in bad],
                          hint=cause.hint if cause is not None else None)
        err.exit_code = cause.exit_code if cause is not None else 3
        return err

    def as_dict(self) -> dict[str, Any]:
        return {"servers": [s.as_dict() for s in self.servers], "elapsed": round(self.elapsed, 3),
                "started": sum(s.state == "ready" for s in self.servers),
                "reused": sum(s.state == "running" for s in self.servers),
                "failed": sum(not s.ok for s in self.servers)}


def _why(s: ServerOutcome) -> str:
    if s.skipped:
        return s.skipped
    if s.stopped:
        return s.stopped
    err = s.error or (s.result.smoke_error if s.result else None)
    return err.message if err is not None else s.state


def start_group(plan: Plan, recipes: Recipes, start_one: StartOne, *, write: Write = print,
                stream: Write | None = None, on_event: Event = lambda name, st: None, fail_fast: bool = False,
                stop_one: Callable[[str], None] | None = None,
                record_of: Callable[[str], Any] = lambda name: None) -> GroupResult:
    """Start the plan's servers, each as soon as what it needs is ready, concurrently. `write(line)` gets
    gpuops' lines and `stream(line)` the servers' logs, both prefixed with the server's name.
    `fail_fast`: after the first failure nothing more starts and `stop_one(name)` stops each server this
    run started. Ctrl-C: Interrupted (exit 130) naming the servers still starting (they keep running).
    `record_of(name)`: the state record of a server whose start failed (for its pid and log)."""
    began, wall_began = time.monotonic(), time.time() - 1.0
    width = max(len(n) for n in plan.order)
    guard = threading.Lock()
    changed = threading.Condition(guard)
    out: dict[str, ServerOutcome] = {}
    running: dict[str, threading.Thread] = {}
    halted: list[str] = []  # the first failure, under fail_fast

    def prefixed(fn: Write, name: str) -> Write:
        def line(text: str) -> None:
            with guard:
                fn(f"{name:<{width}} | {text}")
        return line

    def run(name: str) -> None:
        outcome = ServerOutcome(name, requested=name in plan.requested)
        try:
            outcome.result = start_one(recipes.servers[name], prefixed(write, name),
                                       prefixed(stream or write, name))
        except GpuopsError as err:
            outcome.error = err
            rec = record_of(name)
            outcome.record = rec if rec is not None and rec.started_at >= wall_began else None
        except Exception as err:  # noqa: BLE001 - reported as that server's failure, never lost in a thread
            outcome.error = GpuopsError(f"'{name}': unexpected {type(err).__name__}: {err}")
            outcome.error.exit_code = 70
        with changed:  # said before the main loop can skip its dependents
            stopped_by_us = bool(halted) and outcome.error is not None and "was stopped" in outcome.error.message
            on_event(name, "ready" if outcome.ok else "stopped" if stopped_by_us else "failed")
            out[name] = outcome
            running.pop(name, None)
            changed.notify_all()

    pending = list(plan.order)
    for name in pending:
        on_event(name, "waiting")
    try:
        while True:
            with changed:
                if fail_fast and not halted:
                    halted.extend(n for n, o in out.items() if not o.ok)
                for name in list(pending):
                    blocked = [d for d in plan.needs[name] if d in out and not out[d].ok]
                    if halted or blocked:
                        why = (f"not started: --fail-fast after '{halted[0]}' failed" if halted
                               else f"not started: it needs '{blocked[0]}', which did not start")
                        out[name] = ServerOutcome(name, skipped=why, requested=name in plan.requested)
                        pending.remove(name)
                        on_event(name, "skipped")
                    elif all(d in out for d in plan.needs[name]):
                        pending.remove(name)
                        thread = threading.Thread(target=run, args=(name,), name=f"gpuops-start-{name}", daemon=True)
                        running[name] = thread
                        on_event(name, "starting")
                        thread.start()
                if not pending and not running:
                    break
                if halted and stop_one is not None:
                    break
                changed.wait(0.2)  # short: Ctrl-C is seen at once
        if halted and stop_one is not None:
            _stop_the_rest(plan, out, running, changed, stop_one, halted[0], pending, on_event)
    except KeyboardInterrupt:
        starting = sorted(set(running) | {n for n, o in out.items() if o.result is None and not o.skipped
                                          and o.error is None})
        waiting = f"; not started: {', '.join(pending)}" if pending else ""
        raise Interrupted(f"stopped watching; still starting: {', '.join(starting) or 'none'} (they keep running)"
                          f"{waiting}",
                          hint="`inv start-server --all` (or --server NAME) watches them again, "
                               "`inv status` shows them, `inv stop-server --all` stops them") from None
    return GroupResult([out[n] for n in plan.order if n in out], time.monotonic() - began)


def _stop_the_rest(plan: Plan, out: dict[str, ServerOutcome], running: dict[str, threading.Thread],
                   changed: threading.Condition, stop_one: Callable[[str], None], first: str,
                   pending: list[str], on_event: Event) -> None:
    """--fail-fast: stop what this run started (still starting or ready), dependents first; skip the rest."""
    why = f"stopped: --fail-fast after '{first}' failed"
    for name in pending:
        out[name] = ServerOutcome(name, skipped=f"not started: --fail-fast after '{first}' failed",
                                  requested=name in plan.requested)
        on_event(name, "skipped")
    pending.clear()
    for name in reversed(plan.order):
        with changed:
            done = out.get(name)
        if name in running or (done is not None and done.ok and done.result and not done.result.already_running):
            stop_one(name)
    with changed:
        while running:
            changed.wait(0.2)
    for name in plan.order:
        o = out.get(name)
        if o is not None and name != first and not o.skipped and (o.result is None or not o.result.already_running):
            if o.ok or (o.error is not None and "was stopped" in o.error.message):
                if o.ok:  # it was said to be ready
                    on_event(name, "stopped")
                o.stopped = why


def stop_order(names: Iterable[str], recipes: Recipes | None) -> list[str]:
    """Stop order: a server before the ones it needs (the reverse of a start); otherwise as given.

    >>> from gpuops.server.recipes import parse_recipes
    >>> r = parse_recipes("## Server: model\\n```bash\\nm\\n```\\n## Server: app\\nneeds: model\\n```bash\\na\\n```\\n")
    >>> stop_order(["model", "app", "old"], r)
    ['app', 'model', 'old']
    """
    left = list(dict.fromkeys(names))
    if recipes is None:
        return left

    def needed(name: str) -> bool:  # by a server not stopped yet
        return any(name in recipes.servers[other].needs for other in left if other in recipes.servers)

    order = []
    while left:
        name = next((n for n in left if not needed(n)), left[0])  # left[0]: a cycle, which a start refuses
        order.append(name)
        left.remove(name)
    return order


def still_needed(stopping: Iterable[str], running: Iterable[str], recipes: Recipes | None, *,
                 restart: bool = False) -> list[str]:
    """Notes for servers that keep running but need one being stopped (or restarted)."""
    if recipes is None:
        return []
    stopping, notes = set(stopping), []
    for name in running:
        recipe = recipes.servers.get(name)
        if recipe is None or name in stopping:
            continue
        for dep in recipe.needs:
            if dep in stopping and restart:
                notes.append(f"note: '{name}' needs '{dep}' and keeps running: requests to '{dep}' fail while "
                             "it restarts")
            elif dep in stopping:
                notes.append(f"note: '{name}' needs '{dep}' and keeps running: it cannot reach '{dep}' until "
                             f"that runs again (`inv start-server --server {dep}`)")
    return notes


def follow_servers(records: list, write: Write, *, run_dir) -> None:
    """`tail -f` several servers' logs at once, each line prefixed with its server's name, until Ctrl-C
    (returns) or until all have exited; a crash is said at once, and raised once none is left to follow."""
    from gpuops.errors import StartupFailed
    from gpuops.server.start import follow_server

    width = max(len(r.name) for r in records)
    guard = threading.Lock()
    crashed: list[GpuopsError] = []

    def one(rec) -> None:
        def line(text: str) -> None:
            with guard:
                write(f"{rec.name:<{width}} | {text}")

        try:
            follow_server(rec, line, run_dir=run_dir)
        except GpuopsError as err:
            crashed.append(err)
            line(f"error: {err.message}")

    threads = [threading.Thread(target=one, args=(r,), name=f"gpuops-follow-{r.name}", daemon=True) for r in records]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.1)
    except KeyboardInterrupt:
        with guard:
            write(f"stopped following; {', '.join(r.name for r in records)} keep running: "
                  "`inv stop-server --all` stops them")
        return
    if crashed:
        raise StartupFailed(f"{len(crashed)} server(s) exited while being followed",
                            details=[e.message for e in crashed], hint=crashed[0].hint)
