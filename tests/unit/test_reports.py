"""Load-test reports, pure parts: the steady-state window, Locust's spellings, the knee search, --compare,
the HTML page, your own locustfile's stats (table-driven, no processes)."""

from __future__ import annotations

import json
import re

import pytest

from gpuops.errors import UsageError
from gpuops.probes.loadtest import compare, findmax, htmlreport, metrics, options, userfile


def _closed_loop(users: int, spawn_rate: float, run_s: float, e2el_s: float = 0.5, tokens: int = 10) -> list[dict]:
    """Records of a closed loop: user u starts at u / spawn_rate and sends back to back until run_s."""
    records = []
    for u in range(users):
        t = u / spawn_rate
        while t < run_s:
            ttft = 0.1
            itl = [(e2el_s - ttft) / (tokens - 1) * 1000.0] * (tokens - 1)
            records.append({"start": 1000.0 + t, "end": 1000.0 + t + e2el_s, "ok": True, "ttft_ms": ttft * 1000,
                            "itl_ms": itl, "e2el_ms": e2el_s * 1000, "output_tokens": tokens, "prompt_tokens": 5})
            t += e2el_s
    return records


# ---------------------------------------------------------------- steady state


def test_a_slow_ramp_reads_low_over_the_whole_run_but_not_in_the_steady_state():
    records = _closed_loop(32, 4.0, 20.0)  # 32 users ramping at 4/s: the last starts 7.75 s in (here)
    whole = metrics.summarize(records)
    steady = metrics.steady_state(records, users=32, spawn_rate=4.0)
    true_rate = 32 / 0.5  # every user completes 2 requests a second once all run
    assert whole["request_throughput"] < 0.85 * true_rate  # the ramp drags the whole run down
    assert steady["request_throughput"] == pytest.approx(true_rate, rel=0.03)
    assert steady["output_throughput"] == pytest.approx(true_rate * 10, rel=0.03)
    assert steady["window"]["ramp_s"] == pytest.approx(7.75) and steady["window"]["ramp_from"] == "observed"


def test_warmup_and_cooldown_narrow_the_window_from_both_ends():
    records = _closed_loop(4, 4.0, 20.0)
    plain = metrics.steady_state(records, users=4, spawn_rate=4.0)["window"]
    edged = metrics.steady_state(records, users=4, spawn_rate=4.0, warmup_s=5, cooldown_s=3)["window"]
    assert edged["start_s"] == pytest.approx(plain["start_s"] + 5)
    assert edged["end_s"] == pytest.approx(plain["end_s"] - 3)


def test_a_run_shorter_than_its_edges_has_no_window_and_says_why():
    st = metrics.steady_state(_closed_loop(4, 4.0, 3.0), users=4, spawn_rate=4.0, warmup_s=10)
    assert st["window"]["empty"].startswith("the load stopped") and "completed" not in st


def test_qps_mode_takes_the_ramp_from_the_spawn_schedule():
    records = _closed_loop(2, 100.0, 10.0)
    w = metrics.steady_window(records, users=8, spawn_rate=2.0, mode="qps")
    assert w["ramp_from"] == "expected" and w["ramp_s"] == pytest.approx(3.0)  # batches of 2 at 0, 1, 2, 3 s


@pytest.mark.parametrize(("flags", "locust_s"), [
    (["--users", "4", "--run-time", "20s"], 20),                       # all at once: no second added
    (["--users", "32", "--spawn-rate", "4", "--run-time", "30s"], 37),  # the ramp does not eat --run-time
    (["--run-time", "30s", "--warmup", "5s", "--cooldown", "2"], 37),
])
def test_locust_runs_the_ramp_and_the_edges_on_top_of_run_time(flags, locust_s):
    opts = options.build_options(options.merge(options.parse_flag_words(flags, "block"), {}))
    assert opts.locust_run_time_s == locust_s


def test_the_blocks_spawn_rate_does_not_ramp_a_command_line_users():
    block = options.parse_flag_words(["--users", "4", "--spawn-rate", "4"], "block")
    assert options.build_options(options.merge(block, {"users": "32"})).spawn_rate == 32
    assert options.build_options(options.merge(block, {"users": "32", "spawn_rate": "8"})).spawn_rate == 8
    assert options.build_options(options.merge(block, {})).spawn_rate == 4


