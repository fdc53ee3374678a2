"""The load test's pure parts: statistics, schedules, prompts, stream parsing, flags (table-driven)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from gpuops.errors import UsageError
from gpuops.probes.loadtest import metrics, options, prompts, report
from gpuops.probes.loadtest.arrivals import ArrivalSchedule, due_count
from gpuops.probes.openai import (
    DONE,
    StreamFormatError,
    chunk_text,
    error_message,
    parse_sse_line,
    request_body,
    usage_tokens,
)

# ---------------------------------------------------------------- percentiles


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4, 5], 50, 3.0),
        ([1, 2, 3, 4, 5], 90, 4.6),
        ([1, 2, 3, 4, 5], 0, 1.0),
        ([1, 2, 3, 4, 5], 100, 5.0),
        ([10, 20], 50, 15.0),
        ([7], 99, 7.0),
        (list(range(1, 101)), 99, 99.01),
        (list(range(1, 101)), 95, 95.05),
    ],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    assert metrics.percentile(sorted(values), q) == pytest.approx(expected)


def test_percentiles_match_numpy_on_irregular_data():
    rng = random.Random(7)
    data = sorted(rng.lognormvariate(3, 1) for _ in range(997))
    for q in (50, 90, 95, 99):
        assert metrics.percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        metrics.percentile([], 50)


def test_describe_gives_every_statistic_and_none_when_empty():
    stats = metrics.describe([4.0, 1.0, 3.0, 2.0])
    assert stats == {"mean": 2.5, "median": 2.5, "std": pytest.approx(np.std([1, 2, 3, 4])), "p90": pytest.approx(3.7),
                     "p95": pytest.approx(3.85), "p99": pytest.approx(3.97), "max": 4.0}
    assert metrics.describe([]) == {k: None for k in metrics.STATS}


# ---------------------------------------------------------------- per request


@pytest.mark.parametrize(
    ("e2el", "ttft", "tokens", "expected"),
    [
        (1100.0, 100.0, 51, 20.0),  # 50 gaps after the first token
        (300.0, 100.0, 2, 200.0),
        (100.0, 100.0, 1, None),  # one token: no decode time to divide
        (500.0, None, 10, None),  # not streamed: no TTFT
        (500.0, 100.0, None, None),
        (500.0, 100.0, 0, None),
    ],
)
def test_tpot_follows_vllm_definition(e2el, ttft, tokens, expected):
    assert metrics.tpot_ms(e2el, ttft, tokens) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("record", "slo", "good"),
    [
        ({"ttft_ms": 90, "e2el_ms": 1090, "output_tokens": 51}, {"ttft": 100}, True),
        ({"ttft_ms": 110, "e2el_ms": 1090, "output_tokens": 51}, {"ttft": 100}, False),
        ({"ttft_ms": 90, "e2el_ms": 1090, "output_tokens": 51}, {"tpot": 19.0}, False),  # tpot = 20
        ({"ttft_ms": 90, "e2el_ms": 1090, "output_tokens": 51}, {"tpot": 20.0, "ttft": 90}, True),
        ({"ttft_ms": 90, "e2el_ms": 95, "output_tokens": 1}, {"tpot": 1.0}, True),  # no TPOT to miss
        ({"ttft_ms": None, "e2el_ms": 95, "output_tokens": 5}, {"ttft": 100}, False),
        ({"ttft_ms": 90, "e2el_ms": 2000, "output_tokens": 51}, {"e2el": 1500}, False),
    ],
)
def test_slo_needs_every_target_met(record, slo, good):
    assert metrics.meets_slo(record, slo) is good


# ---------------------------------------------------------------- the run


def _rec(i, start, ttft, itls, tokens, *, ok=True, prompt=10, error=None, kind=None, cancelled=False,
         due=None, lag=None, tokens_from="usage", e2el=None, worker=0, **extra):
    if e2el is None:
        e2el = ttft + sum(itls) if ttft is not None else 50.0
    return {"id": f"w{worker}-{i}", "worker": worker, "start": start, "end": start + e2el / 1000.0, "ok": ok,
            "cancelled": cancelled, "error": error, "error_kind": kind, "ttft_ms": ttft, "e2el_ms": e2el,
            "itl_ms": list(itls), "output_tokens": tokens, "prompt_tokens": prompt, "tokens_from": tokens_from,
            "due": due, "lag_ms": lag, **extra}


def test_summary_counts_tokens_throughput_and_latency_from_raw_values():
    records = [
        _rec(1, 100.0, 100.0, [20.0] * 9, 10),  # e2el 280 ms
        _rec(2, 100.5, 120.0, [30.0] * 9, 10, prompt=20),  # e2el 390 ms, ends at 100.89
        _rec(3, 101.0, 80.0, [10.0] * 19, 20, tokens_from="chunks"),  # e2el 270 ms, ends at 101.27
        _rec(4, 101.5, None, [], None, ok=False, error="HTTP 500: boom", kind="http"),  # ends at 101.55
        _rec(5, 101.6, None, [], None, ok=False, error="HTTP 500: boom", kind="http"),
        _rec(6, 101.7, None, [], None, ok=False, error="connection refused", kind="connect"),  # ends 101.75
        _rec(7, 101.8, 100.0, [20.0], 2, ok=False, cancelled=True),  # left out
    ]
    s = metrics.summarize(records)
    assert (s["completed"], s["failed"], s["cancelled"]) == (3, 3, 1)
    assert s["duration"] == pytest.approx(101.75 - 100.0)
    assert s["total_output_tokens"] == 40
    assert s["total_input_tokens"] == 40
    assert s["request_throughput"] == pytest.approx(3 / 1.75)
    assert s["output_throughput"] == pytest.approx(40 / 1.75)
    assert s["total_token_throughput"] == pytest.approx(80 / 1.75)
    assert s["median_ttft_ms"] == 100.0
    assert s["max_ttft_ms"] == 120.0
    assert s["mean_tpot_ms"] == pytest.approx((20.0 + 30.0 + 10.0) / 3)
    # ITL pools every gap of every request: 9 x 20, 9 x 30, 19 x 10
    itls = [20.0] * 9 + [30.0] * 9 + [10.0] * 19
    assert s["mean_itl_ms"] == pytest.approx(np.mean(itls))
    assert s["p99_itl_ms"] == pytest.approx(np.percentile(itls, 99))
    assert s["median_e2el_ms"] == pytest.approx(280.0)
    assert s["failure_reasons"] == {"HTTP 500: boom": 2, "connection refused": 1}
    assert s["failure_kinds"] == {"http": 2, "connect": 1}
    assert s["usage_missing"] == 1
    assert s["request_goodput"] is None
    assert s["scheduled"] == 0 and s["fell_behind"] is None


def test_summary_goodput_counts_requests_meeting_every_slo():
    records = [_rec(1, 0.0, 100.0, [20.0] * 9, 10), _rec(2, 0.0, 300.0, [20.0] * 9, 10),
               _rec(3, 0.0, 100.0, [50.0] * 9, 10)]
    s = metrics.summarize(records, slo={"ttft": 200, "tpot": 25})
    assert s["goodput_completed"] == 1
    assert s["request_goodput"] == pytest.approx(1 / s["duration"])
    assert s["slo"] == {"ttft": 200.0, "tpot": 25.0}


def test_summary_lines_of_a_run_where_no_request_succeeded_say_so_without_crashing():
    records = [_rec(i, 100.0 + i * 0.1, None, [], None, ok=False, error="no response before the request timeout",
                    kind="timeout") for i in range(5)]
    s = metrics.summarize(records)
    assert s["completed"] == 0 and s["output_throughput"] == 0.0 and s["mean_output_tokens"] is None
    lines = report.summary_lines({**s, "partial": True, "status_reason": "the server went away"})
    text = "\n".join(lines)
    assert "requests: 0 completed, 5 failed" in text
    assert "NO REQUEST SUCCEEDED" in text and "failed: 5 x no response before the request timeout" in text
    assert "tokens:" not in text and "TTFT" not in text  # nothing measured: no empty table, no token line
    assert lines[-1] == "PARTIAL RESULTS: the server went away"


def test_summary_of_no_records_has_no_throughput():
    s = metrics.summarize([])
    assert s["completed"] == 0 and s["duration"] == 0.0
    assert s["request_throughput"] is None and s["median_ttft_ms"] is None


@pytest.mark.parametrize(
    ("lags", "fell_behind", "late"),
    [
        ([0.5] * 100, False, 0),
        ([0.5] * 96 + [200.0] * 4, False, 4),  # 4% late: within the allowance
        ([0.5] * 90 + [200.0] * 10, True, 10),
        ([metrics.LATE_MS] * 50, False, 0),  # exactly at the threshold is on time
    ],
)
def test_send_lag_flags_a_client_that_fell_behind(lags, fell_behind, late):
    records = [_rec(i, float(i), 100.0, [20.0], 2, due=float(i), lag=lag) for i, lag in enumerate(lags)]
    s = metrics.summarize(records)
    assert s["scheduled"] == len(lags)
    assert s["late_requests"] == late
    assert s["fell_behind"] is fell_behind
    assert s["max_send_lag_ms"] == max(lags)
    # TTFT from the due time adds the lag: what a user arriving on schedule waited
    assert s["max_ttft_from_due_ms"] == pytest.approx(100.0 + max(lags))


def test_requests_due_but_never_sent_count_as_late():
    # 10 due by the schedule, 4 sent on time: the 6 never sent (every user busy) are the coordinated omission
    records = [_rec(i, float(i), 100.0, [20.0], 2, due=float(i), lag=1.0) for i in range(4)]
    s = metrics.summarize(records, due=10)
    assert (s["scheduled"], s["sent"], s["never_sent"]) == (10, 4, 6)
    assert s["late_requests"] == 6 and s["late_fraction"] == pytest.approx(0.6)
    assert s["fell_behind"] is True
    assert s["median_send_lag_ms"] == 1.0  # the lag of those sent; the unsent have none to show
    # a request cut off at the end was still sent: it is not "never sent"
    cut = _rec(9, 9.0, None, [], None, ok=False, cancelled=True, due=9.0, lag=2.0)
    assert metrics.summarize(records + [cut], due=5)["never_sent"] == 0
    assert metrics.summarize(records)["never_sent"] == 0  # closed loop or unknown schedule: only what was sent


def test_due_count_is_what_the_worker_schedule_draws():
    for kwargs in ({"rate": 7.0, "arrival": "poisson", "seed": 3}, {"rate": 5.0, "arrival": "constant", "seed": 0}):
        for worker in (0, 1):
            s = ArrivalSchedule(**kwargs, worker=worker, workers=2, end_s=4.0)
            drawn = list(iter(s.next_due, None))
            assert due_count(**kwargs, worker=worker, workers=2, end_s=4.0) == len(drawn)
            # stopped early at 2.5 s: only those due before then
            assert due_count(**kwargs, worker=worker, workers=2, end_s=4.0, until_s=2.5) == sum(
                1 for d in drawn if d < 2.5)
    assert due_count(5.0, "constant", 0, until_s=1.0) == 5  # open-ended (web UI): up to the stop
    with pytest.raises(ValueError):
        due_count(5.0, "constant", 0)


def test_peak_in_flight_counts_overlapping_requests_per_process():
    records = [_rec(1, 0.0, 100.0, [], 1, e2el=1000.0), _rec(2, 0.5, 100.0, [], 1, e2el=1000.0),
               _rec(3, 1.0, 100.0, [], 1, e2el=1000.0),  # starts as the first ends: the freed user is reused
               _rec(4, 0.6, 100.0, [], 1, e2el=300.0, worker=1)]
    total, per_worker = metrics.peak_in_flight(records)
    assert total == 3 and per_worker == {0: 2, 1: 1}


@pytest.mark.parametrize(
    ("users", "spawn_rate", "client_bound", "overlap", "late_dues", "cause"),
    [
        (2, 2.0, False, 2, [5.0], "all 2 users were busy at once: in --qps mode --users caps the requests in flight"),
        (1, 1.0, False, 1, [5.0], "the only user was busy at once"),
        (8, 1.0, False, 2, [0.5, 1.0, 2.0], "users were still being started (--spawn-rate 1 starts 8 users over 8 s)"),
        (8, 8.0, True, 2, [5.0], "the load generator was saturated"),
        (8, 8.0, False, 2, [5.0], "users were free and it was not saturated"),
    ],
)
def test_behind_cause_names_what_held_the_schedule_back(users, spawn_rate, client_bound, overlap, late_dues, cause):
    records = [_rec(i, 0.0, 100.0, [], 1, e2el=1000.0, due=0.0, lag=0.0) for i in range(overlap)]
    records += [_rec(10 + i, due + 0.2, 100.0, [], 1, due=due, lag=200.0) for i, due in enumerate(late_dues)]
    summary = {"client": {"client_bound": client_bound}}
    assert cause in metrics.behind_cause(summary, records, users=users, spawn_rate=spawn_rate)


@pytest.mark.parametrize(
    ("summary", "stream", "seconds"),
    [
        ({}, True, metrics.STALL_FIRST_S),  # nothing finished yet: no usual wait to go by
        ({"median_ttft_ms": 100.0, "median_e2el_ms": 1300.0}, True, metrics.STALL_MIN_S),
        ({"median_ttft_ms": 8000.0, "median_e2el_ms": 60000.0}, True, 24.0),  # a long prefill: 3 x TTFT
        ({"median_ttft_ms": None, "median_e2el_ms": 20000.0}, False, 60.0),  # not streamed: 3 x E2EL
    ],
)
def test_a_stall_is_silence_longer_than_a_few_usual_waits(summary, stream, seconds):
    assert metrics.stall_after_s(summary, stream) == pytest.approx(seconds)


def test_requests_cut_off_after_a_long_silence_are_a_stall_unless_the_server_was_still_answering():
    def cut(i, start, e2el_ms, silent_ms, how="end"):
        return _rec(i, start, None, [], None, ok=False, cancelled=True, e2el=e2el_ms, cut=how, silent_ms=silent_ms)

    done = _rec(1, 0.0, 100.0, [20.0], 2)  # answered at 0.12 s, then nothing
    silent = [cut(2, 0.1, 45000.0, 45000.0), cut(3, 5.0, 40100.0, 40100.0)]  # both cut at 45.1 s
    assert [r["id"] for r in metrics.silent_cut_offs([done, *silent], 30.0)] == ["w0-2", "w0-3"]
    # one still streaming until the cut: the server was alive, the other was only queued behind it
    streaming = cut(4, 0.0, 45100.0, 20.0)
    assert metrics.silent_cut_offs([done, *silent, streaming], 30.0) == []
    # an answer 10 s before the cut: alive too
    late = _rec(5, 35.0, 100.0, [20.0], 2)
    assert metrics.silent_cut_offs([done, *silent, late], 30.0) == []
    # cut off because the run was stopped early (Ctrl-C, a lost server): not this rule's business
    assert metrics.silent_cut_offs([done, cut(6, 0.1, 45000.0, 45000.0, how="stop")], 30.0) == []


def test_client_load_flags_a_saturated_or_lagging_worker_and_skips_startup_and_idle_samples():
    def sample(w, t, cpu, lag=1.0, users=4):
        return {"worker": w, "t": t, "cpu": cpu, "loop_lag_ms": lag, "users": users}

    samples = [sample(0, 0, 100.0), sample(0, 1, 40.0), sample(0, 2, 50.0), sample(0, 3, 100.0, users=0),
               sample(1, 0, 10.0), sample(1, 1, 97.0), sample(1, 2, 95.0),
               sample(2, 0, 10.0), sample(2, 1, 20.0, lag=45.0), sample(2, 2, 20.0, lag=45.0)]
    load = metrics.client_load(samples)
    assert load["workers"][0]["cpu_mean"] == pytest.approx(45.0)  # startup (100) and idle (users=0) left out
    assert load["workers"][1]["cpu_mean"] == pytest.approx(96.0)
    assert load["client_bound"] is True
    reasons = " ".join(load["client_bound_reasons"])
    assert "process 1" in reasons and "96%" in reasons
    assert "process 2" in reasons and "late" in reasons
    assert "process 0" not in reasons


def test_client_load_of_a_light_client_is_not_client_bound():
    samples = [{"worker": 0, "t": t, "cpu": 20.0, "loop_lag_ms": 2.0, "users": 4} for t in range(5)]
    assert metrics.client_load(samples)["client_bound"] is False


def test_client_load_leaves_out_the_stop_where_locust_writes_its_reports():
    samples = [{"worker": 0, "t": t, "cpu": 20.0, "loop_lag_ms": 1.0, "users": 2} for t in range(4)]
    samples.append({"worker": 0, "t": 4, "cpu": 90.0, "loop_lag_ms": 117.0, "users": 2, "stopping": True})
    load = metrics.client_load(samples)
    assert load["client_bound"] is False
    assert load["workers"][0]["loop_lag_max_ms"] == 1.0 and load["workers"][0]["samples"] == 3


def test_time_series_places_tokens_at_their_chunk_times():
    # one request: first token at 0.5 s, then 4 chunks every 0.5 s (tokens at 0.5, 1.0, 1.5, 2.0, 2.5)
    r = _rec(1, 10.0, 500.0, [500.0] * 4, 10)
    series = metrics.time_series([r], bin_s=1.0)
    bins = series["bins"]
    assert [b["width_s"] for b in bins] == pytest.approx([1.0, 1.0, 0.5])  # the run ends half-way into bin 3
    tokens = [b["output_throughput"] * b["width_s"] for b in bins]
    assert tokens == pytest.approx([2.0, 4.0, 4.0])  # 2 tokens per chunk
    assert [b["completed"] for b in bins] == [0, 0, 1]
    assert bins[2]["p50_ttft_ms"] == 500.0


def test_time_series_last_bin_rate_divides_by_the_part_of_it_the_run_covered():
    # a steady 10 tokens/s (one token every 0.1 s) for 2.6 s: the last bin is 0.6 s long, not 1 s
    r = _rec(1, 0.0, 100.0, [100.0] * 25, 26)
    bins = metrics.time_series([r], bin_s=1.0)["bins"]
    assert [b["width_s"] for b in bins] == pytest.approx([1.0, 1.0, 0.6])
    assert bins[-1]["output_throughput"] == pytest.approx(10.0, rel=0.2)  # not a false drop to 6 tok/s
    # a sliver under half a bin joins the bin before it, instead of being a noisy bin of its own
    r = _rec(1, 0.0, 100.0, [100.0] * 21, 22)  # 2.2 s
    bins = metrics.time_series([r], bin_s=1.0)["bins"]
    assert [b["width_s"] for b in bins] == pytest.approx([1.0, 1.2])
    assert bins[-1]["output_throughput"] == pytest.approx(10.0, rel=0.2)


def test_read_records_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n" + '{"a": 3, "b"')
    assert metrics.read_records(path) == [{"a": 1}, {"a": 2}]


def test_sweep_row_keeps_the_headline_numbers():
    s = metrics.summarize([_rec(1, 0.0, 100.0, [20.0] * 9, 10)])
    row = metrics.sweep_row(8, s, {"client_bound": True})
    assert row["level"] == 8 and row["median_ttft_ms"] == 100.0 and row["client_bound"] is True


# ---------------------------------------------------------------- arrivals


def test_constant_arrivals_are_evenly_spaced_and_end():
    s = ArrivalSchedule(4.0, "constant", seed=0, end_s=1.0)
    assert [s.next_due() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, None]


def test_constant_arrivals_interleave_across_workers():
    dues = []
    for w in range(2):
        s = ArrivalSchedule(10.0, "constant", seed=0, worker=w, workers=2, end_s=1.0)
        dues += [d for d in iter(s.next_due, None)]
    assert sorted(dues) == pytest.approx([i / 10 for i in range(10)])


def test_poisson_arrivals_have_the_asked_rate_and_repeat_with_the_seed():
    def dues(seed, worker=0, workers=1):
        s = ArrivalSchedule(50.0, "poisson", seed=seed, worker=worker, workers=workers, end_s=200.0)
        return list(iter(s.next_due, None))

    first = dues(3)
    assert first == dues(3)
    assert first != dues(4)
    assert len(first) / 200.0 == pytest.approx(50.0, rel=0.05)
    gaps = np.diff(first)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential gaps: CV = 1
    split = dues(3, 0, 2) + dues(3, 1, 2)
    assert len(split) / 200.0 == pytest.approx(50.0, rel=0.05)


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": 1, "arrival": "burst"}, {"rate": 1, "worker": 2, "workers": 2}])
def test_arrival_schedule_refuses_nonsense(kwargs):
    args = {"rate": 1.0, "arrival": "poisson", "seed": 0} | kwargs
    with pytest.raises(ValueError):
        ArrivalSchedule(**args)


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("n", [1, 2, 17, 128, 5000])
def test_prompts_have_the_asked_word_count_with_the_salt_first(n):
    base = prompts.base_words(seed=1)
    salted = prompts.build_prompt(base, n, salt="abc-0-1")
    assert len(salted.split()) == n
    assert salted.split()[0] == "abc-0-1"
    assert len(prompts.build_prompt(base, n, salt=None).split()) == n


def test_salted_prompts_differ_from_the_first_word_and_shared_ones_are_identical():
    base = prompts.base_words(seed=1)
    a = prompts.build_prompt(base, 64, prompts.salt("run1", 0, 1))
    b = prompts.build_prompt(base, 64, prompts.salt("run1", 0, 2))
    c = prompts.build_prompt(base, 64, prompts.salt("run1", 1, 1))
    assert len({a.split()[0], b.split()[0], c.split()[0]}) == 3
    assert a.split()[1:] == b.split()[1:]  # the seed fixes the body
    assert prompts.build_prompt(base, 64, None) == prompts.build_prompt(base, 64, None)
    assert prompts.base_words(seed=1) != prompts.base_words(seed=2)


# ---------------------------------------------------------------- OpenAI stream


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'data: {"choices": []}\n', {"choices": []}),
        (b'data:{"x":1}\r\n', {"x": 1}),
        (b"data: [DONE]\n", DONE),
        (b"\n", None),
        (b": keep-alive\n", None),
        (b"event: message\n", None),
        (b"data: \n", None),
    ],
)
def test_sse_lines_parse_to_json_done_or_nothing(line, expected):
    assert parse_sse_line(line) is expected if expected is DONE else parse_sse_line(line) == expected


def test_malformed_sse_data_is_a_stream_format_error():
    with pytest.raises(StreamFormatError):
        parse_sse_line(b"data: {not json\n")


@pytest.mark.parametrize(
    ("chunk", "text"),
    [
        ({"choices": [{"text": "Hi"}]}, "Hi"),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, ""),  # chat's opening role delta
        ({"choices": [{"delta": {"role": "assistant"}}]}, ""),
        ({"choices": [{"delta": {"content": " there"}}]}, " there"),
        ({"choices": [{"delta": {"content": None, "reasoning_content": "hmm"}}]}, "hmm"),
        ({"choices": [], "usage": {"completion_tokens": 3}}, ""),  # the usage chunk
        ({"choices": [{"text": ""}]}, ""),
        ({"choices": [{"message": {"content": "whole"}}]}, "whole"),
        ({}, ""),
    ],
)
def test_chunk_text_counts_only_generated_text(chunk, text):
    assert chunk_text(chunk) == text


def test_usage_and_error_events_are_read():
    assert usage_tokens({"usage": {"prompt_tokens": 5, "completion_tokens": 7}}) == (5, 7)
    assert usage_tokens({"choices": []}) == (None, None)
    assert error_message({"error": {"message": "overloaded"}}) == "overloaded"
    assert error_message({"choices": []}) is None


@pytest.mark.parametrize(
    ("api", "stream", "ignore_eos", "expected"),
    [
        ("completion", True, True, {"model": "m", "max_tokens": 8, "stream": True,
                                    "stream_options": {"include_usage": True}, "ignore_eos": True, "prompt": "p q"}),
        ("chat", True, False, {"model": "m", "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True},
                               "messages": [{"role": "user", "content": "p q"}]}),
        ("completion", False, False, {"model": "m", "max_tokens": 8, "stream": False, "prompt": "p q"}),
    ],
)
def test_request_body_asks_for_usage_when_streaming(api, stream, ignore_eos, expected):
    assert request_body(api, "m", "p q", max_tokens=8, stream=stream, ignore_eos=ignore_eos) == expected


# ---------------------------------------------------------------- flags


def test_recipe_flags_parse_and_the_command_line_wins():
    recipe = options.parse_flag_words(["--users", "4", "--run-time=20s", "--no-stream", "--chat", "--max-tokens", "32"],
                                      source="AGENTS.local.md")
    opts = options.build_options(options.merge(recipe, {"users": "8", "stream": True}))
    assert (opts.users, opts.run_time_s, opts.stream, opts.api, opts.max_tokens) == (8, 20, True, "chat", 32)
    assert opts.spawn_rate == 8.0  # all users at once unless told otherwise


def test_defaults_differ_in_qps_mode():
    assert options.build_options({}).users == options.DEFAULT_USERS
    opts = options.build_options(options.merge({}, {"qps": "2.5"}))
    assert opts.mode == "qps" and opts.users == options.DEFAULT_QPS_USERS and opts.qps == 2.5


def test_the_blocks_closed_loop_users_do_not_cap_a_qps_run_asked_for_on_the_command_line():
    block = options.parse_flag_words(["--users", "4", "--spawn-rate", "4", "--run-time", "20s"], source="AGENTS.local.md")
    opts = options.build_options(options.merge(block, {"qps": "8"}))
    assert (opts.users, opts.spawn_rate, opts.run_time_s) == (options.DEFAULT_QPS_USERS, 64.0, 20)
    opts = options.build_options(options.merge(block, {"qps": "8", "users": "16"}))  # the command line's own cap
    assert (opts.users, opts.spawn_rate) == (16, 16.0)
    # a block that gives --qps itself meant its --users as the cap
    qps_block = options.parse_flag_words(["--qps", "2", "--users", "4"], source="AGENTS.local.md")
    assert options.build_options(options.merge(qps_block, {})).users == 4
    assert options.build_options(options.merge(qps_block, {"qps": "3"})).users == options.DEFAULT_QPS_USERS


def test_flags_the_block_sets_can_be_turned_off_on_the_command_line():
    block = options.parse_flag_words(["--qps", "4", "--arrival", "constant", "--sweep", "1,2", "--shared-prefix",
                                      "--slo-ttft-ms", "200", "--slo-tpot-ms", "20", "--users", "3"],
                                     source="AGENTS.local.md")
    opts = options.build_options(options.merge(block, {"qps": "off", "sweep": "off", "shared_prefix": False,
                                                       "slo_ttft_ms": "off", "slo_tpot_ms": "0"}))
    assert opts.mode == "users" and opts.qps is None and opts.sweep == () and opts.shared_prefix is False
    assert opts.slo == {} and opts.users == 3  # closed loop again: the block's --users applies
    assert options.build_options(options.merge(block, {"slo_tpot_ms": "OFF"})).slo == {"ttft": 200.0}
    assert options.parse_flag_words(["--no-shared-prefix"], source="x") == {"shared_prefix": (False, "x")}
    with pytest.raises(UsageError, match="--arrival only applies with --qps"):  # given on the command line: a mistake
        options.build_options(options.merge(block, {"qps": "off", "arrival": "poisson"}))


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--userz", "4"], "unknown load-test flag '--userz'"),
        (["4"], "unexpected word '4'"),
        (["--users"], "--users needs a value"),
        (["--no-stream=1"], "takes no value"),
    ],
)
def test_bad_recipe_words_name_the_file(words, message):
    with pytest.raises(UsageError) as err:
        options.parse_flag_words(words, source="AGENTS.local.md")
    assert message in err.value.message and err.value.message.startswith("AGENTS.local.md")
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"users": "0"}, "--users '0': must be between 1"),
        ({"users": "many"}, "--users 'many': must be a whole number"),
        ({"users": "2.5"}, "whole number"),
        ({"spawn_rate": "-1"}, "--spawn-rate '-1': must be a number > 0"),
        ({"run_time": "ten"}, "--run-time 'ten': must be a duration"),
        ({"run_time": "0s"}, "--run-time '0s'"),
        ({"prompt_tokens": "0"}, "--prompt-tokens '0'"),
        ({"max_tokens": "x"}, "--max-tokens 'x'"),
        ({"qps": "0"}, "--qps '0'"),
        ({"qps": "nan"}, "--qps 'nan'"),
        ({"qps": "1", "arrival": "bursty"}, "--arrival 'bursty': must be one of: poisson, constant"),
        ({"arrival": "constant"}, "--arrival only applies with --qps"),
        ({"workers": "0"}, "--workers '0'"),
        ({"seed": "-3"}, "--seed '-3'"),
        ({"sweep": "1,two"}, "--sweep '1,two'"),
        ({"sweep": "1,2.5"}, "user counts"),
        ({"sweep": "1,1"}, "twice"),
        ({"sweep": ","}, "--sweep ','"),
        ({"slo_ttft_ms": "-5"}, "--slo-ttft-ms '-5'"),
        ({"slo_ttft_ms": "of"}, "--slo-ttft-ms 'of'"),
        ({"url": "localhost:8000"}, "--url 'localhost:8000': must be an http://"),
        ({"url": "http://h:99999"}, "bad port"),
        ({"model": " "}, "--model"),
        ({"stream": False, "slo_tpot_ms": "50"}, "need streamed answers"),
        ({"web": True, "sweep": "1,2"}, "--web and --sweep"),
        ({"web": True, "detach": True}, "--web and --detach"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(cli, message):
    with pytest.raises(UsageError) as err:
        options.build_options(options.merge({}, cli))
    assert message in err.value.message
    assert err.value.exit_code == 2


def test_a_bad_recipe_value_says_where_it_came_from():
    recipe = options.parse_flag_words(["--users", "lots"], source="AGENTS.local.md")
    with pytest.raises(UsageError, match=r"--users 'lots' \(from AGENTS.local.md\)"):
        options.build_options(options.merge(recipe, {}))


def test_qps_sweep_takes_rates_and_levels_set_users_or_rate():
    opts = options.build_options(options.merge({}, {"qps": "1", "sweep": "0.5, 2,4"}))
    assert opts.sweep == (0.5, 2.0, 4.0)
    assert opts.at_level(2.0).qps == 2.0 and opts.at_level(2.0).sweep == ()
    users = options.build_options(options.merge({}, {"sweep": "1,8"}))
    assert users.at_level(8).users == 8 and users.at_level(8).spawn_rate == 8.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("1h1m1s", 3661), ("", None), ("5x", None),
     ("1.5s", None)],
)
def test_timespans(text, seconds):
    assert options.parse_timespan(text) == seconds


@pytest.mark.parametrize(
    ("url", "normal"),
    [("http://127.0.0.1:8000", "http://127.0.0.1:8000"), ("http://h:8000/", "http://h:8000"),
     ("http://h:8000/v1", "http://h:8000"), ("https://api.example/v1/", "https://api.example"),
     ("http://h/prefix", "http://h/prefix")],
)
def test_urls_are_normalized_to_the_server_root(url, normal):
    assert options.normalize_url(url) == normal


@pytest.mark.parametrize(
    ("reason", "key"),
    [
        ("HTTP 500: simulated error (request 17; every 3th)", "HTTP 500: simulated error (request N; every Nth)"),
        ("HTTP 400: bad id 3f9a2c4b1d7e5a6b", "HTTP 400: bad id …"),
        ("connection lost after 12 chunk(s): HTTPParseError", "connection lost after N chunk(s): HTTPParseError"),
        ("connection refused", "connection refused"),
    ],
)
def test_failure_reasons_group_alike_messages(reason, key):
    assert metrics.reason_key(reason) == key


def test_summary_groups_failures_that_differ_only_in_numbers():
    records = [_rec(i, float(i), None, [], None, ok=False, error=f"HTTP 500: boom in request {i}", kind="http")
               for i in range(3)]
    assert metrics.summarize(records)["failure_reasons"] == {"HTTP 500: boom in request N": 3}


# ---------------------------------------------------------------- settings: every load-test flag from config

LOAD_BLOCK = "## Server\n\n```bash\npython -m gpuops.demo --port 9\n```\n\n## Load test\n\n```bash\n{flags}\n```\n"

# setting key -> (environment values, what the options then hold); one entry per load-test row
FROM_CONFIG = {
    "load_users": ({"LOAD_USERS": "7"}, {"users": 7, "spawn_rate": 7.0}),
    "load_spawn_rate": ({"LOAD_SPAWN_RATE": "2.5"}, {"spawn_rate": 2.5}),
    "load_run_time": ({"LOAD_RUN_TIME": "1m30s"}, {"run_time_s": 90}),
    "load_prompt_tokens": ({"LOAD_PROMPT_TOKENS": "40"}, {"prompt_tokens": 40}),
    "load_max_tokens": ({"LOAD_MAX_TOKENS": "12"}, {"max_tokens": 12}),
    "load_stream": ({"LOAD_STREAM": "false"}, {"stream": False}),
    "load_chat": ({"LOAD_CHAT": "true"}, {"api": "chat"}),
    "load_qps": ({"LOAD_QPS": "3"}, {"qps": 3.0, "mode": "qps"}),
    "load_arrival": ({"LOAD_ARRIVAL": "constant", "LOAD_QPS": "2"}, {"arrival": "constant"}),
    "load_seed": ({"LOAD_SEED": "5"}, {"seed": 5}),
    "load_workers": ({"LOAD_WORKERS": "3"}, {"workers": 3}),
    "load_sweep": ({"LOAD_SWEEP": "1,2"}, {"sweep": (1.0, 2.0)}),
    "load_detach": ({"LOAD_DETACH": "yes"}, {"detach": True}),
    "load_web": ({"LOAD_WEB": "1"}, {"web": True}),
    "load_shared_prefix": ({"LOAD_SHARED_PREFIX": "true"}, {"shared_prefix": True}),
    "load_slo_ttft_ms": ({"LOAD_SLO_TTFT_MS": "500"}, {"slo_ttft_ms": 500.0}),
    "load_slo_tpot_ms": ({"LOAD_SLO_TPOT_MS": "50"}, {"slo_tpot_ms": 50.0}),
    "load_slo_e2el_ms": ({"LOAD_SLO_E2EL_MS": "900"}, {"slo_e2el_ms": 900.0}),
    "load_request_timeout": ({"LOAD_REQUEST_TIMEOUT": "20"}, {"request_timeout": 20.0}),
    "load_out": ({"LOAD_OUT": "reports/x"}, {"out": "reports/x"}),
    "load_warmup": ({"LOAD_WARMUP": "5s"}, {"warmup_s": 5}),
    "load_cooldown": ({"LOAD_COOLDOWN": "3"}, {"cooldown_s": 3}),
    "load_find_max": ({"LOAD_FIND_MAX": "true", "LOAD_SLO_TTFT_MS": "100"}, {"find_max": True}),
    "load_slo_quantile": ({"LOAD_SLO_QUANTILE": "95"}, {"slo_quantile": 0.95}),
    "load_locustfile": ({"LOAD_LOCUSTFILE": "other.md"}, {"locustfile": "other.md"}),
    "load_tokenizer": ({"LOAD_TOKENIZER": "tok/"}, {"tokenizer": "tok/"}),
    "load_dataset": ({"LOAD_DATASET": "builtin"}, {"dataset": "builtin"}),
    "load_max_prompts": ({"LOAD_MAX_PROMPTS": "50", "LOAD_DATASET": "builtin"}, {"max_prompts": 50}),
    "load_dataset_min_tokens": ({"LOAD_DATASET_MIN_TOKENS": "4", "LOAD_DATASET": "builtin"}, {"dataset_min_tokens": 4}),
    "load_dataset_max_tokens": ({"LOAD_DATASET_MAX_TOKENS": "400", "LOAD_DATASET": "builtin"}, {"dataset_max_tokens": 400}),
    "load_shared_prefix_tokens": ({"LOAD_SHARED_PREFIX_TOKENS": "32"}, {"shared_prefix_tokens": 32}),
    "load_shared_prefix_share": ({"LOAD_SHARED_PREFIX_SHARE": "0.5", "LOAD_SHARED_PREFIX_TOKENS": "32"},
                                 {"shared_prefix_share": 0.5}),
    "load_turns": ({"LOAD_TURNS": "3", "LOAD_CHAT": "true"}, {"turns": 3}),
    "load_workers_on": ({"LOAD_WORKERS_ON": "gpu2,gpu3"}, {"workers_on": ("gpu2", "gpu3")}),
    "load_embeddings": ({"LOAD_EMBEDDINGS": "true"}, {"api": "embeddings"}),
    "server": ({"SERVER": "second"}, {"server": "second"}),
    "url": ({"URL": "http://gpu-box:8000/v1"}, {"url": "http://gpu-box:8000"}),
    "model": ({"MODEL": "Qwen/Qwen3-8B"}, {"model": "Qwen/Qwen3-8B"}),
    "agents_file": ({"AGENTS_FILE": "other.md"}, {"users": 9}),  # other.md's block says --users 9
    "json": ({"JSON": "true"}, {"json": True}),
}


def _load_test_rows() -> list[str]:
    from gpuops.settings import SETTINGS

    return sorted(key for key, s in SETTINGS.items() if "load-test" in s.flags)


@pytest.fixture
def captured_load_test(monkeypatch, tmp_path):
    """Run `inv load-test ARGS` in-process in an empty folder, stopping at the use case: what reached it."""
    from invoke import Program

    from gpuops.cli import ns
    from gpuops.errors import GpuopsError
    from gpuops.probes.loadtest import command

    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("INVOKE_GPUOPS_"):
            monkeypatch.delenv(name)
    seen = {}

    def use_case(cli, *, config, agents_file, run_dir, write, json=False):
        seen["opts"] = command.resolve_options(cli, config=config, agents_file=agents_file)
        seen["json"] = json
        raise GpuopsError("stopped before any load (test)")

    monkeypatch.setattr(command, "load_test", use_case)

    def run(*args: str, env: dict | None = None) -> dict:
        for name, value in (env or {}).items():
            monkeypatch.setenv(f"INVOKE_GPUOPS_{name}", value)
        seen.clear()
        with pytest.raises(SystemExit):
            Program(namespace=ns).run(["inv", "load-test", *args])
        return seen

    return run


def test_every_load_test_setting_has_a_config_case():
    assert set(_load_test_rows()) <= set(FROM_CONFIG)
    assert {"load_users", "load_run_time", "load_max_tokens", "server", "agents_file", "json"} <= set(
        _load_test_rows())


@pytest.mark.parametrize("key", sorted(FROM_CONFIG))
def test_every_load_test_flag_is_settable_from_invoke_gpuops_env(captured_load_test, tmp_path, key):
    from gpuops.settings import SETTINGS

    if key not in SETTINGS or "load-test" not in SETTINGS[key].flags:
        pytest.skip(f"no load-test row '{key}' in gpuops.settings yet")
    (tmp_path / "other.md").write_text(LOAD_BLOCK.format(flags="--users 9"))
    env, expected = FROM_CONFIG[key]

    seen = captured_load_test(env=env)

    assert seen, "the use case was not reached"
    opts = seen["opts"]
    got = {name: (seen["json"] if name == "json" else getattr(opts, name)) for name in expected}
    assert got == expected
    assert seen["json"] is (key == "json")


def test_load_test_flag_beats_config_beats_the_block_beats_the_builtin_default(captured_load_test, tmp_path):
    (tmp_path / "AGENTS.local.md").write_text(LOAD_BLOCK.format(flags="--users 2 --max-tokens 10 --run-time 5s"))

    opts = captured_load_test("--users", "4", env={"LOAD_USERS": "3", "LOAD_MAX_TOKENS": "11"})["opts"]

    assert opts.users == 4  # the flag
    assert opts.max_tokens == 11  # config over the block
    assert opts.run_time_s == 5  # the block over the built-in default
    assert opts.prompt_tokens == 128 and opts.request_timeout == 300.0  # the built-in defaults


def test_config_yes_no_settings_are_turned_off_by_their_no_flag(captured_load_test):
    opts = captured_load_test("--no-stream", "--completion", "--no-shared-prefix",
                              env={"LOAD_STREAM": "true", "LOAD_CHAT": "true", "LOAD_SHARED_PREFIX": "true"})["opts"]
    assert (opts.stream, opts.api, opts.shared_prefix) == (False, "completion", False)


def test_config_qps_is_turned_off_by_qps_off_on_the_command_line(captured_load_test):
    opts = captured_load_test("--qps", "off", env={"LOAD_QPS": "4"})["opts"]
    assert opts.mode == "users" and opts.users == options.DEFAULT_USERS


@pytest.mark.parametrize("env, words", [
    ({"LOAD_USERS": "lots"}, ["--users 'lots' (from gpuops.load_users)", "whole number"]),
    ({"LOAD_RUN_TIME": "soon"}, ["--run-time 'soon' (from gpuops.load_run_time)"]),
    ({"LOAD_STREAM": "maybe"}, ["gpuops.load_stream must be true or false"]),
    ({"LOAD_SWEEP": "1,,x"}, ["--sweep '1,,x' (from gpuops.load_sweep)"]),
])
def test_a_bad_config_value_names_the_setting(captured_load_test, capsys, env, words):
    seen = captured_load_test(env=env)
    err = capsys.readouterr().err
    assert not seen and all(w in err for w in words), err
    assert "Traceback" not in err


def test_load_test_help_shows_the_builtin_defaults_of_settings_whose_config_default_is_unset():
    from gpuops.settings import SETTINGS, help_for

    helps = help_for("load-test")
    assert SETTINGS["load_users"].default is None and "(default 4)" in helps["users"]
    assert "(default 30s)" in helps["run-time"] and "(default 300)" in helps["request-timeout"]


def test_builtin_defaults_are_the_settings_shown_defaults():
    from gpuops.settings import SETTINGS

    opts = options.build_options({})
    assert opts.users == SETTINGS["load_users"].shown
    assert opts.run_time_s == options.parse_timespan(SETTINGS["load_run_time"].shown)
    for key in ("prompt_tokens", "max_tokens", "arrival", "seed", "workers", "stream", "shared_prefix"):
        assert getattr(opts, key) == SETTINGS[f"load_{key}"].shown, key
    assert opts.request_timeout == SETTINGS["load_request_timeout"].shown


def test_both_flags_of_a_yes_no_pair_contradict_each_other():
    with pytest.raises(UsageError, match="--chat and --completion contradict"):
        options.from_command_line({"chat": True, "completion": True})


def test_charts_are_skipped_with_a_warning_without_matplotlib(monkeypatch):
    import sys

    assert report.charts_available()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not report.charts_available()
