"""Talking to a running server: smoke requests, profiler captures, Locust load tests.

    smoke.py      `inv smoke`: one real request, its answer, tokens, TTFT
    profile.py    `inv profile`: server-side PyTorch profiles per engine flavour
    traces.py     trace-file summaries (kernels, operators, steps)
    loadtest/     `inv load-test`: Locust runs measured with vLLM's metric definitions
"""