# ---------------------------------------------------------------- Locust's spellings


def test_locusts_own_command_in_the_block_means_the_same_as_gpuops_flags():
    words = "locust -u 16 -r 8 -t 1m --headless -H http://gpu-box:8000/v1 --processes 2".split()
    opts = options.build_options(options.merge(options.parse_flag_words(words, "block"), {}))
    assert (opts.users, opts.spawn_rate, opts.run_time_s, opts.url, opts.workers, opts.web) == (
        16, 8.0, 60, "http://gpu-box:8000", 2, False)


def test_with_f_the_words_gpuops_does_not_know_go_to_the_users_locustfile(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "load_test.py").write_text("")
    words = "locust -f bench/load_test.py -u 2 --tags fast slow --csv-full-history -t 5s".split()
    opts = options.build_options(options.merge(options.parse_flag_words(words, "block", base=tmp_path), {}))
    assert opts.locustfile == str(tmp_path / "bench" / "load_test.py")
    assert opts.locust_args == ("--tags", "fast", "slow", "--csv-full-history")
    assert (opts.users, opts.run_time_s) == (2, 5)


@pytest.mark.parametrize(("word", "nearest"), [("--usres", "--users"), ("--run_time", "--run-time"),
                                               ("--spawnrate", "--spawn-rate")])
def test_without_f_an_unknown_flag_is_named_with_the_nearest_gpuops_flag(word, nearest):
    with pytest.raises(UsageError, match=f"unknown load-test flag '{word}' \\(the nearest gpuops flag is {nearest}\\)"):
        options.parse_flag_words([word, "3"], "AGENTS.local.md, '## Load test' block")


def test_a_missing_locustfile_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match="locustfile .*nope.py not found"):
        options.build_options(options.merge(options.parse_flag_words(["-f", "nope.py"], "block", base=tmp_path), {}))


def test_find_max_needs_an_slo_and_no_sweep():
    with pytest.raises(UsageError, match="none is given"):
        options.build_options(options.merge({}, {"find_max": True}))
    with pytest.raises(UsageError, match="--find-max and --sweep"):
        options.build_options(options.merge({}, {"find_max": True, "slo_ttft_ms": "100", "sweep": "1,2"}))


@pytest.mark.parametrize(("given", "share"), [("0.95", 0.95), ("99", 0.99), ("99.9%", 0.999), ("1", 1.0)])
def test_slo_quantile_takes_a_fraction_or_a_percentage(given, share):
    assert options.check_value("slo_quantile", given) == pytest.approx(share)


# ---------------------------------------------------------------- the knee


@pytest.mark.parametrize(("mode", "start", "limit", "tried", "found"), [
    ("users", 1, 4, [1, 2, 4, 8, 6, 5], 4),
    ("users", 8, 2, [8, 4, 2, 3], 2),
    ("users", 4, 0, [4, 2, 1], None),
    ("qps", 1.0, 5.0, [1.0, 2.0, 4.0, 8.0, 6.0, 5.0, 5.5], 5.0),
])
def test_the_search_doubles_then_bisects_until_the_interval_is_narrow(mode, start, limit, tried, found):
    seen: list[tuple[float, bool]] = []
    while (level := findmax.next_level(mode, start, seen)) is not None:
        seen.append((level, level <= limit))
    assert [lvl for lvl, _ in seen] == tried
    assert findmax.best(seen) == found


def test_a_failed_request_misses_every_slo():
    records = [{"ok": True, "ttft_ms": 50.0, "e2el_ms": 100.0, "output_tokens": 5}] * 3 + [{"ok": False}]
    assert metrics.slo_share(records, {"ttft": 100.0}) == 0.75


# ---------------------------------------------------------------- --compare


def _report(folder, **summary):
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"mode": "users", "max_concurrency": 4, **summary}))
    return folder


