"""The data contracts: the plan schema (seed fields, JSON Schema export), task requests, task records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from officeray.contracts import (
    DEFAULT_STEP_TIMEOUT_SECONDS,
    MAX_TASK_DESCRIPTION_CHARS,
    ErrorType,
    Plan,
    PlanStep,
    Priority,
    StepError,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    plan_json_schema,
)
from officeray.testing import make_plan

PLAN_FIELDS = {"plan_id", "task_id", "generated_at", "confidence", "metadata", "steps"}
METADATA_FIELDS = {"priority", "required_tools", "estimated_cost_tokens", "estimated_duration_seconds"}
STEP_FIELDS = {
    "step_id",
    "action",
    "inputs",
    "outputs_expectation",
    "timeout_seconds",
    "parallelizable",
    "idempotency_key",
    "dependencies",
}


def seed_plan_dict() -> dict:
    """A plan in the seed's JSON shape, every field given."""
    return {
        "plan_id": "plan-1",
        "task_id": "task-1",
        "generated_at": "2024-05-01T12:00:00Z",
        "confidence": 0.8,
        "metadata": {
            "priority": "high",
            "required_tools": ["math_calculator"],
            "estimated_cost_tokens": 1200,
            "estimated_duration_seconds": 2.5,
        },
        "steps": [
            {
                "step_id": "s1",
                "action": "math_calculator",
                "inputs": {"expression": "2 + 2"},
                "outputs_expectation": ["value"],
                "timeout_seconds": 30,
                "parallelizable": True,
                "idempotency_key": "task-1:1:s1",
                "dependencies": [],
            },
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x * 3", "variables": {"x": {"from_step": "s1", "path": "value"}}},
                "outputs_expectation": ["value"],
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": "task-1:1:s2",
                "dependencies": ["s1"],
            },
        ],
    }


# -- plans ---------------------------------------------------------------------------------------


def test_plan_round_trips_through_json() -> None:
    plan = Plan.model_validate(seed_plan_dict())
    assert plan.metadata.priority is Priority.HIGH
    assert plan.generated_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert plan.steps[1].dependencies == ["s1"]
    assert plan.steps[1].parallelizable is False

    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    # The JSON form is the seed's: same keys, at every level.
    dumped = json.loads(plan.model_dump_json())
    assert set(dumped) == PLAN_FIELDS
    assert set(dumped["metadata"]) == METADATA_FIELDS
    assert all(set(step) == STEP_FIELDS for step in dumped["steps"])


def test_plan_step_defaults() -> None:
    step = PlanStep.model_validate({"step_id": "s1", "action": "python_exec", "idempotency_key": "k"})
    assert step.timeout_seconds == DEFAULT_STEP_TIMEOUT_SECONDS == 300
    assert step.parallelizable is True
    assert step.inputs == {}
    assert step.outputs_expectation == []
    assert step.dependencies == []


def test_plan_defaults_fill_metadata_and_timestamp() -> None:
    plan = Plan.model_validate(
        {
            "plan_id": "p",
            "task_id": "t",
            "confidence": 0.5,
            "steps": [{"step_id": "s1", "action": "python_exec", "idempotency_key": "k"}],
        }
    )
    assert plan.metadata.priority is Priority.MEDIUM
    assert plan.metadata.required_tools == []
    assert plan.generated_at.tzinfo is not None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(confidence=1.5), id="confidence-above-1"),
        pytest.param(lambda d: d.update(confidence=-0.1), id="confidence-below-0"),
        pytest.param(lambda d: d.update(steps=[]), id="no-steps"),
        pytest.param(lambda d: d.update(surprise=1), id="extra-plan-key"),
        pytest.param(lambda d: d["steps"][0].update(timeout_seconds=0), id="timeout-zero"),
        pytest.param(lambda d: d["steps"][0].update(timeout_seconds=100_000), id="timeout-too-long"),
        pytest.param(lambda d: d["steps"][0].update(step_id="has space"), id="bad-step-id"),
        pytest.param(lambda d: d["steps"][0].pop("idempotency_key"), id="no-idempotency-key"),
        pytest.param(lambda d: d["metadata"].update(priority="urgent"), id="bad-priority"),
        pytest.param(lambda d: d["metadata"].update(estimated_cost_tokens=-1), id="negative-cost"),
    ],
)
def test_plan_schema_refuses(change) -> None:
    data = seed_plan_dict()
    change(data)
    with pytest.raises(ValidationError):
        Plan.model_validate(data)


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/")
    return schema["$defs"][ref.removeprefix("#/$defs/")]


