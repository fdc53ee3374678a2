"""The `gpuops` console script: the same task collection as `inv`, usable outside the repo, and on
remote hosts with `-H`.

    gpuops --list
    gpuops start-server --agents-file ~/work/AGENTS.local.md --no-follow
    gpuops -H gpu1 install                  # this gpuops into ~/.gpuops/venv on gpu1 (docs/remote.md)
    gpuops -H gpu1,gpu2 status              # each host's servers in one table

`-H` is a core flag, like Fabric's: the task runs on each named host over SSH (gpuops/cli/remote.py);
without it (and without gpuops.hosts in the config) everything runs here, and Fabric is never imported.
"""

import os

from invoke import Argument, Collection, Program

from gpuops import __version__
from gpuops.cli import ns
from gpuops.cli.remote import install


def _namespace() -> Collection:
    coll = Collection()
    for task in ns.tasks.values():
        coll.add_task(task)
    coll.add_task(install)
    coll.configure({"gpuops": ns.configuration().get("gpuops", {})})
    return coll


class GpuopsProgram(Program):
    """Invoke's Program plus `-H/--hosts`: the parsed tasks go to the hosts instead of the executor."""

    def core_args(self):
        return [*super().core_args(), Argument(
            names=("hosts", "H"),
            help="Run the task on these hosts over SSH, in parallel: ~/.ssh/config aliases, user@host:port, "
                 "groups of gpuops.groups, 'all' (gpuops.hosts) or 'local' (see docs/remote.md)."),
            Argument(names=("on-host",), kind=bool, default=False,
                     help="With -H: load-test runs Locust on the host itself (its report is copied back) "
                          "instead of here through an SSH tunnel.")]

    def hosts_spec(self):
        """The -H value, else gpuops.hosts from the config; None: run here."""
        given = self.args.hosts.value
        if given:
            return given
        if os.environ.get("GPUOPS_LOCAL"):  # we are the remote side of a gpuops -H: never hop again
            return None
        # the collection's defaults are merged only when a task runs: before that, invoke.yaml and env only
        return (self.config.get("gpuops") or {}).get("hosts") or None

    def execute(self) -> None:
        spec = self.hosts_spec()
        if spec is None or not self.tasks:
            return super().execute()
        from gpuops.hosts.hosts import is_local

        if is_local(spec):
            return super().execute()
        from gpuops.cli.remote import run_remote

        run_remote(self.tasks, self.config, spec, on_host=bool(self.args["on-host"].value))


program = GpuopsProgram(namespace=_namespace(), version=__version__, name="gpuops", binary="gpuops")


def main() -> None:
    program.run()
