"""Simulated PyTorch profiler output: a decode loop of a small transformer, in Kineto's Chrome-trace shape.

    >>> trace = make_trace(num_steps=3, seed=0)
    >>> sorted(trace)[:4]
    ['baseTimeNanoseconds', 'cuda_runtime_version', 'deviceProperties', 'displayTimeUnit']
    >>> sorted({e["cat"] for e in trace["traceEvents"] if e["ph"] == "X"})
    ['cpu_op', 'cuda_runtime', 'gpu_memcpy', 'kernel', 'user_annotation']
    >>> generator_trace_name(0, 0, 1763806500123)
    'generator-0-0.1763806500123.pt.trace.json'

Each step (`ProfilerStep#N`) copies the input to the GPU, runs an embedding, LAYERS transformer layers
(norm, QKV GEMM, flash attention, output GEMM, residual add, norm, up GEMM, SiLU, mul, down GEMM,
add), the LM head and an argmax, copies the token back and synchronises. CPU operators nest like
aten's (aten::linear > aten::t, aten::mm), each kernel is launched by a cudaLaunchKernel runtime
event with a flow arrow to it, and kernels queue on one stream. Base durations are drawn per name
from a seeded generator, so summaries rank names the same way every time for a given seed.
`make_trace` is pure; the write_* functions do the file I/O.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LAYERS = 4
GPU_PID, STREAM = 0, 7  # Kineto puts device 0 in pid 0 and stream 7 in tid 7
DEFAULT_PID = 4242
DEFAULT_START_US = 1_763_806_500_000_000.0  # a fixed epoch so the default trace is deterministic

_GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize{}_warpgroupsize{}_execute_segment_k_{}_kernel__5x_cublas"
_EW = "void at::native::vectorized_elementwise_kernel<4, {f}, at::detail::Array<char*, {n}> >(int, {f}, at::detail::Array<char*, {n}>)"
_SILU = ("at::native::(anonymous namespace)::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::"
         "{lambda()#5}::operator()() const::{lambda(c10::BFloat16)#1}")
_ARGMAX = "at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, long, 4, 4>"

# kernel key -> (name as Kineto records it, category, nominal microseconds on an H100 at small batch)
KERNELS: dict[str, tuple[str, str, float]] = {
    "gemm_qkv": (_GEMM.format("64x128x64", "1x1x1", "off"), "kernel", 18.0),
    "gemm_o": (_GEMM.format("64x64x64", "1x1x1", "off"), "kernel", 9.0),
    "gemm_up": (_GEMM.format("128x128x64", "1x1x1", "off"), "kernel", 30.0),
    "gemm_down": (_GEMM.format("64x128x64", "1x1x1", "on"), "kernel", 16.0),
    "gemm_lm_head": (_GEMM.format("128x256x64", "2x1x1", "off"), "kernel", 60.0),
    "flash_attn": ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, "
                   "cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t> >, false, true, "
                   "false, false, true, true, false, false>(flash::Flash_fwd_params)", "kernel", 22.0),
    "layer_norm": ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"
                   "(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, "
                   "c10::BFloat16*)", "kernel", 4.0),
    "add": (_EW.format(f="at::native::CUDAFunctor_add<c10::BFloat16>", n=3), "kernel", 3.0),
    "mul": (_EW.format(f="at::native::binary_internal::MulFunctor<c10::BFloat16>", n=3), "kernel", 3.0),
    "silu": (_EW.format(f=_SILU, n=2), "kernel", 3.5),
    "index_select": ("void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, "
                     "2, 2, -2, true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>, "
                     "at::cuda::detail::TensorInfo<c10::BFloat16 const, unsigned int>, "
                     "at::cuda::detail::TensorInfo<long const, unsigned int>, int, int, unsigned int, unsigned int, "
                     "long)", "kernel", 3.0),
    "argmax": (f"void at::native::reduce_kernel<512, 1, {_ARGMAX}>({_ARGMAX})", "kernel", 8.0),
    "memcpy_htod": ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", 2.0),
    "memcpy_dtoh": ("Memcpy DtoH (Device -> Pinned)", "gpu_memcpy", 2.5),
}


@dataclass(frozen=True)
class Op:
    """A CPU operator: it either launches one kernel (or copy) itself or calls nested operators."""

    name: str
    kernel: str | None = None
    children: tuple[Op, ...] = ()


def _linear(gemm: str) -> Op:
    return Op("aten::linear", children=(Op("aten::t"), Op("aten::mm", gemm)))


_NORM = Op("aten::layer_norm", children=(Op("aten::native_layer_norm", "layer_norm"),))
LAYER: tuple[Op, ...] = (
    _NORM,
    _linear("gemm_qkv"),
    Op("aten::_scaled_dot_product_flash_attention", children=(Op("aten::_flash_attention_forward", "flash_attn"),)),
    _linear("gemm_o"),
    Op("aten::add", "add"),
    _NORM,
    _linear("gemm_up"),
    Op("aten::silu", "silu"),
    Op("aten::mul", "mul"),
    _linear("gemm_down"),
    Op("aten::add", "add"),
)
STEP_HEAD = (Op("aten::copy_", "memcpy_htod"), Op("aten::embedding", children=(Op("aten::index_select", "index_select"),)))
STEP_TAIL = (_linear("gemm_lm_head"), Op("aten::argmax", "argmax"),
             Op("aten::to", children=(Op("aten::_to_copy", children=(Op("aten::copy_", "memcpy_dtoh"),)),)))

DEVICE = {"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85031714816, "computeMajor": 9,
          "computeMinor": 0, "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048,
          "regsPerBlock": 65536, "warpSize": 32, "sharedMemPerBlock": 49152, "numSms": 132,
          "sharedMemPerMultiprocessor": 233472}


class _TraceBuilder:
    def __init__(self, rng: random.Random, pid: int, tid: int, start_us: float):
        self.rng, self.pid, self.tid = rng, pid, tid
        self.events: list[dict] = []
        self.cpu = start_us  # the Python thread's clock
        self.gpu = start_us  # when the stream is free again
        self.correlation = 0
        self.external = 0
        # Deterministic per name: the same seed ranks kernels and operators the same way every time.
        self.kernel_us = {key: nominal * rng.uniform(0.7, 1.3) for key, (_, _, nominal) in sorted(KERNELS.items())}
        self.op_us: dict[str, float] = {}

    def _jitter(self) -> float:
        return min(1.25, max(0.8, self.rng.gauss(1.0, 0.06)))

    def _overhead(self, name: str) -> float:
        if name not in self.op_us:
            self.op_us[name] = self.rng.uniform(2.0, 9.0)
        return self.op_us[name] * self._jitter()

    def cpu_event(self, name: str, cat: str, ts: float, dur: float, **args) -> None:
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": self.pid, "tid": self.tid,
                            "ts": round(ts, 3), "dur": round(dur, 3), "args": args})

    def launch(self, key: str) -> None:
        """A runtime call on the CPU, the kernel (or copy) it queues on the stream, and the arrow between."""
        name, cat, _ = KERNELS[key]
        self.correlation += 1
        corr = self.correlation
        runtime = "cudaMemcpyAsync" if cat == "gpu_memcpy" else "cudaLaunchKernel"
        call_dur = self.rng.uniform(3.0, 6.0)
        self.cpu_event(runtime, "cuda_runtime", self.cpu, call_dur, **{"External id": self.external, "cbid": 211,
                                                                      "correlation": corr})
        self.events.append({"ph": "s", "id": corr, "pid": self.pid, "tid": self.tid, "ts": round(self.cpu, 3),
                            "cat": "ac2g", "name": "ac2g"})
        start = max(self.gpu, self.cpu + call_dur + 2.0)
        dur = self.kernel_us[key] * self._jitter()
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": GPU_PID, "tid": STREAM,
                            "ts": round(start, 3), "dur": round(dur, 3),
                            "args": {"External id": self.external, "queued": 0, "device": 0, "context": 1,
                                     "stream": STREAM, "correlation": corr, "registers per thread": 128,
                                     "shared memory": 0, "grid": [132, 1, 1], "block": [256, 1, 1]}})
        self.events.append({"ph": "f", "id": corr, "pid": GPU_PID, "tid": STREAM, "ts": round(start, 3),
                            "cat": "ac2g", "name": "ac2g", "bp": "e"})
        self.gpu = start + dur
        self.cpu += call_dur

    def op(self, op: Op) -> None:
        self.external += 1
        ext = self.external
        begin = self.cpu
        self.cpu += self._overhead(op.name)
        if op.kernel:
            self.launch(op.kernel)
        for child in op.children:
            self.op(child)
        self.cpu += self._overhead(op.name) / 3
        self.cpu_event(op.name, "cpu_op", begin, self.cpu - begin,
                       **{"External id": ext, "Record function id": 0, "Ev Idx": ext - 1})

    def synchronize(self) -> None:
        begin = self.cpu
        self.cpu = max(self.cpu + 2.0, self.gpu + 1.5)
        self.cpu_event("cudaStreamSynchronize", "cuda_runtime", begin, self.cpu - begin,
                       **{"External id": self.external, "cbid": 131, "correlation": 0})


def make_trace(num_steps: int, seed: int = 0, *, pid: int = DEFAULT_PID, tid: int | None = None,
               start_us: float = DEFAULT_START_US, with_stack: bool = False, rank: int = 0,
               world_size: int = 1, trace_name: str = "") -> dict:
    """A Kineto-shaped trace of `num_steps` decode steps; same arguments, same trace."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    tid = pid if tid is None else tid
    b = _TraceBuilder(random.Random(seed), pid, tid, start_us)
    for step in range(1, num_steps + 1):
        step_begin = b.cpu
        for op in STEP_HEAD:
            b.op(op)
        for layer in range(LAYERS):
            layer_begin = b.cpu
            for op in LAYER:
                b.op(op)
            if with_stack:
                b.cpu_event(f"demo_model.py(118): forward (layer {layer})", "python_function", layer_begin,
                            b.cpu - layer_begin, **{"Python id": step * 100 + layer, "Python thread": 0})
        for op in STEP_TAIL:
            b.op(op)
        b.synchronize()
        b.cpu_event(f"ProfilerStep#{step}", "user_annotation", step_begin, b.cpu - step_begin,
                    **{"External id": 0, "Record function id": 0})
        if with_stack:
            b.cpu_event("demo_model.py(212): forward", "python_function", step_begin, b.cpu - step_begin,
                        **{"Python id": step * 100, "Python thread": 0})
        b.cpu += b.rng.uniform(40.0, 90.0)  # the scheduler's Python between steps: the GPU idles
    end = max(b.cpu, b.gpu)
    meta = [
        {"name": "process_name", "ph": "M", "ts": start_us, "pid": pid, "tid": 0, "args": {"name": "python"}},
        {"name": "process_labels", "ph": "M", "ts": start_us, "pid": pid, "tid": 0, "args": {"labels": "CPU"}},
        {"name": "thread_name", "ph": "M", "ts": start_us, "pid": pid, "tid": tid,
         "args": {"name": f"thread {tid} (python)"}},
        {"name": "process_name", "ph": "M", "ts": start_us, "pid": GPU_PID, "tid": 0, "args": {"name": "GPU 0"}},
        {"name": "process_labels", "ph": "M", "ts": start_us, "pid": GPU_PID, "tid": 0,
         "args": {"labels": f"GPU {DEVICE['name']}"}},
        {"name": "thread_name", "ph": "M", "ts": start_us, "pid": GPU_PID, "tid": STREAM,
         "args": {"name": f"stream {STREAM}"}},
    ]
    marks = [
        {"name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g", "pid": "Traces", "tid": "PyTorch Profiler",
         "ts": start_us},
        {"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "", "ts": round(end + 10.0, 3)},
    ]
    return {
        "schemaVersion": 1,
        "deviceProperties": [DEVICE],
        "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": world_size},
        "cuda_runtime_version": 12040,
        "displayTimeUnit": "ms",
        "baseTimeNanoseconds": int(start_us * 1000) - 100_000_000_000,
        "traceEvents": meta + b.events + marks,
        "traceName": trace_name,
        "simulatedBy": "gpuops.demo (no GPU ran; the timings are made up)",
    }