def test_compare_shows_each_metric_with_its_change_and_which_way_is_better(tmp_path):
    a = _report(tmp_path / "a", median_ttft_ms=100.0, output_throughput=1000.0)
    b = _report(tmp_path / "b", median_ttft_ms=80.0, output_throughput=1100.0)
    rows = {r["metric"]: r for r in compare.compare_reports(a, b).rows}
    assert rows["median_ttft_ms"]["change_pct"] == pytest.approx(-20.0) and rows["median_ttft_ms"]["better"]
    assert rows["output_throughput"]["change_pct"] == pytest.approx(10.0) and rows["output_throughput"]["better"]
    lines = "\n".join(compare.compare_lines(compare.compare_reports(a, b)))
    assert re.search(r"median_ttft_ms\s+│\s+100.00\s+│\s+80.00\s+│\s+-20.0%\s+│ better", lines), lines


def test_compare_notes_two_runs_of_different_loads(tmp_path):
    a = _report(tmp_path / "a", median_ttft_ms=100.0)
    b = _report(tmp_path / "b", median_ttft_ms=100.0, max_concurrency=8)
    assert compare.compare_reports(a, b).notes == ["the two ran different loads: max_concurrency 4 vs 8"]


@pytest.mark.parametrize(("given", "message"), [(["only-one"], "two report folders, got 1"),
                                                (["a", "b", "c"], "two report folders, got 3")])
def test_compare_takes_exactly_two_folders(given, message):
    with pytest.raises(UsageError, match=message):
        compare.folders(given)


def test_compare_refuses_a_folder_that_is_no_report(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a load-test report"):
        compare.compare_reports(tmp_path / "empty", tmp_path / "empty")


# ---------------------------------------------------------------- the HTML page


def test_the_html_report_is_self_contained_and_draws_every_chart():
    records = _closed_loop(4, 4.0, 5.0)
    records[3].update(ok=False, error="HTTP 500: boom")
    summary = metrics.summarize(records)
    summary["steady"] = metrics.steady_state(records, users=4, spawn_rate=4.0)
    summary["target"] = {"url": "http://127.0.0.1:8000", "engine": "vllm", "model": "Qwen/Qwen3-8B"}
    summary["server"] = {"version": "0.11.0", "from": "/version"}
    page = htmlreport.run_report(summary, records, {"command": "inv load-test --users 4"})
    assert "<script" not in page and not re.search(r'(src|href)="https?:', page)  # nothing to fetch
    for chart in ("ttft-over-time", "itl-over-time", "e2el-over-time", "throughput-over-time", "ttft-histogram",
                  "itl-histogram", "e2el-histogram"):
        svg = re.search(f'<svg id="{chart}".*?</svg>', page, re.S)
        assert svg and ("<polyline" in svg.group(0) or "<rect" in svg.group(0)), chart
    for text in ("inv load-test --users 4", "0.11.0", "vllm", "Qwen/Qwen3-8B", "*_ttft_ms", "HTTP 500: boom", "request_throughput", "steady state"):
        assert text in page, text


def test_a_levels_page_marks_the_knee_on_the_latency_throughput_curve():
    rows = [{"level": lvl, "output_throughput": 100.0 * lvl, "median_ttft_ms": 50.0 * lvl,
             "p90_ttft_ms": 60.0 * lvl, "p99_ttft_ms": 70.0 * lvl} for lvl in (1, 2, 4)]
    page = htmlreport.levels_report(rows, "users", title="find-max", knee={"max_level": 2, "failed_level": 4,
                                                                            "slo_text": "TTFT <= 150 ms"})
    assert 'class="mark"' in page and "2 concurrent users" in page


# ---------------------------------------------------------------- your own locustfile


def test_locusts_stats_of_a_users_locustfile_are_summarised(tmp_path):
    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "POST,completions,40,2,110,112.5,90,300,200,13.3,0.7,110,120,120,130,140,150,200,260,300,300,300\n"
        ",Aggregated,40,2,110,112.5,90,300,200,13.3,0.7,110,120,120,130,140,150,200,260,300,300,300\n")
    (tmp_path / "locust_failures.csv").write_text("Method,Name,Error,Occurrences\nPOST,completions,HTTP 500,2\n")
    s = userfile.locust_summary(tmp_path)
    assert (s["completed"], s["failed"], s["request_throughput"]) == (38, 2, 13.3)
    assert s["failure_reasons"] == {"POST completions: HTTP 500": 2}
    text = "\n".join(userfile.summary_lines(s))
    assert "completions" in text and "260" in text and "failed: 2 x POST completions: HTTP 500" in text
