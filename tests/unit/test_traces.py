"""Trace parsing: a hand-built trace in the shape torch.profiler (Kineto) writes, plain and gzipped."""

from __future__ import annotations

import gzip
import json

import pytest

from gpuops.errors import GpuopsError
from gpuops.probes import traces

PID, TID = 4242, 4242  # the Python process and its main thread
GPU_PID, STREAM = 0, 7  # Kineto puts device 0 in pid 0, stream 7 in tid 7

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
ELEMENTWISE = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::launch_clamp_scalar"
    "(at::TensorIteratorBase&, c10::Scalar, c10::Scalar, at::native::detail::ClampLimits)::{lambda()#1}::"
    "operator()() const::{lambda()#7}::operator()() const::{lambda(c10::BFloat16)#1}, "
    "at::detail::Array<char*, 2> >(int, at::native::(anonymous namespace)::launch_clamp_scalar, at::detail::Array<char*, 2>)"
)
MEMCPY = "Memcpy HtoD (Pageable -> Device)"


def cpu(name, ts, dur, cat="cpu_op", **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": TID, "ts": ts, "dur": dur,
            "args": {"External id": int(ts), "Record function id": 0, "Ev Idx": int(ts), **args}}


def gpu(name, ts, dur, cat="kernel", correlation=1):
    return {"ph": "X", "cat": cat, "name": name, "pid": GPU_PID, "tid": STREAM, "ts": ts, "dur": dur,
            "args": {"External id": correlation, "queued": 0, "device": 0, "context": 1, "stream": STREAM,
                     "correlation": correlation, "registers per thread": 168, "shared memory": 0,
                     "grid": [132, 1, 1], "block": [384, 1, 1], "est. achieved occupancy %": 0}}


def kineto_trace() -> dict:
    """Two profiler steps of a tiny MLP, as Kineto lays them out (microseconds, float timestamps)."""
    base = 1_763_806_500_000_000.0  # Kineto writes absolute epoch microseconds
    events = [
        {"name": "process_name", "ph": "M", "ts": base, "pid": PID, "tid": 0, "args": {"name": "python"}},
        {"name": "thread_name", "ph": "M", "ts": base, "pid": PID, "tid": TID, "args": {"name": "thread 4242 (python)"}},
        {"name": "process_name", "ph": "M", "ts": base, "pid": GPU_PID, "tid": 0, "args": {"name": "GPU 0"}},
        {"name": "thread_name", "ph": "M", "ts": base, "pid": GPU_PID, "tid": STREAM, "args": {"name": "stream 7"}},
        cpu("ProfilerStep#1", base + 0, 1000, cat="user_annotation"),
        cpu("aten::linear", base + 10, 300, **{"Input Dims": [[8, 4096], [4096, 4096], [4096]]}),
        cpu("aten::t", base + 15, 20),
        cpu("aten::addmm", base + 40, 250),
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": PID, "tid": TID,
         "ts": base + 50, "dur": 10, "args": {"External id": 40, "cbid": 211, "correlation": 1}},
        {"ph": "s", "id": 1, "pid": PID, "tid": TID, "ts": base + 50, "cat": "ac2g", "name": "ac2g"},
        {"ph": "f", "id": 1, "pid": GPU_PID, "tid": STREAM, "ts": base + 60, "cat": "ac2g", "name": "ac2g", "bp": "e"},
        cpu("aten::relu", base + 320, 50),
        cpu("aten::clamp_min", base + 330, 30),
        cpu("ProfilerStep#2", base + 1000, 900, cat="user_annotation"),
        cpu("aten::linear", base + 1010, 200),
        cpu("aten::addmm", base + 1020, 150),
        gpu(MEMCPY, base + 5, 20, cat="gpu_memcpy"),
        gpu(GEMM, base + 60, 400),
        gpu(ELEMENTWISE, base + 470, 100),
        gpu(GEMM, base + 1030, 400),
        # Kineto repeats each step mark on the GPU stream (the span of the step's kernels)
        gpu("ProfilerStep#1", base + 5, 565, cat="gpu_user_annotation"),
        gpu("ProfilerStep#2", base + 1030, 400, cat="gpu_user_annotation"),
        {"name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g", "pid": "Traces", "tid": "PyTorch Profiler",
         "ts": base},
        {"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "", "ts": base + 1900},
    ]
    return {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85031714816,
                              "computeMajor": 9, "computeMinor": 0, "numSms": 132}],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
        "cuda_runtime_version": 12040,
        "trace_id": "2F0C3A8E6D7B4C1A9E5D3B2A1C0F9E8D",
        "displayTimeUnit": "ms",
        "baseTimeNanoseconds": 1763806400000000000,
        "traceEvents": events,
        "traceName": "generator-0-0.1763806500.pt.trace.json",
    }


