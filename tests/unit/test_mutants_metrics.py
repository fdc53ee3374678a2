"""Tests that kill surviving mutants (docs/development.md, "Mutation testing"): metric definitions.

Percentiles, TPOT, goodput / SLO share and the run summary's token counts, each pinned to its
definition (gpuops/probes/loadtest/metrics.py's module docstring).
"""

from __future__ import annotations

import pytest

from gpuops.probes.loadtest import metrics


def test_percentile_refuses_no_values_and_q_outside_0_to_100_with_the_reason():
    with pytest.raises(ValueError, match=r"^percentile of no values$"):
        metrics.percentile([], 50)
    for q in (-0.5, 100.5, 101):
        with pytest.raises(ValueError, match=r"^q must be within 0\.\.100$"):
            metrics.percentile([1.0, 2.0], q)


def test_an_e2el_target_is_met_by_a_request_within_it():
    record = {"ttft_ms": 90, "e2el_ms": 1000, "output_tokens": 51}
    assert metrics.meets_slo(record, {"e2el": 1500})
    assert metrics.meets_slo(record, {"e2el": 1000})  # at the target is within it
    assert not metrics.meets_slo(record, {"e2el": 999})
    assert not metrics.meets_slo({"ttft_ms": 90, "output_tokens": 51}, {"e2el": 1500})  # no E2EL: not met


def test_a_one_token_answer_skips_only_the_tpot_target_not_the_ones_after_it():
    one_token = {"ttft_ms": 90, "e2el_ms": 95, "output_tokens": 1}
    assert not metrics.meets_slo(one_token, {"tpot": 1.0, "ttft": 50})
    assert not metrics.meets_slo(one_token, {"tpot": 1.0, "e2el": 50})
    assert metrics.meets_slo(one_token, {"tpot": 1.0, "ttft": 100, "e2el": 100})


def _ok(start, *, out, prompt, ttft=100.0, e2el=300.0, **extra):
    return {"start": start, "end": start + e2el / 1000, "ok": True, "ttft_ms": ttft, "e2el_ms": e2el, "itl_ms": [],
            "output_tokens": out, "prompt_tokens": prompt, "tokens_from": "usage", **extra}


def test_token_totals_count_a_missing_count_as_none_and_means_divide_by_completed():
    records = [_ok(0.0, out=10, prompt=30), _ok(0.1, out=None, prompt=None), _ok(0.2, out=0, prompt=0),
               _ok(0.3, out=20, prompt=6)]
    s = metrics.summarize(records)
    assert (s["total_output_tokens"], s["total_input_tokens"]) == (30, 36)
    assert s["mean_output_tokens"] == pytest.approx(30 / 4)
    assert s["mean_input_tokens"] == pytest.approx(36 / 4)
    assert s["output_throughput"] == pytest.approx(30 / s["duration"])
    assert s["total_token_throughput"] == pytest.approx(66 / s["duration"])


def test_failures_without_a_reason_or_kind_count_as_unknown():
    failed = {"start": 0.0, "end": 0.5, "ok": False, "error": None, "error_kind": None}
    s = metrics.summarize([failed, dict(failed, error="", error_kind="")])
    assert s["failure_reasons"] == {"unknown": 2}
    assert s["failure_kinds"] == {"unknown": 2}


def test_without_slo_goodput_is_there_and_none():
    s = metrics.summarize([_ok(0.0, out=10, prompt=3)])
    assert "goodput_completed" in s and s["goodput_completed"] is None
    assert "request_goodput" in s and s["request_goodput"] is None and s["slo"] is None
    s = metrics.summarize([_ok(0.0, out=10, prompt=3)], slo={"ttft": None})  # a target not given is no SLO
    assert s["slo"] is None and s["goodput_completed"] is None


def test_goodput_divides_the_requests_within_every_slo_by_the_duration():
    records = [_ok(0.0, out=10, prompt=3, ttft=50.0), _ok(1.0, out=10, prompt=3, ttft=150.0),
               _ok(2.0, out=10, prompt=3, ttft=80.0, e2el=1000.0)]
    s = metrics.summarize(records, slo={"ttft": 100})
    assert s["duration"] == pytest.approx(3.0)
    assert s["goodput_completed"] == 2 and s["request_goodput"] == pytest.approx(2 / 3.0)


def test_slo_share_is_over_the_requests_that_ended_failed_ones_missing():
    records = [_ok(0.0, out=10, prompt=3, ttft=50.0), _ok(0.0, out=10, prompt=3, ttft=150.0),
               {"ok": False, "ttft_ms": 10.0, "e2el_ms": 20.0, "output_tokens": 5},  # failed: misses every SLO
               _ok(0.0, out=10, prompt=3, ttft=10.0, cancelled=True)]  # cut off: not counted at all
    assert metrics.slo_share(records, {"ttft": 100.0}) == pytest.approx(1 / 3)
    assert metrics.slo_share(records[:1], {"ttft": 100.0}) == 1.0
    assert metrics.slo_share(records[1:2], {"ttft": 100.0}) == 0.0
    assert metrics.slo_share(records[3:], {"ttft": 100.0}) is None
    assert metrics.slo_share([], {"ttft": 100.0}) is None
