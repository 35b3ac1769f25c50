"""``officeray bench reuse``: its arguments and its figures from task records (the run itself needs a
local stack: the figures in docs/benchmarks.md come from it)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from loadtests.bench_reuse import MAX_PAIRS, Sample, add_arguments, plan_ms, summary
from officeray.contracts import LogLine, TaskRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_planning_time_is_from_acceptance_to_the_first_plan() -> None:
    record = TaskRecord(
        task_id="t",
        description="Compute 1 * 2",
        logs=[
            LogLine(at=T0, message="task accepted"),
            LogLine(at=T0 + timedelta(milliseconds=5), message="memory: 1 similar success(es)"),
            LogLine(at=T0 + timedelta(milliseconds=60), message="iteration 1: planned 1 step(s): s1=x"),
            LogLine(at=T0 + timedelta(milliseconds=61), message="iteration 1: planned from memory: …"),
        ],
    )
    assert plan_ms(record) == pytest.approx(60.0)


def test_the_summary_is_medians_and_a_count_of_reuses() -> None:
    row = summary("near-duplicate", [Sample(60, 160, True), Sample(70, 170, True), Sample(1000, 1100, False)])
    assert row == {"tasks": "near-duplicate", "count": 3, "plan_ms": 70, "task_ms": 170, "reused": 2}


def test_bad_arguments_are_refused() -> None:
    assert parse().pairs == 6 and parse("--planner-ttft-s", "0").planner_ttft_s == 0
    for bad in (["--pairs", "0"], ["--pairs", str(MAX_PAIRS + 1)], ["--planner-ttft-s", "-1"]):
        with pytest.raises(SystemExit):
            parse(*bad)