def write_trace(path, trace, gz: bool):
    data = json.dumps(trace).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# Expected values, worked out by hand from kineto_trace() above.
GPU_TOTAL = 800 + 100 + 20
WINDOW = 1900.0
BUSY = 20 + 400 + 100 + 400  # kernels and the memcpy never overlap here


@pytest.mark.parametrize("name,gz", [("rank0.pt.trace.json", False), ("rank0.pt.trace.json.gz", True)])
def test_summary_of_kineto_trace_file_ranks_kernels_and_operators(tmp_path, name, gz):
    s = traces.summarize_file(write_trace(tmp_path / name, kineto_trace(), gz))

    # each step once: the CPU user_annotation, not its gpu_user_annotation copy on the stream
    assert (s.files, s.steps, s.step_us, s.window_us) == (1, 2, 1900.0, WINDOW)
    gpu = s.top_gpu(10)
    assert [r.name for r in gpu] == [GEMM, ELEMENTWISE, MEMCPY]
    assert (gpu[0].count, gpu[0].total_us) == (2, 800.0)
    assert gpu[0].share == pytest.approx(800 / GPU_TOTAL)
    assert sum(r.share for r in gpu) == pytest.approx(1.0)
    assert s.gpu_busy == pytest.approx(BUSY / WINDOW)

    ops = {r.name: r for r in s.top_ops(10)}
    assert "cudaLaunchKernel" not in ops and not any(n.startswith("ProfilerStep#") for n in ops)
    assert not any(n.startswith("ProfilerStep#") for n in s.gpu)  # a step mark is not a kernel
    assert (ops["aten::linear"].count, ops["aten::linear"].total_us, ops["aten::linear"].self_us) == (2, 500.0, 80.0)
    assert ops["aten::addmm"].self_us == 400.0  # the runtime call inside it is not an operator
    assert ops["aten::relu"].self_us == 20.0 and ops["aten::clamp_min"].self_us == 30.0
    assert [r.name for r in s.top_ops(2)] == ["aten::addmm", "aten::linear"]
    assert sum(r.share for r in s.top_ops(10)) == pytest.approx(1.0)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    plain = traces.summarize_file(write_trace(tmp_path / "a.json", kineto_trace(), gz=False))
    disguised = traces.summarize_file(write_trace(tmp_path / "b.json", kineto_trace(), gz=True))
    assert disguised.gpu == plain.gpu and disguised.ops == plain.ops


def test_bare_array_form_is_read(tmp_path):
    path = write_trace(tmp_path / "array.json", kineto_trace()["traceEvents"], gz=False)
    assert traces.summarize_file(path).top_gpu(1)[0].name == GEMM


def test_files_of_several_ranks_add_up_but_steps_are_counted_per_file(tmp_path):
    one = write_trace(tmp_path / "host_1.rank0.pt.trace.json.gz", kineto_trace(), gz=True)
    two = write_trace(tmp_path / "host_1.rank1.pt.trace.json", kineto_trace(), gz=False)
    s = traces.summarize_files([one, two])
    # both ranks recorded the same 2 steps: that is 2 steps, seen by 2 files, not 4 steps
    assert (s.files, s.steps, s.step_counts, s.window_us) == (2, 2, [2, 2], WINDOW)
    assert traces.format_summary(s)[0].startswith("trace summary: 2 steps x 2 files (mean 0.95 ms), window")
    assert s.gpu[GEMM].count == 4 and s.ops["aten::linear"].self_us == 160.0
    assert s.gpu_busy == pytest.approx(BUSY / WINDOW)


