"""The demo's deliberate failures: an OOM crash's text, a hang, and every-Nth-request errors.

    >>> errors = ErrorSchedule(every=3)
    >>> [errors.next_fails() for _ in range(6)]
    [False, False, True, False, False, True]
    >>> OOM_TRACEBACK.splitlines()[-1][:43]
    'torch.OutOfMemoryError: CUDA out of memory.'
"""

from __future__ import annotations

import time

# What PyTorch prints when a weight allocation fails while vLLM loads a model. The frames are
# simulated (the demo imports no torch); the last line is word for word what torch writes.
OOM_TRACEBACK = """\
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/vllm/model_executor/model_loader/default_loader.py", line 269, in load_weights
    loaded_weights = model.load_weights(self.get_all_weights(model_config, model))
  File "/opt/venv/lib/python3.11/site-packages/vllm/model_executor/models/llama.py", line 585, in load_weights
    return loader.load_weights(weights)
  File "/opt/venv/lib/python3.11/site-packages/vllm/model_executor/models/utils.py", line 291, in load_weights
    autoloaded_weights = set(self._load_module("", self.module, weights))
  File "/opt/venv/lib/python3.11/site-packages/vllm/model_executor/layers/linear.py", line 1224, in weight_loader
    param_data.copy_(loaded_weight)
  File "/opt/venv/lib/python3.11/site-packages/torch/utils/_device.py", line 104, in __torch_function__
    return func(*args, **kwargs)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB \
of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB memory in use. Of the allocated \
memory 76.41 GiB is allocated by PyTorch, and 1.09 GiB is reserved by PyTorch but unallocated. If reserved but \
unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  \
See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""


class ErrorSchedule:
    """Decides which generation requests fail: the every-th, 2*every-th, ... (never when every is 0)."""

    def __init__(self, every: int):
        self.every = every
        self.count = 0

    def next_fails(self) -> bool:
        self.count += 1
        return self.every > 0 and self.count % self.every == 0


def hang_forever(sleep=time.sleep) -> None:
    """Print nothing, serve nothing, never return; the default SIGTERM action still ends the process."""
    while True:
        sleep(3600)
