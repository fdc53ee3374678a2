"""`python -m gpuops start-server` — the same as the `gpuops` console script."""

from gpuops.cli import main

main()
