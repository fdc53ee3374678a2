from gpuops.cli import ns  # noqa: F401  (Invoke finds the collection here)
