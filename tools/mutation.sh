#!/usr/bin/env bash
# Mutation testing (docs/development.md, "Mutation testing"): mutmut changes one thing at a time in a copy
# of the code (mutants/, git-ignored) and runs the fast unit tests that cover it ([tool.mutmut] in
# pyproject.toml); a mutant the tests do not notice "survives".
#
#   tools/mutation.sh                          # procs, state, watch, recipes' masking, loadtest metrics
#   tools/mutation.sh 'gpuops.server.procs.*'  # one module (or any mutant-name glob)
#   .venv/bin/mutmut show NAME                 # the diff of one mutant; `mutmut results` lists survivors
#
# MUTATION_JOBS (default 2) mutants at a time, under `nice`. Not part of CI's default run (minutes).
#
# It runs in a PID namespace of its own (`unshare`): procs.py's mutants decide which processes get
# signalled, and one that widens the choice (`os.getpgid(p.pid) != pgid` in group_members) would have
# stop_processes SIGKILL every process it can see; in the namespace that is only this run. Without a
# namespace (no root, no user namespaces) the script refuses to run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GPUOPS_MUTATION_SANDBOX:-}" ]; then
    export GPUOPS_MUTATION_SANDBOX=1
    for userns in "" "--user --map-root-user"; do
        # shellcheck disable=SC2086
        if unshare $userns --pid --fork --mount-proc true 2>/dev/null; then
            exec unshare $userns --pid --fork --mount-proc --kill-child "$0" "$@"
        fi
    done
    echo "tools/mutation.sh: cannot make a PID namespace (unshare --pid): refusing to run mutants that" \
         "signal processes outside one (see docs/development.md, Mutation testing)" >&2
    exit 2
fi
bin=${VENV:-.venv}/bin
if [ "$#" -eq 0 ]; then
    set -- 'gpuops.server.procs.*' 'gpuops.server.state.*' 'gpuops.server.watch.*' \
        'gpuops.probes.loadtest.metrics.*' \
        'gpuops.server.recipes.x_is_secret_*' 'gpuops.server.recipes.x__dq_*' 'gpuops.server.recipes.x__tick_end*' \
        'gpuops.server.recipes.x__close*' 'gpuops.server.recipes.x__shell_tokens*' 'gpuops.server.recipes.x__quote*' \
        'gpuops.server.recipes.x__secret_value*' 'gpuops.server.recipes.x__is_script*' \
        'gpuops.server.recipes.x__mask_*' 'gpuops.server.recipes.x__adjacent_run*' 'gpuops.server.recipes.x__found*' \
        'gpuops.server.recipes.x__userinfo*' 'gpuops.server.recipes.x__finish*' 'gpuops.server.recipes.x_mask_*' \
        'gpuops.server.recipes.xǁServerRecipeǁdisplay*'
fi
nice -n 10 "$bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" "$@"
"$bin/mutmut" results