@pytest.mark.parametrize(
    "content,gz",
    [
        (b'{"traceEvents": [{"ph": "X", "name": "aten::mm", "ts": 1, "du', False),  # still being written
        (b"{}", False),  # not a trace
        (b"\x1f\x8b\x08\x00garbage", False),  # gzip magic, broken stream
        (gzip.compress(b'{"traceEvents": [')[:-6], False),  # gzip cut short
        (b"[1, 2", True),
    ],
)
def test_unreadable_trace_raises_error_naming_the_file(tmp_path, content, gz):
    path = tmp_path / "broken.pt.trace.json"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(GpuopsError) as info:
        traces.summarize_file(path)
    assert str(path) in info.value.message


def test_missing_trace_file_says_so(tmp_path):
    with pytest.raises(GpuopsError, match="does not exist"):
        traces.load_trace(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "ops,expected",
    [
        # (ts, dur, name) -> {name: (count, total, self)}
        ([(0, 10, "a")], {"a": (1, 10, 10)}),
        ([(0, 10, "a"), (2, 3, "b"), (6, 2, "c")], {"a": (1, 10, 5), "b": (1, 3, 3), "c": (1, 2, 2)}),
        # siblings that touch are not nested
        ([(0, 5, "a"), (5, 5, "b")], {"a": (1, 5, 5), "b": (1, 5, 5)}),
        # same start: the longer one is the parent
        ([(0, 4, "child"), (0, 10, "parent")], {"parent": (1, 10, 6), "child": (1, 4, 4)}),
        # three levels: only direct children count against a parent
        ([(0, 10, "a"), (1, 8, "b"), (2, 6, "c")], {"a": (1, 10, 2), "b": (1, 8, 2), "c": (1, 6, 6)}),
        # recursion of the same name
        ([(0, 10, "a"), (1, 4, "a")], {"a": (2, 14, 10)}),
        # a child that overruns its parent only counts its overlap
        ([(0, 10, "a"), (8, 5, "b")], {"a": (1, 10, 8), "b": (1, 5, 5)}),
    ],
)
def test_operator_self_time_excludes_nested_operators(ops, expected):
    got = traces._self_times([(float(t), float(d), n) for t, d, n in ops])
    assert {n: (s.count, s.total_us, s.self_us) for n, s in got.items()} == expected


@pytest.mark.parametrize(
    "intervals,length",
    [([], 0), ([(0, 5)], 5), ([(0, 5), (5, 7)], 7), ([(0, 5), (2, 3)], 5), ([(10, 12), (0, 5), (4, 6)], 8)],
)
def test_gpu_busy_time_is_union_of_intervals(intervals, length):
    assert traces._union_length(intervals) == length


@pytest.mark.parametrize(
    "event",
    [
        {"ph": "X", "cat": "kernel", "name": "k", "ts": "12.5", "dur": "3"},  # string numbers are accepted
    ],
)
def test_string_timestamps_are_accepted(event):
    assert traces.summarize_events([event]).gpu["k"].total_us == 3.0


def test_events_without_timing_or_of_other_phases_are_ignored():
    events = [
        {"ph": "X", "cat": "kernel", "name": "no-dur", "ts": 1},
        {"ph": "X", "cat": "kernel", "name": "neg", "ts": 1, "dur": -1},
        {"ph": "X", "cat": "kernel", "name": "bool", "ts": True, "dur": 1},
        {"ph": "B", "cat": "kernel", "name": "begin", "ts": 1},
        {"ph": "X", "cat": "kernel", "name": "ok", "ts": 1, "dur": 2},
    ]
    assert list(traces.summarize_events(events).gpu) == ["ok"]


@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("aten::addmm", 90, "aten::addmm"),
        (MEMCPY, 90, MEMCPY),  # short names keep their parentheses
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, float*)", 80,
         "at::native::vectorized_elementwise_kernel<4, FillFunctor<…>>(…)"),
        ("void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, 2, true>"
         "(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>, int)", 80,
         "at::native::indexSelectLargeIndex<BFloat16, long, 2, true>(…)"),
        ("void k<int, std::pair<int, long>>(x)", 20, "k<int, pair<…>>(…)"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x128x64_execute_segment_k_on_kernel__5x_cublas", 40,
         "sm90_xmma_gemm_bf16bf16_bf…el__5x_cublas"),  # cut in the middle: kernel names differ at both ends
        ("a" * 30 + "b" * 30, 10, "aaaaaa…bbb"),
    ],
)
def test_short_name_folds_long_kernel_names(name, width, expected):
    assert traces.short_name(name, width) == expected


