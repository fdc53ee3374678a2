"""GPUs: the one NVML seam, the inventory, which GPUs a command needs, freeing them, rendering.

    nvml.py         the only code that talks to pynvml (tests fake it here and nowhere else)
    inventory.py    GPUs and their processes as plain data; busy checks; freeing; release waits
    select.py       which GPUs a command needs (CUDA_VISIBLE_DEVICES, tensor/pipeline parallel flags)
    render.py       the `inv gpus` table and its JSON
    model_files.py  model files a command names (for the ready banner)
"""
