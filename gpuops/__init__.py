"""gpuops: Invoke tasks for the daily life of a GPU inference dev server.

    inv start-server     # read AGENTS.local.md, preflight, launch detached, watch until ready
    inv status           # what is running, where, since when
    inv stop-server      # stop the whole process tree, verify the port (and GPUs) are free
"""

__version__ = "0.1.0"
