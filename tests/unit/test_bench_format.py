"""The shared benchmark result format and the pure parts of ``bench overhead`` and ``bench sandbox``:
targets, text and JSON output, argument checks, the figures of one level (percentiles:
tests/unit/test_stats.py)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from loadtests import bench_overhead as bo
from loadtests import bench_sandbox
from loadtests.bench_format import BenchResult, Column, Comparison, Table, Target, all_met, emit


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    bo.add_arguments(parser)
    return parser.parse_args(list(argv))


# -- targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "comparison", "met", "verdict"),
    [
        (1.05, "<=", True, "met (1.05 x)"),
        (1.10, "<=", True, "met (1.10 x)"),
        (1.2, "<=", False, "missed (1.20 x)"),
        (1.2, ">=", True, "met (1.20 x)"),
        (None, "<=", None, "not measured"),
    ],
)
def test_target_is_met_missed_or_not_measured(
    value: float | None, comparison: Comparison, met: bool | None, verdict: str
) -> None:
    target = Target("(a)", "median / ideal", value, 1.1, comparison, "x")
    assert target.met is met
    assert target.line() == f"target (a) median / ideal {comparison} 1.1 x: {verdict}"


def test_all_met_ignores_what_was_not_measured() -> None:
    met = Target("t", "d", 1, 2, "<=")
    missed = Target("t", "d", 3, 2, "<=")
    unmeasured = Target("t", "d", None, 2, "<=")
    assert all_met([met, unmeasured]) is True
    assert all_met([met, missed]) is False
    assert all_met([unmeasured]) is None


# -- text and JSON ---------------------------------------------------------------------------------


def _result() -> BenchResult:
    table = Table(
        "levels",
        [Column("name", "name"), Column("n", "n"), Column("ms", "p50 ms", ".2f")],
        [{"name": "warm", "n": 20, "ms": 2.5}, {"name": "exec", "n": 3, "ms": None}],
    )
    return BenchResult(
        benchmark="demo",
        title="bench demo",
        tables=[table],
        targets=[Target("(x)", "warm p50", 2.5, 5.0, "<=", "ms")],
        notes=["a note"],
        machine={"cpus": 2, "platform": "test"},
        extra={"raw": {"warm": [1, 2]}},
    )


def test_text_aligns_columns_and_prints_notes_and_targets() -> None:
    text = _result().format_text()
    lines = text.splitlines()
    assert lines[0] == "bench demo (2 CPUs, test)"
    assert lines[1] == "note: a note"
    header = lines.index("== levels ==")
    assert lines[header + 1 :][:3] == [
        "name   n  p50 ms",
        "warm  20    2.50",
        "exec   3       -",
    ]
    assert lines[-1] == "target (x) warm p50 <= 5 ms: met (2.50 ms)"


def test_json_round_trip_keeps_the_shared_keys_and_the_extra() -> None:
    data = json.loads(json.dumps(_result().to_dict()))
    assert data["raw"] == {"warm": [1, 2]}
    assert data["targets"]["met"] is True
    assert data["targets"]["items"][0]["line"].endswith("met (2.50 ms)")
    again = BenchResult.from_dict(data)
    assert again.format_text() == _result().format_text()
    assert again.extra == {"raw": {"warm": [1, 2]}}


def test_emit_prints_json_alone_or_writes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit(_result(), "-")
    assert json.loads(capsys.readouterr().out)["benchmark"] == "demo"
    out = tmp_path / "r.json"
    emit(_result(), str(out))
    assert capsys.readouterr().out.startswith("bench demo")
    assert json.loads(out.read_text())["benchmark"] == "demo"


def test_bench_sandbox_report_joins_the_shared_format() -> None:
    raw = {
        "image": "img:1",
        "cold_start_ms": 230.0,
        "measures": {
            key: {"label": bench_sandbox.LABELS[key], "n": 5, "p50_ms": ms, "p95_ms": ms * 1.2}
            for key, ms in {"ping": 0.5, "warm": 2.0, "exec": 50.0, "run": 200.0}.items()
        },
        "ratios_p50": {"exec_over_warm": 25.0, "run_over_warm": 100.0},
    }
    report = json.loads(json.dumps(bench_sandbox.result_of(raw).to_dict()))
    assert report["measures"] == raw["measures"] and report["ratios_p50"] == raw["ratios_p50"]
    assert report["targets"]["met"] is True
    text = bench_sandbox.format_report(report)
    assert "warm sandbox: trivial step" in text and "25.0x" in text
    assert "target ratio docker exec p50 / warm p50 >= 5 x: met (25.0 x)" in text


# -- bench overhead: arguments ---------------------------------------------------------------------


def test_defaults_are_the_issue_s_levels() -> None:
    args = _parse()
    cfg = bo.config_from_args(args)
    assert cfg.levels == (1, 10, 100, 500, 1000)
    assert cfg.ideal_s == pytest.approx(4.5)
    assert args.json is None and bo.check_args(args) is None


def test_levels_parse_in_order_without_duplicates() -> None:
    assert _parse("--levels", "1, 10,10,5").levels == (1, 10, 5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--levels", "0"],
        ["--levels", "1,x"],
        ["--levels", ","],
        ["--levels", str(bo.MAX_LEVEL + 1)],
        ["--rounds", "0"],
        ["--rounds", str(bo.MAX_ROUNDS + 1)],
        ["--instant-tasks", "-1"],
        ["--planner-s", "-0.1"],
        ["--step-s", "nan"],
        ["--reviewer-s", "inf"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        _parse(*argv)


def test_skipping_every_run_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--skip-latency", "--skip-instant", "--skip-telemetry", "--skip-gateway")
    assert bo.run_from_args(args) == 2
    assert "nothing to measure" in capsys.readouterr().err


def test_module_entry_point_answers_a_usage_error_with_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        bo.main(["--levels", "0"])
    assert exc.value.code == 2


def test_a_bad_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow: {max_iterations: 0}\n")
    assert bo.main(["--config", str(bad), "--skip-instant", "--levels", "1"]) == 2
    assert "workflow.max_iterations" in capsys.readouterr().err


# -- bench overhead: figures -----------------------------------------------------------------------


def test_sleep_task_is_what_the_embedded_planner_understands() -> None:
    from officeray.contracts import PlanRequest
    from serving.tiers.embedded import plan_task

    assert bo.sleep_task(0.5) == "Wait 0.5 seconds and also wait 0.5 seconds"
    assert bo.sleep_task(0.0) == "Wait 0 seconds and also wait 0 seconds"
    plan = plan_task(PlanRequest(task_id="t", description=bo.sleep_task(0.25), allowed_tools=["sleep"]))
    assert [s.action for s in plan.steps] == ["sleep", "sleep"]
    assert all(not s.dependencies for s in plan.steps)


def test_rounds_keep_small_levels_at_the_minimum() -> None:
    assert [bo.rounds_for(c, 1) for c in (1, 2, 5, 10)] == [5, 3, 1, 1]
    assert bo.rounds_for(10, 3) == 3
    assert [bo.instant_rounds(c, 200) for c in (1, 10, 100, 300)] == [200, 20, 2, 1]


def test_memory_per_task_is_growth_over_in_flight() -> None:
    assert bo.memory_per_task_kib(100 * bo.MIB, 110 * bo.MIB, 1000) == pytest.approx(10.24)
    assert bo.memory_per_task_kib(100 * bo.MIB, 90 * bo.MIB, 10) == 0
    assert bo.memory_per_task_kib(None, 90 * bo.MIB, 10) is None
    assert bo.memory_per_task_kib(1, 2, 0) is None


@pytest.mark.parametrize(
    ("name", "cmdline", "pid", "group"),
    [
        ("python", ["python", "-m", "bench"], 1, "driver (this process)"),
        ("ray::Orchestrator", ["ray::Orchestrator.run"], 2, "orchestrator"),
        ("raylet", ["/x/raylet", "--flag"], 3, "raylet"),
        ("gcs_server", ["/x/gcs_server"], 3, "gcs_server"),
        (
            "ray::ServeRepl",
            ["ray::ServeReplica:officeray:Planner.handle_request"],
            3,
            "serve replica Planner",
        ),
        ("ray::ServeRepl", ["ray::ServeReplica:officeray:Reviewer"], 3, "serve replica Reviewer"),
        ("ray::ServeCont", ["ray::ServeController.listen"], 3, "serve controller"),
        ("ray::HostToolRu", ["ray::HostToolRunner.run"], 3, "host-tool runner"),
        ("ray::ToolRunner", ["ray::ToolRunner.run"], 3, "tool runner"),
        ("ray::IDLE", ["ray::IDLE"], 3, "idle workers"),
        ("ray::Other", ["ray::_StatsActor"], 3, "other ray workers"),
        ("python", ["python", "-m", "ray.dashboard.agent"], 3, "ray daemons"),
    ],
)
def test_processes_are_grouped_by_role(name: str, cmdline: list[str], pid: int, group: str) -> None:
    assert bo.process_group(name, cmdline, pid, driver_pid=1, orchestrator_pids={2}) == group


def _level(concurrency: int, latencies: list[float], failures: int = 0) -> bo.LevelRun:
    return bo.LevelRun(
        concurrency=concurrency,
        tasks=len(latencies) + failures,
        latencies_s=latencies,
        server_s=[x - 0.01 for x in latencies],
        failures=Counter({"timeout": failures}) if failures else Counter(),
        wall_s=10.0,
        peak_in_flight=concurrency,
        rss_peak=200 * bo.MIB,
        cpu_s={"orchestrator": 1.0, "raylet": 1.0},
        processes=Counter({"orchestrator": 1, "raylet": 1}),
    )


def test_level_row_has_ratios_throughput_cpu_and_memory() -> None:
    row = bo.level_row(_level(100, [4.5] * 50 + [5.0] * 50), 4.5, 100 * bo.MIB)
    # officeray.stats.percentile interpolates: the median of 50 x 4.5 and 50 x 5.0 is 4.75
    assert row["median_s"] == 4.75 and row["median_ratio"] == pytest.approx(4.75 / 4.5)
    assert row["p95_ratio"] == pytest.approx(5.0 / 4.5)
    assert row["tasks_per_s"] == pytest.approx(10.0)
    assert row["cpu_ms_per_task"] == pytest.approx(20.0)
    assert row["orch_cpu_ms_per_task"] == pytest.approx(10.0)
    assert row["cores_used"] == pytest.approx(0.2)
    assert row["kib_per_in_flight_task"] == pytest.approx(1024.0)
    instant = bo.level_row(_level(10, [0.02, 0.04, 0.06], failures=1), None, None)
    assert instant["median_ms"] == pytest.approx(40.0) and instant["failed"] == 1
    assert instant["kib_per_in_flight_task"] is None


def test_targets_are_evaluated_at_their_levels() -> None:
    rows = [bo.level_row(_level(c, [4.6] * 10), 4.5, 100 * bo.MIB) for c in (100, 1000)]
    instant = [bo.level_row(_level(100, [0.05] * 100), None, None)]  # 10 tasks/s, 20 ms CPU a task
    targets = {(t.name, t.description): t for t in bo.targets_of(rows, instant)}
    assert targets[("latency", "median / ideal at 100 concurrent")].met is True  # 4.6 / 4.5 = 1.022
    assert targets[("latency", "median / ideal at 1000 concurrent")].met is True
    assert targets[("latency", "median / ideal at 500 concurrent")].met is None
    assert targets[("instant", "throughput at 100 concurrent")].met is False
    assert all(t.met is None for t in bo.targets_of([], []))


def test_result_has_the_three_tables_and_the_breakdown() -> None:
    cfg = bo.BenchConfig(levels=(1, 5), instant_levels=(5,))
    latency = bo.RunOutcome(
        levels=[_level(1, [4.6] * 5), _level(5, [4.7] * 5, failures=1)], baseline_rss=bo.MIB
    )
    instant = bo.RunOutcome(levels=[_level(5, [0.05] * 20)], idle_cores={"raylet": 0.1})
    result = bo.build_result(cfg, latency, [instant])
    assert [t.title.split(":")[0] for t in result.tables] == [
        "latency",
        "instant models and tools",
        "CPU by process, instant, at 5 concurrent (20 tasks)",
        "idle CPU by process",
    ]
    text = result.format_text()
    assert "latency c=5: failures by reason: timeout: 1" in text
    assert "off the ideal path" not in text
    assert "ideal 4.500 s" in text
    breakdown = {r["group"]: r for r in result.tables[2].rows}
    assert breakdown["raylet"]["cpu_ms_per_task"] == pytest.approx(50.0)
    assert breakdown["raylet"]["idle_ms_per_task"] == pytest.approx(50.0)  # 0.1 cores x 10 s / 20 tasks
    assert breakdown["orchestrator"]["idle_ms_per_task"] == 0
    data = result.to_dict()
    assert data["config"]["ideal_s"] == pytest.approx(4.5)
    assert [r["concurrency"] for r in data["latency_levels"]] == [1, 5]
    assert bo.build_result(cfg, None, [instant]).tables[0].title == "instant models and tools"
