"""The ``sleep`` host tool and the embedded planner's phrasings for it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from officeray.contracts import ErrorType, PlanRequest, PlanStep
from officeray.errors import PlanningError
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.tools.spec import ToolRuntime
from serving.tiers.embedded import plan_task
from tools_sandbox.executor import run_host_step


def _step(inputs: dict[str, object]) -> PlanStep:
    return PlanStep(step_id="s1", action="sleep", inputs=inputs, idempotency_key="t:1:s1")


def test_sleep_waits_and_reports_the_time_waited() -> None:
    assert BUILTIN_TOOLS["sleep"].runtime == ToolRuntime.HOST
    started = time.monotonic()
    outcome = run_host_step(_step({"seconds": 0.2}), {"seconds": 0.2}, Path("."))
    assert outcome.error is None
    assert 0.2 <= outcome.output["slept_s"] <= time.monotonic() - started


@pytest.mark.parametrize("inputs", [{"seconds": -1}, {"seconds": 601}, {"seconds": "x"}, {}, {"s": 1}])
def test_sleep_refuses_bad_inputs(inputs: dict[str, object]) -> None:
    outcome = run_host_step(_step(inputs), inputs, Path("."))
    assert outcome.error is not None and outcome.error.type == ErrorType.BAD_INPUT


def test_a_sandbox_tool_on_a_host_runner_is_a_sandbox_error() -> None:
    step = PlanStep(step_id="s1", action="math_calculator", inputs={"expression": "1+1"}, idempotency_key="k")
    outcome = run_host_step(step, {"expression": "1+1"}, Path("."))
    assert outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR


def _plan(description: str) -> list[PlanStep]:
    request = PlanRequest(task_id="t", description=description, allowed_tools=sorted(BUILTIN_TOOLS))
    return plan_task(request).steps


def test_parallel_waits_then_a_math_step() -> None:
    steps = _plan("Wait 0.5 seconds and also sleep 500 ms then compute 1+1")
    assert [(s.action, s.inputs, s.dependencies) for s in steps] == [
        ("sleep", {"seconds": 0.5}, []),
        ("sleep", {"seconds": 0.5}, []),
        ("math_calculator", {"expression": "1+1"}, ["s1", "s2"]),
    ]


def test_a_long_wait_gets_a_timeout_above_it() -> None:
    (step,) = _plan("pause for 90 s")
    assert step.inputs == {"seconds": 90.0}
    assert step.timeout_seconds >= 90 + 10


def test_a_wait_over_the_tool_limit_is_refused() -> None:
    with pytest.raises(PlanningError, match="600"):
        _plan("wait 601 seconds")
