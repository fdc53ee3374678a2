from gpuops.tasks import ns  # noqa: F401  (Invoke finds the collection here)