# ---------------------------------------------------------------- names


def generator_trace_name(generator: int, index: int, ts_ms: int) -> str:
    """Fireworks-style per-generator trace file name."""
    return f"generator-{generator}-{index}.{ts_ms}.pt.trace.json"


def vllm_trace_name(hostname: str, pid: int, ts_ns: int) -> str:
    """What torch.profiler.tensorboard_trace_handler(use_gzip=True) names a file: worker_name.time_ns."""
    return f"{hostname}_{pid}.{ts_ns}.pt.trace.json.gz"


# ---------------------------------------------------------------- I/O


def write_growing(files: dict[Path, str], seconds: float, pieces: int = 5,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Write every file in `pieces` appends spread over `seconds`, all files side by side, so their sizes
    grow for a while before they settle (as a real profiler's exporter does). Never overwrites a file."""
    handles = {path: open(path, "x", encoding="utf-8") for path in files}  # noqa: SIM115 - closed below
    try:
        for k in range(pieces):
            for path, text in files.items():
                size = -(-len(text) // pieces)
                handles[path].write(text[k * size:(k + 1) * size])
                handles[path].flush()
            if k < pieces - 1:
                sleep(seconds / (pieces - 1))
    finally:
        for handle in handles.values():
            handle.close()


def write_gzip(path: Path, trace: dict) -> None:
    with open(path, "xb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        gz.write(json.dumps(trace).encode())
