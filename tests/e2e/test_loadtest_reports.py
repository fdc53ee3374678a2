"""Load-test reports end to end: the steady-state window, gpuops' own HTML report opened in a real headless
browser, the knee search against a demo whose latency grows with load, --compare, and a Locust command
pasted into AGENTS.local.md running the user's own locustfile. Real demo server, real Locust, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.demo_options(load_seconds=0, ttft_ms=50, itl_ms=10, log=False)


def _report_dir(project) -> Path:
    dirs = sorted((project.run_dir / "load_tests").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_the_ramp_is_left_out_of_the_steady_state_and_does_not_eat_run_time(project, demo):
    server = demo()
    # 4 users at 2/s: Locust starts them in two batches a second apart; it runs 1 s longer than --run-time
    # so that the ramp does not eat it
    res = project.gpuops("load-test", "--url", server.url, "--users", "4", "--spawn-rate", "2", "--run-time", "3s",
                         "--max-tokens", "4", timeout=90)
    assert res.code == 0, res.text
    s = _summary(_report_dir(project))
    st, w = s["steady"], s["steady"]["window"]
    assert w["ramp_from"] == "observed" and 0.9 <= w["ramp_s"] <= 2.0, w
    assert 2.0 <= st["duration"] <= 3.6, st  # about --run-time of all 4 users running
    assert st["request_throughput"] > s["request_throughput"]  # the ramp and the drain no longer dilute it
    assert "steady state (all 4 users running," in res.out


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("chromium is missing in CI: apt-get install -y chromium")
    return found


def _ink(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    """How many pixels of a screenshot have (about) this colour."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int((np.abs(pixels - np.array(rgb)) <= tol).all(axis=-1).sum())


def test_the_html_report_opens_offline_in_a_real_browser_with_its_charts_drawn(project, demo, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium to open the report (apt-get install -y chromium)")
    server = demo(env={"GPUOPS_DEMO_ERROR_EVERY": "5"})
    res = project.gpuops("load-test", "--url", server.url, "--users", "2", "--run-time", "3s", "--max-tokens", "8",
                         timeout=90)
    assert res.code == 0, res.text
    folder = _report_dir(project)
    page = (folder / "report.html").read_text()
    assert (folder / "locust.html").is_file()  # Locust's own report stays beside it
    assert "HTTP 500: simulated internal server error" in page and "load-test --url" in page
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,3200", f"--screenshot={shot}", (folder / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr
    # the lines and bars the page draws, in their colours: p50 lines and histogram bars (blue), p90
    # (orange), output tokens/s (green), failures (red)
    for name, rgb, least in (("p50 and histograms", (0x1f, 0x77, 0xb4), 3000), ("p90", (0xff, 0x7f, 0x0e), 300),
                             ("throughput", (0x2c, 0xa0, 0x2c), 300), ("failures", (0xd6, 0x27, 0x28), 300)):
        assert _ink(shot, rgb) >= least, name


def test_find_max_finds_the_knee_of_a_server_whose_latency_grows_with_load(project, demo):
    # TTFT = 50 ms + 20 ms per other request in flight: 4 users meet TTFT <= 125 ms, 5 do not
    server = demo(env={"GPUOPS_DEMO_TTFT_PER_REQUEST_MS": "20"})
    res = project.gpuops("load-test", "--url", server.url, "--users", "1", "--run-time", "2s", "--max-tokens", "4",
                         "--find-max", "--slo-ttft-ms", "125", "--slo-quantile", "90", timeout=300)
    assert res.code == 0, res.text
    folder = _report_dir(project)
    knee = json.loads((folder / "find_max.json").read_text())
    assert knee["max_level"] == 4 and knee["failed_level"] == 5, knee
    assert [r["level"] for r in knee["levels"]] == [1, 2, 4, 8, 6, 5]
    assert "the highest load meeting TTFT <= 125 ms for 90% of requests: 4 users" in res.out
    page = (folder / "report.html").read_text()
    assert 'id="latency-throughput-ttft"' in page and 'class="mark"' in page
    assert (folder / "01-users-1" / "report.html").is_file()


def test_compare_puts_two_reports_side_by_side_with_the_change(project, demo):
    server = demo()
    for users in ("1", "2"):
        res = project.gpuops("load-test", "--url", server.url, "--users", users, "--run-time", "2s",
                             "--max-tokens", "4", timeout=90)
        assert res.code == 0, res.text
    a, b = sorted((project.run_dir / "load_tests").iterdir())
    res = project.gpuops("load-test", "--compare", str(a), "--compare", str(b), "--json")
    assert res.code == 0, res.text
    doc = json.loads(res.out)
    rows = {r["metric"]: r for r in doc["compare"]["rows"]}
    sa, sb = _summary(a), _summary(b)
    expected = (sb["output_throughput"] - sa["output_throughput"]) / sa["output_throughput"] * 100
    assert rows["output_throughput"]["change_pct"] == pytest.approx(expected)
    assert "the two ran different loads: max_concurrency 1 vs 2" in doc["compare"]["notes"]
    bad = project.gpuops("load-test", "--compare", str(a))
    assert bad.code == 2 and "--compare takes two report folders, got 1" in bad.err and "Traceback" not in bad.text


USER_LOCUSTFILE = """
from locust import HttpUser, task


class Completions(HttpUser):
    @task
    def complete(self):
        self.client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4}, name="my completions")
"""


def test_a_locust_command_in_the_agents_file_runs_the_users_own_locustfile(project, demo):
    server = demo()
    (project.root / "benchmark").mkdir()
    (project.root / "benchmark" / "load_test.py").write_text(USER_LOCUSTFILE)
    project.write_agents(textwrap.dedent(f"""\
        ## Load test

        ```bash
        locust -f benchmark/load_test.py -u 2 -r 2 -t 3s --headless -H {server.url} --reset-stats
        ```
        """))
    res = project.gpuops("load-test", timeout=90)
    assert res.code == 0, res.text
    folder = _report_dir(project)
    names = {p.name for p in folder.iterdir()}
    assert {"locust_stats.csv", "locust.html", "summary.json", "plan.json"} <= names
    s = _summary(folder)
    assert s["source"] == "locust" and s["completed"] > 0 and s["failed"] == 0
    assert [r["name"] for r in s["locust_stats"]] == ["my completions"]
    assert "my completions" in res.out and "Locust's stats of your locustfile" in res.out
    log = next((project.run_dir / "server_logs").glob("locust-*.log")).read_text()
    assert "benchmark/load_test.py" in log and "--reset-stats" in log  # the unknown flag went to Locust


def test_an_unknown_locust_flag_without_f_names_the_nearest_gpuops_flag(project, demo):
    project.write_agents("## Load test\n\n```bash\nlocust -u 2 --run-tme 5s\n```\n")
    res = project.gpuops("load-test", "--url", "http://127.0.0.1:9")
    assert res.code == 2, res.text
    assert "unknown load-test flag '--run-tme' (the nearest gpuops flag is --run-time)" in res.err
    assert "Traceback" not in res.text