def test_kernels_that_differ_only_near_the_end_keep_different_short_names():
    on = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x128x64_warpgroupsize1x1x1_execute_segment_k_on_kernel__5x_cublas"
    off = on.replace("_k_on_", "_k_off_")
    assert len(on) > 100 and traces.short_name(on) != traces.short_name(off)
    assert len(traces.short_name(off)) == 100


def test_format_summary_shows_top_rows_with_share_and_header(tmp_path):
    s = traces.summarize_file(write_trace(tmp_path / "t.json", kineto_trace(), gz=False))
    lines = traces.format_summary(s, top=2, width=60)
    text = "\n".join(lines)
    assert lines[0] == "trace summary: 1 file, 2 steps (mean 0.95 ms), window 1.90 ms, GPU busy 48%"
    assert f"{800 / GPU_TOTAL:.1%}" in text and "0.80 ms" in text
    assert "aten::addmm" in text and "aten::relu" not in text  # only the top 2 operators
    assert all(len(line) < 130 for line in lines)


def test_format_summary_of_cpu_only_trace_says_no_gpu():
    s = traces.summarize_events([{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5}])
    lines = traces.format_summary(s)
    assert "GPU busy" not in lines[0]
    assert any("no GPU kernels" in line for line in lines)


def step(name, dur, cat, ts=0.0):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


@pytest.mark.parametrize(
    "marks,count,total",
    [
        # (name, dur, cat) -> steps, summed step time
        ([("ProfilerStep#1", 10, "user_annotation"), ("ProfilerStep#1", 4, "gpu_user_annotation")], 1, 10.0),
        ([("ProfilerStep#1", 4, "gpu_user_annotation"), ("ProfilerStep#2", 6, "gpu_user_annotation")], 2, 10.0),
        ([("ProfilerStep#1", 10, "cpu_op"), ("ProfilerStep#1", 4, "gpu_user_annotation")], 1, 10.0),  # older torch
        ([("ProfilerStep#1", 10, "")], 1, 10.0),  # other exporters write no category
    ],
)
def test_each_step_counts_once_whichever_marks_the_trace_has(marks, count, total):
    s = traces.summarize_events([step(n, d, c) for n, d, c in marks])
    assert (s.steps, s.step_us) == (count, total)


@pytest.mark.parametrize(
    "counts,head",
    [
        ([1], "trace summary: 1 file, 1 step (mean 1.00 ms)"),
        ([3, 3], "trace summary: 3 steps x 2 files (mean 1.00 ms)"),
        ([1, 1], "trace summary: 1 step x 2 files (mean 1.00 ms)"),
        ([24, 25], "trace summary: 24-25 steps x 2 files (mean 1.00 ms)"),
        ([5, 0, 5], "trace summary: 3 files, 5 steps x 2 files (mean 1.00 ms)"),
        ([0], "trace summary: 1 file, window"),
    ],
)
def test_summary_header_gives_steps_per_file(counts, head):
    total = traces.TraceSummary()
    for n in counts:
        total.merge(traces.summarize_events([step(f"ProfilerStep#{i}", 1000, "user_annotation", ts=i * 1000)
                                             for i in range(n)]))
    assert traces.format_summary(total)[0].startswith(head)


def test_gzip_trace_size_is_its_uncompressed_size(tmp_path):
    data = json.dumps({"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": i, "dur": 1}
                                       for i in range(20_000)]}).encode()
    gz = tmp_path / "rank0.pt.trace.json.gz"
    gz.write_bytes(gzip.compress(data))
    plain = tmp_path / "rank0.pt.trace.json"
    plain.write_bytes(data)
    assert gz.stat().st_size * 10 < len(data)  # traces compress well: the size on disk says little
    assert traces.decompressed_size(gz) == len(data) == traces.decompressed_size(plain)


def test_gzip_size_is_at_least_a_few_times_its_size_on_disk(tmp_path):
    # ISIZE is the size mod 4 GiB: a trailer saying "small" must not pass a huge trace for a small one
    path = tmp_path / "wrapped.json.gz"
    path.write_bytes(gzip.compress(b"x" * 1000)[:-4] + (5).to_bytes(4, "little"))
    assert traces.decompressed_size(path) == path.stat().st_size * traces.GZIP_MIN_RATIO