def test_plan_json_schema_describes_every_seed_field() -> None:
    schema = plan_json_schema()
    json.dumps(schema)  # plain JSON, ready to send to a structured-output model
    assert schema["type"] == "object"
    assert set(schema["properties"]) == PLAN_FIELDS
    assert {"plan_id", "task_id", "confidence", "steps"} <= set(schema["required"])

    metadata = _resolve(schema, schema["properties"]["metadata"])
    assert set(metadata["properties"]) == METADATA_FIELDS

    steps = schema["properties"]["steps"]
    assert steps["type"] == "array"
    assert steps["minItems"] == 1
    step = _resolve(schema, steps["items"])
    assert set(step["properties"]) == STEP_FIELDS
    assert {"step_id", "action", "idempotency_key"} <= set(step["required"])
    assert step["properties"]["timeout_seconds"]["default"] == 300
    assert step["properties"]["parallelizable"]["default"] is True
    assert step.get("additionalProperties") is False


def test_plan_json_schema_is_valid_and_accepts_the_seed_plan() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = plan_json_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    assert list(validator.iter_errors(seed_plan_dict())) == []
    bad = seed_plan_dict()
    bad["confidence"] = 2.0
    assert list(validator.iter_errors(bad))


# -- task requests -------------------------------------------------------------------------------


def test_task_request_accepts_a_plain_description() -> None:
    request = TaskRequest(description="add 2 and 2")
    assert request.task_id is None
    assert request.allowed_tools is None
    assert request.max_iterations is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"description": ""}, id="empty"),
        pytest.param({"description": "   \n\t "}, id="blank"),
        pytest.param({"description": "x" * (MAX_TASK_DESCRIPTION_CHARS + 1)}, id="overlong"),
        pytest.param({"description": "ok", "priority": "high"}, id="extra-key"),
        pytest.param({"description": "ok", "task_id": "has/slash"}, id="bad-task-id"),
        pytest.param({"description": "ok", "max_iterations": 0}, id="zero-iterations"),
        pytest.param({}, id="missing-description"),
    ],
)
def test_task_request_refuses(data: dict) -> None:
    with pytest.raises(ValidationError):
        TaskRequest.model_validate(data)


def test_task_request_blank_description_message_is_clear() -> None:
    with pytest.raises(ValidationError, match="description must not be blank"):
        TaskRequest(description="   ")


def test_task_request_description_at_the_limit_is_accepted() -> None:
    assert (
        len(TaskRequest(description="x" * MAX_TASK_DESCRIPTION_CHARS).description)
        == MAX_TASK_DESCRIPTION_CHARS
    )


# -- task records --------------------------------------------------------------------------------


def _result(step_id: str, status: StepStatus) -> StepResult:
    return StepResult(step_id=step_id, action="python_exec", idempotency_key=f"t:{step_id}", status=status)


def test_task_record_public_view_has_progress_counts() -> None:
    record = TaskRecord(
        task_id="t",
        description="d",
        status=TaskStatus.EXECUTING,
        plan=make_plan("t", [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "1"}}]),
        steps=[
            _result("s1", StepStatus.SUCCEEDED),
            _result("s2", StepStatus.SUCCEEDED),
            _result("s3", StepStatus.RUNNING),
            _result("s4", StepStatus.FAILED),
            _result("s5", StepStatus.SKIPPED),
            _result("s6", StepStatus.PENDING),
        ],
    )
    view = record.public_view()
    assert view["progress"] == {
        "pending": 1,
        "waiting_approval": 0,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "skipped": 1,
        "total": 6,
    }
    assert view["status"] == "executing"
    assert view["task_id"] == "t"
    json.dumps(view)  # JSON-ready: datetimes and enums are already strings


def test_task_record_public_view_of_a_new_task() -> None:
    view = TaskRecord(task_id="t", description="d").public_view()
    assert view["status"] == "queued"
    assert view["progress"]["total"] == 0
    assert all(count == 0 for count in view["progress"].values())


def test_task_record_round_trips_through_json() -> None:
    failed = _result("s1", StepStatus.FAILED).model_copy(
        update={"error": StepError(type=ErrorType.TIMEOUT, message="too slow")}
    )
    record = TaskRecord(task_id="t", description="d", status=TaskStatus.FAILED, steps=[failed], error="x")
    assert TaskRecord.model_validate_json(record.model_dump_json()) == record


def test_task_status_is_final() -> None:
    assert {s for s in TaskStatus if s.is_final} == {TaskStatus.COMPLETED, TaskStatus.FAILED}


def test_step_result_duration() -> None:
    result = _result("s1", StepStatus.SUCCEEDED)
    assert result.duration_s is None
    result.started_at = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    result.finished_at = datetime(2024, 1, 1, 0, 0, 2, 500_000, tzinfo=UTC)
    assert result.duration_s == 2.5
