"""``bench overhead`` end to end, small: two levels with short latencies and a small instant run.

It runs as a subprocess (its own local Ray instance, like ``officeray run`` in test_cli.py), so it
never shares a Ray session with the package's ``stack`` fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, require_docker

pytestmark = pytest.mark.integration

BENCH_TIMEOUT_S = 240
PLANNER_S, REVIEWER_S, STEP_S = 0.3, 0.1, 0.1
TELEMETRY_TASKS = 6


def test_small_bench_overhead_prints_plausible_figures(tmp_path: Path) -> None:
    require_docker()  # the tool runner's warm sandbox
    out = tmp_path / "bench.json"
    argv = ["--levels", "1,5", "--planner-s", str(PLANNER_S), "--reviewer-s", str(REVIEWER_S)]
    argv += ["--step-s", str(STEP_S), "--instant-levels", "5", "--instant-tasks", "20", "--json", str(out)]
    argv += ["--telemetry-level", "2", "--telemetry-tasks", str(TELEMETRY_TASKS), "--skip-gateway"]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_overhead", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "== latency: planner 0.3 s" in proc.stdout and "ideal 0.500 s" in proc.stdout
    assert "== instant models and tools ==" in proc.stdout
    assert "== idle CPU by process ==" in proc.stdout
    assert "target instant CPU per task (every process) at 100 concurrent <= 6 ms: not measured" in (
        proc.stdout
    )

    report = json.loads(out.read_text())
    assert report["benchmark"] == "overhead"
    assert report["config"]["ideal_s"] == pytest.approx(PLANNER_S + STEP_S + REVIEWER_S)
    latency = report["latency_levels"]
    assert [(r["concurrency"], r["tasks"], r["failed"]) for r in latency] == [(1, 5, 0), (5, 5, 0)]
    for row in latency:
        assert row["median_ratio"] >= 1.0 and row["p95_ratio"] >= row["median_ratio"]
        assert row["tasks_per_s"] > 0 and row["peak_in_flight"] >= 1
        assert row["orch_rss_peak_mib"] > 0
        assert row["session_rss_peak_mib"] > row["orch_rss_peak_mib"]
    (instant,) = report["instant_levels"]
    assert (instant["concurrency"], instant["tasks"], instant["failed"]) == (5, 20, 0)
    assert instant["cpu_ms_per_task"] > instant["orch_cpu_ms_per_task"] > 0
    assert instant["tasks_per_s"] > 0
    # levels 1, 100..1000 and the gateway were not run: their targets say so; the idle CPU was measured
    measured = {i["name"] for i in report["targets"]["items"] if i["met"] is not None}
    assert measured == {"idle"} and report["idle_cores"]
    # telemetry export on and off: every task's spans reached the loopback OTLP receiver when on
    telemetry = report["telemetry"]
    on, off = telemetry["on"], telemetry["off"]
    assert (on["tasks"], on["failed"], off["tasks"], off["failed"]) == (
        TELEMETRY_TASKS,
        0,
        TELEMETRY_TASKS,
        0,
    )
    assert on["spans_per_task"] >= 10 and not off["spans_per_task"]
    assert on["cpu_ms_per_task"] > 0 and off["cpu_ms_per_task"] > 0 and telemetry["ratio"] > 0
    assert "telemetry export costs" in proc.stdout
    notes = " ".join(report["notes"])
    assert "off the ideal path" not in notes and "failures by reason" not in notes
