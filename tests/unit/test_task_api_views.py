"""The task API's views and request mapping (``serving.gateway``), as pure functions of a record or a
body: the ``current_step`` sentence, ``progress``, log lines, and ``POST /tasks`` -> TaskRequest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from officeray.contracts import (
    LogLine,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskStatus,
    WorkflowRetryPolicy,
)
from serving.gateway import (
    ApiError,
    TaskSubmission,
    describe_current_step,
    status_view,
    step_progress,
    task_request_from,
)


def _step(step_id: str, action: str, status: StepStatus) -> StepResult:
    return StepResult(step_id=step_id, action=action, idempotency_key=f"k-{step_id}", status=status)


def _record(status: TaskStatus, *steps: StepResult, iterations: int = 1) -> TaskRecord:
    return TaskRecord(task_id="t1", description="d", status=status, iterations=iterations, steps=list(steps))


@pytest.mark.parametrize(
    ("record", "sentence"),
    [
        (_record(TaskStatus.QUEUED, iterations=0), "queued"),
        (_record(TaskStatus.PLANNING), "planning (iteration 1)"),
        (_record(TaskStatus.VALIDATING, iterations=2), "validating the plan (iteration 2)"),
        (
            _record(
                TaskStatus.EXECUTING,
                _step("s1", "sleep", StepStatus.SUCCEEDED),
                _step("s2", "code_analyzer", StepStatus.RUNNING),
            ),
            "step s2 (code_analyzer) running",
        ),
        (
            _record(
                TaskStatus.EXECUTING,
                _step("a", "sleep", StepStatus.RUNNING),
                _step("b", "sleep", StepStatus.RUNNING),
            ),
            "steps a (sleep), b (sleep) running",
        ),
        (
            _record(
                TaskStatus.WAITING_APPROVAL,
                _step("a", "sleep", StepStatus.RUNNING),
                _step("b", "python_exec", StepStatus.WAITING_APPROVAL),
            ),
            "step a (sleep) running; step b (python_exec) waiting for approval",
        ),
        (
            _record(TaskStatus.EXECUTING, _step("s1", "sleep", StepStatus.PENDING)),
            "executing the plan (iteration 1)",
        ),
        (_record(TaskStatus.REVIEWING), "reviewing the results (iteration 1)"),
        (_record(TaskStatus.COMPLETED), "completed"),
        (_record(TaskStatus.FAILED), "failed"),
    ],
)
def test_current_step_is_a_sentence(record: TaskRecord, sentence: str) -> None:
    assert describe_current_step(record) == sentence


def test_progress_counts_finished_steps_and_is_1_once_completed() -> None:
    steps = [
        _step("a", "sleep", StepStatus.SUCCEEDED),
        _step("b", "sleep", StepStatus.FAILED),
        _step("c", "sleep", StepStatus.SKIPPED),
        _step("d", "sleep", StepStatus.RUNNING),
    ]
    assert step_progress(_record(TaskStatus.PLANNING)) == 0.0
    assert step_progress(_record(TaskStatus.EXECUTING, *steps)) == 0.75
    assert step_progress(_record(TaskStatus.COMPLETED)) == 1.0


def test_status_view_shows_the_result_only_once_completed() -> None:
    record = _record(TaskStatus.REVIEWING, _step("s1", "math_calculator", StepStatus.SUCCEEDED))
    record.result = {"draft": True}
    record.logs = [LogLine(message="step s1 (math_calculator) started")]
    view = status_view(record)
    assert view.final_result is None and view.progress == 1.0 and view.error is None
    assert view.logs[0].endswith(" info step s1 (math_calculator) started")
    record.status = TaskStatus.COMPLETED
    assert status_view(record).final_result == {"draft": True}


def test_constraints_map_to_the_task_request() -> None:
    default = WorkflowRetryPolicy(maximum_step_attempts=7, maximum_duration_s=3600)
    body = TaskSubmission.model_validate(
        {"description": "d", "constraints": {"max_duration": 300, "allowed_tools": ["code_analyzer"]}}
    )
    request = task_request_from(body, default)
    assert request.allowed_tools == ["code_analyzer"]
    assert request.retry_policy == WorkflowRetryPolicy(maximum_step_attempts=7, maximum_duration_s=300)
    unconstrained = task_request_from(TaskSubmission(description="d"), default)
    assert unconstrained.retry_policy is None and unconstrained.allowed_tools is None  # the config's


def test_unknown_constraints_are_named() -> None:
    with pytest.raises(ValidationError) as exc:
        TaskSubmission.model_validate({"description": "d", "constraints": {"budget": 1, "max_duration": 5}})
    assert "unknown constraint(s) 'budget'; known: allowed_tools, max_duration" in str(exc.value)


def test_a_cap_over_the_policy_limit_is_a_422_naming_max_duration() -> None:
    body = TaskSubmission.model_validate({"description": "d", "constraints": {"max_duration": 10**9}})
    with pytest.raises(ApiError) as exc:
        task_request_from(body, WorkflowRetryPolicy())
    assert exc.value.status_code == 422 and exc.value.code == "invalid_request"
    assert "constraints.max_duration" in str(exc.value.detail)
