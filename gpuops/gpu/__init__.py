"""GPUs: the one NVML seam, the inventory, which GPUs a command needs, freeing them, rendering.

    nvml.py         the only code that talks to pynvml (tests fake `nvml.open_nvml` and nothing else)
    inventory.py    GPUs and their processes as plain data, read from NVML; busy checks
    select.py       which GPUs a command needs (CUDA_VISIBLE_DEVICES, tensor/pipeline parallel flags)
    free.py         refuse busy GPUs, decide who may be stopped, stop them, wait for NVML's release
    render.py       the `inv gpus` table, its JSON, the banner's GPU lines
    model_files.py  model files a command names (for the ready banner)

Imports go one way: nvml <- inventory <- select, free, render (tests/unit/test_gpu_imports.py).

    from gpuops.gpu.inventory import inventory
    from gpuops.gpu.free import check_gpus_free
    check_gpus_free(inventory(), [0, 1], busy_mib=300)      # GpusBusy (exit 5) when another process holds one
"""
